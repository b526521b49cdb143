"""Benchmark: `r1rm sft` training throughput and peak memory for the tiny model on this machine.

Runs the real command (one process) for a fixed number of steps on the synthetic task and
reports tokens/s (all input tokens, steady state: steps after the first 5) and the peak
resident memory of the process. Writes out/bench/sft_speed.json.

    python bench/sft_speed.py [--steps 60] [--batch-size 8] [--micro-batch-size 4]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--micro-batch-size", type=int, default=4)
    ap.add_argument("--out", default="out/bench/sft_speed.json")
    args = ap.parse_args()

    import torch

    from r1rm.commands import sft
    from r1rm.config import load_config
    from r1rm.data.synthetic import write_dataset
    from r1rm.models.tiny import build_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="r1rm-bench-sft-"))
    model = build_tiny_model(tmp / "model", seed=0)
    data = write_dataset(tmp / "data", 256, seed=1, levels=(1, 2, 3, 4, 5), modality="image", prefix="train")
    cfg = load_config("recipes/tiny/sft.yaml", [
        f"model.path={model}", f"data.train=[{data}]", f"output_dir={tmp / 'run'}", f"sft.max_steps={args.steps}",
        f"sft.batch_size={args.batch_size}", f"sft.micro_batch_size={args.micro_batch_size}",
        f"sft.save_every_steps={args.steps + 1}", "runtime.progress=false", "runtime.log_every_steps=1",
        "runtime.report_to=none"])
    t0 = time.perf_counter()
    summary = sft.run(cfg)
    wall = time.perf_counter() - t0
    from transformers import AutoModelForImageTextToText

    n_params = sum(p.numel() for p in AutoModelForImageTextToText.from_pretrained(model).parameters())
    rows = [json.loads(x) for x in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in rows if r["step"] > 5]
    tok_s = sum(r["tokens"] for r in steady) / sum(r["step_time_s"] for r in steady)
    result = {
        "benchmark": "sft_speed", "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(), "steps": args.steps, "batch_size": args.batch_size,
        "micro_batch_size": args.micro_batch_size, "params": n_params,
        "tokens_per_s": round(tok_s, 1), "samples_per_s": round(args.batch_size * len(steady) / sum(r["step_time_s"] for r in steady), 2),
        "wall_s_including_load_and_save": round(wall, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "final_loss": summary["final_loss"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
