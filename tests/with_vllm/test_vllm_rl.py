"""RL rollouts on vLLM's CPU build (`rl.rollout_engine=vllm`): the weight push, its per-token check,
sleep / wake around the update, resume after SIGKILL, rollout token ids, one engine per process.

Tolerance: the probe's largest per-token |trainer − engine| log-prob gap after a full push was
4.8e-7 (float32 both sides, tiny 4-head model, 2026-12-06, the 2-core x86_64 CPU); the tests allow
TOL = 1e-4. A push that skips one decoder layer after the weights moved leaves ~0.36.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
SPY = Path(__file__).with_name("rl_spy.py")
TOL = 1e-4


# ---------------------------------------------------------------- an engine and a trainer model in this process
@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """`r1rm synth`: 8 training pairs (the colour task, 112 px images)."""
    out = tmp_path_factory.mktemp("synth")
    proc = subprocess.run([sys.executable, "-m", "r1rm.cli", "synth", "--recipe", "recipes/tiny/synth.yaml",
                           f"output_dir={out}", "data.synthetic.n=8", "data.synthetic.n_eval=2",
                           "data.synthetic.levels=[1]"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def rig(tiny4, data):
    """A colocated VLLMEngine on the tiny model, the same model as the trainer holds it (float32), its
    processor, and the weight-sync probe made from the first training pair."""
    import torch

    from r1rm.data.chat import record_messages
    from r1rm.data.media import MediaBudget
    from r1rm.data.training_sets import read_items
    from r1rm.engines.vllm import VLLMEngine
    from r1rm.models.loading import load_model, load_processor
    from r1rm.runtime.weight_sync import make_probe

    processor = load_processor(str(tiny4), min_pixels=None, max_pixels=None)
    tok = processor.tokenizer
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    it = read_items([str(data / "train.jsonl")], image_root=None, target_field=None)[0]
    msgs = record_messages(it.rec, prompt="r1reward", image_root=it.root)
    probe = make_probe(processor, msgs, media=MediaBudget(), eos_id=eos)
    assert probe.images and len(probe.ids) - probe.start > 20  # an image prompt, a response of 20+ tokens
    engine = VLLMEngine(str(tiny4), dtype="float32", seed=0, colocated=True)
    model = load_model(str(tiny4), dtype="float32", device="cpu").eval()
    acc = SimpleNamespace(unwrap_model=lambda m: m, state=SimpleNamespace(deepspeed_plugin=None),
                          device=torch.device("cpu"))  # one process, no DeepSpeed: what accel needs of it
    yield SimpleNamespace(engine=engine, model=model, processor=processor, tok=tok, eos=eos, probe=probe, acc=acc,
                          msgs=msgs)
    engine.close()


def _move(model, seed: int, scale: float = 0.02) -> None:
    """Every trainer weight moved by N(0, scale²) noise (a large update)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def test_push_then_probe_matches_and_a_partial_push_is_caught(rig):
    from r1rm.runtime.weight_sync import StaleWeightsError, check_engine, push_and_check, trainer_weights

    pad = rig.tok.pad_token_id
    r = push_and_check(rig.engine, rig.acc, rig.model, rig.probe, pad_id=pad, tol=TOL)
    assert r["gap"] <= TOL and r["tensors"] == len(list(rig.model.parameters()))
    _move(rig.model, seed=1)
    with pytest.raises(StaleWeightsError, match="up to"):  # no push at all: the engine still holds the old weights
        check_engine(rig.engine, rig.acc, rig.model, rig.probe, pad_id=pad, tol=TOL)
    r = push_and_check(rig.engine, rig.acc, rig.model, rig.probe, pad_id=pad, tol=TOL)
    assert r["gap"] <= TOL
    for skipped in ("language_model.layers.3.", "lm_head.", "visual."):
        _move(rig.model, seed=zlib.crc32(skipped.encode()) % 1000)  # the same move every run
        part = [(n, w) for n, w in trainer_weights(rig.acc, rig.model) if skipped not in n]
        assert 0 < len(part) < r["tensors"]
        rig.engine.load_weights(part)
        with pytest.raises(StaleWeightsError):
            check_engine(rig.engine, rig.acc, rig.model, rig.probe, pad_id=pad, tol=TOL)
    assert push_and_check(rig.engine, rig.acc, rig.model, rig.probe, pad_id=pad, tol=TOL)["gap"] <= TOL


