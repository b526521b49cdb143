"""Benchmark metrics from judge generations: accuracy per order and over both orders,
per-category tables, each benchmark's own overall figure, parse/position-bias rates. Pure.

METHOD §5. Input: the generation rows `r1rm eval` writes, one per generated sample:

    uid, id, category, group (prompt id or null), order ("chosen_first" | "chosen_second"),
    sample (0-based), choice (1 | 2 | None), choice_source ("tag" | "fallback" | None),
    correct (bool), p_choice (float | None), error (str | None)

Correctness is derived from `order` and `choice` (the chosen response is Response 1 in
"chosen_first" and Response 2 in "chosen_second"), so an unparsed answer is always wrong.
An item's accuracy in one order is the mean over its K samples.

Blocks (present only for the orders the rows hold):
    chosen_first / chosen_second   each order on its own (published harnesses report
                                   chosen_first, where an always-"1" judge scores 100 %)
    both_orders_mean               per item, the mean of its two orders' accuracies
    both_orders_strict             per sample index s: right in both orders; mean over s
                                   (a sample index missing from one order counts wrong)
The both_orders blocks cover the items judged in both orders.

Overall per benchmark (METHOD §5):
    vl-rewardbench          overall = accuracy over all pairs; macro = mean of the general /
                            hallucination / reasoning accuracies present
    multimodal-rewardbench  overall = macro = unweighted mean of the seven columns present
                            (correctness, preference, knowledge, math, coding, safety, vqa);
                            "overall_pairs" = accuracy over all pairs
    mm-rlhf-rewardbench     overall = Acc (pairs right); "acc_plus" = share of prompt groups all
                            of whose pairs are right (per sample index and order, averaged;
                            a row without a group is its own group); macro None
    canonical               overall = accuracy over all pairs; macro = mean over categories
Items without a category are counted under "uncategorized".
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from statistics import fmean
from typing import Any

ORDERS = ("chosen_first", "chosen_second")
BENCHMARKS = ("vl-rewardbench", "multimodal-rewardbench", "mm-rlhf-rewardbench", "genai-bench", "canonical")
VL_REWARDBENCH_CATEGORIES = ("general", "hallucination", "reasoning")
MMRB_COLUMNS = ("correctness", "preference", "knowledge", "math", "coding", "safety", "vqa")
UNCATEGORIZED = "uncategorized"
BLOCKS = ("chosen_first", "chosen_second", "both_orders_mean", "both_orders_strict")
# each benchmark's headline figures (keys of an accuracy block) with the names its paper prints
# them under: what a voting table compares one to one (METHOD §5)
HEADLINE_METRICS: dict[str, tuple[tuple[str, str], ...]] = {
    "vl-rewardbench": (("overall", "overall"), ("macro", "macro")),
    "multimodal-rewardbench": (("overall", "overall"),),  # the seven-column mean
    "mm-rlhf-rewardbench": (("overall", "Acc"), ("acc_plus", "Acc+")),
    "genai-bench": (("overall", "accuracy"),),  # over leftvote / rightvote pairs: ties are not scored
    "canonical": (("overall", "accuracy"),),
}


def expected_choice(order: str) -> int:
    """The right answer for a pair shown in `order`: 1 for chosen_first, 2 for chosen_second."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    return 1 if order == "chosen_first" else 2


def index_generations(rows: Iterable[Mapping[str, Any]]) -> tuple[dict, dict]:
    """Index rows as ({uid: {order: {sample: row}}}, {uid: (category, group)}); raises
    ValueError for a bad order, a missing key or a repeated (uid, order, sample)."""
    by_item: dict[str, dict[str, dict[int, Mapping[str, Any]]]] = {}
    info: dict[str, tuple[str, Any]] = {}
    for n, row in enumerate(rows, start=1):
        for key in ("uid", "order", "sample"):
            if row.get(key) is None:
                raise ValueError(f"generation row {n} has no '{key}'")
        uid, order, sample = str(row["uid"]), row["order"], int(row["sample"])
        expected_choice(order)
        samples = by_item.setdefault(uid, {}).setdefault(order, {})
        if sample in samples:
            raise ValueError(f"generation row {n} repeats uid {uid!r}, order {order!r}, sample {sample}")
        samples[sample] = row
        if uid not in info:
            info[uid] = (row.get("category") or UNCATEGORIZED, row.get("group"))
    return by_item, info


def _right(row: Mapping[str, Any]) -> float:
    return 1.0 if row.get("choice") == expected_choice(row["order"]) else 0.0


