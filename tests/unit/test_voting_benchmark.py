"""Voting in benchmark terms: each rule's verdicts scored as `r1rm eval` scores the benchmark
(VL-RewardBench macro, MM-RLHF Acc+, ...), hand-worked; k = 1 equals eval's metrics."""

import json
import random

import pytest

from r1rm.core.metrics import BENCHMARKS, HEADLINE_METRICS, MMRB_COLUMNS, compute_metrics
from r1rm.core.voting import RULES, benchmark_curve, format_votes, headline_table, vote_curve


def unit(uid, order, choices, *, category="c", group=None):
    right = 1 if order == "chosen_first" else 2
    return [
        {"uid": uid, "id": uid, "category": category, "group": group, "order": order, "sample": i, "choice": c,
         "choice_source": "tag" if c is not None else None, "correct": c == right, "p_choice": None, "error": None}
        for i, c in enumerate(choices)
    ]


def at(curve, k, rule, block):
    return curve["curve"][k - 1][rule][block]


def test_vl_rewardbench_overall_and_macro_hand_worked():
    # chosen first only, 3 samples; the right answer is 1
    rows = (unit("a", "chosen_first", [1, 1, 2], category="general")
            + unit("b", "chosen_first", [2, 1, 1], category="general")
            + unit("c", "chosen_first", [2, 2, 1], category="hallucination")
            + unit("d", "chosen_first", [None, 1, 2], category="reasoning"))
    curve = benchmark_curve(rows, benchmark="vl-rewardbench")
    assert curve["k_max"] == 3 and list(curve["curve"][0]["majority"]) == ["chosen_first"]
    # majority: k=1 a | k=2 a, d (b's 1-1 tie is wrong; d's one vote) | k=3 a, b (d's 1-1 tie)
    # macro = mean of general, hallucination, reasoning
    expected = {1: (1 / 4, (1 / 2 + 0 + 0) / 3), 2: (2 / 4, (1 / 2 + 0 + 1) / 3), 3: (2 / 4, (1 + 0 + 0) / 3)}
    for k, (overall, macro) in expected.items():
        block = at(curve, k, "majority", "chosen_first")
        assert (block["overall"], block["macro"]) == pytest.approx((overall, macro)), k
    assert at(curve, 3, "majority", "chosen_first")["per_category"]["general"] == {"n": 2, "accuracy": 1.0}
    # Any@k: k=1 a | k=2 a, b, d | k=3 all
    anys = [v for k in (1, 2, 3) for v in (at(curve, k, "any", "chosen_first")["overall"], at(curve, k, "any", "chosen_first")["macro"])]
    assert anys == pytest.approx([1 / 4, 1 / 6, 3 / 4, 2 / 3, 1.0, 1.0])
    # no probabilities: weighted counts as majority does, early stopping never changes the verdict
    for k in (1, 2, 3):
        assert at(curve, k, "weighted", "chosen_first") == at(curve, k, "majority", "chosen_first")
        assert at(curve, k, "early_stop", "chosen_first") == at(curve, k, "majority", "chosen_first")


def mm_rlhf_rows():
    # prompt group G1 = pairs p, q; G2 = pair r; both orders, 2 samples each
    return (unit("p", "chosen_first", [1, 1], category="mcq", group="G1") + unit("p", "chosen_second", [2, 1], category="mcq", group="G1")
            + unit("q", "chosen_first", [1, 2], category="mcq", group="G1") + unit("q", "chosen_second", [2, 2], category="mcq", group="G1")
            + unit("r", "chosen_first", [2, 2], category="long", group="G2") + unit("r", "chosen_second", [2, None], category="long", group="G2"))