def test_lora_layers_reach_the_engine_merged_under_base_names(rig):
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    from r1rm.runtime.weight_sync import StaleWeightsError, check_engine, hf_name, push_and_check, trainer_weights

    lora = get_peft_model(copy.deepcopy(rig.model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # peft starts B at zero (no change): give the adapters an effect
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    names = [n for n, _ in trainer_weights(rig.acc, lora)]
    assert names == [n for n, _ in trainer_weights(rig.acc, rig.model)]  # base names, no adapter tensors
    assert hf_name("base_model.model.model.language_model.layers.0.self_attn.q_proj.base_layer.weight") == \
        "model.language_model.layers.0.self_attn.q_proj.weight"
    pad = rig.tok.pad_token_id
    push_and_check(rig.engine, rig.acc, rig.model, rig.probe, pad_id=pad, tol=TOL)
    with pytest.raises(StaleWeightsError):  # the adapters change the policy
        check_engine(rig.engine, rig.acc, lora, rig.probe, pad_id=pad, tol=TOL)
    assert push_and_check(rig.engine, rig.acc, lora, rig.probe, pad_id=pad, tol=TOL)["gap"] <= TOL
    push_and_check(rig.engine, rig.acc, rig.model, rig.probe, pad_id=pad, tol=TOL)  # back to the plain model


def test_rollout_token_ids_end_as_the_hf_engines(rig):
    """Greedy rollouts of both engines become the same training sequences, ending with EOS once (vLLM's
    token ids hold the EOS that stopped them; the hf engine's do not)."""
    import torch

    from r1rm.commands.rl import Sampler, _sequence
    from r1rm.engines.base import Request, SamplingParams
    from r1rm.engines.hf import HFEngine
    from r1rm.runtime.rollout import encode_prompt
    from r1rm.runtime.weight_sync import push_and_check

    greedy = SamplingParams(max_new_tokens=24, temperature=0.0)
    hf = HFEngine(rig.model, rig.processor)
    texts = ["Which colour is the sky?", "Name a shape.", "Say one word."]
    requests = [Request([{"role": "user", "content": [{"type": "text", "text": x}]}]) for x in texts]
    first = [s[0].token_ids for s in hf.generate(requests, greedy)]
    # EOS takes the place of each prompt's 3rd greedy token: the row of that token, doubled, for EOS
    with torch.no_grad():
        head = rig.model.lm_head.weight
        head[rig.eos] = 2.0 * head[first[0][2]]
    push_and_check(rig.engine, rig.acc, rig.model, rig.probe, pad_id=rig.tok.pad_token_id, tol=TOL)
    sampler = Sampler(eos_id=rig.eos, vision_ids=frozenset())
    seqs = {}
    for name, engine in (("hf", hf), ("vllm", rig.engine)):
        samples = [s[0] for s in engine.generate(requests, greedy)]
        encs = [encode_prompt(rig.processor, r.messages) for r in requests]
        seqs[name] = [(s.finished, _sequence(e, s, sampler, {}).inputs["input_ids"][0].tolist())
                      for e, s in zip(encs, samples, strict=True)]
    assert seqs["vllm"] == seqs["hf"]
    assert any(done for done, _ in seqs["vllm"])  # some rollouts ended on EOS
    for done, ids in seqs["vllm"]:
        assert (ids[-1] == rig.eos) == done and ids[-2] != rig.eos  # EOS once, only when the rollout ended there


# ---------------------------------------------------------------- `r1rm rl rl.rollout_engine=vllm`
def rl_args(tiny4, data, out, *extra) -> list[str]:
    # reward outliers give the untrained model's all-zero rewards a spread, so the weights move
    return ["rl", "--recipe", "recipes/tiny/rl.yaml", f"model.path={tiny4}", f"data.train=[{data / 'train.jsonl'}]",
            f"data.eval=[{data / 'eval.jsonl'}]", f"output_dir={out}", "runtime.progress=false",
            "runtime.report_to=none", "rl.max_steps=3", "rl.rollout_batch_size=2", "rl.n_samples_per_prompt=2",
            "rl.train_batch_size=4", "rl.micro_batch_size=2", "rl.max_new_tokens=24", "rl.both_orders=false",
            "rl.eval_every_steps=0", "rl.save_every_steps=1", "rl.lr=1e-2", "rl.stress.reward_outliers=0.5",
            "rl.rollout_engine=vllm", f"rl.logprob_check_tol={TOL}", *extra]


def run_spied(args: list[str], events: Path, *, processes: int = 1, env: dict | None = None):
    launch = [sys.executable] if processes == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                       "--nproc_per_node", str(processes)]
    return subprocess.run([*launch, str(SPY), str(events), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def events_of(prefix: Path, rank: int = 0) -> list[dict]:
    return [json.loads(x) for x in Path(f"{prefix}.{rank}").read_text().splitlines()]


def rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def full_run(tiny4, data, tmp_path_factory):
    """The uninterrupted run (sleep level 1), with its events; the reference of the resume test."""
    d = tmp_path_factory.mktemp("rl_full")
    proc = run_spied(rl_args(tiny4, data, d / "out", "rl.vllm_sleep_level=1"), d / "events")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return SimpleNamespace(out=d / "out", events=events_of(d / "events"), stderr=proc.stderr)


def test_every_push_is_checked_and_the_engine_sleeps_through_the_update(full_run):
    r = rows(full_run.out)
    assert [x["step"] for x in r] == [1, 2, 3]
    assert r[0]["weight_sync_gap_start"] <= TOL and "weight_sync_gap_start" not in r[1]
    assert all(x["weight_sync_gap"] <= TOL for x in r)  # after every push, per-token, within TOL
    assert max(x["grad_norm"] for x in r) > 0  # the outlier rewards give updates: the pushes carry new weights
    kinds = [e["event"] for e in full_run.events]
    # the push before the first rollout, then per step: rollout, sleep, update, wake, push, probe
    step = ["generate", "sleep", "_update", "wake_up", "load_weights", "prompt_logprobs"]
    assert kinds == ["load_weights", "prompt_logprobs"] + step * 3, kinds
    assert {e["level"] for e in full_run.events if e["event"] == "sleep"} == {1}
    n_params = full_run.events[0]["tensors"]
    assert n_params > 50 and all(e["tensors"] == n_params for e in full_run.events if e["event"] == "load_weights")


def _kill_after_first_checkpoint(tiny4, data, out: Path):
    from killing import kill_rng, run_and_kill, training_state

    first = out / "checkpoints" / "step-0000001"
    return run_and_kill(rl_args(tiny4, data, out), label="rl-vllm", attempt=0, trigger=first.is_dir,
                        delay_s=kill_rng("rl-vllm").uniform(0.0, 0.5), left=lambda: training_state(out))


def test_resume_after_sigkill_pushes_the_checkpoint_weights_first(tiny4, data, tmp_path, full_run):
    """Killed once a checkpoint is on disk, then resumed: the engine gets the checkpoint's weights
    before the first rollout, so every step after the resume samples what the uninterrupted run
    sampled (same rewards, lengths and losses). Without that push (R1RM_SPY_SKIP_START_PUSH=1, the
    old code) the first resumed rollout comes from the engine's initial weights and differs."""
    out = tmp_path / "out"
    kill = _kill_after_first_checkpoint(tiny4, data, out)
    assert kill.killed or kill.returncode == 0, f"{kill}\n{kill.stderr_tail}"
    proc = run_spied(rl_args(tiny4, data, out), tmp_path / "events")
    assert proc.returncode == 0, f"{kill}\n{proc.stderr[-4000:]}"
    # the resumed run's rollouts, token for token, are the uninterrupted run's of the same steps
    ev = events_of(tmp_path / "events")
    done = [e["tokens"] for e in full_run.events if e["event"] == "generate"]
    again = [e["tokens"] for e in ev if e["event"] == "generate"]
    assert 0 < len(again) < len(done) and again == done[len(done) - len(again):], kill
    assert [e["event"] for e in ev[:3]] == ["load_weights", "prompt_logprobs", "generate"]
    a, b = rows(full_run.out), rows(out)
    assert [x["step"] for x in b] == [1, 2, 3], kill
    for x, y in zip(a, b, strict=True):
        assert (x["reward"], x["response_length"]) == (y["reward"], y["response_length"]), (x["step"], kill)
        assert x["entropy"] == pytest.approx(y["entropy"], abs=1e-5), (x["step"], kill)  # of the sampled tokens
    resumed = [x for x in b if "weight_sync_gap_start" in x]
    assert len(resumed) == 2 and resumed[-1]["step"] >= 2, kill  # the first run's start, then the resumed one's
    assert resumed[-1]["weight_sync_gap_start"] <= TOL


def test_resume_without_the_start_push_samples_from_stale_weights(tiny4, data, tmp_path, full_run):
    """The control of the test above: the same kill and resume with the push before the first rollout
    skipped (R1RM_SPY_SKIP_START_PUSH=1, the old code) samples from the engine's initial weights, so
    the resumed rollouts are not the uninterrupted run's: the check above can fail."""
    out = tmp_path / "out"
    kill = _kill_after_first_checkpoint(tiny4, data, out)
    assert kill.killed or kill.returncode == 0, f"{kill}\n{kill.stderr_tail}"
    proc = run_spied(rl_args(tiny4, data, out), tmp_path / "events", env={"R1RM_SPY_SKIP_START_PUSH": "1"})
    assert proc.returncode == 0, f"{kill}\n{proc.stderr[-4000:]}"
    done = [e["tokens"] for e in full_run.events if e["event"] == "generate"]
    again = [e["tokens"] for e in events_of(tmp_path / "events") if e["event"] == "generate"]
    assert 0 < len(again) < len(done) and again != done[len(done) - len(again):], kill


def test_two_processes_each_push_into_and_sample_from_their_own_engine(tiny4, data, tmp_path):
    """Two training processes, one colocated engine each (vLLM's CPU build holds both): each pushes
    the full weights into its engine and samples its half of every rollout batch. rl.vllm_sleep_level=0:
    no sleep, no wake."""
    out = tmp_path / "out"
    proc = run_spied(rl_args(tiny4, data, out, "rl.max_steps=1", "rl.vllm_sleep_level=0"), tmp_path / "events",
                     processes=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2
    (row,) = rows(out)
    assert row["weight_sync_gap_start"] <= TOL and row["weight_sync_gap"] <= TOL
    assert row["rollout_samples"] == 4  # 2 prompts x 2 samples, one prompt per process
    for rank in (0, 1):
        ev = events_of(tmp_path / "events", rank)
        assert [e["event"] for e in ev] == ["load_weights", "prompt_logprobs", "generate", "_update", "load_weights",
                                             "prompt_logprobs"]
        assert [e["requests"] for e in ev if e["event"] == "generate"] == [1]
        assert ev[0]["tensors"] == ev[-2]["tensors"] > 50
