"""Retry timing of the openai engine (issue 26, endpoints): Retry-After (seconds or an HTTP date,
capped), full jitter, the per-request retry budget, and the total deadline of one attempt.

The engine's clock, sleep and jitter are injected: a fake clock advances by each sleep, so an hour's
worth of backoff is checked in milliseconds. A scripted local server gives the replies."""

from __future__ import annotations

import email.utils
import json
import time

import pytest

from r1rm.config import Config
from r1rm.core.prompts import user_message
from r1rm.engines.base import Request, SamplingParams
from r1rm.engines.openai_client import (
    BACKOFF_CAP_S,
    RETRY_AFTER_CAP_S,
    OpenAIEngine,
    backoff_s,
    completion_problem,
    parse_retry_after,
)
from tests.fake_endpoint import Scripted

OK = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "<answer>1</answer>"},
                   "finish_reason": "stop"}]}
NOW = 1_700_000_000.0


def test_parse_retry_after():
    assert parse_retry_after("7", now_s=NOW) == 7.0
    assert parse_retry_after(" 0.5 ", now_s=NOW) == 0.5
    assert parse_retry_after("-3", now_s=NOW) == 0.0
    assert parse_retry_after(email.utils.formatdate(NOW + 45, usegmt=True), now_s=NOW) == 45.0
    assert parse_retry_after(email.utils.formatdate(NOW - 45, usegmt=True), now_s=NOW) == 0.0
    for bad in (None, "", "soon", "inf", "nan", "Mon, 99 Foo 2024"):
        assert parse_retry_after(bad, now_s=NOW) is None, bad


