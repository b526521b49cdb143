"""GPU check and benchmark: bf16 SFT and RL steps and eval throughput of a mid-size randomly
initialised Qwen2.5-VL-shaped model, run through r1rm's own commands, and the SFT MFU.

What it does, top to bottom:
1. Preflight: the packages r1rm needs import, transformers is 5.x, `--device cuda` sees a GPU;
   otherwise it stops at once (exit 1) saying what to install.
2. Builds the model offline with `r1rm.models.tiny.build_tiny_model(size=...)`: preset `mid` is
   `tiny.MID` (~0.39B parameters: Qwen2.5-0.5B's text decoder, 896 wide, 24 layers, and an 8-block
   vision tower; the tiny tokenizer's 878-token vocabulary), preset `tiny` is the 1.1M-parameter
   test model. Random weights, so losses and accuracies mean nothing; only speed is measured.
3. Synthetic data (`r1rm.data.synthetic.write_dataset`, levels 1-5, 112x112 images, 16 visual
   tokens each): a training file and an eval file of `--eval-pairs` pairs.
4. `sft.run`: `--sft-steps` optimizer steps, `model.dtype` bfloat16 on CUDA (bf16 weights, AdamW
   states and autocast, as recipes/r1reward/sft.yaml without DeepSpeed), float32 on CPU.
5. `rl.run`: `--rl-steps` StableReinforce rollout steps with hf rollouts (generate on the training
   model), both orders, 2 samples per prompt, one update per rollout (on-policy), rule rewards.
6. `eval.run`: `--eval-pairs` pairs in both orders, greedy, timed as a whole command (model load,
   generation, writing, metrics).
7. Numbers come from r1rm's own outputs (`metrics.jsonl`, `summary.json`, `metrics.json`,
   `generations.jsonl`); "steady" means the steps after the first min(5, steps // 3). SFT tokens are
   the non-padding input tokens (prompt with its visual placeholders, and target); RL and eval
   tokens are the generated ones.

MFU (SFT): achieved FLOP/s / the device's peak dense bf16 FLOP/s, with
    achieved FLOP/s = (6 * N + 12 * L * d * S) * tokens/s
N = the language model's non-embedding parameters (decoder layers, final norm, lm_head; the input
embedding table is a lookup and is left out; norms and biases are < 0.1 %), L = decoder layers,
d = hidden size, S = mean sequence length of the step (tokens / samples); 12*L*d*S is PaLM's
attention term (QK^T and AV, forward + backward, no causal halving). The vision tower's FLOPs are
ignored (64 patches per 112x112 image: about 2 % of the mid model's FLOPs at S ~ 240), so the MFU
is a slight underestimate.
`mfu` uses the training loop's tokens/s (`step_time_s`: forward, backward, optimizer; the per-sample
encoding on the CPU happens before the timer), `mfu_wall` the run's tokens / train time including
that encoding. Peak table: H100 SXM / H200 989 TFLOP/s, H100 PCIe 756, A100 312; `--peak-tflops`
overrides it; on CPU the MFU is null.

Outputs (in `--out`, default out/gpu_check): `results.json`, `results.md` (a table with the date,
device, versions, parameters and every number; also printed), and `runs/<stage>/` copies of each
stage's metrics files. Model, data and checkpoints (several GB for `mid`) go to a temporary work
folder, deleted at the end unless `--keep-work` (a folder given with `--work` is kept). A stage
that fails is recorded with its traceback (`results.json` → `<stage>.error`), the others still
run, and the script exits 1.

On a GPU machine that has torch, transformers 5, accelerate, pyyaml, rich, pillow but not the rest
of r1rm's dependencies: this path needs only pydantic beyond those (pydantic, pydantic-core,
annotated-types, typing-inspection; deepspeed, datasets, jsonlines are not imported). Carry them as
wheels in `wheels/` (made on a machine with the registry:
`pip download --only-binary=:all: --python-version 3.X --platform manylinux2014_x86_64 -d wheels pydantic`,
3.X the GPU machine's Python) and run, from the repository root (r1rm need not be installed):

    pip install --no-index wheels/*.whl && HF_HUB_OFFLINE=1 python bench/gpu_check.py --preset mid --device cuda --out $OUT/gpu_check

The preflight names anything still missing within seconds. Expected: a few minutes on one H100 / H200
(estimated, not yet measured: model build ~0.5 min, SFT 30 steps, RL 8 steps, eval 128 requests).

(`make gpu-check` runs the same in the project's venv.) On CPU, in the tiny configuration, the test:

    python bench/gpu_check.py --preset tiny --device cpu --sft-steps 3 --rl-steps 2 --eval-pairs 4
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    # on a GPU machine the working tree is copied, not installed
    sys.path.insert(0, str(REPO))


@dataclasses.dataclass(frozen=True)
class Preset:
    size: str  # key of r1rm.models.tiny.SIZES
    train_items: int
    sft_steps: int
    sft_batch_size: int
    sft_micro_batch_size: int
    rl_steps: int
    rl_prompts: int  # rollout_batch_size; each prompt rolled out in both orders, rl_samples each
    rl_samples: int
    rl_micro_batch_size: int
    rl_max_new_tokens: int
    eval_pairs: int
    eval_max_new_tokens: int
    engine_batch_size: int


PRESETS = {
    # ~10 s of steps on 2 CPU cores: the test's configuration (it lowers the steps further)
    "tiny": Preset(size="tiny", train_items=32, sft_steps=6, sft_batch_size=4, sft_micro_batch_size=2, rl_steps=3,
                   rl_prompts=2, rl_samples=2, rl_micro_batch_size=4, rl_max_new_tokens=16, eval_pairs=8,
                   eval_max_new_tokens=16, engine_batch_size=8),
    # a few minutes on one H100/H200 including the model build: 64 sequences of ~240 tokens per SFT step,
    # 64 rollouts of up to 128 tokens per RL step, 128 eval requests
    "mid": Preset(size="mid", train_items=512, sft_steps=30, sft_batch_size=64, sft_micro_batch_size=16, rl_steps=8,
                  rl_prompts=16, rl_samples=2, rl_micro_batch_size=16, rl_max_new_tokens=128, eval_pairs=64,
                  eval_max_new_tokens=128, engine_batch_size=64),
}

# Peak dense (no sparsity) bf16 tensor-core FLOP/s from the vendor's data sheets; first match wins.
PEAK_BF16_FLOPS = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312e12),
)

NEEDED = ("torch", "transformers", "accelerate", "tokenizers", "pydantic", "yaml", "PIL", "rich", "numpy")


def peak_flops(device_name: str | None) -> float | None:
    """Peak dense bf16 FLOP/s of a CUDA device named like torch.cuda.get_device_name(); None if unknown."""
    if not device_name:
        return None
    for key, flops in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return flops
    return None


def flops_per_token(*, n_params: int, n_layers: int, hidden_size: int, seq_len: float) -> float:
    """Training FLOPs per token: 6N (forward + backward of the matmuls) + 12·L·d·S (attention, PaLM App. B)."""
    return 6.0 * n_params + 12.0 * n_layers * hidden_size * seq_len


def count_params(model) -> dict:
    """Parameter counts by part of a Qwen-VL model (works on the meta device)."""
    parts = {"total": 0, "vision": 0, "embedding": 0, "language_model_non_embedding": 0}
    for name, p in model.named_parameters():
        n = p.numel()
        parts["total"] += n
        if ".visual." in f".{name}" or name.startswith("visual."):
            parts["vision"] += n
        elif "embed_tokens" in name:
            parts["embedding"] += n
        else:  # decoder layers (matmuls and their norms), final norm, lm_head
            parts["language_model_non_embedding"] += n
    parts["language_model"] = parts["language_model_non_embedding"] + parts["embedding"]
    return parts


def preset_param_counts(preset: str, *, vocab_size: int = 878, arch: str = "qwen2_5_vl") -> dict:
    """Parameter counts of a preset's model from its config alone (meta device: nothing allocated).

    vocab_size 878 is the tiny tokenizer's length with the default corpus."""
    import torch
    from transformers import AutoModelForImageTextToText

    from r1rm.models.tiny import SIZES, SPECIAL_TOKENS, model_config

    ids = {t: vocab_size - len(SPECIAL_TOKENS) + i for i, t in enumerate(SPECIAL_TOKENS)}
    cfg = model_config(arch, ids, vocab_size, SIZES[PRESETS[preset].size])
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(cfg)
    return count_params(model)


