"""Rewards for RL on a generative reward model (METHOD §2, §6). Pure functions of strings.

- format ∈ {0, 1}: the strict R1-Reward format (or the MSRL one with <type>);
- result ∈ {0, 1}: the first <answer>…</answer> equals the label;
- consistency ∈ {−1, 0, +1}: does the reasoning's conclusion agree with the answer? Decided
  by a checker: `rule_consistency` here (no model), or a model (r1rm.runtime.consistency);
- total = result × (1 + w_c × consistency) + w_f × format (+ w_t × type for MSRL).
A malformed output is data: it earns what it earns, never an exception and never a free reward.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from r1rm.core.parsing import answer_matches, extract_answer, extract_tag, format_ok, format_ok_msrl
from r1rm.core.prompts import PHRASE_TO_TASK_TYPE

# "Response 2 is better / correct / preferred / the better one", "choose Response 1", "so 2"
_CONCLUSION = re.compile(
    r"(?:response|answer|option)\s*([12])\s*(?:is|was|seems|appears)\s*(?:the\s+)?(?:better|correct|preferred|more\s+\w+|superior|right)"
    r"|(?:choose|prefer|pick|select|favou?r)\s*(?:response|answer|option)?\s*([12])\b"
    r"|(?:better|preferred|correct)\s+(?:response|answer|option)\s+is\s*([12])\b",
    re.IGNORECASE,
)


def format_reward(text: str, *, prompt: str = "r1reward", require_type: bool = True) -> float:
    """1.0 when the output follows the prompt's format exactly (METHOD §2), else 0.0."""
    ok = format_ok(text) if prompt == "r1reward" else format_ok_msrl(text, require_type=require_type)
    return 1.0 if ok else 0.0


def result_reward(text: str, label: int) -> float:
    """1.0 when the first <answer>…</answer> holds the label, else 0.0."""
    return 1.0 if answer_matches(text, label) else 0.0


def stated_conclusion(reasoning: str) -> int | None:
    """The response the reasoning last declares better, or None when it declares none."""
    found = None
    for m in _CONCLUSION.finditer(reasoning):
        found = int(next(g for g in m.groups() if g))
    return found


def rule_consistency(text: str) -> int:
    """Deterministic consistency judge: +1 when the <think> text's last stated conclusion names
    the same response as <answer>, −1 when it names the other, 0 when either is missing."""
    answer = extract_answer(text, allow_fallback=False).choice
    reasoning = extract_tag(text, "think")
    if answer is None or reasoning is None:
        return 0
    said = stated_conclusion(reasoning)
    if said is None:
        return 0
    return 1 if said == answer else -1


def type_reward(text: str, task_type: str) -> float:
    """MSRL: 1.0 when <type>…</type> names the sample's task type, else 0.0."""
    said = extract_tag(text, "type")
    if said is None:
        return 0.0
    return 1.0 if PHRASE_TO_TASK_TYPE.get(said.strip().lower()) == task_type else 0.0


def combine(*, fmt: float, result: float, consistency: float, type_score: float = 0.0, format_weight: float = 0.5,
            consistency_weight: float = 0.5, type_weight: float = 0.0) -> float:
    """total = result × (1 + w_c × consistency) + w_f × format + w_t × type (METHOD §2, §6).
    With the paper's weights the total is one of {0, 0.5, 1, 1.5, 2}."""
    return result * (1.0 + consistency_weight * consistency) + format_weight * fmt + type_weight * type_score


def order_agreement(results: Sequence[float], valid: Sequence[float], n: int) -> list[float]:
    """rl.order_consistency_weight: per sample, 1 − |its result − the mean result of the same item's
    valid samples in the other order|. `results` and `valid` run item by item, each item's n samples
    as given, then its n samples with the responses swapped (rl.both_orders). A masked sample, or one
    whose other order has no valid sample, gets 0.

    A judge right in one order only (answering by position) earns 0 in both; right in both, or wrong in
    both, earns 1: the term rewards order-independence, and the result term decides which side is right.
    """
    if n < 1 or len(results) != len(valid) or len(results) % (2 * n):
        raise ValueError(f"{len(results)} results (valid: {len(valid)}) are not items of 2 x {n} samples")
    out = [0.0] * len(results)
    for start in range(0, len(results), 2 * n):
        means = []
        for o in (0, 1):
            block = range(start + o * n, start + (o + 1) * n)
            ok = [results[k] for k in block if valid[k]]
            means.append(sum(ok) / len(ok) if ok else None)
        for o in (0, 1):
            other = means[1 - o]
            for k in range(start + o * n, start + (o + 1) * n):
                if valid[k] and other is not None:
                    out[k] = 1.0 - abs(results[k] - other)
    return out


def judge_phrase(choice: int) -> str:
    """The released code's answer phrase sent to the consistency judge."""
    return f"response {choice} is better"


def judge_request_text(text: str) -> str | None:
    """Text-only consistency-judge prompt in the released code's manner: the last 3 lines of the
    reasoning joined by ';' and the phrase for the answer. None when there is nothing to judge."""
    reasoning = extract_tag(text, "think")
    answer = extract_answer(text, allow_fallback=False).choice
    if reasoning is None or answer is None:
        return None
    lines = [ln.strip() for ln in reasoning.strip().splitlines() if ln.strip()]
    tail = ";".join(lines[-3:])
    return (
        "Below is the end of a reasoning process that compares two responses, and its final verdict.\n"
        f"Reasoning: {tail}\n"
        f"Verdict: {judge_phrase(answer)}\n"
        "Does the reasoning support the verdict? Reply with 1 if it does and 0 if it does not."
    )


def read_judge_reply(reply: str) -> int | None:
    """The first standalone 1 or 0 in the judge's reply → +1 / −1; None when it holds neither."""
    m = re.search(r"(?<!\d)([01])(?!\d)", reply or "")
    if not m:
        return None
    return 1 if m.group(1) == "1" else -1
