"""The stability ablation's per-run summary and across-seed table (scripts/ablation_stability.py)."""

import importlib.util
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("ablation_stability", ROOT / "scripts" / "ablation_stability.py")
abl = importlib.util.module_from_spec(spec)
spec.loader.exec_module(abl)


def row(step, **kw):
    base = {"step": step, "loss_token_max": 1.0, "ratio_max": 1.0, "grad_norm": 0.1, "grad_norm_max": 0.1,
            "nonfinite_microbatches": 0, "skipped_updates": 0, "reward": 1.9, "parse_fail_rate": 0.0}
    return {**base, **kw}


def test_summary_takes_the_worst_and_the_last():
    rows = [row(1, ratio_max=5.0, loss_token_max=30.0), row(2, grad_norm_max=7.0, skipped_updates=1, nonfinite_microbatches=2),
            row(3, reward=0.1, parse_fail_rate=0.9, **{"eval/both_orders_strict": 0.0, "eval/parse_fail_rate": 0.2})]
    s = abl.summarise(rows)
    assert (s["ratio_max"], s["loss_token_max"], s["grad_norm_max"], s["first_nonfinite_step"]) == (5.0, 30.0, 7.0, 2)
    assert (s["final_reward"], s["heldout_strict"], s["heldout_parse_fail_rate"]) == (0.1, 0.0, 0.2)
    # garbled samples count as a collapse even when greedy decoding still parses
    assert abl.collapsed(s)
    assert not abl.collapsed(abl.summarise([row(1, **{"eval/parse_fail_rate": 0.1})]))
    assert abl.collapsed(abl.summarise([row(1, **{"eval/parse_fail_rate": 0.6})]))


def test_table_across_seeds():
    runs = {0: abl.summarise([row(1, parse_fail_rate=1.0, **{"eval/both_orders_strict": 0.0})]),
            1: abl.summarise([row(1, ratio_max=2e4, **{"eval/both_orders_strict": 0.9})]),
            2: abl.summarise([row(1, **{"eval/both_orders_strict": 0.6})])}
    t = abl.aggregate(runs)
    assert (t["seeds"], t["collapsed_runs"], t["ratio_max_worst"]) == (3, 1, 2e4)
    assert t["heldout_strict_runs"] == "0.00 / 0.90 / 0.60" and t["heldout_strict_median"] == 0.6
    assert math.isclose(t["final_reward_median"], 1.9)