def test_mm_rlhf_acc_and_acc_plus_hand_worked():
    curve = benchmark_curve(mm_rlhf_rows(), benchmark="mm-rlhf-rewardbench")
    assert set(curve["curve"][0]["majority"]) == {"chosen_first", "chosen_second", "both_orders_mean", "both_orders_strict"}

    def acc(k, rule, block):
        b = at(curve, k, rule, block)
        return b["overall"], b["acc_plus"]

    # k = 1 (sample 0): chosen_first p, q right, r wrong -> G1 all right, G2 not
    assert acc(1, "majority", "chosen_first") == pytest.approx((2 / 3, 1 / 2))
    assert acc(1, "majority", "chosen_second") == pytest.approx((1.0, 1.0))
    # both orders: per pair the mean of its orders (1, 1, 1/2); Acc+ per (order, sample) trial: G1 1, G2 1/2
    assert acc(1, "majority", "both_orders_mean") == pytest.approx((5 / 6, 3 / 4))
    # strict: right in both orders: p, q -> G1 all right, G2 not
    assert acc(1, "majority", "both_orders_strict") == pytest.approx((2 / 3, 1 / 2))
    # k = 2: chosen_first p right, q 1-1 tie, r wrong; chosen_second p tie, q right, r right (its one vote)
    assert acc(2, "majority", "chosen_first") == pytest.approx((1 / 3, 0.0))
    assert acc(2, "majority", "chosen_second") == pytest.approx((2 / 3, 1 / 2))
    assert acc(2, "majority", "both_orders_strict") == pytest.approx((0.0, 0.0))
    # Any@2: chosen_first p, q; chosen_second all
    assert acc(2, "any", "chosen_first") == pytest.approx((2 / 3, 1 / 2))
    assert acc(2, "any", "chosen_second") == pytest.approx((1.0, 1.0))
    assert acc(2, "any", "both_orders_strict") == pytest.approx((2 / 3, 1 / 2))
    assert at(curve, 2, "majority", "chosen_first")["per_category"] == {
        "long": {"n": 1, "accuracy": 0.0}, "mcq": {"n": 2, "accuracy": 0.5}}


def test_multimodal_rewardbench_seven_column_mean():
    rows = (unit("a", "chosen_first", [1, 2, 2], category="math") + unit("b", "chosen_first", [1, 1, 1], category="math")
            + unit("c", "chosen_first", [2, 1, 1], category="safety"))
    curve = benchmark_curve(rows, benchmark="multimodal-rewardbench")
    # k=1: math 2/2, safety 0 -> mean of the columns present 1/2; pairs 2/3
    first = at(curve, 1, "majority", "chosen_first")
    assert (first["overall"], first["macro"], first["overall_pairs"]) == pytest.approx((0.5, 0.5, 2 / 3))
    # k=3: math 1/2 (a flips to 2), safety 1 -> 3/4; pairs 2/3
    last = at(curve, 3, "majority", "chosen_first")
    assert (last["overall"], last["overall_pairs"]) == pytest.approx((0.75, 2 / 3))


def random_rows(seed, k=4):
    rng = random.Random(seed)
    cats = [*MMRB_COLUMNS, "general", "hallucination", "reasoning", "mcq"]
    rows = []
    for i in range(24):
        cat, group = rng.choice(cats), f"g{i // 3}"
        for order in ("chosen_first", "chosen_second"):
            rows += unit(f"u{i}", order, [rng.choice([1, 2, None]) for _ in range(k)], category=cat, group=group)
    return rows


@pytest.mark.parametrize("benchmark", BENCHMARKS)
def test_k1_equals_eval_metrics_of_sample0(benchmark):
    """At k = 1 every rule's verdict is sample 0's answer: the blocks equal eval's (compute_metrics)
    on the sample-0 rows -- eval's own numbers for an eval.k = 1 generations file."""
    rows = random_rows(seed=7)
    eval_blocks = compute_metrics([r for r in rows if r["sample"] == 0], benchmark=benchmark)["accuracy"]
    curve = benchmark_curve(rows, benchmark=benchmark)
    for rule in RULES:
        assert curve["curve"][0][rule] == eval_blocks, rule
    # and the pair accuracy of vote_curve is the both-orders mean's plain accuracy when every item has both orders
    plain = vote_curve(rows)
    for k in range(1, 5):
        assert plain["curve"][k - 1]["majority"] == pytest.approx(
            benchmark_curve(rows, benchmark="canonical")["curve"][k - 1]["majority"]["both_orders_mean"]["overall"])


