"""The generation protocol every engine implements (hf, vllm, openai).

A request is a list of chat messages (the format `processor.apply_chat_template` takes,
images as file paths or PIL images). Engines built by `make_engine` pass every request through
one preprocessing first (r1rm.data.media.prepare_visuals with the run's MediaBudget), so an item
is the same prompt on every engine. An engine returns, per request, `n` samples, each
with its text, its token ids (where the engine knows them) and, where it can, the
probability of each answer choice: softmax over the tokens "1" / "2" at the position
right after `<answer>`; with `SamplingParams.logprobs` also the mean log-probability of
the sample's tokens (CMKD picks the most confident chain by it). A request that failed (endpoint error after retries) returns
samples with `error` set and empty text: failures are counted, never turned into answers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class SamplingParams:
    """r1rm's own sampling parameters (engine-neutral). temperature 0 = greedy."""

    max_new_tokens: int = 1024
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    n: int = 1
    seed: int | None = None
    # ask for the mean log-probability of each sample's tokens (Sample.mean_logprob)
    logprobs: bool = False
    # with logprobs: also the `top_logprobs` most likely tokens at each step (Sample.top_logprobs); 0 = none
    top_logprobs: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class Sample:
    """One generated completion."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    # {1: p1, 2: p2} renormalised over the two choices, or None when unknown
    choice_probs: dict[int, float] | None = None
    # generation stopped on EOS (False: hit max_new_tokens)
    finished: bool = True
    error: str | None = None
    # mean over the sample's tokens of log p(token) from the raw logits (before temperature);
    # set when SamplingParams.logprobs asked for it and the engine can give it
    mean_logprob: float | None = None
    # log p of each of `token_ids` (raw logits), when SamplingParams.logprobs asked and the engine gives them
    token_logprobs: list[float] | None = None
    # per token of `token_ids`, the SamplingParams.top_logprobs most likely [(token id, log p)] (raw logits),
    # most likely first, when asked and the engine gives them (hf, vllm)
    top_logprobs: list[list[tuple[int, float]]] | None = None
    # the prompt's token ids as the engine encoded them (images expanded), where the engine knows them
    # (hf, vllm; the samples of one request share one list)
    prompt_token_ids: list[int] | None = None


@dataclass
class Request:
    """One prompt: chat messages plus an opaque key the caller uses to route the result."""

    messages: list[dict]
    key: object = None


ProgressFn = Callable[[int], None]


class Engine(Protocol):
    """Generates `params.n` samples for each request, results in request order."""

    def generate(
        self, requests: Sequence[Request], params: SamplingParams, progress: ProgressFn | None = None
    ) -> list[list[Sample]]: ...

    def close(self) -> None: ...
