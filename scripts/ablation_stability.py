"""The stability ablation in miniature (R1-Reward Table 6's pattern on the synthetic task).

Runs `r1rm rl` four times from the same checkpoint under the stress recipe — reinforce_pp
(no Pre-CLIP, no filter), stable_reinforce without the advantage filter, without Pre-CLIP,
and complete — then writes a table (per-token loss max, ratio max, non-finite micro-batches,
skipped updates, parse failures, held-out accuracy) and a plot of the per-token loss max and
the reward over the steps.

    python scripts/ablation_stability.py --recipe recipes/tiny/ablation_stability.yaml \
        [model.path=...] [data.train=[...]] [data.eval=[...]]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

VARIANTS = {
    "reinforce_pp": ["rl.algorithm=reinforce_pp"],
    "stable_no_filter": ["rl.algorithm=stable_reinforce", "rl.adv_filter=none"],
    "stable_no_preclip": ["rl.algorithm=stable_reinforce", "rl.pre_clip=false"],
    "stable_reinforce": ["rl.algorithm=stable_reinforce"],
}


def summarise(rows: list[dict]) -> dict:
    def finite_max(key: str) -> float:
        vals = [r[key] for r in rows if r.get(key) is not None]
        return max(vals) if vals else float("nan")

    last = rows[-1]
    return {
        "steps": last["step"],
        "loss_token_max": finite_max("loss_token_max"),
        "ratio_max": finite_max("ratio_max"),
        "nonfinite_microbatches": last["nonfinite_microbatches"],
        "skipped_updates": last["skipped_updates"],
        "final_reward": last["reward"],
        "final_parse_fail_rate": last["parse_fail_rate"],
        "heldout_strict": last.get("eval/both_orders_strict"),
        "heldout_mean": last.get("eval/both_orders_mean"),
    }


def plot(runs: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, rows in runs.items():
        steps = [r["step"] for r in rows]
        a.plot(steps, [r["loss_token_max"] if r["loss_token_max"] is not None and math.isfinite(r["loss_token_max"])
                       else float("nan") for r in rows], label=name)
        b.plot(steps, [r["reward"] for r in rows], label=name)
    a.set_yscale("log")
    a.set_xlabel("rollout step")
    a.set_ylabel("largest per-token loss term")
    b.set_xlabel("rollout step")
    b.set_ylabel("mean reward (0..2)")
    a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="recipes/tiny/ablation_stability.yaml")
    ap.add_argument("--only", nargs="*", choices=list(VARIANTS), help="run a subset of the variants")
    ap.add_argument("overrides", nargs="*", help="dotted overrides applied to every variant")
    a = ap.parse_args()

    from r1rm.commands import rl
    from r1rm.config import load_config

    base = load_config(a.recipe, a.overrides)
    root = Path(base.output_dir)
    runs: dict[str, list[dict]] = {}
    for name, extra in VARIANTS.items():
        if a.only and name not in a.only:
            continue
        out = root / name
        cfg = load_config(a.recipe, [*a.overrides, *extra, f"output_dir={out}", "runtime.progress=false"])
        rl.run(cfg)
        runs[name] = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    table = {name: summarise(rows) for name, rows in runs.items()}
    (root / "summary.json").write_text(json.dumps(table, indent=2) + "\n")
    cols = list(next(iter(table.values())))
    lines = ["| variant | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, s in table.items():
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in s.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    (root / "summary.md").write_text("\n".join(lines) + "\n")
    plot(runs, root / "stability.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
