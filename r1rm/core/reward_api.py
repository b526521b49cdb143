"""The reward API's pure pieces (`r1rm judge --serve`: /v1/judge, /v1/rank, /get_reward).

**p1**, the probability that response 1 is better, from a judge's samples of one pair:
- per sample, the answer token's probabilities renormalised over {1, 2} (`Sample.choice_probs`, whose
  value at the parsed answer is the `p_choice` that `r1rm judge` and eval record) give P(the response
  shown first is better) = P("1"); in the swapped order response 1 is shown second, so that sample's
  p1 is its P("2");
- a parsed sample without probabilities (an endpoint without logprobs, an answer found by the fallback
  parse) counts as a vote: p1 = 1.0 or 0.0, so with no probabilities at all p1 is the vote share;
- p1 = the mean over the orders of the mean over each order's parsed samples (an order with none is
  left out), so a position-biased judge's orders still cancel when one order has more unparsed
  samples; a sample with no parsed answer is left out and counted; with none parsed, p1 = 0.5 and the
  choice is None;
- choice = 1 when p1 > 0.5, 2 when p1 < 0.5, None at exactly 0.5.

With one greedy sample per order this is `r1rm judge`'s verdict: orders that agree give their choice,
orders that disagree give the one with the larger P(choice) (p1 > 0.5 exactly when P("1") as given
exceeds P("1") swapped), and without probabilities a disagreement is undecided.

**OpenRLHF queries** (`POST /get_reward`): a query is the chat-templated prompt followed by the policy's
response; the question and the response are recovered from its text (`question_from_prompt`,
`response_from_query`), images travel as data URLs (`pop_data_urls`).

Standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

ORDERS = ("as_given", "swapped")


@dataclass(frozen=True)
class SampleVerdict:
    """One judge sample: the order it was shown in, its parsed answer as shown (1 = the response shown
    first; None = no answer), and {1: P("1"), 2: P("2")} at the answer token (None = unknown)."""

    order: str
    raw_choice: int | None
    probs: Mapping[int, float] | None = None


@dataclass(frozen=True)
class JudgeAggregate:
    """A pair's verdict over every sample: `choice` (1/2/None, response 1's numbering), `p1`, where p1
    came from (`p1_source`: "probs", "votes", "mixed", or None when nothing parsed), whether the orders'
    verdicts agree (None with one order or none decided), votes and unparsed samples per order."""

    choice: int | None
    p1: float
    p1_source: str | None
    orders_agree: bool | None
    order_choices: dict[str, int | None] = field(default_factory=dict)
    votes: dict[int, int] = field(default_factory=dict)
    unparsed: dict[str, int] = field(default_factory=dict)

    @property
    def n_unparsed(self) -> int:
        return sum(self.unparsed.values())


def _check_order(order: str) -> None:
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")


def to_response1(raw_choice: int | None, order: str) -> int | None:
    """A choice as shown in `order` → the same verdict in response 1's numbering."""
    _check_order(order)
    if raw_choice is None:
        return None
    return raw_choice if order == "as_given" else 3 - raw_choice


def sample_p1(v: SampleVerdict) -> float | None:
    """P(response 1 is better) from one sample: its renormalised P of the choice naming response 1, or a
    hard vote (1.0 / 0.0) without probabilities; None when the sample has no parsed answer."""
    _check_order(v.order)
    if v.raw_choice is None:
        return None
    shown = 1 if v.order == "as_given" else 2  # where response 1 was shown
    probs = v.probs
    if probs is not None and probs.get(1) is not None and probs.get(2) is not None and probs[1] + probs[2] > 0:
        return float(probs[shown]) / float(probs[1] + probs[2])
    return 1.0 if v.raw_choice == shown else 0.0


def _choice_from_p1(p1: float) -> int | None:
    return 1 if p1 > 0.5 else 2 if p1 < 0.5 else None


def order_choice(verdicts: Sequence[SampleVerdict]) -> int | None:
    """One order's verdict in response 1's numbering: the majority of its parsed samples, a tied vote
    broken by their mean p1; None when nothing parsed or still tied."""
    mapped = [to_response1(v.raw_choice, v.order) for v in verdicts]
    ones, twos = mapped.count(1), mapped.count(2)
    if ones != twos:
        return 1 if ones > twos else 2
    ps = [p for p in (sample_p1(v) for v in verdicts) if p is not None]
    return _choice_from_p1(sum(ps) / len(ps)) if ps else None