def test_backoff_full_jitter_and_capped_retry_after():
    assert [backoff_s(a, base_s=2.0, retry_after_s=None, rand=0.5) for a in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert backoff_s(1, base_s=2.0, retry_after_s=None, rand=0.0) == 0.0
    assert backoff_s(30, base_s=2.0, retry_after_s=None, rand=0.999) == pytest.approx(0.999 * BACKOFF_CAP_S)
    assert backoff_s(10_000, base_s=1.0, retry_after_s=None, rand=1.0) == BACKOFF_CAP_S  # no overflow
    # Retry-After is waited in full (plus a little jitter), capped
    assert backoff_s(1, base_s=1.0, retry_after_s=30.0, rand=0.5) == 30.5
    assert backoff_s(1, base_s=1.0, retry_after_s=3600.0, rand=0.0) == RETRY_AFTER_CAP_S


@pytest.mark.parametrize("reply,problem", [
    ([1, 2], "not an object"),
    ({"choices": []}, "no choices"),
    ({"choices": "x"}, "no choices"),
    ({"choices": [{"index": "a", "message": {"content": "x"}}]}, "not an integer"),
    ({"choices": [{"index": True, "message": {"content": "x"}}]}, "not an integer"),
    ({"choices": [{"message": "text"}]}, "no message"),
    ({"choices": [{"message": {"content": ["a"]}}]}, "no message"),
    ({"choices": [{"message": {"content": "x"}, "finish_reason": 3}]}, "finish_reason"),
    ({"choices": [{"message": {"content": "x"}, "logprobs": {"content": [{"token": 1, "logprob": 0}]}}]}, "logprobs"),
    ({"choices": [{"message": {"content": "x"}, "logprobs": {"content": [
        {"token": "a", "logprob": -1.0, "top_logprobs": 5}]}}]}, "top_logprobs"),
])
def test_completion_problem_names_the_malformed_field(reply, problem):
    assert problem in completion_problem(reply)


def test_completion_problem_accepts_a_valid_reply_with_extras():
    assert completion_problem({**OK, "usage": None, "extra": 1}) is None
    assert completion_problem({"choices": [{"message": {"content": None}, "logprobs": None}]}) is None


class FakeTime:
    def __init__(self):
        self.t, self.sleeps = 0.0, []

    def clock(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s


def run(replies, *, rand=0.5, **kw):
    """(samples of one request, engine, fake time, server) with injected clock / sleep / jitter."""
    server, fake = Scripted(replies), FakeTime()
    kw = {"timeout_s": 5.0, "max_retries": 3, "backoff_s": 1.0, **kw}
    eng = OpenAIEngine(server.url, "m", api_key="k", clock=fake.clock, sleep=fake.sleep, rand=lambda: rand,
                       wall_clock=lambda: NOW, **kw)
    t0 = time.monotonic()
    out = eng.generate([Request(user_message("which?"))], SamplingParams())
    assert time.monotonic() - t0 < 5, "the injected sleep was not used"
    eng.close()
    server.close()
    return out[0], eng, fake, server


def too_many(retry_after: str) -> tuple[int, dict, bytes]:
    return 429, {"Retry-After": retry_after}, b'{"error": {"message": "rate limit"}}'


def ok() -> tuple[int, dict, bytes]:
    return 200, {}, json.dumps(OK).encode()


def test_retry_after_seconds_is_honoured():
    samples, eng, fake, server = run([too_many("30"), too_many("30"), ok()])
    assert samples[0].error is None and samples[0].text == "<answer>1</answer>"
    assert fake.sleeps == [30.5, 30.5] and (eng.n_retries, eng.n_failures, server.calls) == (2, 0, 3)


def test_retry_after_http_date_is_honoured():
    samples, _, fake, _ = run([too_many(email.utils.formatdate(NOW + 45, usegmt=True)), ok()])
    assert samples[0].error is None and fake.sleeps == [45.5]


def test_retry_after_is_capped():
    _, _, fake, _ = run([too_many("3600"), ok()], rand=0.0)
    assert fake.sleeps == [RETRY_AFTER_CAP_S]


def test_retry_budget_stops_the_retries():
    """Retry-After 100 s, budget 150 s: one retry (at 100 s); the next would end past the budget."""
    samples, eng, fake, server = run([too_many("100")], rand=0.0, retry_budget_s=150.0, max_retries=10)
    assert samples[0].error.startswith("http_429:") and not samples[0].finished
    assert fake.sleeps == [100.0] and (eng.n_retries, eng.n_failures, server.calls) == (1, 1, 2)
    assert eng.stats()["failures_by_kind"] == {"http_429": 1}


def test_full_jitter_without_retry_after():
    rands = iter([0.25, 0.5, 0.9])
    server, fake = Scripted([(500, {}, b"{}")]), FakeTime()
    eng = OpenAIEngine(server.url, "m", timeout_s=5.0, max_retries=3, backoff_s=2.0, clock=fake.clock,
                       sleep=fake.sleep, rand=lambda: next(rands))
    (s,) = eng.generate([Request(user_message("q"))], SamplingParams())[0]
    server.close()
    assert s.error.startswith("http_500:") and fake.sleeps == [0.5, 2.0, 7.2] and server.calls == 4


def test_default_budget_outlasts_a_real_apis_rate_limit():
    """With the config's defaults, three 429s asking for a minute each are waited out, not given up on."""
    e = Config().engine
    assert e.retry_budget_s >= 180
    samples, eng, fake, _ = run([too_many("60")] * 3 + [ok()], rand=0.0, max_retries=e.max_retries,
                                backoff_s=e.backoff_s, retry_budget_s=e.retry_budget_s)
    assert samples[0].error is None and fake.sleeps == [60.0] * 3


def test_timeout_is_a_total_deadline_for_a_dripping_reply():
    """Each byte comes within 0.1 s (no read timeout trips), the reply would take ~10 s: cut at 0.5 s."""
    server = Scripted([ok()], drip_s=0.1)
    eng = OpenAIEngine(server.url, "m", timeout_s=0.5, max_retries=0)
    t0 = time.monotonic()
    (s,) = eng.generate([Request(user_message("q"))], SamplingParams())[0]
    took = time.monotonic() - t0
    eng.close()
    server.close()
    assert s.error.startswith("timeout:") and "engine.timeout_s" in s.error
    assert 0.45 < took < 4, took
