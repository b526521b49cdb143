import pytest

from r1rm.core.metrics import BLOCKS, compute_metrics, format_report

ORDERS = ("chosen_first", "chosen_second")


def gen(uid, order, choice, *, sample=0, category="general", group=None, p=None, source="tag", error=None):
    """One generation row as `r1rm eval` writes it."""
    right = 1 if order == "chosen_first" else 2
    return {
        "uid": uid, "id": uid, "category": category, "group": group, "order": order, "sample": sample,
        "choice": choice, "choice_source": source if choice is not None else None,
        "correct": choice == right, "p_choice": p, "error": error,
    }


def both(uid, cf, cs, **kw):
    """Rows for one item in both orders; cf / cs are the choices (lists for K samples)."""
    cf = cf if isinstance(cf, list) else [cf]
    cs = cs if isinstance(cs, list) else [cs]
    return [gen(uid, "chosen_first", c, sample=s, **kw) for s, c in enumerate(cf)] + [
        gen(uid, "chosen_second", c, sample=s, **kw) for s, c in enumerate(cs)
    ]


def test_exact_keys():
    m = compute_metrics(both("a", 1, 2), benchmark="canonical")
    assert set(m) == {
        "benchmark", "n_items", "n_generations", "parse_fail_rate", "fallback_rate", "error_rate",
        "first_choice_rate", "position_consistency", "accuracy",
    }
    assert list(m["accuracy"]) == list(BLOCKS)
    for block in m["accuracy"].values():
        assert set(block) == {"overall", "macro", "per_category"}


@pytest.mark.parametrize("benchmark", ["vl-rewardbench", "canonical", "mm-rlhf-rewardbench"])
def test_always_one_judge_is_exposed_by_both_orders(benchmark):
    rows = [r for i, cat in enumerate(["general", "hallucination", "reasoning", "general"])
            for r in both(f"u{i}", 1, 1, category=cat, group=f"g{i // 2}")]
    m = compute_metrics(rows, benchmark=benchmark)
    acc = m["accuracy"]
    assert acc["chosen_first"]["overall"] == 1.0
    assert acc["chosen_second"]["overall"] == 0.0
    assert acc["both_orders_mean"]["overall"] == 0.5
    assert acc["both_orders_strict"]["overall"] == 0.0
    assert m["first_choice_rate"] == 1.0
    assert m["position_consistency"] == 0.0
    assert m["n_items"] == 4 and m["n_generations"] == 8


def test_perfect_judge():
    rows = [r for i in range(5) for r in both(f"u{i}", 1, 2, category=["general", "reasoning"][i % 2], group=f"g{i % 2}")]
    for benchmark in ("vl-rewardbench", "canonical", "mm-rlhf-rewardbench"):
        m = compute_metrics(rows, benchmark=benchmark)
        for block in m["accuracy"].values():
            assert block["overall"] == 1.0
            assert all(c["accuracy"] == 1.0 for c in block["per_category"].values())
            if block["macro"] is not None:
                assert block["macro"] == 1.0
        assert m["position_consistency"] == 1.0
        assert m["first_choice_rate"] == 0.5
        assert m["parse_fail_rate"] == 0.0
    assert compute_metrics(rows, benchmark="mm-rlhf-rewardbench")["accuracy"]["both_orders_strict"]["acc_plus"] == 1.0


def test_vl_rewardbench_macro_hand_computed():
    # chosen_first: general 1/1, hallucination 1/3, reasoning 2/2 -> overall 4/6, macro (1 + 1/3 + 1) / 3
    spec = [("g1", "general", 1), ("h1", "hallucination", 1), ("h2", "hallucination", 2), ("h3", "hallucination", None),
            ("r1", "reasoning", 1), ("r2", "reasoning", 1)]
    rows = [gen(uid, "chosen_first", c, category=cat) for uid, cat, c in spec]
    m = compute_metrics(rows, benchmark="vl-rewardbench")
    assert list(m["accuracy"]) == ["chosen_first"]  # only the order present
    block = m["accuracy"]["chosen_first"]
    assert block["overall"] == pytest.approx(4 / 6)
    assert block["macro"] == pytest.approx(7 / 9)
    assert block["per_category"] == {
        "general": {"n": 1, "accuracy": 1.0},
        "hallucination": {"n": 3, "accuracy": pytest.approx(1 / 3)},
        "reasoning": {"n": 2, "accuracy": 1.0},
    }
    assert list(block["per_category"]) == sorted(block["per_category"])
    assert m["position_consistency"] is None


