"""Run `make demo` (or one of its stages) over seeds, thread counts and CPU kernels, and tabulate.

    python scripts/demo_sweep.py --seeds 0-4 --threads 1,2 --kernels default,avx2 --out out/sweep
    python scripts/demo_sweep.py --seeds 0,1 --threads 1 --target demo-sft --jobs 2 --out out/probe \
        --model-flags "--heads 8 --width 256" --sft-args "sft.lr=2e-3"

Each variant is one `make <target> DEMO=<out>/<name> SEED=<seed> DEMO_THREADS=<threads>` with the
kernels named: `default` lets PyTorch, MKL and oneDNN pick their code paths (DEMO_PIN=0), `avx2` holds
all three to AVX2 (as on a CPU without AVX-512), `mkl-avx2` only MKL (as MKL may choose on an AMD CPU),
`pinned` is `make demo`'s own setting (DEMO_PIN=1: ATen AVX2, MKL_CBWR=AVX2, oneDNN AVX2).
The synthetic data are made once (`--data`, default <out>/data) and copied into every variant, so only
the numerics, the initial weights and the training seeds vary. Runs of one thread go `--jobs` at a time;
runs of more threads go alone. Results append to <out>/results.jsonl (a rerun skips variants already
there) and <out>/table.md is rewritten after each run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# what each variant sets; "pinned" is `make demo`'s own setting (DEMO_PIN=1), the others run with DEMO_PIN=0
KERNELS = {
    "default": {},  # the libraries pick their code paths (AVX-512 on this machine)
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "mkl-avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},  # MKL alone off AVX-512 (as MKL may choose on AMD)
    "pinned": {},
}
STAGES = {"eval_sft": "sft", "eval_rl": "rl"}


def ints(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    return out


def strict(path: Path) -> dict | None:
    if not path.is_file():
        return None
    a = json.loads(path.read_text())["accuracy"]
    return {k: round(100 * a[k]["overall"], 1) for k in ("chosen_first", "chosen_second", "both_orders_strict")}


def run_one(args, seed: int, threads: int, kernel: str) -> dict:
    name = f"s{seed}-t{threads}-{kernel}"
    demo = args.out / name
    demo.mkdir(parents=True, exist_ok=True)
    if not (demo / "data").exists():
        shutil.copytree(args.data, demo / "data", copy_function=shutil.copy2)
    env = {**os.environ, **KERNELS[kernel]}
    cmd = ["make", args.target, f"DEMO={demo}", f"SEED={seed}", f"DEMO_THREADS={threads}",
           f"DEMO_PIN={int(kernel == 'pinned')}", f"DEMO_MODEL_FLAGS={args.model_flags}",
           f"SFT_ARGS={args.sft_args}", f"RL_ARGS={args.rl_args}"]
    t0 = time.monotonic()
    with open(demo / "sweep.log", "w") as log:
        rc = subprocess.call(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    row = {"name": name, "seed": seed, "threads": threads, "kernels": kernel, "rc": rc,
           "minutes": round((time.monotonic() - t0) / 60, 2), "target": args.target,
           "model_flags": args.model_flags, "sft_args": args.sft_args, "rl_args": args.rl_args}
    for sub, key in STAGES.items():
        row[key] = strict(demo / sub / "metrics.json")
    best = demo / "rl" / "best" / "best.json"
    if best.is_file():
        row["rl_best"] = json.loads(best.read_text())
    print(json.dumps(row), flush=True)
    with open(args.out / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    write_table(args.out)
    return row


def cell(m: dict | None) -> str:
    return f"{m['chosen_first']} / {m['chosen_second']} / **{m['both_orders_strict']}**" if m else "-"


def write_table(out: Path) -> None:
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines() if x.strip()]
    lines = ["| variant | minutes | after SFT (first / second / strict) | after RL (first / second / strict) | RL gain |",
             "|---|---|---|---|---|"]
    sft_s, rl_s, gains = [], [], []
    for r in rows:
        s, after = r.get("sft"), r.get("rl")
        gain = round(after["both_orders_strict"] - s["both_orders_strict"], 1) if s and after else None
        if s:
            sft_s.append(s["both_orders_strict"])
        if after:
            rl_s.append(after["both_orders_strict"])
        if gain is not None:
            gains.append(gain)
        lines.append(f"| {r['name']} | {r['minutes']} | {cell(s)} | {cell(after)} | {'' if gain is None else f'{gain:+}'} |")
    for label, xs in (("after SFT", sft_s), ("after RL", rl_s), ("RL gain", gains)):
        if xs:
            lines.append(f"\n{label}: min {min(xs)}, median {statistics.median(xs)}, max {max(xs)} over {len(xs)} runs")
    (out / "table.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0")
    p.add_argument("--threads", default="1")
    p.add_argument("--kernels", default="default")
    p.add_argument("--target", default="demo-rl", help="demo-sft, demo-rl or demo")
    p.add_argument("--jobs", type=int, default=2, help="one-thread runs side by side")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path, default=None, help="a demo's data/ folder to reuse")
    p.add_argument("--model-flags", default="--heads 8", help="DEMO_MODEL_FLAGS (the tiny-model flags)")
    p.add_argument("--sft-args", default="", help="SFT_ARGS: extra sft overrides")
    p.add_argument("--rl-args", default="", help="RL_ARGS: extra rl overrides")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.data is None:
        args.data = args.out / "data"
        if not (args.data / "train.jsonl").is_file():
            subprocess.check_call(["make", f"DEMO={args.out}", f"{args.out}/data/train.jsonl"])
    done = set()
    if (args.out / "results.jsonl").is_file():
        done = {json.loads(x)["name"] for x in (args.out / "results.jsonl").read_text().splitlines() if x.strip()}
    todo = [(s, t, k) for t in ints(args.threads) for k in args.kernels.split(",") for s in ints(args.seeds)
            if f"s{s}-t{t}-{k}" not in done]
    unknown = {k for _, _, k in todo} - set(KERNELS)
    if unknown:
        print(f"unknown --kernels {sorted(unknown)}: use {', '.join(KERNELS)}", file=sys.stderr)
        return 2
    single = [v for v in todo if v[1] == 1]
    multi = [v for v in todo if v[1] != 1]
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        list(pool.map(lambda v: run_one(args, *v), single))
    for v in multi:
        run_one(args, *v)
    return 0


if __name__ == "__main__":
    sys.exit(main())
