"""`r1rm rl` under DeepSpeed ZeRO-2 and ZeRO-3 on 2 CPU processes (gloo, hf rollouts), against the
same run under DDP: the same seed, data and settings, three rollout steps each.

The policy is the tiny model after 80 SFT steps on short traces (`<think>A red circle. So Response 2
is correct.</think><answer>2</answer>`, ~18 tokens): it writes the format within max_new_tokens=24
and gets about half the answers right, so the very first rollout already has rewards that differ
between samples, non-zero advantages and gradients (the untrained model earns 0 everywhere).
Every run has a KL term (a reference model, partitioned under ZeRO-3) and a held-out eval with
rl.keep_best at its last step, on 3 items split 2 / 1 over the processes.

Measured on 2026-12-06, this 2-core x86_64 CPU (torch 2.14.1, deepspeed 0.19.8), ZeRO-2 and ZeRO-3
against DDP, with seeds 0, 1 and 2 (seed 0 runs here):
- step 1: rewards, their components, response lengths and the advantages (`adv_abs_mean`, mean
  |Â| over valid tokens) identical; the rewards and lengths of steps 2 and 3 too (the same tokens
  are sampled: the updated weights differ by ~1e-7, far too little to flip a sampled token here; a
  flipped token would show as a different reward and fail this test). adv_abs_mean after step 1:
  at most 5.9e-8 relative.
- the float metrics move with reduction order and ZeRO-3's partitioned matmuls: at most 4.8e-5
  relative to their size (values above 1e-3; loss, grad norm, entropy, KL, approx KL, ratios) and
  1.8e-6 absolute for values under 1 (1.1e-5 for a grad norm of ~15, 7.5e-7 relative); the final
  weights by at most 2.6e-7 (ZeRO-3) and 5.7e-8 (ZeRO-2), against a move from the start of 3.4e-4.
  The tolerances are 10x those: |a − b| ≤ REL·max(|a|, |b|) + ABS with REL = 5e-4, ABS = 2e-5,
  and WEIGHTS_ATOL = 3e-6.
- a ZeRO-3 run SIGKILLed (the whole process group) after its first checkpoint and rerun logs steps
  1..3 once each with exactly the unkilled run's metrics and ends with its weights (difference 0).
"""

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STEPS = 3
REL, ABS = 5e-4, 2e-5
WEIGHTS_ATOL = 3e-6
# outcomes of the sampled tokens: equal in every step while the samples are
EXACT = ("reward", "reward_format", "reward_result", "reward_consistency", "accuracy", "parse_fail_rate",
         "response_length", "rollout_samples", "label1_share", "adv_filtered")
# floats that reduction order moves
CLOSE = ("adv_abs_mean", "loss", "grad_norm", "grad_norm_max", "entropy", "kl_ref", "approx_kl", "clip_frac",
         "ratio_max", "ratio_min", "loss_token_max", "lr")