def test_mm_rlhf_acc_plus_over_groups():
    # g1: a, b right; g2: c wrong; g3: d, e right, f wrong -> Acc 4/6, Acc+ 1/3
    spec = [("a", "g1", 1), ("b", "g1", 1), ("c", "g2", 2), ("d", "g3", 1), ("e", "g3", 1), ("f", "g3", 2)]
    rows = [gen(uid, "chosen_first", c, group=g, category="mcq") for uid, g, c in spec]
    # chosen_second: every pair right except d -> Acc 5/6, Acc+ 2/3 (g1, g2)
    rows += [gen(uid, "chosen_second", 1 if uid == "d" else 2, group=g, category="mcq") for uid, g, _ in spec]
    acc = compute_metrics(rows, benchmark="mm-rlhf-rewardbench")["accuracy"]
    assert acc["chosen_first"]["overall"] == pytest.approx(4 / 6)
    assert acc["chosen_first"]["acc_plus"] == pytest.approx(1 / 3)
    assert acc["chosen_first"]["macro"] is None
    assert acc["chosen_second"]["acc_plus"] == pytest.approx(2 / 3)
    assert acc["both_orders_mean"]["acc_plus"] == pytest.approx(0.5)
    # strict: right in both orders: a, b (g1) only -> 1/3
    assert acc["both_orders_strict"]["overall"] == pytest.approx(3 / 6)
    assert acc["both_orders_strict"]["acc_plus"] == pytest.approx(1 / 3)


def test_mm_rlhf_rows_without_group_are_their_own_group():
    rows = [gen("a", "chosen_first", 1), gen("b", "chosen_first", 2)]
    assert compute_metrics(rows, benchmark="mm-rlhf-rewardbench")["accuracy"]["chosen_first"]["acc_plus"] == 0.5


def test_mmrb_overall_is_mean_of_seven_columns():
    spec = {  # column: choices in chosen_first (1 = right)
        "correctness": [1, 2], "preference": [1], "knowledge": [2], "math": [1],
        "coding": [1, 1, 2], "safety": [1], "vqa": [2],
    }
    rows = [gen(f"{col}{i}", "chosen_first", c, category=col) for col, cs in spec.items() for i, c in enumerate(cs)]
    block = compute_metrics(rows, benchmark="multimodal-rewardbench")["accuracy"]["chosen_first"]
    seven = (0.5 + 1 + 0 + 1 + 2 / 3 + 1 + 0) / 7
    assert block["overall"] == pytest.approx(seven)
    assert block["macro"] == pytest.approx(seven)
    assert block["overall_pairs"] == pytest.approx(6 / 10)
    # only the columns present count
    two = compute_metrics([r for r in rows if r["category"] in ("correctness", "math")], benchmark="multimodal-rewardbench")
    assert two["accuracy"]["chosen_first"]["overall"] == pytest.approx((0.5 + 1) / 2)


def test_unparsed_counts_wrong_and_rates():
    rows = [
        gen("a", "chosen_first", 1),
        gen("b", "chosen_first", 1, source="fallback"),
        {**gen("c", "chosen_first", None), "correct": True},  # a lying `correct` is not trusted
        gen("d", "chosen_first", None, error="timeout"),
    ]
    m = compute_metrics(rows, benchmark="canonical")
    assert m["accuracy"]["chosen_first"]["overall"] == 0.5
    assert m["parse_fail_rate"] == 0.5
    assert m["error_rate"] == 0.25
    assert m["fallback_rate"] == 0.25
    assert m["first_choice_rate"] == 1.0


def test_k3_samples():
    # chosen_first [1, 1, 2] -> 2/3; chosen_second [2, 1, 2] -> 2/3
    rows = both("x", [1, 1, 2], [2, 1, 2], category="c")
    m = compute_metrics(rows, benchmark="canonical")
    acc = m["accuracy"]
    assert acc["chosen_first"]["overall"] == pytest.approx(2 / 3)
    assert acc["chosen_second"]["overall"] == pytest.approx(2 / 3)
    assert acc["both_orders_mean"]["overall"] == pytest.approx(2 / 3)
    # per sample: (right, right), (right, wrong), (wrong, right)
    assert acc["both_orders_strict"]["overall"] == pytest.approx(1 / 3)
    # same underlying response only at sample 0 (1 then 2)
    assert m["position_consistency"] == pytest.approx(1 / 3)
    assert m["first_choice_rate"] == pytest.approx(3 / 6)
    assert m["n_items"] == 1 and m["n_generations"] == 6
    # canonical macro = mean over categories
    rows += both("y", [2, 2, 2], [2, 2, 2], category="d")
    block = compute_metrics(rows, benchmark="canonical")["accuracy"]["chosen_first"]
    assert block["macro"] == pytest.approx((2 / 3 + 0) / 2)
    assert block["overall"] == pytest.approx((2 / 3 + 0) / 2)