def compute_metrics(rows: Iterable[Mapping[str, Any]], *, benchmark: str, n_failures: int = 0) -> dict:
    """All metrics of one benchmark run from its generation rows (METHOD §5; see module doc).

    `n_failures`: samples the engine failed to produce (no row written); `error_rate` is the share of
    rows with an error plus these among all samples attempted."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark must be one of {', '.join(BENCHMARKS)}, got {benchmark!r}")
    rows = list(rows)
    by_item, info = index_generations(rows)
    n = len(rows)
    parsed = [r["choice"] for r in rows if r.get("choice") is not None]

    # per block: item accuracy and per-trial correctness (trial = (order, sample) or sample)
    blocks: dict[str, tuple[dict[str, float], dict[str, dict]]] = {}
    for order in ORDERS:
        accs, trials = {}, {}
        for uid, orders in by_item.items():
            if order in orders:
                t = {(order, s): _right(r) for s, r in orders[order].items()}
                accs[uid], trials[uid] = fmean(t.values()), t
        if accs:
            blocks[order] = (accs, trials)
    if len(blocks) == 2:
        both = [uid for uid, orders in by_item.items() if len(orders) == 2]
        first, second = blocks["chosen_first"], blocks["chosen_second"]
        blocks["both_orders_mean"] = (
            {uid: (first[0][uid] + second[0][uid]) / 2 for uid in both},
            {uid: {**first[1][uid], **second[1][uid]} for uid in both},
        )
        strict_accs, strict_trials = {}, {}
        for uid in both:
            cf, cs = by_item[uid]["chosen_first"], by_item[uid]["chosen_second"]
            t = {s: (_right(cf[s]) if s in cf else 0.0) * (_right(cs[s]) if s in cs else 0.0) for s in sorted(set(cf) | set(cs))}
            strict_accs[uid], strict_trials[uid] = fmean(t.values()), t
        blocks["both_orders_strict"] = (strict_accs, strict_trials)

    return {
        "benchmark": benchmark,
        "n_items": len(by_item),
        "n_generations": n,
        "parse_fail_rate": _share(sum(r.get("choice") is None for r in rows), n),
        "fallback_rate": _share(sum(r.get("choice_source") == "fallback" for r in rows), n),
        "error_rate": _share(sum(bool(r.get("error")) for r in rows) + n_failures, n + n_failures),
        "first_choice_rate": _share(sum(c == 1 for c in parsed), len(parsed)),
        "position_consistency": position_consistency(by_item),
        "accuracy": {
            name: accuracy_block(blocks[name][0], blocks[name][1], info=info, benchmark=benchmark)
            for name in BLOCKS
            if name in blocks
        },
    }


def _share(k: int, n: int) -> float | None:
    return k / n if n else None


def position_consistency(by_item: Mapping[str, Mapping[str, Mapping[int, Mapping[str, Any]]]]) -> float | None:
    """Share of items judged in both orders whose two orders pick the same underlying response,
    per sample index (present in both), averaged per item then over items; unparsed =
    inconsistent. None when no item has both orders (METHOD §5)."""
    per_item = []
    for orders in by_item.values():
        if len(orders) < 2:
            continue
        cf, cs = orders["chosen_first"], orders["chosen_second"]
        common = sorted(set(cf) & set(cs))
        if not common:
            continue
        # the same underlying response = different positions: (1, 2) both chosen, (2, 1) both rejected
        same = [
            1.0 if cf[s].get("choice") in (1, 2) and cs[s].get("choice") in (1, 2) and cf[s]["choice"] != cs[s]["choice"] else 0.0
            for s in common
        ]
        per_item.append(fmean(same))
    return fmean(per_item) if per_item else None


def accuracy_block(
    item_accuracy: Mapping[str, float],
    trials: Mapping[str, Mapping[Any, float]],
    *,
    info: Mapping[str, tuple[str, Any]],
    benchmark: str,
) -> dict:
    """One accuracy BLOCK {overall, macro, per_category, extras} from per-item accuracies and
    per-trial correctness, with the benchmark's own overall (METHOD §5)."""
    by_cat: dict[str, list[float]] = defaultdict(list)
    for uid, acc in item_accuracy.items():
        by_cat[info[uid][0]].append(acc)
    per_category = {c: {"n": len(v), "accuracy": fmean(v)} for c, v in sorted(by_cat.items())}
    pairs = fmean(item_accuracy.values()) if item_accuracy else None
    cat_acc = {c: v["accuracy"] for c, v in per_category.items()}
    block: dict[str, Any] = {"overall": pairs, "macro": None, "per_category": per_category}
    if benchmark == "vl-rewardbench":
        block["macro"] = _mean_or_none(cat_acc[c] for c in VL_REWARDBENCH_CATEGORIES if c in cat_acc)
    elif benchmark == "multimodal-rewardbench":
        seven = _mean_or_none(cat_acc[c] for c in MMRB_COLUMNS if c in cat_acc)
        block["overall"] = block["macro"] = seven
        block["overall_pairs"] = pairs
    elif benchmark == "mm-rlhf-rewardbench":
        block["acc_plus"] = acc_plus(trials, info=info)
    else:
        block["macro"] = _mean_or_none(cat_acc.values())
    return block


