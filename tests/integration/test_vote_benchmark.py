"""`r1rm vote` in benchmark terms, end to end: a tiny-model eval of an MM-RLHF-RewardBench subset,
then vote on its generations (k = 1 equals eval's own metrics; Acc / Acc+ hand-worked along k;
integer k ticks on the plot; a benchmark contradicting the eval's is refused)."""

import json
from pathlib import Path

import pytest

# fixture rows: prompt groups G1 = rows 9, 10 and G2 = rows 32, 33 (mcq), G3 = rows 56, 57 (short)
ROWS = (9, 10, 32, 33, 56, 57)
QUIET = "runtime.report_to=none"  # no tracker start-up in these tests


def rows_of(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, shared_dir, tiny):
    """A greedy eval (k = 1, both orders) of six MM-RLHF pairs with made images."""
    from PIL import Image

    from tests.conftest import run_cli

    base = tmp_path_factory.mktemp("mmrlhf")
    lines = (shared_dir / "fixtures" / "mm_rlhf_rewardbench.jsonl").read_text().splitlines()
    bench = base / "bench.jsonl"
    bench.write_text("".join(lines[i] + "\n" for i in ROWS))
    for row in map(json.loads, bench.read_text().splitlines()):
        (base / row["image"]).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (56, 56), "navy").save(base / row["image"])
    out = base / "eval"
    proc = run_cli("eval", f"model.path={tiny}", f"output_dir={out}", "runtime.device=cpu", "runtime.progress=false", QUIET,
                   "generation.max_new_tokens=4", "engine.batch_size=12", "eval.benchmark=mm-rlhf-rewardbench",
                   f"eval.path={bench}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_vote_k1_equals_eval_and_refuses_another_benchmark(cli, evaluated, tmp_path):
    metrics = json.loads((evaluated / "metrics.json").read_text())
    assert metrics["benchmark"] == "mm-rlhf-rewardbench" and metrics["n_items"] == 6
    proc = cli("vote", f"output_dir={evaluated}", QUIET)  # no eval.benchmark given: read from the eval's run.json
    assert proc.returncode == 0, proc.stderr[-3000:]
    votes = json.loads((evaluated / "votes.json").read_text())
    assert votes["benchmark"] == "mm-rlhf-rewardbench" and votes["benchmark_from"] == str(evaluated / "run.json")
    assert [h["label"] for h in votes["headline"]] == ["Acc", "Acc+"]
    # the k = 1 check: every rule's blocks are eval's own numbers for these generations
    assert votes["k_max"] == 1
    for rule in ("majority", "any", "weighted", "early_stop"):
        assert votes["metrics_curve"][0][rule] == metrics["accuracy"], rule
    table = {(r["rule"], r["order"]): r for r in votes["table"]}
    for order, block in metrics["accuracy"].items():
        assert (table[("majority", order)]["overall"], table[("majority", order)]["acc_plus"]) == (
            block["overall"], block["acc_plus"])
    md = (evaluated / "votes.md").read_text()
    first = metrics["accuracy"]["chosen_first"]
    assert f"| 1 | {100 * first['overall']:.2f} | {100 * first['acc_plus']:.2f} |" in md
    assert "Acc+" in proc.stdout and f"benchmark from {evaluated / 'run.json'}" in " ".join(proc.stdout.split())

    # an eval.benchmark that contradicts the eval's record: exit 2, nothing written
    refused = tmp_path / "refused"
    proc = cli("vote", f"output_dir={refused}", f"vote.generations={evaluated / 'generations.jsonl'}",
               "eval.benchmark=vl-rewardbench", QUIET)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "written by an eval of mm-rlhf-rewardbench" in " ".join(proc.stderr.split())
    assert not refused.exists()


def test_vote_scripted_acc_plus_along_k_and_integer_ticks(cli, evaluated, tmp_path):
    from PIL import Image

    from r1rm.commands.vote import curve_figure

    rows = rows_of(evaluated / "generations.jsonl")
    uids = list(dict.fromkeys(r["uid"] for r in rows))
    assert [next(r for r in rows if r["uid"] == u)["category"] for u in uids] == ["mcq"] * 4 + ["short"] * 2
    groups = [next(r for r in rows if r["uid"] == u)["group"] for u in uids]
    assert groups[0] == groups[1] != groups[2] == groups[3] != groups[4] == groups[5]
    # chosen first (right answer 1): 3 samples per pair; chosen second: always right
    script = [(1, 1, 1), (2, 1, 1), (1, 2, 2), (1, 1, 2), (None, 1, 2), (2, 2, 2)]
    known = []
    for r in (r for r in rows if r["sample"] == 0):
        for s in range(3):
            choice = script[uids.index(r["uid"])][s] if r["order"] == "chosen_first" else 2
            known.append({**r, "key": [r["uid"], r["order"], s], "sample": s, "choice": choice, "p_choice": None})
    gen = tmp_path / "known" / "generations.jsonl"  # no run.json beside it: eval.benchmark says
    gen.parent.mkdir()
    gen.write_text("".join(json.dumps(r) + "\n" for r in known))
    out = tmp_path / "v"
    proc = cli("vote", f"output_dir={out}", f"vote.generations={gen}", "eval.benchmark=mm-rlhf-rewardbench", QUIET)
    assert proc.returncode == 0, proc.stderr[-3000:]
    votes = json.loads((out / "votes.json").read_text())
    assert votes["benchmark_from"] == "eval.benchmark"

    def cells(rule, order):
        return [v for r in votes["table"] if (r["rule"], r["order"]) == (rule, order) for v in (r["overall"], r["acc_plus"])]

    # majority: k=1 pairs 0, 2, 3 (G2 all right) | k=2 pairs 0, 3, 4 (ties wrong; no group) | k=3 pairs 0, 1, 3 (G1)
    assert cells("majority", "chosen_first") == pytest.approx([1 / 2, 1 / 3, 1 / 2, 0.0, 1 / 2, 1 / 3])
    # Any@k: k=1 pairs 0, 2, 3 | k=2 and 3 all but pair 5 (G1, G2 all right)
    assert cells("any", "chosen_first") == pytest.approx([1 / 2, 1 / 3, 5 / 6, 2 / 3, 5 / 6, 2 / 3])
    assert cells("majority", "chosen_second") == pytest.approx([1.0, 1.0] * 3)
    # both orders at k=1: pairs right in one order count 1/2; Acc+ per (order, sample): G1 1/2, G2 1, G3 1/2
    assert cells("majority", "both_orders_mean")[:2] == pytest.approx([3 / 4, 2 / 3])
    assert "| 3 | 50.00 | 33.33 | 83.33 | 66.67 |" in (out / "votes.md").read_text()

    # the plot: a panel per headline metric and order block, integer k ticks only
    fig = curve_figure(votes)
    axes = fig.get_axes()
    assert len(axes) == 2 * 3
    for ax in axes:
        ticks = list(ax.get_xticks())
        assert ticks == [1, 2, 3] and all(float(t).is_integer() for t in ticks)
    with Image.open(out / "votes.png") as png:
        assert png.format == "PNG" and png.size == (4 * 3 * 120, int(3.2 * 2 * 120))