def test_unparsed_is_position_inconsistent():
    m = compute_metrics(both("a", None, 2) + both("b", 2, 1), benchmark="canonical")
    assert m["position_consistency"] == 0.5  # b picks the rejected response in both orders: consistent


def test_bad_rows_raise():
    with pytest.raises(ValueError, match="order"):
        compute_metrics([gen("a", "first", 1)], benchmark="canonical")
    with pytest.raises(ValueError, match="repeats"):
        compute_metrics([gen("a", "chosen_first", 1), gen("a", "chosen_first", 2)], benchmark="canonical")
    with pytest.raises(ValueError, match="benchmark"):
        compute_metrics([], benchmark="rewardbench")
    empty = compute_metrics([], benchmark="canonical")
    assert empty["accuracy"] == {} and empty["parse_fail_rate"] is None


def test_format_report_tables():
    rows = [r for uid, g in (("a", "g1"), ("b", "g1"), ("c", "g2")) for r in both(uid, 1, 2, group=g, category="mcq")]
    rows += both("d", 1, 1, group="g2", category="video")
    text = format_report(compute_metrics(rows, benchmark="mm-rlhf-rewardbench"))
    assert text.startswith("## mm-rlhf-rewardbench")
    assert "| order | overall | macro | acc_plus |" in text
    assert "| chosen_first | 100.00 | – | 100.00 |" in text
    assert "| chosen_second | 75.00 | – | 50.00 |" in text
    assert "| category | n | chosen_first | chosen_second | both_orders_mean | both_orders_strict |" in text
    assert "| video | 1 | 100.00 | 0.00 | 50.00 | 0.00 |" in text
    assert "| position consistency | 75.00 |" in text
    assert "No accuracy" in format_report(compute_metrics([], benchmark="canonical"))


# ---------------------------------------------------------------- rl.keep_best
def test_improved_best_is_strict_and_ignores_nan():
    from r1rm.core.metrics import improved_best

    first = improved_best(None, value=0.4, step=10, metric="both_orders_strict")
    assert first == {"step": 10, "metric": "both_orders_strict", "value": 0.4}
    assert improved_best(first, value=0.4, step=20, metric="both_orders_strict") is None  # a tie keeps step 10
    assert improved_best(first, value=0.3, step=20, metric="both_orders_strict") is None
    assert improved_best(first, value=float("nan"), step=20, metric="both_orders_strict") is None
    assert improved_best(None, value=float("nan"), step=20, metric="both_orders_strict") is None
    assert improved_best(first, value=0.45, step=30, metric="both_orders_strict")["step"] == 30


def _fake_best(d, step):
    import json

    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"w%d" % step)
    (d / "best.json").write_text(json.dumps({"step": step, "metric": "both_orders_strict", "value": step / 100}))


def test_recover_best_finishes_or_undoes_an_interrupted_swap(tmp_path):
    from r1rm.runtime.checkpoint import recover_best

    # killed between the renames: the complete new one (.tmp-best with best.json) goes in
    a = tmp_path / "a"
    _fake_best(a / ".tmp-best", 20)
    _fake_best(a / ".del-best", 10)
    assert recover_best(a)["step"] == 20
    assert (a / "best" / "model.safetensors").read_bytes() == b"w20"
    assert sorted(p.name for p in a.iterdir()) == ["best"]
    # killed while the new one was being written (no best.json yet) after the old was moved: old back
    b = tmp_path / "b"
    _fake_best(b / ".del-best", 10)
    (b / ".tmp-best").mkdir()
    (b / ".tmp-best" / "model.safetensors").write_bytes(b"half")
    assert recover_best(b)["step"] == 10
    assert sorted(p.name for p in b.iterdir()) == ["best"]
    # killed while writing a new one, the old one still in place: the partial one is dropped
    c = tmp_path / "c"
    _fake_best(c / "best", 10)
    (c / ".tmp-best").mkdir()
    assert recover_best(c)["step"] == 10 and sorted(p.name for p in c.iterdir()) == ["best"]
    # nothing saved yet
    assert recover_best(tmp_path / "d") is None
