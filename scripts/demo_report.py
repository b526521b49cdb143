"""The demo's before/after table and training curves, from the files `make demo` wrote.

    python scripts/demo_report.py out/demo

Prints a table of held-out accuracy (chosen-first, chosen-second, both-orders mean and
strict, parse failures) for the untrained, SFT and RL models, the voting summary, and writes
<demo>/report.md and <demo>/curves.png (SFT loss; RL rollout accuracy and the RL run's periodic strict accuracy
on its data.eval — the validation split for `make demo`, whose kept checkpoint (rl.keep_best) is starred).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

STAGES = (("untrained", "eval_base"), ("after SFT", "eval_sft"), ("after SFT + RL", "eval_rl"))
# the range measured across seeds, thread counts and CPU kernels (scripts/demo_sweep.py): what a run of
# `make demo` on any machine should land in; the report reads it, README states it
EXPECTED = Path(__file__).resolve().parent / "demo_expected.json"


def against_expected(demo: Path, expected: Path) -> list[str]:
    """The run's held-out both-orders strict accuracy after SFT and after RL, and RL's gain, beside the
    measured range in `expected`; says plainly when a number falls outside it and what to report."""
    want = json.loads(expected.read_text())
    got = {}
    for key, sub in (("after_sft", "eval_sft"), ("after_rl", "eval_rl")):
        acc = json.loads((demo / sub / "metrics.json").read_text())["accuracy"]["both_orders_strict"]["overall"]
        got[key] = round(100 * acc, 1)
    got["rl_gain"] = round(got["after_rl"] - got["after_sft"], 1)
    names = {"after_sft": "after SFT", "after_rl": "after SFT + RL", "rl_gain": "RL gain (points)"}
    lines = [f"expected range: {want['runs']} ({want['measured']}, {want['record']})", "",
             "| held-out both-orders strict | this run | measured range (min / median / max) | |", "|---|---|---|---|"]
    outside = []
    for key, name in names.items():
        r = want[key]
        inside = r["min"] <= got[key] <= r["max"]
        if not inside:
            outside.append(name)
        lines.append(f"| {name} | {got[key]:g} | {r['min']:g} / {r['median']:g} / {r['max']:g} | "
                     f"{'inside' if inside else '**OUTSIDE**'} |")
    if outside:
        lines += ["", f"OUTSIDE the measured range: {', '.join(outside)}. This machine's numerics led training elsewhere; "
                  f"please open an issue with {demo}/report.md, the metrics.json of {demo}/eval_sft and "
                  f"{demo}/eval_rl, {demo}/sft/metrics.jsonl, {demo}/rl/metrics.jsonl, the output of `lscpu` and of "
                  "`python -c \"import torch; print(torch.__config__.show())\"`, OMP_NUM_THREADS, and the commit "
                  "(`git rev-parse HEAD`)."]
    else:
        lines += ["", "inside the measured range."]
    return lines


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def main(demo: Path) -> int:
    lines = ["| model | chosen first | chosen second | both-orders mean | both-orders strict | parse failures |",
             "|---|---|---|---|---|---|"]
    for name, sub in STAGES:
        f = demo / sub / "metrics.json"
        if not f.is_file():
            print(f"missing {f}: run `make demo` first", file=sys.stderr)
            return 2
        m = json.loads(f.read_text())
        a = {k: v["overall"] for k, v in m["accuracy"].items()}
        lines.append(f"| {name} | {a['chosen_first']:.1%} | {a['chosen_second']:.1%} | {a['both_orders_mean']:.1%} | "
                     f"{a['both_orders_strict']:.1%} | {m['parse_fail_rate']:.1%} |")
    votes = demo / "vote" / "votes.json"
    if votes.is_file():
        lines += ["", f"voting: `{votes}` (plot: `{demo / 'vote' / 'votes.png'}`)"]
    verdict = against_expected(demo, EXPECTED)
    report = "\n".join(lines + ["", *verdict]) + "\n"
    (demo / "report.md").write_text(report)
    print(report)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sft, rl = rows(demo / "sft" / "metrics.jsonl"), rows(demo / "rl" / "metrics.jsonl")
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot([r["step"] for r in sft], [r["loss"] for r in sft])
    a.set_yscale("log")
    a.set_xlabel("SFT step")
    a.set_ylabel("loss (per supervised token)")
    # the rollout accuracy, not the reward: the reward's scale moves with the recipe's weights
    b.plot([r["step"] for r in rl], [r["accuracy"] for r in rl], label="rollout accuracy")
    # the RL run's periodic eval is on its data.eval: the validation split it keeps its best
    # checkpoint by (make demo, rl.keep_best), or a held-out set for a run without keep_best
    best = demo / "rl" / "best" / "best.json"
    ev = [r for r in rl if "eval/both_orders_strict" in r]
    b.plot([r["step"] for r in ev], [r["eval/both_orders_strict"] for r in ev], "o-",
           label=("validation" if best.is_file() else "held-out") + " strict accuracy")
    kept = json.loads(best.read_text())["step"] if best.is_file() else (rl[-1]["step"] if rl else 0)
    if best.is_file():
        rec = json.loads(best.read_text())
        b.plot([rec["step"]], [rec["value"]], "*", markersize=12, label=f"kept (rl.keep_best): step {rec['step']}")
    # the held-out score RL starts from (the SFT model, step 0) and ends with (the scored RL model)
    held = [json.loads((demo / sub / "metrics.json").read_text())["accuracy"]["both_orders_strict"]["overall"]
            for sub in ("eval_sft", "eval_rl")]
    b.plot([0, kept], held, "s--", color="grey", label="held-out strict: SFT → RL")
    b.set_ylim(0, 1.05)
    b.set_xlabel("RL step")
    b.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(demo / "curves.png", dpi=120)
    print(f"wrote {demo / 'report.md'} and {demo / 'curves.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "out/demo")))