def test_headline_table_and_markdown():
    rows = mm_rlhf_rows()
    curve = benchmark_curve(rows, benchmark="mm-rlhf-rewardbench")
    table = headline_table(curve)
    assert len(table) == 2 * len(RULES) * 4  # k x rule x order block
    row = next(r for r in table if (r["k"], r["rule"], r["order"]) == (1, "majority", "both_orders_mean"))
    assert row == pytest.approx({"k": 1, "rule": "majority", "order": "both_orders_mean", "overall": 5 / 6, "acc_plus": 3 / 4})
    assert [key for key, _ in HEADLINE_METRICS["mm-rlhf-rewardbench"]] == ["overall", "acc_plus"]
    md = format_votes(curve, vote_curve(rows), source="run.json")
    assert "### chosen_first" in md and "### both_orders_strict" in md
    assert "| k | majority Acc | majority Acc+ | any Acc | any Acc+ |" in md
    # both orders, k = 1: Acc 83.33, Acc+ 75.00; early stopping used 1 sample
    strict_at = md.index("### both_orders_mean")
    assert "| 1 | 83.33 | 75.00 |" in md[strict_at:] and md[strict_at:].split("\n")[4].endswith("| 1.00 |")


def test_benchmark_curve_rejects_and_empties():
    with pytest.raises(ValueError, match="benchmark must be one of"):
        benchmark_curve(mm_rlhf_rows(), benchmark="vlrb")
    with pytest.raises(ValueError, match="k_max"):
        benchmark_curve(mm_rlhf_rows(), benchmark="canonical", k_max=3)
    assert benchmark_curve([], benchmark="canonical") == {"benchmark": "canonical", "k_max": 0, "curve": []}
    assert len(benchmark_curve(mm_rlhf_rows(), benchmark="canonical", k_max=1)["curve"]) == 1


# ---------------------------------------------------------------- which benchmark (the vote command)
def test_benchmark_read_from_the_eval_run(tmp_path):
    from r1rm.commands.vote import eval_benchmark
    from r1rm.config import load_config
    from r1rm.errors import ConfigError, DataError

    gen = tmp_path / "generations.jsonl"
    plain = load_config(None, [])
    assert eval_benchmark(plain, gen) == ("canonical", "eval.benchmark")  # no record: the config's
    assert eval_benchmark(load_config(None, ["eval.benchmark=genai-bench"]), gen) == ("genai-bench", "eval.benchmark")
    (tmp_path / "metrics.json").write_text(json.dumps({"benchmark": "multimodal-rewardbench"}))
    assert eval_benchmark(plain, gen) == ("multimodal-rewardbench", str(tmp_path / "metrics.json"))
    (tmp_path / "run.json").write_text(json.dumps({"eval.benchmark": "mm-rlhf-rewardbench"}))
    assert eval_benchmark(plain, gen) == ("mm-rlhf-rewardbench", str(tmp_path / "run.json"))
    same = load_config(None, ["eval.benchmark=mm-rlhf-rewardbench"])
    assert eval_benchmark(same, gen)[0] == "mm-rlhf-rewardbench"
    with pytest.raises(ConfigError, match="written by an eval of mm-rlhf-rewardbench") as e:
        eval_benchmark(load_config(None, ["eval.benchmark=vl-rewardbench"]), gen)
    assert "drop the eval.benchmark setting" in str(e.value)
    (tmp_path / "run.json").write_text("{broken")
    with pytest.raises(DataError, match="run.json is unreadable"):
        eval_benchmark(plain, gen)
