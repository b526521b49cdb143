"""Benchmark: engine.kind=vllm against engine.kind=hf on the same tiny job, as ratios (run it in .venv-vllm).

1. `r1rm eval` (the whole command, a fresh process each: start-up, model / engine load, generation, metrics)
   on the same synthetic held-out set, both orders, greedy, the same model; checks that both wrote the same
   outputs (choices; texts) and reports the wall times and vllm / hf.
2. `r1rm rl` for a few steps with rl.rollout_engine=vllm against rl.rollout_engine=hf (same recipe, data,
   seed): the whole command's wall time and the median step and rollout-generation times after the first
   step (rl's metrics.jsonl: step_time_s, time_generate_s), as ratios. Skipped with --no-rl.

No target on CPU: vLLM's CPU kernels are not its GPU ones, and on a job this small its start-up (~30 s here)
dominates. The numbers are the baseline a GPU run is compared with. Writes out/bench/vllm_vs_hf.json.

    .venv-vllm/bin/python bench/vllm_vs_hf.py [--model PATH] [--items 24] [--rl-steps 4] [--no-rl]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# vLLM on CPU: a 1 GiB KV cache is plenty for the tiny model (VLLM_CPU.md)
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def r1rm(*args: str) -> float:
    """Run `r1rm ARGS` in a fresh process; its wall time in seconds (stops the benchmark if it fails)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "r1rm.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "NO_COLOR": "1"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"r1rm {' '.join(map(str, args[:1]))} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall


def bench_eval(model: str, data: Path, tmp: Path, max_new_tokens: int) -> dict:
    out, walls = {}, {}
    for kind in ("hf", "vllm"):
        walls[kind] = r1rm("eval", "--recipe", "recipes/tiny/eval.yaml", f"model.path={model}", f"data.eval=[{data}]",
                           f"output_dir={tmp / ('eval_' + kind)}", f"engine.kind={kind}", "runtime.progress=false",
                           f"generation.max_new_tokens={max_new_tokens}")
        rows = [json.loads(x) for x in (tmp / f"eval_{kind}" / "generations.jsonl").read_text().splitlines()]
        out[kind] = {tuple(r["key"]): r for r in rows}
    keys = sorted(out["hf"])
    assert keys == sorted(out["vllm"]), "the two runs wrote different (item, order) keys"
    return {
        "generations": len(keys),
        "wall_s": walls, "vllm_over_hf": walls["vllm"] / walls["hf"],
        "same_choice": sum(out["hf"][k]["choice"] == out["vllm"][k]["choice"] for k in keys),
        "same_text": sum(out["hf"][k]["text"] == out["vllm"][k]["text"] for k in keys),
        "tokens": {kind: sum(r["n_tokens"] for r in out[kind].values()) for kind in out},
    }


def bench_rl(model: str, data: Path, tmp: Path, steps: int) -> dict:
    res: dict = {"steps": steps, "wall_s": {}, "median_step_s": {}, "median_generate_s": {}}
    for kind in ("hf", "vllm"):
        out = tmp / f"rl_{kind}"
        res["wall_s"][kind] = r1rm(
            "rl", "--recipe", "recipes/tiny/rl.yaml", f"model.path={model}", f"data.train=[{data / 'train.jsonl'}]",
            f"data.eval=[{data / 'eval.jsonl'}]", f"output_dir={out}", "runtime.progress=false",
            "runtime.report_to=none", f"rl.max_steps={steps}", "rl.rollout_batch_size=8", "rl.train_batch_size=32",
            "rl.micro_batch_size=8", "rl.max_new_tokens=64", "rl.eval_every_steps=0", f"rl.save_every_steps={steps}",
            f"rl.rollout_engine={kind}")
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        rows = [r for r in rows if "step_time_s" in r][1:]  # the first step warms up
        res["median_step_s"][kind] = statistics.median(r["step_time_s"] for r in rows)
        res["median_generate_s"][kind] = statistics.median(r["time_generate_s"] for r in rows)
    for key in ("wall_s", "median_step_s", "median_generate_s"):
        res[key[: -len("_s")] + "_vllm_over_hf"] = res[key]["vllm"] / res[key]["hf"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="checkpoint (default: a fresh 4-head tiny model)")
    ap.add_argument("--items", type=int, default=24, help="held-out pairs (each judged in both orders)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--rl-steps", type=int, default=4)
    ap.add_argument("--no-rl", action="store_true", help="skip the RL comparison")
    ap.add_argument("--out", default="out/bench/vllm_vs_hf.json")
    args = ap.parse_args()

    import torch
    import vllm

    tmp = Path(tempfile.mkdtemp(prefix="r1rm-bench-vllm-"))
    model = args.model
    if model is None:
        r1rm("tiny-model", tmp / "model")  # 4 heads, head_dim 32: vLLM's CPU attention needs >= 32
        model = str(tmp / "model")
    # 224 px images, above the recipe's 12,544-pixel budget: both engines fit them to 112 x 112
    r1rm("synth", "--recipe", "recipes/tiny/synth.yaml", f"output_dir={tmp / 'data'}", "data.synthetic.n=64",
         f"data.synthetic.n_eval={args.items}", "data.synthetic.image_size=224", "data.synthetic.seed=1")
    result = {
        "benchmark": "vllm_vs_hf", "date": time.strftime("%Y-%m-%d"), "machine": platform.machine(),
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "vllm": vllm.__version__, "torch_threads": torch.get_num_threads(),
        "model": args.model or "fresh 4-head tiny model", "items": args.items,
        "max_new_tokens": args.max_new_tokens,
        # other work on the machine slows both engines: the 1-minute load average when the benchmark started
        "load_avg_1m": os.getloadavg()[0],
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "VLLM_ENABLE_V1_MULTIPROCESSING",
                                               "VLLM_CPU_KVCACHE_SPACE")},
        "eval": bench_eval(model, tmp / "data" / "eval.jsonl", tmp, args.max_new_tokens),
    }
    if not args.no_rl:
        result["rl"] = bench_rl(model, tmp / "data", tmp, args.rl_steps)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    e = result["eval"]
    print(f"eval ({e['generations']} generations): hf {e['wall_s']['hf']:.1f} s, vllm {e['wall_s']['vllm']:.1f} s, "
          f"vllm/hf {e['vllm_over_hf']:.2f}; same choice {e['same_choice']}/{e['generations']}, "
          f"same text {e['same_text']}/{e['generations']}")
    if "rl" in result:
        r = result["rl"]
        print(f"rl ({r['steps']} steps): whole command vllm/hf {r['wall_vllm_over_hf']:.2f}, median step "
              f"{r['median_step_vllm_over_hf']:.2f}, median rollout generation {r['median_generate_vllm_over_hf']:.2f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