def acc_plus(trials: Mapping[str, Mapping[Any, float]], *, info: Mapping[str, tuple[str, Any]]) -> float | None:
    """MM-RLHF Acc+: share of prompt groups all of whose pairs are right, per trial (sample
    index, and order where the block pools orders), averaged; a missing trial counts wrong;
    an item without a group is its own group (METHOD §5)."""
    groups: dict[Any, list[str]] = defaultdict(list)
    for uid in trials:
        group = info[uid][1]
        groups[("uid", uid) if group is None else ("group", group)].append(uid)
    scores = []
    for uids in groups.values():
        keys = sorted({k for uid in uids for k in trials[uid]}, key=repr)
        scores.append(fmean(1.0 if all(trials[uid].get(k, 0.0) == 1.0 for uid in uids) else 0.0 for k in keys))
    return fmean(scores) if scores else None


def _mean_or_none(values: Iterable[float]) -> float | None:
    values = list(values)
    return fmean(values) if values else None


# ---------------------------------------------------------------- report
def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def format_report(metrics: Mapping[str, Any]) -> str:
    """Markdown for report.md: run summary, per-order overall/macro/extras, per-category table."""
    acc = metrics.get("accuracy", {})
    lines = [
        f"## {metrics['benchmark']}",
        "",
        f"{metrics['n_items']} items, {metrics['n_generations']} generations. "
        "Accuracies in %. chosen_first is the order published harnesses report.",
        "",
    ]
    skipped = metrics.get("skipped_by_reason") or {}
    if skipped:  # e.g. GenAI-Bench's tievote / bothbad_vote items: counted, never scored
        lines += ["Not scored: " + ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())) + " (skipped.jsonl).", ""]
    lines += [
        "| rate | value |",
        "|---|---|",
        f"| parse failures | {_pct(metrics.get('parse_fail_rate'))} |",
        f"| fallback answers (no `<answer>` tag) | {_pct(metrics.get('fallback_rate'))} |",
        f"| generation errors | {_pct(metrics.get('error_rate'))} |",
        f"| first-choice rate (position bias; 50 = none) | {_pct(metrics.get('first_choice_rate'))} |",
        f"| position consistency | {_pct(metrics.get('position_consistency'))} |",
        "",
    ]
    if not acc:
        return "\n".join([*lines, "No accuracy: no generation rows.", ""])
    extras = sorted({k for b in acc.values() for k in b if k not in ("overall", "macro", "per_category")})
    head = ["order", "overall", "macro", *extras]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, block in acc.items():
        cells = [name, _pct(block["overall"]), _pct(block["macro"]), *(_pct(block.get(k)) for k in extras)]
        lines.append("| " + " | ".join(cells) + " |")
    cats = sorted({c for b in acc.values() for c in b["per_category"]})
    lines += ["", "### Per category", "", "| category | n | " + " | ".join(acc) + " |", "|" + "---|" * (len(acc) + 2)]
    for c in cats:
        n = max(b["per_category"][c]["n"] for b in acc.values() if c in b["per_category"])
        cells = [_pct(b["per_category"][c]["accuracy"]) if c in b["per_category"] else "–" for b in acc.values()]
        lines.append(f"| {c} | {n} | " + " | ".join(cells) + " |")
    return "\n".join([*lines, ""])


def improved_best(best: Mapping[str, Any] | None, *, value: float, step: int, metric: str) -> dict | None:
    """rl.keep_best: the new best record when `value` beats `best` (strictly: a tie keeps the
    earlier step; a NaN never wins), else None."""
    if value != value:
        return None
    if best is not None and not value > best["value"]:
        return None
    return {"step": step, "metric": metric, "value": value}
