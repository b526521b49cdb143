"""Test-time scaling: accuracy of Voting@k, Any@k, probability-weighted voting and early-stopped
voting as k grows, from K sampled judgments per pair and order. Pure.

METHOD §5 (R1-Reward samples K times at temperature 1.0 and reports Voting@K and Any@K).
Input: the generation rows of `r1rm eval` (see metrics.py). A unit is one (uid, order); its
first k samples by `sample` index vote. The right answer of a unit is 1 for chosen_first
and 2 for chosen_second (derived from `order`, never from row position). Unparsed samples
(choice None) cast no vote.

    majority     the most frequent choice; a tie goes to the choice with the larger summed
                 p_choice (None counts 0); a remaining tie, or no vote at all, is wrong
    any          right if any of the k samples is right (Any@k)
    weighted     the choice with the larger summed weight, weight = p_choice, or 1.0 for a
                 sample without p_choice (an engine that cannot score choices falls back to
                 plain counting); a tie is wrong
    early_stop   sequential majority over the k samples that stops as soon as the leader's
                 lead over the runner-up is strictly larger than the samples left; scored like
                 majority on the samples used; early_stop_mean_samples = mean samples used
Pooled values are means over all units of both orders; `per_order` gives them per order.
The default k_max is the largest sample count of any unit; a unit with fewer samples votes
with all it has.

`benchmark_curve` scores the same verdicts in the benchmark's own terms, as `r1rm eval` does
(metrics.compute_metrics on one verdict row per unit, the rule's choice standing in for a
sample's; Any@k's verdict is the right answer when a sample gives it, else none): per order,
both orders (mean and strict), per category, macro, Acc+, the seven-column mean. At k = 1
every rule's verdict is sample 0's answer, so k = 1 equals eval's metrics of the sample-0 rows
(eval's own numbers when eval.k = 1). `headline_table` flattens it to the benchmark's
headline figures (metrics.HEADLINE_METRICS) per k, rule and order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from statistics import fmean
from typing import Any

from r1rm.core.metrics import BLOCKS, HEADLINE_METRICS, compute_metrics

ORDERS = ("chosen_first", "chosen_second")
RULES = ("majority", "any", "weighted", "early_stop")


def _expected(order: str) -> int:
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    return 1 if order == "chosen_first" else 2


def majority_choice(samples: Sequence[Mapping[str, Any]]) -> int | None:
    """Most frequent parsed choice; ties broken by the larger summed p_choice (None = 0);
    None on a remaining tie or with no parsed answer (METHOD §5 Voting@k)."""
    counts: dict[int, int] = defaultdict(int)
    mass: dict[int, float] = defaultdict(float)
    for s in samples:
        c = s.get("choice")
        if c is not None:
            counts[c] += 1
            mass[c] += s.get("p_choice") or 0.0
    if not counts:
        return None
    ranked = sorted(counts, key=lambda c: (counts[c], mass[c]), reverse=True)
    if len(ranked) > 1 and (counts[ranked[0]], mass[ranked[0]]) == (counts[ranked[1]], mass[ranked[1]]):
        return None
    return ranked[0]


def weighted_choice(samples: Sequence[Mapping[str, Any]]) -> int | None:
    """Choice with the larger summed p_choice (1.0 for a sample without one); None on a tie
    or with no parsed answer."""
    weight: dict[int, float] = defaultdict(float)
    for s in samples:
        c = s.get("choice")
        if c is not None:
            p = s.get("p_choice")
            weight[c] += 1.0 if p is None else p
    if not weight:
        return None
    ranked = sorted(weight, key=weight.__getitem__, reverse=True)
    if len(ranked) > 1 and weight[ranked[0]] == weight[ranked[1]]:
        return None
    return ranked[0]


def early_stop_choice(samples: Sequence[Mapping[str, Any]]) -> tuple[int | None, int]:
    """Sequential majority over `samples` (a budget of len(samples)): stop once the leader's
    lead is strictly larger than the samples left. Returns (majority_choice of the samples
    used, samples used)."""
    counts: dict[int, int] = defaultdict(int)
    budget = len(samples)
    used = budget
    for i, s in enumerate(samples, start=1):
        c = s.get("choice")
        if c is not None:
            counts[c] += 1
        top = sorted(counts.values(), reverse=True) + [0, 0]
        if top[0] - top[1] > budget - i:
            used = i
            break
    return majority_choice(samples[:used]), used


def _units(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    units: dict[tuple[str, str], dict[int, Mapping[str, Any]]] = defaultdict(dict)
    for n, row in enumerate(rows, start=1):
        for key in ("uid", "order", "sample"):
            if row.get(key) is None:
                raise ValueError(f"generation row {n} has no '{key}'")
        _expected(row["order"])
        unit = units[(str(row["uid"]), row["order"])]
        if int(row["sample"]) in unit:
            raise ValueError(f"generation row {n} repeats uid {row['uid']!r}, order {row['order']!r}, sample {row['sample']}")
        unit[int(row["sample"])] = row
    return {key: [unit[s] for s in sorted(unit)] for key, unit in units.items()}


def verdicts(samples: Sequence[Mapping[str, Any]], order: str) -> tuple[dict[str, int | None], int]:
    """Each rule's verdict on one unit's samples ({rule: 1 | 2 | None}; any: the right answer if
    a sample gives it, else None) and the samples early stopping used (METHOD §5)."""
    right = _expected(order)
    stop_choice, used = early_stop_choice(samples)
    return {
        "majority": majority_choice(samples),
        "any": right if any(s.get("choice") == right for s in samples) else None,
        "weighted": weighted_choice(samples),
        "early_stop": stop_choice,
    }, used


def _score(samples: Sequence[Mapping[str, Any]], order: str) -> dict[str, float]:
    right = _expected(order)
    verdict, used = verdicts(samples, order)
    return {**{rule: float(verdict[rule] == right) for rule in RULES}, "early_stop_mean_samples": float(used)}


def _mean_entry(k: int, scores: list[dict[str, float]]) -> dict[str, float | int]:
    keys = (*RULES, "early_stop_mean_samples")
    return {"k": k, **{key: fmean(s[key] for s in scores) for key in keys}}


def _checked_k_max(units: Mapping[Any, Sequence], k_max: int | None) -> int:
    most = max(len(s) for s in units.values())
    if k_max is None:
        return most
    if k_max < 1 or k_max > most:
        raise ValueError(f"k_max must be between 1 and {most} (the most samples any pair has), got {k_max}")
    return k_max


def vote_curve(rows: Iterable[Mapping[str, Any]], *, k_max: int | None = None) -> dict:
    """Voting@k / Any@k / weighted / early-stop accuracy for k = 1..k_max, pooled over both
    orders and per order (METHOD §5 test-time scaling; see module doc)."""
    units = _units(rows)
    if not units:
        return {"k_max": 0, "curve": [], "per_order": {}}
    k_max = _checked_k_max(units, k_max)
    curve = []
    per_order: dict[str, list] = {o: [] for o in ORDERS if any(key[1] == o for key in units)}
    for k in range(1, k_max + 1):
        scored = {key: _score(samples[:k], key[1]) for key, samples in units.items()}
        curve.append(_mean_entry(k, list(scored.values())))
        for o in per_order:
            per_order[o].append(_mean_entry(k, [v for key, v in scored.items() if key[1] == o]))
    return {"k_max": k_max, "curve": curve, "per_order": per_order}


def benchmark_curve(rows: Iterable[Mapping[str, Any]], *, benchmark: str, k_max: int | None = None) -> dict:
    """Every rule's verdicts at k = 1..k_max scored by the benchmark's own metrics:
    {benchmark, k_max, curve: [{k, rule: {block: eval's accuracy block}}]} (METHOD §5; module doc)."""
    if benchmark not in HEADLINE_METRICS:
        raise ValueError(f"benchmark must be one of {', '.join(HEADLINE_METRICS)}, got {benchmark!r}")
    units = _units(rows)
    if not units:
        return {"benchmark": benchmark, "k_max": 0, "curve": []}
    k_max = _checked_k_max(units, k_max)
    curve = []
    for k in range(1, k_max + 1):
        chosen = {key: verdicts(samples[:k], key[1])[0] for key, samples in units.items()}
        entry: dict[str, Any] = {"k": k}
        for rule in RULES:
            # one verdict row per unit, carrying the unit's category and prompt group (its sample 0's)
            verdict_rows = [
                {"uid": uid, "id": units[(uid, order)][0].get("id"), "category": units[(uid, order)][0].get("category"),
                 "group": units[(uid, order)][0].get("group"), "order": order, "sample": 0, "choice": choice[rule]}
                for (uid, order), choice in chosen.items()
            ]
            entry[rule] = compute_metrics(verdict_rows, benchmark=benchmark)["accuracy"]
        curve.append(entry)
    return {"benchmark": benchmark, "k_max": k_max, "curve": curve}


def headline_table(curve: Mapping[str, Any]) -> list[dict]:
    """Rows {k, rule, order, <headline key>: value} of a benchmark_curve: the benchmark's headline
    figures (metrics.HEADLINE_METRICS) for every k, rule and order block present."""
    keys = [key for key, _ in HEADLINE_METRICS[curve["benchmark"]]]
    return [
        {"k": entry["k"], "rule": rule, "order": block, **{key: entry[rule][block].get(key) for key in keys}}
        for entry in curve["curve"]
        for rule in RULES
        for block in BLOCKS
        if block in entry[rule]
    ]


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def format_votes(curve: Mapping[str, Any], plain: Mapping[str, Any], *, source: str) -> str:
    """Markdown for votes.md: per order block, a row per k with each rule's headline figures
    (benchmark_curve `curve`) and early stopping's mean samples (vote_curve `plain`)."""
    heads = HEADLINE_METRICS[curve["benchmark"]]
    lines = [
        f"## Voting on {curve['benchmark']}, k = 1..{curve['k_max']}",
        "",
        f"Benchmark from {source}. Values in %. Each rule's verdict per pair and order over its first k "
        "samples, scored as `r1rm eval` scores the benchmark (k = 1: sample 0 alone). Published voting "
        "tables (R1-Reward's Voting@k) compare with `majority` in chosen_first.",
        "",
    ]
    blocks = [b for b in BLOCKS if curve["curve"] and b in curve["curve"][0][RULES[0]]]
    for block in blocks:
        steps = plain["per_order"].get(block) or plain["curve"]
        head = ["k", *(f"{rule.replace('_', '-')} {label}" for rule in RULES for _, label in heads), "early-stop samples"]
        lines += [f"### {block}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for entry, step in zip(curve["curve"], steps, strict=True):
            cells = [_pct(entry[rule][block].get(key)) for rule in RULES for key, _ in heads]
            lines.append(f"| {entry['k']} | " + " | ".join(cells) + f" | {step['early_stop_mean_samples']:.2f} |")
        lines.append("")
    return "\n".join(lines)