@pytest.fixture(scope="module")
def policy(tmp_path_factory, tiny) -> Path:
    """The tiny model after 80 SFT steps on short traces (a policy whose rewards vary from step 1)."""
    from r1rm.data.synthetic import write_dataset

    d = tmp_path_factory.mktemp("policy")
    train = write_dataset(d / "sft", 64, seed=3, levels=(1,), modality="image", prefix="train")
    rows = [json.loads(x) for x in train.read_text().splitlines()]
    for r in rows:
        r["meta"]["trace"] = f"<think>{r['caption']} So Response {r['label']} is correct.</think><answer>{r['label']}</answer>"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = subprocess.run([sys.executable, "-m", "r1rm.cli", "sft", "--recipe", "recipes/tiny/sft.yaml",
                           f"model.path={tiny}", f"data.train=[{train}]", f"output_dir={d / 'out'}",
                           "runtime.progress=false", "runtime.report_to=none", "sft.max_steps=80",
                           "sft.save_every_steps=1000"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d / "out" / "model"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from r1rm.data.synthetic import write_dataset

    d = tmp_path_factory.mktemp("data")
    return (write_dataset(d, 16, seed=3, levels=(1,), modality="image", prefix="train"),
            write_dataset(d, 4, seed=4, levels=(1,), modality="image", prefix="heldout"))


def command(policy, data, out, stage: str | None, *extra: str) -> list[str]:
    """torchrun of 2 processes; stage None: DDP, else recipes/deepspeed/<stage>.json."""
    train, held = data
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "r1rm.cli",
            "rl", "--recipe", "recipes/tiny/rl.yaml", f"model.path={policy}", f"data.train=[{train}]",
            f"data.eval=[{held}]", f"output_dir={out}", "runtime.progress=false", "runtime.report_to=none",
            f"rl.max_steps={STEPS}", "rl.rollout_batch_size=4", "rl.n_samples_per_prompt=2", "rl.train_batch_size=4",
            "rl.micro_batch_size=2", "rl.max_new_tokens=24", "rl.save_every_steps=1", "rl.kl_coef=0.05",
            f"rl.eval_every_steps={STEPS}", "rl.eval_limit=3", "rl.keep_best=true",
            # the full-sequence update forward in every run (DeepSpeed never takes the grouped one)
            "rl.share_prompt_forward=false",
            *([f"runtime.deepspeed=recipes/deepspeed/{stage}.json"] if stage else []), *extra]


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def launch(policy, data, out, stage: str | None, *extra: str) -> None:
    proc = subprocess.run(command(policy, data, out, stage, *extra), cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, policy, data) -> dict[str, Path]:
    """The same RL run under DDP, ZeRO-2 and ZeRO-3 (2 processes each)."""
    root = tmp_path_factory.mktemp("runs")
    for stage in ("ddp", "zero2", "zero3"):
        launch(policy, data, root / stage, None if stage == "ddp" else stage)
    return {stage: root / stage for stage in ("ddp", "zero2", "zero3")}


def rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def close(a, b) -> bool:
    return abs(a - b) <= REL * max(abs(a), abs(b)) + ABS


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def max_gap(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_zero_rl_matches_the_ddp_run(runs, stage):
    """Finite metrics; step 1's rewards and advantages identical to DDP's; later steps' sampled
    outcomes identical and their floats within REL; the grad norm the engine measured reported."""
    ddp, zero = rows(runs["ddp"]), rows(runs[stage])
    assert [r["step"] for r in zero] == list(range(1, STEPS + 1)) == [r["step"] for r in ddp]
    for r in zero:
        for k in (*EXACT, *CLOSE):
            assert isinstance(r[k], int | float) and math.isfinite(r[k]), (stage, r["step"], k, r[k])
    first_d, first_z = ddp[0], zero[0]
    assert first_z["reward"] > 0 and first_z["adv_abs_mean"] > 0.1  # rewards vary from the first rollout
    assert first_z["adv_abs_mean"] == first_d["adv_abs_mean"]
    for d, z in zip(ddp, zero, strict=True):
        for k in EXACT:
            assert z[k] == d[k], (stage, z["step"], k, z[k], d[k])
        for k in CLOSE:
            assert close(z[k], d[k]), (stage, z["step"], k, z[k], d[k])
        assert z["grad_norm"] > 0 and z["kl_ref"] is not None
    assert zero[-1]["kl_ref"] > 0  # the reference model scored the rollouts (partitioned under ZeRO-3)
    assert zero[-1]["eval/both_orders_mean"] == ddp[-1]["eval/both_orders_mean"]
    s = json.loads((runs[stage] / "summary.json").read_text())
    assert s["processes"] == 2 and s["steps"] == STEPS and s["best"]["step"] == STEPS


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_zero_rl_changes_the_weights_and_saves_them_as_loaded(runs, policy, stage):
    """The final model moved from the start (by far more than it differs from DDP's) and is
    saved under the start model's tensor names — ZeRO-3's load used to write `model.model.*`
    keys — in model/, best/ and every checkpoint."""
    start, ddp = weights(policy), weights(runs["ddp"] / "model")
    out = runs[stage]
    final = weights(out / "model")
    assert set(final) == set(start)
    moved = max_gap(final, start)
    assert moved > 1e-4, moved  # 3.4e-4 measured
    assert max_gap(final, ddp) <= WEIGHTS_ATOL
    for folder in [out / "best", *sorted((out / "checkpoints").iterdir())]:
        assert set(weights(folder)) == set(start), folder
    assert max_gap(weights(out / "checkpoints" / f"step-{STEPS:07d}"), final) == 0


def kill_tree(pid: int) -> None:
    """SIGKILL a launcher and every process under it at once, as a lost node would (torchrun starts
    each rank in a session of its own: killing the launcher's group leaves the ranks running)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=60)


def kill_after_first_checkpoint(cmd: list[str], out: Path, *, attempt: int) -> str:
    """Start `cmd`; once checkpoint 1 is complete, wait a replayable random delay and SIGKILL the
    launcher and both ranks; describe what the run left."""
    from killing import KILL_SEED, kill_rng, training_state

    delay = kill_rng("rl-zero3", attempt).uniform(0.0, 3.0)  # two steps and saves are left: ~10 s here
    first = out / "checkpoints" / "step-0000001" / "trainer_state.json"
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 600
            while proc.poll() is None and not first.is_file():
                assert time.monotonic() < deadline, "checkpoint 1 never appeared"
                time.sleep(0.01)
            until = time.monotonic() + delay
            while proc.poll() is None and time.monotonic() < until:
                time.sleep(0.01)
            killed = proc.poll() is None
            kill_tree(proc.pid)
            rc = proc.wait(timeout=60)
        finally:
            kill_tree(proc.pid)
        err.seek(0)
        tail = err.read()[-2000:]
    assert killed, f"the run ended before the kill (rc {rc}): nothing to resume\n{tail}"
    return f"kill rl-zero3#{attempt} (R1RM_KILL_SEED={KILL_SEED}): {delay:.2f}s after checkpoint 1; left {training_state(out)}"


def test_zero3_resume_after_sigkill_loses_and_repeats_no_step(runs, policy, data, tmp_path):
    from killing import assert_checkpoints_complete, complete_rows

    full, killed = runs["zero3"], tmp_path / "killed"
    why = kill_after_first_checkpoint(command(policy, data, killed, "zero3"), killed, attempt=0)
    print(why)
    assert len(complete_rows(killed)) <= STEPS, why
    assert_checkpoints_complete(killed, full / "checkpoints" / f"step-{STEPS:07d}", why, mid_run=True)
    launch(policy, data, killed, "zero3")
    a, b = rows(full), rows(killed)
    assert [r["step"] for r in b] == list(range(1, STEPS + 1)), why
    timing = ("time_", "step_time_s")
    for x, y in zip(a, b, strict=True):
        assert {k: v for k, v in x.items() if not k.startswith(timing)} == \
               {k: v for k, v in y.items() if not k.startswith(timing)}, (x["step"], why)
    assert max_gap(weights(full / "model"), weights(killed / "model")) == 0, why
    assert json.loads((killed / "summary.json").read_text()) == json.loads((full / "summary.json").read_text()), why


def test_zero3_lora_saves_the_whole_merged_weights(policy, data, tmp_path):
    """LoRA under ZeRO-3: model/, best/ and the checkpoint hold every weight at its full shape, and
    model/ is exactly peft's merge of the saved adapter onto the start model (only the language
    model's projections moved). The partitioned embedding and lm_head used to be written as empty
    (0,) tensors, read off the live shards. The rollout samples n=2 per prompt with the prompt
    prefilled once through the LoRA wrapper (that used to fail: rope deltas not repeated)."""
    import torch
    from peft import PeftModel

    from r1rm.models.loading import load_model

    out = tmp_path / "zero3"
    launch(policy, data, out, "zero3", "model.lora.r=4", "model.lora.alpha=8", "rl.max_steps=1",
           "rl.eval_every_steps=1")
    start, final = weights(policy), weights(out / "model")
    shapes = {k: v.shape for k, v in start.items()}
    for folder in (out / "model", out / "best", out / "checkpoints" / "step-0000001"):
        assert {k: v.shape for k, v in weights(folder).items()} == shapes, folder
    moved = [k for k in start if not torch.equal(final[k], start[k])]
    assert moved and all(k.endswith("proj.weight") and not k.startswith("visual.") for k in moved)
    theirs = PeftModel.from_pretrained(load_model(str(policy), dtype="float32", device="cpu"),
                                       out / "model" / "adapter").merge_and_unload().state_dict()
    mine = load_model(str(out / "model"), dtype="float32", device="cpu").state_dict()
    assert set(mine) == set(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_grouped_forward_through_a_lora_wrapper_takes_the_right_positions(tiny):
    """rl's grouped update forward on a peft LoRA model equals the full forward (it read the rope
    deltas off the wrapper, found none, and placed image prompts' responses 4e-3 off in log-prob)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from r1rm.data.synthetic import make_examples, render_image
    from r1rm.models.loading import load_model, load_processor
    from r1rm.runtime.rollout import build_sequence, encode_prompt, grouped_token_logprobs, token_logprobs

    processor = load_processor(str(tiny), min_pixels=3136, max_pixels=12544)
    model = get_peft_model(load_model(str(tiny), dtype="float32", device="cpu"),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    ex = make_examples(1, seed=1, levels=(1,), modality="image")[0]
    enc = encode_prompt(processor, [{"role": "user", "content": [{"type": "image", "image": render_image(ex.scene, 112)},
                                                                 {"type": "text", "text": ex.question}]}])
    g = torch.Generator().manual_seed(0)
    group = [build_sequence(enc, torch.randint(20, 800, (n,), generator=g).tolist()) for n in (4, 7)]
    pad = processor.tokenizer.pad_token_id
    with torch.no_grad():
        full, mask, _ = token_logprobs(model, group, pad_id=pad, device="cpu")
        grouped, mask_g, _ = grouped_token_logprobs(model, [group], pad_id=pad, device="cpu")
    assert torch.equal(mask, mask_g)
    assert float((full - grouped).abs().max()) < 1e-5  # 4.8e-7 measured (2026-12-06)