def preflight(device: str) -> None:
    """Stop in seconds, not minutes into the run, when the machine lacks something."""
    import importlib

    missing = []
    for name in NEEDED:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        sys.exit(f"error: missing Python packages: {', '.join(missing)}\n"
                 "  fix: pip install --no-index wheels/*.whl (see this script's docstring), or pip install -e .")
    import torch
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        sys.exit(f"error: r1rm needs transformers 5.x, this machine has {transformers.__version__}\n"
                 "  fix: carry a transformers 5 wheel in wheels/")
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but torch sees no CUDA GPU\n  fix: run with --device cpu")


def steady(rows: list[dict]) -> list[dict]:
    """The rows after the first min(5, n // 3) steps (allocator, kernel selection and cache warm-up)."""
    return rows[min(5, len(rows) // 3):]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _peak_mem_reset(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mem_gb(device: str) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None


def run_sft(common: list[str], *, p: Preset, steps: int, train: Path, run_dir: Path, device: str) -> dict:
    from r1rm.commands import sft
    from r1rm.config import load_config

    cfg = load_config(None, common + [
        f"output_dir={run_dir}", f"data.train=[{train}]", f"sft.max_steps={steps}",
        f"sft.batch_size={p.sft_batch_size}", f"sft.micro_batch_size={p.sft_micro_batch_size}", "sft.max_seq_len=2048",
        "sft.lr=1e-5", "sft.warmup_ratio=0.0", "sft.lr_schedule=constant", f"sft.save_every_steps={steps + 1}",
        "sft.keep_last=1"])
    t0 = time.perf_counter()
    summary = sft.run(cfg)
    _sync(device)
    wall = time.perf_counter() - t0
    rows = read_jsonl(run_dir / "metrics.jsonl")
    st = steady(rows)
    step_s = sum(r["step_time_s"] for r in st)
    tokens = sum(r["tokens"] for r in st)
    return {
        "steps": summary["steps"], "batch_size": p.sft_batch_size, "micro_batch_size": p.sft_micro_batch_size,
        "steady_steps": len(st),
        "tokens_per_s": tokens / step_s,
        "samples_per_s": p.sft_batch_size * len(st) / step_s,
        "step_time_s": step_s / len(st),
        "step_time_s_max": max(r["step_time_s"] for r in st),
        "first_step_time_s": rows[0]["step_time_s"],
        "mean_seq_len": tokens / (p.sft_batch_size * len(st)),
        "tokens_per_s_wall": summary["tokens_seen"] / summary["train_time_s"],
        "train_time_s": summary["train_time_s"],
        "wall_s": wall,
        "final_loss": summary["final_loss"],
        "losses_finite": all(math.isfinite(r["loss"]) for r in rows),
        "skipped_updates": summary["skipped_updates"],
        "peak_memory_gb": _peak_mem_gb(device),
    }


def run_rl(common: list[str], *, p: Preset, steps: int, train: Path, run_dir: Path, device: str) -> dict:
    from r1rm.commands import rl
    from r1rm.config import load_config

    seqs = p.rl_prompts * 2 * p.rl_samples  # both orders
    cfg = load_config(None, common + [
        f"output_dir={run_dir}", f"data.train=[{train}]", "rl.algorithm=stable_reinforce", "rl.rollout_engine=hf",
        f"rl.max_steps={steps}", "rl.epochs=1", f"rl.rollout_batch_size={p.rl_prompts}",
        f"rl.n_samples_per_prompt={p.rl_samples}", "rl.both_orders=true", f"rl.train_batch_size={seqs}",
        f"rl.micro_batch_size={p.rl_micro_batch_size}", f"rl.max_new_tokens={p.rl_max_new_tokens}",
        "rl.max_prompt_len=2048", "rl.temperature=1.0", "rl.lr=1e-6", "rl.lr_schedule=constant",
        "rl.consistency.mode=rule", "rl.eval_every_steps=0", f"rl.save_every_steps={steps + 1}", "rl.keep_last=1",
        f"engine.batch_size={p.engine_batch_size}"])
    t0 = time.perf_counter()
    summary = rl.run(cfg)
    _sync(device)
    wall = time.perf_counter() - t0
    rows = read_jsonl(run_dir / "metrics.jsonl")
    st = steady(rows)
    gen_tokens = [r["response_length"] * r["rollout_samples"] for r in st]
    return {
        "steps": summary["steps"], "sequences_per_step": seqs, "max_new_tokens": p.rl_max_new_tokens,
        "steady_steps": len(st),
        "step_time_s": _mean([r["step_time_s"] for r in st]),
        "generate_time_s": _mean([r["time_generate_s"] for r in st]),
        "train_time_s": _mean([r["time_train_s"] for r in st]),
        "overhead_time_s": _mean([r["time_overhead_s"] for r in st]),
        "mean_response_tokens": _mean([r["response_length"] for r in st]),
        "rollout_tokens_per_s": sum(gen_tokens) / sum(r["time_generate_s"] for r in st),
        "sequences_per_s": seqs * len(st) / sum(r["step_time_s"] for r in st),
        "first_step_time_s": rows[0]["step_time_s"],
        "wall_s": wall,
        "losses_finite": all(r["loss"] is not None and math.isfinite(r["loss"]) for r in rows),
        "skipped_updates": summary["skipped_updates"],
        "peak_memory_gb": _peak_mem_gb(device),
    }


def run_eval(common: list[str], *, p: Preset, pairs: int, data: Path, run_dir: Path, device: str) -> dict:
    from r1rm.commands import eval as eval_cmd
    from r1rm.config import load_config

    cfg = load_config(None, common + [
        f"output_dir={run_dir}", f"eval.path={data}", "eval.benchmark=canonical", f"eval.limit={pairs}", "eval.k=1",
        f"generation.max_new_tokens={p.eval_max_new_tokens}", f"engine.batch_size={p.engine_batch_size}"])
    t0 = time.perf_counter()
    metrics = eval_cmd.run(cfg)
    _sync(device)
    wall = time.perf_counter() - t0
    gens = read_jsonl(run_dir / "generations.jsonl")
    n_tokens = sum(g["n_tokens"] for g in gens)
    return {
        "pairs": metrics["n_items"], "requests": len(gens), "max_new_tokens": p.eval_max_new_tokens,
        "batch_size": p.engine_batch_size, "generated_tokens": n_tokens,
        "wall_s": wall, "requests_per_s": len(gens) / wall, "generated_tokens_per_s": n_tokens / wall,
        "complete": metrics["complete"], "parse_fail_rate": metrics["parse_fail_rate"],
        "peak_memory_gb": _peak_mem_gb(device),
    }


def mfu_block(sft: dict | None, *, params: dict, size, peak: float | None) -> dict:
    """The SFT MFU and its inputs (see the module docstring); MFU None without a peak (CPU, unknown GPU)."""
    if not sft or "tokens_per_s" not in sft:
        return {"mfu": None, "mfu_wall": None, "peak_flops": peak}
    fpt = flops_per_token(n_params=params["language_model_non_embedding"], n_layers=size.num_hidden_layers,
                          hidden_size=size.hidden_size, seq_len=sft["mean_seq_len"])
    achieved = fpt * sft["tokens_per_s"]
    return {
        "formula": "(6*N + 12*L*d*S) * tokens_per_s / peak_flops",
        "N_language_model_non_embedding_params": params["language_model_non_embedding"], "L": size.num_hidden_layers,
        "d": size.hidden_size, "S_mean_seq_len": sft["mean_seq_len"], "flops_per_token": fpt,
        "achieved_flops": achieved, "achieved_flops_wall": fpt * sft["tokens_per_s_wall"], "peak_flops": peak,
        "mfu": achieved / peak if peak else None,
        "mfu_wall": fpt * sft["tokens_per_s_wall"] / peak if peak else None,
    }


def _git_commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        if v == 0 or 0.01 <= abs(v) < 1e6:
            return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
        return f"{v:.3e}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


MD_ROWS = (
    ("sft", "tokens_per_s", "SFT tokens/s (training loop, steady)"),
    ("sft", "tokens_per_s_wall", "SFT tokens/s (incl. CPU encoding)"),
    ("sft", "step_time_s", "SFT step time (s, steady mean)"),
    ("sft", "samples_per_s", "SFT samples/s"),
    ("sft", "mean_seq_len", "SFT mean sequence length (tokens)"),
    ("sft", "first_step_time_s", "SFT first step (s)"),
    ("sft", "peak_memory_gb", "SFT peak GPU memory (GiB)"),
    ("mfu", "mfu", "SFT MFU (training loop)"),
    ("mfu", "mfu_wall", "SFT MFU (incl. CPU encoding)"),
    ("rl", "step_time_s", "RL step time (s, steady mean)"),
    ("rl", "generate_time_s", "RL rollout generate (s / step)"),
    ("rl", "train_time_s", "RL update (s / step)"),
    ("rl", "rollout_tokens_per_s", "RL rollout generated tokens/s"),
    ("rl", "sequences_per_s", "RL sequences/s"),
    ("rl", "peak_memory_gb", "RL peak GPU memory (GiB)"),
    ("eval", "wall_s", "eval wall time (s, whole command)"),
    ("eval", "requests_per_s", "eval requests/s"),
    ("eval", "generated_tokens_per_s", "eval generated tokens/s"),
)


def markdown(res: dict) -> str:
    head = (f"GPU check {res['date']}, {res['device_name']} ({res['device']}, {res['dtype']}), preset {res['preset']}: "
            f"{res['params']['total'] / 1e6:,.1f}M parameters ({res['params']['language_model_non_embedding'] / 1e6:,.1f}M "
            f"language-model non-embedding, {res['params']['vision'] / 1e6:,.1f}M vision); torch {res['versions']['torch']}, "
            f"transformers {res['versions']['transformers']}, commit {res['git_commit']}")
    c = res["config"]
    setup = (f"SFT {c['sft_steps']} steps x {c['sft_batch_size']} samples (micro {c['sft_micro_batch_size']}); "
             f"RL {c['rl_steps']} steps x {c['rl_prompts']} prompts x 2 orders x {c['rl_samples']} samples "
             f"(<= {c['rl_max_new_tokens']} new tokens); eval {c['eval_pairs']} pairs x 2 orders "
             f"(<= {c['eval_max_new_tokens']} new tokens, batch {c['engine_batch_size']})")
    lines = [head, "", setup, "", "| measure | value |", "|---|---|"]
    for stage, key, label in MD_ROWS:
        block = res.get(stage) or {}
        if "error" in block:
            continue
        lines.append(f"| {label} | {_fmt(block.get(key))} |")
    for stage in ("sft", "rl", "eval"):
        if "error" in (res.get(stage) or {}):
            lines.append(f"| {stage} | FAILED: {res[stage]['error'].splitlines()[0][:200]} |")
    lines.append(f"| total wall time (s) | {_fmt(res['wall_s'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="mid")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--dtype", choices=["bfloat16", "float32", "auto"], default=None,
                    help="model.dtype; default bfloat16 on cuda, float32 on cpu (auto = fp32 weights + bf16 autocast)")
    ap.add_argument("--sft-steps", type=int, default=None)
    ap.add_argument("--rl-steps", type=int, default=None)
    ap.add_argument("--eval-pairs", type=int, default=None)
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s (default: the table)")
    ap.add_argument("--out", default="out/gpu_check")
    ap.add_argument("--work", default=None, help="model, data and run folders (default: a temporary folder)")
    ap.add_argument("--keep-work", action="store_true", help="keep the work folder")
    args = ap.parse_args(argv)

    preflight(args.device)
    t_all = time.perf_counter()
    import accelerate
    import torch
    import transformers

    from r1rm.data.synthetic import write_dataset
    from r1rm.models.tiny import SIZES, build_tiny_model

    p = PRESETS[args.preset]
    sft_steps = args.sft_steps or p.sft_steps
    rl_steps = args.rl_steps or p.rl_steps
    eval_pairs = args.eval_pairs or p.eval_pairs
    dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    size = SIZES[p.size]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="r1rm-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    device_name = (torch.cuda.get_device_name(0) if args.device == "cuda"
                   else f"{os.cpu_count()}-core {platform.processor() or platform.machine()} CPU")
    peak = args.peak_tflops * 1e12 if args.peak_tflops else (peak_flops(device_name) if args.device == "cuda" else None)

    now = dt.datetime.now(dt.UTC)
    res: dict = {
        "date": now.strftime("%Y-%m-%d"), "time_utc": now.isoformat(timespec="seconds"),
        "device": args.device, "device_name": device_name, "dtype": dtype, "preset": args.preset,
        "git_commit": _git_commit(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                     "transformers": transformers.__version__, "accelerate": accelerate.__version__},
        "torch_threads": torch.get_num_threads(),
        "model_size": dataclasses.asdict(size),
        "config": {**dataclasses.asdict(p), "sft_steps": sft_steps, "rl_steps": rl_steps, "eval_pairs": eval_pairs},
    }
    print(f"gpu_check: preset {args.preset} on {device_name} ({args.device}, {dtype}); work folder {work}", flush=True)

    # ---- model and data
    t0 = time.perf_counter()
    model = build_tiny_model(work / "model", seed=0, size=size)
    res["build_model_s"] = time.perf_counter() - t0
    from transformers import AutoConfig, AutoModelForImageTextToText

    with torch.device("meta"):
        res["params"] = count_params(AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(model)))
    t0 = time.perf_counter()
    train = write_dataset(work / "data", p.train_items, seed=1, levels=(1, 2, 3, 4, 5), modality="image", prefix="train")
    evald = write_dataset(work / "data", eval_pairs, seed=2, levels=(1, 2, 3, 4, 5), modality="image", prefix="eval")
    res["data_s"] = time.perf_counter() - t0

    common = [f"model.path={model}", f"model.dtype={dtype}", "model.min_pixels=3136", "model.max_pixels=12544",
              f"runtime.device={args.device}", "runtime.progress=false", "runtime.report_to=none",
              "runtime.resume=false", "runtime.log_every_steps=1", "seed=0"]
    stages = {
        "sft": lambda d: run_sft(common, p=p, steps=sft_steps, train=train, run_dir=d, device=args.device),
        "rl": lambda d: run_rl(common, p=p, steps=rl_steps, train=train, run_dir=d, device=args.device),
        "eval": lambda d: run_eval(common, p=p, pairs=eval_pairs, data=evald, run_dir=d, device=args.device),
    }
    failed = []
    for name, fn in stages.items():
        run_dir = work / name
        print(f"gpu_check: {name} ...", flush=True)
        _peak_mem_reset(args.device)
        try:
            res[name] = fn(run_dir)
        except Exception as e:  # noqa: BLE001 - one stage's failure must not lose the others' numbers
            failed.append(name)
            res[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            print(res[name]["traceback"], file=sys.stderr, flush=True)
        keep = out / "runs" / name
        keep.mkdir(parents=True, exist_ok=True)
        for f in ("metrics.jsonl", "summary.json", "metrics.json", "config.yaml"):
            if (run_dir / f).is_file():
                shutil.copy2(run_dir / f, keep / f)
    res["mfu"] = mfu_block(res.get("sft"), params=res["params"], size=size, peak=peak)
    res["failed_stages"] = failed
    res["wall_s"] = time.perf_counter() - t_all

    (out / "results.json").write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    md = markdown(res)
    (out / "results.md").write_text(md, encoding="utf-8")
    print(md, flush=True)
    print(f"gpu_check: wrote {out / 'results.json'} and {out / 'results.md'}", flush=True)
    if not args.keep_work and not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
