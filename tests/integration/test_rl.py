"""`r1rm rl` on CPU with the tiny model: every algorithm on 1 and 2 processes, KL with a
reference model, a model consistency checker (scripted endpoint, and one that is down), checkpoints and exact resume."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from r1rm.core.algorithms import ALGORITHMS

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from r1rm.data.synthetic import write_dataset

    d = tmp_path_factory.mktemp("data")
    return (write_dataset(d, 16, seed=3, levels=(1,), modality="image", prefix="train"),
            write_dataset(d, 4, seed=4, levels=(1,), modality="image", prefix="heldout"))


def args(tiny, data, out, *extra):
    train, held = data
    return ["rl", "--recipe", "recipes/tiny/rl.yaml", f"model.path={tiny}", f"data.train=[{train}]",
            f"data.eval=[{held}]", f"output_dir={out}", "runtime.progress=false", "runtime.report_to=none",
            "rl.max_steps=2", "rl.rollout_batch_size=4", "rl.n_samples_per_prompt=2", "rl.train_batch_size=4",
            "rl.micro_batch_size=2", "rl.max_new_tokens=12", "rl.eval_every_steps=0", "rl.save_every_steps=1", *extra]


def rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


METRIC_KEYS = {"reward", "reward_format", "reward_result", "reward_consistency", "accuracy", "parse_fail_rate",
               "response_length", "entropy", "clip_frac", "adv_filtered", "ratio_max", "ratio_min", "preclip_high_frac",
               "preclip_low_frac", "loss_token_max", "grad_norm",
               "skipped_updates", "time_rollout_s", "time_reward_s", "time_train_s", "lr"}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_one_process(cli, tiny, data, tmp_path, algorithm):
    out = tmp_path / algorithm
    proc = cli(*args(tiny, data, out, f"rl.algorithm={algorithm}", "rl.ppo_epochs=2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = rows(out)
    assert [x["step"] for x in r] == [1, 2] and METRIC_KEYS <= set(r[-1])
    assert all(x["loss"] == x["loss"] for x in r)  # finite, not NaN
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithm"] == algorithm
    assert summary["grouped_forward"] is True  # 2 samples per prompt, micro batch 2: whole groups
    assert (summary["adv_filter"], summary["pre_clip"] is not None) == (
        ("paper", True) if algorithm == "stable_reinforce" else ("none", False))
    assert (out / "model" / "model.safetensors").exists()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_two_processes(tiny, data, tmp_path, algorithm):
    out = tmp_path / algorithm
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "r1rm.cli",
           *args(tiny, data, out, f"rl.algorithm={algorithm}", "rl.max_steps=1")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["grouped_forward"] is True  # DDP keeps the grouped forward
    assert rows(out)[-1]["step"] == 1


def test_kl_reference_eval_and_official_filter(cli, tiny, data, tmp_path):
    out = tmp_path / "kl"
    # the full-sequence update forward (rl.share_prompt_forward off) runs end to end here too
    proc = cli(*args(tiny, data, out, "rl.kl_coef=0.01", "rl.kl_estimator=k3", "rl.adv_filter=official",
                     "rl.eval_every_steps=2", "rl.share_prompt_forward=false"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = rows(out)[-1]
    assert last["kl_ref"] is not None and last["kl_ref"] >= 0  # k3 is non-negative
    assert "eval/both_orders_strict" in last and 0.0 <= last["eval/both_orders_strict"] <= 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["adv_filter"] == "official" and summary["grouped_forward"] is False


def test_model_consistency_checker_counts_calls_and_failures(cli, tiny, data, tmp_path):
    """The model checker is asked only about right answers. A model that always answers "1" is right
    on half of a both-orders batch (8 of 16 samples); a scripted endpoint's replies then give known
    verdicts, retries and failures, and an endpoint that is down fails every request, counted."""
    from scripted import ScriptedEndpoint, fixed_answer_model

    model = fixed_answer_model(tiny, tmp_path / "says-1")
    checker = ["rl.max_steps=1", "rl.consistency.mode=model", "rl.consistency.model_name=x"]
    # attempt 1: 8 requests, 2 unreadable replies and 6 verdicts "1"; attempt 2 asks about those 2
    # again: one reply unreadable (a failure after the 2 attempts), one verdict "0"
    replies = ["no verdict"] * 2 + ["1"] * 6 + ["no verdict", "0"]
    out = tmp_path / "scripted"
    with ScriptedEndpoint(replies) as endpoint:
        proc = cli(*args(model, data, out, *checker, f"rl.consistency.base_url={endpoint.url}",
                         "rl.consistency.retries=2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(endpoint.prompts) == 10
    assert all("Reasoning: x\nVerdict: response 1 is better" in p for p in endpoint.prompts)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["consistency_calls"], summary["consistency_failures"]) == (10, 1)
    last = rows(out)[-1]
    assert (last["rollout_samples"], last["reward_result"], last["reward_format"]) == (16, 0.5, 1.0)
    assert last["reward_consistency"] == (6 - 1) / 16
    # totals: 6 right and consistent 2.0, 1 right and inconsistent 1.0, the failed one 1.5, 8 wrong 0.5
    assert last["reward"] == (6 * 2.0 + 1.0 + 1.5 + 8 * 0.5) / 16
    # nothing listens on this port: all 8 requests fail, the run completes, consistency stays 0
    down = tmp_path / "down"
    proc = cli(*args(model, data, down, *checker, "rl.consistency.base_url=http://127.0.0.1:9/v1",
                     "rl.consistency.timeout_s=2", "rl.consistency.retries=1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((down / "summary.json").read_text())
    assert (summary["consistency_calls"], summary["consistency_failures"]) == (8, 8)
    last = rows(down)[-1]
    assert last["reward_consistency"] == 0.0 and last["reward"] == (8 * 1.5 + 8 * 0.5) / 16
    proc = cli(*args(tiny, data, tmp_path / "nourl", "rl.consistency.mode=model"))
    assert proc.returncode == 2 and "rl.consistency.base_url" in proc.stderr


def test_msrl_type_reward_reaches_the_total(cli, tiny, tmp_path):
    """MSRL's <type> reward in the RL reward: a model that always names "image understanding" (and
    answers "1") earns it on the image items and not on the text items of the same batch."""
    from scripted import fixed_answer_model

    from r1rm.data.synthetic import write_dataset

    model = fixed_answer_model(tiny, tmp_path / "says-image",
                               "<type>image understanding</type><think>x</think><answer>1</answer>")
    image = write_dataset(tmp_path / "d", 2, seed=7, levels=(1,), modality="image", prefix="img")
    text = write_dataset(tmp_path / "d", 2, seed=8, levels=(1,), modality="text", prefix="txt")
    both = tmp_path / "d" / "both.jsonl"  # next to the images the image items name
    both.write_text(image.read_text() + text.read_text())
    out = tmp_path / "msrl"
    # 4 items × 2 orders × 2 samples: the whole data set in one step
    proc = cli(*args(model, (both, both), out, "data.prompt=msrl", "data.eval=[]", "rl.max_steps=1",
                     "rl.max_new_tokens=16", "rl.type_weight=0.2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = rows(out)[-1]
    assert (last["rollout_samples"], last["reward_format"], last["reward_result"]) == (16, 1.0, 0.5)
    assert last["reward_type"] == 0.5 and last["reward_consistency"] == 0.0
    # per sample: result + 0.5 × format + 0.2 × type, so 0.5 + 0.5 + 0.2 × 0.5 on average
    assert last["reward"] == pytest.approx(1.1)


def test_rl_config_errors(cli, tiny, data, tmp_path):
    proc = cli(*args(tiny, data, tmp_path / "a", "rl.algorithm=grpo", "rl.n_samples_per_prompt=1"))
    assert proc.returncode == 2 and "grpo needs n_samples_per_prompt" in proc.stderr
    proc = cli(*args(tiny, data, tmp_path / "b", "rl.train_batch_size=3"))
    assert proc.returncode == 2 and "not divisible" in proc.stderr
    proc = cli(*args(tiny, data, tmp_path / "c", "rl.rollout_batch_size=64", "rl.train_batch_size=8"))
    assert proc.returncode == 2 and "fewer than one rollout batch" in proc.stderr


def test_kill_and_resume_gives_the_same_run(cli, tiny, data, tmp_path):
    """SIGKILL the same run three times in a row, each at a named phase (_R1RM_TEST_KILL_AT: mid-step,
    mid-checkpoint, after the end — the same moments on any machine): every step
    logged once with the uninterrupted run's rewards, lengths and losses, the same summary and
    weights, never a half-written checkpoint under a step- name, and the half-written one removed by
    the next start. (A finished run started again: tests/integration/test_sft.py, the same code.)"""
    from killing import assert_checkpoints_complete, assert_same_weights, complete_rows, kill_at_phase, training_state

    full, killed = tmp_path / "full", tmp_path / "killed"
    extra = ["rl.max_steps=3", "rl.save_every_steps=2"]
    proc = cli(*args(tiny, data, full, *extra))
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = rows(full)
    ref_ckpt = full / "checkpoints" / "step-0000003"
    ckpts = killed / "checkpoints"

    def same(x: dict, y: dict) -> bool:
        return (x["step"] == y["step"] and x["reward"] == y["reward"] and x["response_length"] == y["response_length"]
                and x["loss"] == pytest.approx(y["loss"], abs=1e-5))

    # 16 samples a step (4 prompts x 2 samples x 2 orders), train batches of 4: 4 optimizer updates a step
    # (while loading: the start is runtime.training's, killed there in test_sft.py)
    plan = [("step:10", 2, ["step-0000002"]),  # inside step 3's second update
            ("checkpoint:1", 3, [".tmp-step-0000003", "step-0000002"]),  # resumed at 2, killed writing the last one
            ("end:1", 3, ["step-0000002", "step-0000003"])]  # model and summary.json written, not yet returned
    kills = []
    for phase, n_rows, left in plan:
        kills.append(kill_at_phase(args(tiny, data, killed, *extra), label="rl", phase=phase,
                                   left=lambda: training_state(killed)))
        why = "\n".join(map(str, kills))
        assert kills[-1].killed, f"{why}\n{kills[-1].stderr_tail}"
        b = complete_rows(killed)  # steps 1..m once each, as in the uninterrupted run
        assert len(b) == n_rows and all(same(x, y) for x, y in zip(a[: len(b)], b, strict=True)), why
        assert (sorted(p.name for p in ckpts.iterdir()) if ckpts.is_dir() else []) == left, why
        assert_checkpoints_complete(killed, ref_ckpt, why, mid_run=True)
    why = "\n".join(map(str, kills))
    b = rows(killed)
    assert [x["step"] for x in b] == [1, 2, 3], why
    for x, y in zip(a, b, strict=True):
        assert x["reward"] == y["reward"] and x["response_length"] == y["response_length"], (x["step"], why)
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5), (x["step"], why)
    s_full, s_killed = (json.loads((d / "summary.json").read_text()) for d in (full, killed))
    assert s_killed == s_full, why
    assert_same_weights(full / "model", killed / "model", why)
    assert_checkpoints_complete(killed, ref_ckpt, why)
    names = sorted(p.name for p in (full / "checkpoints").iterdir())
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == names, why
    for n in names:
        assert_same_weights(full / "checkpoints" / n, killed / "checkpoints" / n, why)
    # the finished run's folder reused with another lr: refused, nothing of it overwritten
    before = (full / "config.yaml").read_bytes()
    proc = cli(*args(tiny, data, full, *extra, "rl.lr=1e-3"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "rl.lr:" in proc.stderr and "other settings" in proc.stderr and (full / "config.yaml").read_bytes() == before


def test_both_orders_rolls_out_each_item_twice_label_balanced(cli, tiny, data, tmp_path):
    out = tmp_path / "both"
    proc = cli(*args(tiny, data, out, "rl.both_orders=true", "rl.rollout_batch_size=3", "rl.train_batch_size=6",
                     "rl.max_steps=1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = rows(out)[-1]
    assert last["rollout_samples"] == 3 * 2 * 2  # items x orders x n
    assert last["label1_share"] == 0.5  # every item shown with its label 1 and 2
    plain = tmp_path / "plain"
    assert cli(*args(tiny, data, plain, "rl.both_orders=false", "rl.rollout_batch_size=3", "rl.train_batch_size=6",
                     "rl.max_steps=1")).returncode == 0
    assert rows(plain)[-1]["rollout_samples"] == 3 * 2
    proc = cli(*args(tiny, data, tmp_path / "bad", "rl.both_orders=true", "rl.rollout_batch_size=3", "rl.train_batch_size=5"))
    assert proc.returncode == 2 and "both_orders" in proc.stderr


def test_msrl_stages_text_then_caption_with_frozen_vision(cli, tiny, tmp_path):
    """MSRL in miniature: GRPO on text pairs with the vision tower and projector frozen, then the
    caption stage starting from stage 1's checkpoint; the <type> reward is scored in both."""
    import torch
    from safetensors.torch import load_file

    from r1rm.data.synthetic import write_dataset

    text = write_dataset(tmp_path / "text", 8, seed=5, levels=(1, 2), modality="text", prefix="train")
    caption = write_dataset(tmp_path / "caption", 8, seed=6, levels=(1, 2), modality="caption", prefix="train")
    common = ["runtime.progress=false", "runtime.report_to=none", "data.prompt=msrl", "data.eval=[]",
              "rl.algorithm=grpo", "rl.max_steps=1", "rl.rollout_batch_size=4", "rl.n_samples_per_prompt=2",
              "rl.train_batch_size=8", "rl.micro_batch_size=4", "rl.max_new_tokens=12", "rl.lr=1e-3",
              "rl.clip_eps_high=0.28", "rl.eval_every_steps=0", "rl.both_orders=false",
              "model.freeze_vision_tower=true", "model.freeze_projector=true",
              # an untrained model earns no reward variance (zero advantages): a k1 KL term in the
              # loss still gives the language model a gradient, so the freeze is really exercised
              "rl.kl_coef=0.1", "rl.kl_estimator=k1", "rl.kl_in=loss"]
    s1, s2 = tmp_path / "stage1", tmp_path / "stage2"
    proc = cli("rl", "--recipe", "recipes/tiny/rl.yaml", f"model.path={tiny}", f"data.train=[{text}]",
               f"output_dir={s1}", *common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = cli("rl", "--recipe", "recipes/tiny/rl.yaml", f"model.path={s1 / 'model'}", f"data.train=[{caption}]",
               f"output_dir={s2}", *common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reward_type" in rows(s1)[-1] and "reward_type" in rows(s2)[-1]
    w0, w1, w2 = (load_file(p / "model.safetensors") for p in (tiny, s1 / "model", s2 / "model"))
    vis = [k for k in w0 if k.startswith("visual.")]
    assert vis and all(torch.equal(w0[k], w1[k]) and torch.equal(w0[k], w2[k]) for k in vis)
    lm = [k for k in w0 if not k.startswith("visual.")]
    assert any(not torch.equal(w0[k], w1[k]) for k in lm)  # stage 1 trained the language model
    assert any(not torch.equal(w1[k], w2[k]) for k in lm)  # stage 2 went on from stage 1's weights


def test_response_mask_matches_the_forward_pass_mask(tiny):
    import torch

    from r1rm.models.loading import load_model, load_processor
    from r1rm.runtime.rollout import build_sequence, response_mask, token_logprobs

    processor = load_processor(tiny, min_pixels=3136, max_pixels=12544)
    model = load_model(tiny, dtype="float32", device="cpu")
    tok = processor.tokenizer
    seqs = []
    for text, resp in (("short", [5, 6]), ("a much longer prompt than the other one", [7, 8, 9, 10])):
        enc = dict(processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": text}]}],
                                                 add_generation_prompt=True, tokenize=True, return_dict=True,
                                                 return_tensors="pt"))
        seqs.append(build_sequence(enc, resp))
    with torch.no_grad():
        _, mask, _ = token_logprobs(model, seqs, pad_id=tok.pad_token_id, device="cpu")
    assert torch.equal(response_mask(seqs), mask)
    assert response_mask(seqs).sum(dim=1).tolist() == [2.0, 4.0]


def test_kl_in_reward_with_one_update_per_rollout_uses_real_old_logprobs(cli, tiny, data, tmp_path):
    """One update per rollout skips the old-log-prob pass only without a KL term: at step 1 the
    policy is the reference, so the k1 KL must be 0, not −mean(ref log-prob)."""
    out = tmp_path / "kl1"
    proc = cli(*args(tiny, data, out, "rl.kl_coef=0.05", "rl.kl_estimator=k1", "rl.kl_in=reward",
                     "rl.train_batch_size=16", "rl.max_steps=1"))  # 4 items x 2 orders x n 2 = 16: one update
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert abs(rows(out)[-1]["kl_ref"]) < 1e-4


def test_keep_best_saves_the_best_periodic_eval_policy(cli, tiny, data, tmp_path):
    """rl.keep_best: out/best is the policy of the first step with the highest periodic-eval score,
    equal to that step's checkpoint, and named in best.json and summary.json."""
    from safetensors.torch import load_file

    out = tmp_path / "best"
    proc = cli(*args(tiny, data, out, "rl.max_steps=3", "rl.eval_every_steps=1", "rl.keep_best=true",
                     "rl.best_metric=both_orders_mean", "rl.keep_last=5"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    evals = [(x["step"], x["eval/both_orders_mean"]) for x in rows(out)]
    assert [s for s, _ in evals] == [1, 2, 3]
    top = max(v for _, v in evals)
    want = next(s for s, v in evals if v == top)  # ties keep the earlier step
    record = json.loads((out / "best" / "best.json").read_text())
    assert record == {"step": want, "metric": "both_orders_mean", "value": top}
    assert json.loads((out / "summary.json").read_text())["best"] == record
    best = load_file(out / "best" / "model.safetensors")
    ckpt = load_file(out / "checkpoints" / f"step-{want:07d}" / "model.safetensors")
    assert best.keys() == ckpt.keys() and all(best[k].equal(ckpt[k]) for k in best)
    assert not any(p.name.startswith((".tmp-best", ".del-best")) for p in out.iterdir())
    # without the periodic eval there is nothing to choose by: a clear error before anything is written
    proc = cli(*args(tiny, data, tmp_path / "nobest", "rl.keep_best=true"))
    assert proc.returncode == 2 and "rl.keep_best needs the periodic eval" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "nobest").exists()


def test_stale_rollouts_start_off_policy_and_resume_exactly(cli, tiny, data, tmp_path):
    """rl.stress.rollout_lag=1 (a rollout engine one step behind): with one update per rollout,
    step 1 samples with the start weights, so its ratios are 1; step 2 samples with, and takes its
    old log-probs from, the weights before step 1's update, so its ratios start away from 1 (an
    on-policy run with the same settings stays at 1). A run resumed from its step-2 checkpoint
    continues with the same stale weights — the uninterrupted run's rewards, lengths and losses —
    and a checkpoint without them is refused with exit 2."""
    import shutil

    # one update per rollout (4 items x 2 orders x n 2); the untrained model earns no reward, so a
    # k1 KL loss term supplies the gradient that moves the weights
    one_update = ["rl.train_batch_size=16", "rl.max_steps=3", "rl.lr=1e-3", "rl.keep_last=3", "rl.kl_coef=0.1",
                  "rl.kl_in=loss"]
    on, lag = tmp_path / "on", tmp_path / "lag"
    for out, extra in ((on, []), (lag, ["rl.stress.rollout_lag=1"])):
        proc = cli(*args(tiny, data, out, *one_update, *extra))
        assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = rows(on), rows(lag)
    assert all(x["ratio_max"] == pytest.approx(1.0, abs=1e-4) for x in a)  # fresh old log-probs each step
    assert b[0]["reward"] == a[0]["reward"] and b[0]["ratio_max"] == pytest.approx(1.0, abs=1e-4)
    assert b[1]["ratio_max"] > 1.01 and b[1]["approx_kl"] != 0.0
    assert [p.name for p in (lag / "checkpoints").iterdir() if p.name.startswith("step-")] and all(
        (p / "extra_state.pt").is_file() for p in (lag / "checkpoints").glob("step-*"))

    resumed = tmp_path / "resumed"
    shutil.copytree(lag, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-0000003")
    for name in ("model", "summary.json"):
        shutil.rmtree(resumed / name) if (resumed / name).is_dir() else (resumed / name).unlink()
    proc = cli(*args(tiny, data, resumed, *one_update, "rl.stress.rollout_lag=1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    c = rows(resumed)
    assert [x["step"] for x in c] == [1, 2, 3]
    for x, y in zip(b, c, strict=True):
        assert (x["reward"], x["response_length"]) == (y["reward"], y["response_length"]), x["step"]
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-6) and x["ratio_max"] == pytest.approx(y["ratio_max"], rel=1e-6)

    shutil.rmtree(resumed / "checkpoints" / "step-0000003")
    (resumed / "checkpoints" / "step-0000002" / "extra_state.pt").unlink()
    proc = cli(*args(tiny, data, resumed, *one_update, "rl.stress.rollout_lag=1"))
    assert proc.returncode == 2 and "no rollout-lag weights" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli(*args(tiny, data, tmp_path / "ds", *one_update, "rl.stress.rollout_lag=1",
                     "runtime.deepspeed=recipes/deepspeed/zero2.json"))
    assert proc.returncode == 2 and "rl.stress.rollout_lag" in proc.stderr and "Traceback" not in proc.stderr


def test_stress_faults_reach_the_loss_and_the_metrics_stay_true(cli, tiny, data, tmp_path):
    """rl.stress.logprob_mismatch: with one update per rollout the old log-probs are the update
    pass's own (ratio exactly 1, the lag test's on-policy run), so every ratio past 10^3 here comes
    from the injected engine/trainer gaps (±12 nats), and Pre-CLIP reports binding on those tokens
    alone. rl.stress.reward_outliers: the replaced samples' advantages are what the filter drops,
    while the logged reward stays the true one (the untrained model earns 0, never -10)."""
    out = tmp_path / "faults"
    proc = cli(*args(tiny, data, out, "rl.train_batch_size=16", "rl.max_steps=2", "rl.stress.logprob_mismatch=0.2",
                     "rl.stress.reward_outliers=0.1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = rows(out)
    assert all(x["ratio_max"] == pytest.approx(math.exp(12.0), rel=1e-3) for x in r)
    assert all(x["ratio_min"] == pytest.approx(math.exp(-12.0), rel=1e-3) for x in r)
    assert all(0 < x["preclip_high_frac"] < 0.2 and 0 < x["preclip_low_frac"] < 0.2 for x in r)
    assert all(x["reward"] >= 0 for x in r)
    assert json.loads((out / "summary.json").read_text())["stress_reward_outliers"] == r[-1]["stress_reward_outliers"] > 0
    assert sum(x["adv_filtered"] for x in r) > 0


def test_order_consistency_reward_is_added_and_needs_both_orders(cli, tiny, data, tmp_path):
    """rl.order_consistency_weight: with both orders rolled out, each sample's total gains w × its
    agreement with the other order (reward_order_agreement). The untrained model is wrong in both
    orders everywhere, so it agrees with itself: the total is 0.5 × format + w × agreement exactly;
    without rl.both_orders the option is refused before anything is written."""
    out = tmp_path / "oc"
    proc = cli(*args(tiny, data, out, "rl.both_orders=true", "rl.order_consistency_weight=0.5"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    logged = rows(out)
    assert len(logged) == 2
    for r in logged:
        assert r["accuracy"] == 0 and r["reward_order_agreement"] == pytest.approx(1.0)
        assert r["reward"] == pytest.approx(0.5 * r["reward_format"] + 0.5 * r["reward_order_agreement"], abs=1e-6)
    proc = cli(*args(tiny, data, tmp_path / "one", "rl.both_orders=false", "rl.order_consistency_weight=0.5"))
    assert proc.returncode == 2 and "rl.both_orders=true" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "one").exists()
