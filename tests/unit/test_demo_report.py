"""scripts/demo_report.py: the before/after table and the curves from a demo folder's files."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("demo_report", ROOT / "scripts" / "demo_report.py")
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)


def metrics(strict: float, first: float, second: float, parse_fail: float) -> dict:
    acc = {"chosen_first": first, "chosen_second": second, "both_orders_mean": (first + second) / 2,
           "both_orders_strict": strict}
    return {"accuracy": {k: {"overall": v} for k, v in acc.items()}, "parse_fail_rate": parse_fail}


def test_report_table_and_curves(tmp_path):
    demo = tmp_path / "demo"
    for sub, m in (("eval_base", metrics(0.0, 0.0, 0.0, 1.0)), ("eval_sft", metrics(0.81, 0.81, 0.82, 0.0)),
                   ("eval_rl", metrics(0.98, 0.98, 0.98, 0.0))):
        (demo / sub).mkdir(parents=True)
        (demo / sub / "metrics.json").write_text(json.dumps(m))
    (demo / "sft").mkdir()
    (demo / "sft" / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 5)))
    (demo / "rl" / "best").mkdir(parents=True)
    (demo / "rl" / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "reward": 1.8, "accuracy": 0.9, **({"eval/both_orders_strict": 0.93} if s % 2 == 0 else {})}) + "\n"
        for s in range(1, 5)))
    (demo / "rl" / "best" / "best.json").write_text(json.dumps({"step": 2, "metric": "both_orders_strict", "value": 0.93}))
    assert report.main(demo) == 0
    table = (demo / "report.md").read_text().splitlines()
    assert table[2] == "| untrained | 0.0% | 0.0% | 0.0% | 0.0% | 100.0% |"
    assert table[3] == "| after SFT | 81.0% | 82.0% | 81.5% | 81.0% | 0.0% |"
    assert table[4] == "| after SFT + RL | 98.0% | 98.0% | 98.0% | 98.0% | 0.0% |"
    assert (demo / "curves.png").stat().st_size > 10_000
    # the run beside the measured range the report reads from its data file, not from README
    want = json.loads(report.EXPECTED.read_text())
    text = "\n".join(table)
    assert f"| after SFT + RL | 98 | {want['after_rl']['min']:g} / {want['after_rl']['median']:g} / {want['after_rl']['max']:g} |" in text
    inside = all(want[k]["min"] <= v <= want[k]["max"] for k, v in (("after_sft", 81), ("after_rl", 98), ("rl_gain", 17)))
    assert ("inside the measured range." in text) == inside and ("OUTSIDE" in text) != inside


def test_a_run_outside_the_measured_range_says_so_and_what_to_report(tmp_path):
    demo = tmp_path / "demo"
    for sub, m in (("eval_sft", metrics(0.74, 0.76, 0.75, 0.0)), ("eval_rl", metrics(0.77, 1.0, 0.77, 0.0))):
        (demo / sub).mkdir(parents=True)
        (demo / sub / "metrics.json").write_text(json.dumps(m))
    expected = tmp_path / "expected.json"
    expected.write_text(json.dumps({"measured": "2026-12-06", "runs": "20 runs", "record": "docs/results/x.md",
                                    "after_sft": {"min": 78, "median": 81, "max": 84},
                                    "after_rl": {"min": 90, "median": 95, "max": 100},
                                    "rl_gain": {"min": 8, "median": 14, "max": 20}}))
    lines = report.against_expected(demo, expected)
    text = "\n".join(lines)
    assert "| after SFT | 74 | 78 / 81 / 84 | **OUTSIDE** |" in text and "| RL gain (points) | 3 | 8 / 14 / 20 | **OUTSIDE** |" in text
    assert "OUTSIDE the measured range: after SFT, after SFT + RL, RL gain (points)" in text
    assert "lscpu" in text and "git rev-parse HEAD" in text and "inside the measured range." not in text


def test_missing_stage_is_a_clear_error(tmp_path, capsys):
    assert report.main(tmp_path) == 2
    assert "eval_base/metrics.json" in capsys.readouterr().err
