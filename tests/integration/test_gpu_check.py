"""bench/gpu_check.py: the GPU benchmark script runs end to end on CPU (tiny preset) and reports
finite numbers from r1rm's own metrics; its mid preset is the size it claims; MFU arithmetic."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.py"

torch = pytest.importorskip("torch")


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def gc():
    return _load_script()


def _run(out: Path, *args: str, timeout_s: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "COLUMNS": "200", "NO_COLOR": "1"}
    # one intra-op thread: on a busy 2-core machine OpenMP spinning made the tiny steps ~10x slower
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout_s)


def _positive(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def test_tiny_preset_on_cpu(tmp_path, gc):
    out = tmp_path / "out"
    proc = _run(out, "--preset", "tiny", "--device", "cpu", "--sft-steps", "3", "--rl-steps", "2", "--eval-pairs", "4",
                "--work", str(tmp_path / "work"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())

    for key in ("date", "device", "device_name", "dtype", "preset", "versions", "params", "model_size", "config",
                "sft", "rl", "eval", "mfu", "failed_stages", "wall_s"):
        assert key in res, key
    assert res["device"] == "cpu" and res["preset"] == "tiny" and res["dtype"] == "float32"
    assert res["failed_stages"] == []
    assert res["versions"]["torch"] == torch.__version__

    # the model that was built has the parameters the meta-device count of its preset says
    assert res["params"] == gc.preset_param_counts("tiny")
    assert 500_000 < res["params"]["total"] < 3_000_000

    sft = res["sft"]
    assert sft["steps"] == 3 and sft["losses_finite"] and sft["skipped_updates"] == 0
    for key in ("tokens_per_s", "tokens_per_s_wall", "step_time_s", "samples_per_s", "mean_seq_len", "first_step_time_s"):
        assert _positive(sft[key]), (key, sft[key])
    assert sft["peak_memory_gb"] is None

    rl = res["rl"]
    assert rl["steps"] == 2 and rl["losses_finite"] and rl["sequences_per_step"] == 2 * 2 * 2
    for key in ("step_time_s", "generate_time_s", "train_time_s", "rollout_tokens_per_s", "sequences_per_s"):
        assert _positive(rl[key]), (key, rl[key])
    assert rl["generate_time_s"] < rl["step_time_s"]

    ev = res["eval"]
    assert ev["pairs"] == 4 and ev["requests"] == 8 and ev["complete"] is True
    assert _positive(ev["generated_tokens_per_s"]) and _positive(ev["requests_per_s"])
    assert 0 < ev["generated_tokens"] <= 8 * ev["max_new_tokens"]

    # no peak FLOP/s on CPU: the MFU is null, the FLOP count is still there
    mfu = res["mfu"]
    assert mfu["mfu"] is None and mfu["mfu_wall"] is None and mfu["peak_flops"] is None
    assert mfu["flops_per_token"] == gc.flops_per_token(
        n_params=res["params"]["language_model_non_embedding"], n_layers=4, hidden_size=128, seq_len=sft["mean_seq_len"])

    md = (out / "results.md").read_text()
    assert "| SFT tokens/s (training loop, steady) |" in md and res["date"] in md and "FAILED" not in md
    assert "| measure | value |" in proc.stdout
    for stage, name in (("sft", "metrics.jsonl"), ("rl", "metrics.jsonl"), ("eval", "metrics.json")):
        assert (out / "runs" / stage / name).is_file()


def test_mid_preset_size(gc):
    p = gc.preset_param_counts("mid")  # meta device: nothing allocated
    assert 0.3e9 <= p["total"] <= 0.5e9, p
    assert p["language_model_non_embedding"] > 0.85 * p["total"]
    assert p["total"] == p["vision"] + p["language_model"]


def test_peak_table_and_mfu_arithmetic(gc):
    assert gc.peak_flops("NVIDIA H200") == 989e12
    assert gc.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gc.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert gc.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert gc.peak_flops("NVIDIA GeForce RTX 4090") is None and gc.peak_flops(None) is None
    # 6N + 12·L·d·S by hand: N = 1e6, L = 2, d = 64, S = 100 -> 6e6 + 153,600
    assert gc.flops_per_token(n_params=1_000_000, n_layers=2, hidden_size=64, seq_len=100) == 6_153_600
    size = type("S", (), {"num_hidden_layers": 2, "hidden_size": 64})()
    block = gc.mfu_block({"tokens_per_s": 1000.0, "tokens_per_s_wall": 500.0, "mean_seq_len": 100},
                         params={"language_model_non_embedding": 1_000_000}, size=size, peak=6_153_600 * 4000.0)
    assert block["mfu"] == pytest.approx(0.25) and block["mfu_wall"] == pytest.approx(0.125)
    assert gc.mfu_block({"error": "x"}, params={}, size=size, peak=1.0)["mfu"] is None


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_mid_preset_on_cuda(tmp_path):
    out = tmp_path / "out"
    proc = _run(out, "--preset", "mid", "--device", "cuda", "--sft-steps", "6", "--rl-steps", "2", "--eval-pairs", "8")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["dtype"] == "bfloat16" and res["sft"]["losses_finite"] and res["rl"]["losses_finite"]
    assert res["sft"]["peak_memory_gb"] > 0
    if res["mfu"]["peak_flops"]:
        assert 0 < res["mfu"]["mfu"] < 1