def aggregate_p1(verdicts: Sequence[SampleVerdict]) -> JudgeAggregate:
    """Every sample of one pair (any orders, any number each) → its JudgeAggregate (module docstring)."""
    by_order: dict[str, list[SampleVerdict]] = {}
    for v in verdicts:
        _check_order(v.order)
        by_order.setdefault(v.order, []).append(v)
    unparsed = {o: sum(v.raw_choice is None for v in vs) for o, vs in by_order.items()}
    parsed = [v for v in verdicts if v.raw_choice is not None]
    votes = {1: 0, 2: 0}
    for v in parsed:
        votes[to_response1(v.raw_choice, v.order)] += 1
    order_choices = {o: order_choice(vs) for o, vs in by_order.items()}
    agree = None
    if len(by_order) == 2 and any(c is not None for c in order_choices.values()):
        agree = order_choices["as_given"] == order_choices["swapped"]
    if not parsed:
        return JudgeAggregate(None, 0.5, None, agree, order_choices, votes, unparsed)
    means = []
    for vs in by_order.values():
        ps = [sample_p1(v) for v in vs if v.raw_choice is not None]
        if ps:
            means.append(sum(ps) / len(ps))
    p1 = sum(means) / len(means)
    with_probs = sum(v.probs is not None and v.probs.get(1) is not None and v.probs.get(2) is not None for v in parsed)
    source = "probs" if with_probs == len(parsed) else "votes" if with_probs == 0 else "mixed"
    return JudgeAggregate(_choice_from_p1(p1), p1, source, agree, order_choices, votes, unparsed)


# ---------------------------------------------------------------- OpenRLHF queries
# A base64 image data URL (OpenRLHF's VLM loader and the OpenAI API take the same form).
_DATA_URL = re.compile(r"data:image/[A-Za-z0-9.+-]+;base64,[A-Za-z0-9+/]+={0,2}")
# (user turn opening, turn closing) of the chat templates whose prompts the question is read from
_USER_TURNS = (("<|im_start|>user\n", "<|im_end|>"),  # ChatML: Qwen, InternVL
               ("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>"),  # Llama 3
               ("<start_of_turn>user\n", "<end_of_turn>"))  # Gemma
_ASSISTANT_OPENINGS = ("<|im_start|>assistant\n", "<|start_header_id|>assistant<|end_header_id|>\n\n",
                       "<start_of_turn>model\n")
# vision placeholders a template puts where an image goes (the pixels travel separately)
_VISION_MARKS = re.compile(r"<\|vision_start\|>.*?<\|vision_end\|>|<image>|<\|image_pad\|>|<\|video_pad\|>|<IMG_CONTEXT>",
                           re.DOTALL)
_END_MARKS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<eos>", "</s>")


def pop_data_urls(text: str) -> tuple[str, list[str]]:
    """(text without its image data URLs, the data URLs in order of appearance)."""
    urls = _DATA_URL.findall(text)
    return (_DATA_URL.sub("", text) if urls else text), urls


def question_from_prompt(prompt: str) -> str:
    """The question a chat-templated prompt asks: the content of its last user turn (ChatML, Llama 3 or
    Gemma templates) without vision placeholders; a prompt in none of them is taken whole."""
    text = prompt
    for opening, closing in _USER_TURNS:
        at = prompt.rfind(opening)
        if at >= 0:
            text = prompt[at + len(opening):]
            end = text.find(closing)
            text = text[:end] if end >= 0 else text
            break
    return _VISION_MARKS.sub("", text).strip()


def response_from_query(query: str, prompt: str | None) -> str | None:
    """The policy's response inside an OpenRLHF query (prompt + response, decoded with special tokens):
    the query minus the prompt when it starts with it, else what follows the last assistant opening of a
    known template; end-of-turn markers at the end are dropped. None when neither applies."""
    if prompt and query.startswith(prompt):
        rest = query[len(prompt):]
    else:
        cuts = [(query.rfind(a), a) for a in _ASSISTANT_OPENINGS]
        at, opening = max(cuts)
        if at < 0:
            return None
        rest = query[at + len(opening):]
    rest = rest.rstrip()
    stripped = True
    while stripped:
        stripped = False
        for mark in _END_MARKS:
            if rest.endswith(mark):
                rest, stripped = rest[: -len(mark)].rstrip(), True
    return rest.strip()
