"""`r1rm judge --serve`: an OpenAI-compatible HTTP service over any r1rm engine, on FastAPI + uvicorn.

Endpoints: `POST /v1/chat/completions` and `GET /v1/models` (OpenAI's API), `GET /health`, `GET /metrics`
(Prometheus text), and the reward API of r1rm.serving_rewards (`/v1/judge`, `/v1/rank`, `/get_reward`).

- Batching: every route hands its engine requests to `app.state.batcher` (`await batcher.generate(requests,
  params)`). A bounded waiting list (`judge.max_queue` HTTP requests; full → 503 with Retry-After) feeds one
  worker thread that calls `engine.generate` on up to `engine.batch_size` prompts of equal sampling params
  at a time, so concurrent clients share engine batches (a call of more prompts waits as several jobs). When
  an engine call raises, its HTTP requests are retried one by one: only the request that fails alone gets the
  error; a failure after the engine call (a bug, an engine returning too few results) answers its requests
  500 and the worker goes on. `/health` is 503 when the worker thread is not alive.
- Requests: images are `data:` URLs only (the server reads no file, fetches no URL); each passes the media
  gate (r1rm.data.media.admit_image: header checked before decoding) and one request's images together hold
  at most `judge.max_request_pixels` decoded pixels (read from their headers first). All requests in the
  server together hold at most `judge.max_inflight_pixels` (`PixelBudget`: reserved from the headers before
  decoding, given back when the request is answered; 503 with Retry-After above), and a POST finding the
  waiting list full gets 503 before its body is read. A body with an image is parsed in a thread (a 60 KB PNG
  can decode to 32 Mpx), so decoding never stalls the event loop. `max_tokens` is bounded by the model's
  positions; `stop` cuts the text (and its tokens); `logprobs` returns each sampled token's log-probability
  and `top_logprobs` (at most 20) the most likely tokens of each step (raw logits, before temperature: what
  the hf and vLLM engines record; an engine without them, an OpenAI-compatible endpoint, answers 400). Every
  malformed request gets OpenAI's error JSON (`{"error": {"message", "type", "param", "code"}}`) with its 4xx
  code.
- The guard layer (`Guard`, pure ASGI, in front of every route): the access log (one line per request),
  metrics, 503 while shutting down, the API key (`judge.api_key_env`, compared with hmac.compare_digest),
  Content-Type application/json on POST (415), the body size (413, from Content-Length or while reading).
- Connection timeouts (`timed_protocol`): uvicorn has no read timeout for headers or bodies, so its h11
  protocol is subclassed (internals: `check_uvicorn` refuses a uvicorn without them at start-up, exit 2): a connection whose request headers are not complete within
  `judge.header_timeout_s` of its first byte (or of connecting), or whose body is not complete within
  `judge.body_timeout_s` of its headers, gets 408 and is closed.
- Shutdown (`run_server`): SIGTERM / SIGINT start draining: new requests get 503, requests already in the
  server finish (at most `judge.shutdown_timeout_s`), then uvicorn stops; a second signal stops at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hmac
import ipaddress
import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request as HttpRequest  # a module-level name: FastAPI resolves the routes' annotations here

from r1rm.engines.base import Request, Sample, SamplingParams

log = logging.getLogger("r1rm.serve")

MAX_N = 64  # samples per chat request
MAX_STOP = 4  # stop sequences per request (OpenAI's limit)
MAX_TOP_LOGPROBS = 20  # OpenAI's limit, and what the vLLM engine asks vLLM for
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
RETRY_AFTER_S = 1


# ---------------------------------------------------------------- errors
class ApiError(Exception):
    """A request the server answers with an error: rendered as OpenAI's error JSON with `status`."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",  # noqa: A002 (OpenAI's name)
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type, param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class QueueFull(ApiError):
    """The waiting list is full: 503 with Retry-After."""

    def __init__(self, limit: int):
        super().__init__(503, f"the server is busy: {limit} requests are waiting for the engine (judge.max_queue); "
                         "retry shortly", type="server_busy", code="queue_full",
                         headers={"Retry-After": str(RETRY_AFTER_S)})


def _kind_of(status: int) -> str:
    return {401: "authentication_error", 404: "not_found_error", 405: "invalid_request_error",
            408: "timeout", 413: "invalid_request_error", 415: "invalid_request_error",
            503: "server_busy"}.get(status, "invalid_request_error" if status < 500 else "server_error")


def error_json(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict:
    return ApiError(status, message, type=_kind_of(status), param=param, code=code).body()


class PixelBudget:
    """The server-wide bound on decoded image pixels (`judge.max_inflight_pixels`): each request reserves its
    images' pixels, read from their headers, before any is decoded, and gives them back when it is answered
    (the guard layer). Over the bound → 503 with Retry-After, so waiting requests never hold more than it."""

    def __init__(self, limit: int):
        self.limit, self.used, self.peak = limit, 0, 0
        self.lock = threading.Lock()

    def take(self, n: int) -> None:
        with self.lock:
            if self.used + n > self.limit:
                raise ApiError(503, f"the server holds {self.used} decoded image pixels of other requests and this "
                               f"request's {n} would pass judge.max_inflight_pixels={self.limit}; retry shortly",
                               type="server_busy", code="pixel_budget", headers={"Retry-After": str(RETRY_AFTER_S)})
            self.used += n
            self.peak = max(self.peak, self.used)

    def give(self, n: int) -> None:
        with self.lock:
            self.used -= n


@dataclass
class _Reservation:
    """One HTTP request's share of the PixelBudget (the guard layer creates it and gives it back)."""

    budget: PixelBudget
    pixels: int = 0

    def take(self, n: int) -> None:
        self.budget.take(n)
        self.pixels += n

    def release(self) -> None:
        self.budget.give(self.pixels)
        self.pixels = 0


# set by the guard layer for each request; admit_request_images reserves its pixels here (None: no budget)
_RESERVATION: contextvars.ContextVar[_Reservation | None] = contextvars.ContextVar("r1rm_pixels", default=None)


# ---------------------------------------------------------------- request parsing (pure)
def admit_request_images(urls: list[tuple[str, Any]], *, max_pixels: int | None, max_request_pixels: int) -> list:
    """[(param, data URL)] → PIL RGB images through the media gate; the request's decoded pixels (read from the
    headers before any decoding) at most `max_request_pixels`. ApiError 400 naming the part otherwise. Inside
    a server request the pixels are reserved from the server's PixelBudget before decoding (503 when full)."""
    from r1rm.data.files import RowError
    from r1rm.data.media import admit_image, image_header

    total = 0
    for param, url in urls:
        if not isinstance(url, str) or not url.startswith("data:"):
            raise ApiError(400, f"{param} must be an image data URL (data:image/png;base64,...): the server reads no "
                           "file and fetches no URL", param=param)
        try:
            w, h = image_header(url, max_pixels=max_pixels, what=param)[2]
        except RowError as e:
            raise ApiError(400, f"{e} [{e.reason}]", param=param, code=e.reason) from None
        total += w * h
        if total > max_request_pixels:
            raise ApiError(400, f"the request's images hold more than judge.max_request_pixels={max_request_pixels} "
                           f"decoded pixels (at {param}); send fewer or smaller images", param=param,
                           code="image_too_large")
    reservation = _RESERVATION.get()
    if reservation is not None and total:
        reservation.take(total)
    out = []
    for param, url in urls:
        try:
            out.append(admit_image(url, max_pixels=max_pixels, what=param))
        except RowError as e:
            raise ApiError(400, f"{e} [{e.reason}]", param=param, code=e.reason) from None
    return out


def to_chat_messages(messages: Any, *, max_pixels: int | None, max_request_pixels: int) -> list[dict]:
    """OpenAI chat messages → r1rm chat messages (text parts; image_url parts decoded through the gate)."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of messages", param="messages")
    out, urls = [], []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise ApiError(400, f"{where} must be an object with a role of system, user or assistant", param=where)
        content = m.get("content")
        if isinstance(content, str):
            out.append({"role": m["role"], "content": [{"type": "text", "text": content}]})
            continue
        if not isinstance(content, list) or not content:
            raise ApiError(400, f"{where}.content must be a string or a non-empty list of parts", param=f"{where}.content")
        parts = []
        for j, part in enumerate(content):
            at = f"{where}.content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append({"type": "text", "text": part["text"]})
            elif kind == "image_url":
                image = part.get("image_url")
                url = image.get("url") if isinstance(image, dict) else image
                if not isinstance(url, str):
                    raise ApiError(400, f"{at}.image_url must be {{\"url\": \"data:image/...;base64,...\"}}",
                                   param=f"{at}.image_url")
                urls.append((f"{at}.image_url", url))
                parts.append({"type": "image", "image": len(urls) - 1})
            else:
                raise ApiError(400, f"{at} must be a text part {{\"type\": \"text\", \"text\": ...}} or an image_url "
                               "part {\"type\": \"image_url\", \"image_url\": {\"url\": ...}}", param=at)
        out.append({"role": m["role"], "content": parts})
    images = admit_request_images(urls, max_pixels=max_pixels, max_request_pixels=max_request_pixels)
    for msg in out:
        for p in msg["content"]:
            if p["type"] == "image":
                p["image"] = images[p["image"]]
    return out


# fields OpenAI's API defines that r1rm accepts only at their no-op value (anything else is refused, not ignored)
_INERT = {"frequency_penalty": (0, 0.0, None), "presence_penalty": (0, 0.0, None), "logit_bias": (None, {}),
          "tools": (None, []), "tool_choice": (None, "none"), "stream_options": (None,), "parallel_tool_calls": (None,),
          "functions": (None, []), "function_call": (None, "none")}
_FIELDS = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "n", "seed",
           "stop", "logprobs", "top_logprobs", "stream", "user", "response_format", "metadata", "store"}


@dataclass(frozen=True)
class ChatOptions:
    """What a chat request asks beyond sampling: stop sequences and whether log-probs are returned."""

    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0


def _number(body: dict, key: str, default, lo, hi, *, integer: bool = False):
    v = body.get(key)
    if v is None:
        return default
    ok = isinstance(v, int) if integer else isinstance(v, int | float)
    if isinstance(v, bool) or not ok or not lo <= v <= hi:
        kind = "an integer" if integer else "a number"
        raise ApiError(400, f"'{key}' must be {kind} in [{lo}, {hi}], got {v!r}", param=key)
    return int(v) if integer else float(v)


def sampling_from_body(body: dict, *, default_max_tokens: int, max_positions: int | None,
                       can_logprobs: bool, can_top_logprobs: bool = False) -> tuple[SamplingParams, ChatOptions]:
    """OpenAI request fields → SamplingParams and ChatOptions, each checked (ApiError 400 naming the field)."""
    from r1rm.config import MAX_TOKENS, SEED_MAX

    unknown = sorted(k for k in body if k not in _FIELDS and k not in _INERT)
    if unknown:
        raise ApiError(400, f"unrecognized request argument '{unknown[0]}'", param=unknown[0])
    for key, inert in _INERT.items():
        if key in body and body[key] not in inert:
            raise ApiError(400, f"'{key}' is not supported by this server (r1rm's engines do not implement it); "
                           "leave it out", param=key)
    if body.get("stream"):
        raise ApiError(400, "stream=true is not supported: send stream=false (the whole reply comes at once)", param="stream")
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        raise ApiError(400, "response_format other than {\"type\": \"text\"} is not supported: r1rm's engines do not "
                       "constrain decoding", param="response_format")
    ceiling = MAX_TOKENS if max_positions is None else max_positions - 1
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, key, min(default_max_tokens, ceiling), 1, ceiling, integer=True)
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop
    if stops is not None and (not isinstance(stops, list) or len(stops) > MAX_STOP
                              or not all(isinstance(s, str) and s for s in stops)):
        raise ApiError(400, f"'stop' must be a non-empty string or a list of at most {MAX_STOP} of them", param="stop")
    want_lp = body.get("logprobs")
    if want_lp is not None and not isinstance(want_lp, bool):
        raise ApiError(400, "'logprobs' must be true or false", param="logprobs")
    top = _number(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS, integer=True)
    if top and not want_lp:
        raise ApiError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
    if top and not can_top_logprobs:
        raise ApiError(400, "top_logprobs > 0 is not supported by this server's engine (an OpenAI-compatible endpoint "
                       "behind r1rm returns the sampled token's log-probability only); send logprobs=true without "
                       "top_logprobs, or serve with engine.kind=hf or vllm", param="top_logprobs")
    if want_lp and not can_logprobs:
        raise ApiError(400, "logprobs=true is not supported by this server's engine (it returns no token "
                       "log-probabilities); leave logprobs out", param="logprobs")
    params = SamplingParams(
        max_new_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 1e-9, 1.0),
        top_k=_number(body, "top_k", 0, -1, MAX_TOKENS, integer=True) if body.get("top_k") != -1 else 0,
        n=_number(body, "n", 1, 1, MAX_N, integer=True),
        seed=_number(body, "seed", None, 0, SEED_MAX, integer=True),
        logprobs=bool(want_lp),
        top_logprobs=top,
    )
    return params, ChatOptions(stop=tuple(stops or ()), logprobs=bool(want_lp), top_logprobs=top)


def apply_stop(sample: Sample, stops: tuple[str, ...], tokenizer) -> tuple[Sample, bool]:
    """`sample` cut before the first stop sequence, and whether one was found. With a tokenizer its
    token_ids / token_logprobs are cut to the fewest tokens whose text reaches the stop sequence."""
    import dataclasses

    cut = min((i for i in (sample.text.find(s) for s in stops) if i >= 0), default=-1)
    if cut < 0:
        return sample, False
    ids = sample.token_ids
    if tokenizer is not None and ids:
        def reaches(k: int) -> bool:
            text = tokenizer.decode(ids[:k], skip_special_tokens=True)
            return any(s in text for s in stops)

        lo, hi = 1, len(ids)
        while lo < hi:  # the smallest k whose decoded prefix holds a stop sequence
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if reaches(mid) else (mid + 1, hi)
        ids = ids[:lo]
    lps = sample.token_logprobs[: len(ids)] if sample.token_logprobs is not None else None
    tops = sample.top_logprobs[: len(ids)] if sample.top_logprobs is not None else None
    return dataclasses.replace(sample, text=sample.text[:cut], token_ids=list(ids), token_logprobs=lps,
                               top_logprobs=tops, finished=True), True


def engine_tokenizer(engine) -> Any:
    """The engine's tokenizer (hf: .tokenizer; vLLM: its LLM's), or None (an endpoint)."""
    tok = getattr(engine, "tokenizer", None)
    llm = getattr(engine, "llm", None)
    if tok is None and llm is not None and hasattr(llm, "get_tokenizer"):
        tok = llm.get_tokenizer()
    return tok


def _token_json(token_id: int, tokenizer) -> dict:
    text = tokenizer.decode([token_id]) if tokenizer is not None else ""
    # a piece of a multi-byte character decodes to U+FFFD: its bytes are unknown here (null)
    return {"token": text, "bytes": None if "\ufffd" in text else list(text.encode())}


def completion_json(samples: list[Sample], *, model: str, opts: ChatOptions, tokenizer) -> dict:
    """An OpenAI chat.completion body from one request's samples."""
    choices, completion = [], 0
    for i, s in enumerate(samples):
        s, stopped = apply_stop(s, opts.stop, tokenizer) if opts.stop else (s, False)
        completion += len(s.token_ids)
        logprobs = None
        if opts.logprobs:
            ids, lps, tops = s.token_ids, s.token_logprobs or [], s.top_logprobs or []
            content = []
            for t, (tok, lp) in enumerate(zip(ids, lps, strict=False)):
                top = [{**_token_json(other, tokenizer), "logprob": olp} for other, olp in
                       (tops[t] if t < len(tops) else [])[: opts.top_logprobs]]
                content.append({**_token_json(tok, tokenizer), "logprob": lp, "top_logprobs": top})
            logprobs = {"content": content}
        choices.append({"index": i, "message": {"role": "assistant", "content": s.text}, "logprobs": logprobs,
                        "finish_reason": "stop" if stopped or s.finished else "length"})
    prompt = len(samples[0].prompt_token_ids or []) if samples else 0
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": choices,
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}


# ---------------------------------------------------------------- metrics
class Metrics:
    """Counters, gauges and a latency histogram, rendered as Prometheus text (no client library needed)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, list[float]] = {}  # route -> [count per bucket..., +Inf count, sum]
        self.counters = {"prompt_tokens": 0, "completion_tokens": 0, "engine_batches": 0, "engine_requests": 0,
                         "engine_retries": 0, "timeouts": 0}
        self.queue_depth = lambda: 0
        self.inflight = lambda: 0

    def observe(self, route: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(route, status)] = self.requests.get((route, status), 0) + 1
            h = self.latency.setdefault(route, [0.0] * (len(LATENCY_BUCKETS_S) + 2))
            for b, edge in enumerate(LATENCY_BUCKETS_S):
                if seconds <= edge:
                    h[b] += 1
            h[-2] += 1
            h[-1] += seconds

    def add(self, name: str, value: int = 1) -> None:
        with self.lock:
            self.counters[name] += value

    def render(self) -> str:
        with self.lock:
            lines = ["# HELP r1rm_requests_total HTTP requests by route and status code.",
                     "# TYPE r1rm_requests_total counter"]
            lines += [f'r1rm_requests_total{{route="{r}",code="{c}"}} {n}' for (r, c), n in sorted(self.requests.items())]
            errors: dict[int, int] = {}
            for (_, c), n in self.requests.items():
                if c >= 400:
                    errors[c] = errors.get(c, 0) + n
            errors[408] = errors.get(408, 0) + self.counters["timeouts"]
            lines += ["# HELP r1rm_errors_total Error responses by status code (408: connections timed out).",
                      "# TYPE r1rm_errors_total counter"]
            lines += [f'r1rm_errors_total{{code="{c}"}} {n}' for c, n in sorted(errors.items())]
            lines += ["# HELP r1rm_request_seconds Request latency in seconds.", "# TYPE r1rm_request_seconds histogram"]
            for r, h in sorted(self.latency.items()):
                lines += [f'r1rm_request_seconds_bucket{{route="{r}",le="{e}"}} {int(h[b])}' for b, e in enumerate(LATENCY_BUCKETS_S)]
                lines += [f'r1rm_request_seconds_bucket{{route="{r}",le="+Inf"}} {int(h[-2])}',
                          f'r1rm_request_seconds_count{{route="{r}"}} {int(h[-2])}', f'r1rm_request_seconds_sum{{route="{r}"}} {h[-1]:.6f}']
            for name, what in (("prompt_tokens", "Prompt tokens of engine requests."),
                               ("completion_tokens", "Tokens generated."),
                               ("engine_batches", "Engine generate calls."),
                               ("engine_requests", "Prompts sent to the engine."),
                               ("engine_retries", "Engine calls retried one HTTP request at a time after a failure.")):
                lines += [f"# HELP r1rm_{name}_total {what}", f"# TYPE r1rm_{name}_total counter",
                          f"r1rm_{name}_total {self.counters[name]}"]
        lines += ["# HELP r1rm_queue_depth HTTP requests waiting for the engine.", "# TYPE r1rm_queue_depth gauge",
                  f"r1rm_queue_depth {self.queue_depth()}",
                  "# HELP r1rm_inflight_requests HTTP requests being served (probes of /health and /metrics not counted).", "# TYPE r1rm_inflight_requests gauge",
                  f"r1rm_inflight_requests {self.inflight()}"]
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- batching
@dataclass
class _Job:
    requests: list[Request]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


# set by the guard layer for each POST: whether that request is still on its way to the batcher (being read,
# parsed, its images decoded). The worker waits a moment for such requests before it starts a small batch.
_ARRIVING: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar("r1rm_arriving", default=None)


class Batcher:
    """A bounded waiting list of HTTP requests' engine requests and one worker thread that runs them in
    engine batches of equal sampling params (up to `max_batch` prompts, always at least one HTTP request).

    Before it starts a batch with room left, the worker waits (at most `gather_s`) while requests that have
    reached the server are still being read and parsed (`arriving`): under load their clients re-send as soon
    as a batch is answered, and without the wait the next batch would start with the first few of them.
    A lone client never waits (nothing else is arriving)."""

    def __init__(self, engine, *, max_batch: int, max_queue: int, metrics: Metrics | None = None,
                 gather_s: float = 0.05):
        self.engine, self.max_batch, self.max_queue, self.gather_s = engine, max_batch, max_queue, gather_s
        self.arriving = 0
        self.metrics = metrics or Metrics()
        self.pending: deque[_Job] = deque()
        self.cond = threading.Condition()
        self.closed = False
        # HTTP requests per engine call, the last 1000 (tests, observability)
        self.batches: deque[int] = deque(maxlen=1000)
        self._thread = threading.Thread(target=self._loop, name="r1rm-batcher", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return len(self.pending)

    @property
    def full(self) -> bool:
        return len(self.pending) >= self.max_queue

    @property
    def alive(self) -> bool:
        """Whether the worker thread runs (False after close, or if it died of a bug)."""
        return self._thread.is_alive()

    async def generate(self, requests: list[Request], params: SamplingParams) -> list[list[Sample]]:
        """`params.n` samples per request, batched with other concurrent calls. A call of more than `max_batch`
        requests waits as several jobs of at most `max_batch` (each a place in the list). QueueFull when the
        list has no room for all of them."""
        if not requests:
            return []
        loop = asyncio.get_running_loop()
        jobs = [_Job(list(requests[i : i + self.max_batch]), params, loop, loop.create_future())
                for i in range(0, len(requests), self.max_batch)]
        with self.cond:
            self._arrived()
            if self.closed:
                raise ApiError(503, "the server is shutting down", type="server_busy", code="shutting_down")
            if len(self.pending) + len(jobs) > self.max_queue:
                raise QueueFull(self.max_queue)
            self.pending.extend(jobs)
            self.cond.notify()
        try:
            parts = await asyncio.gather(*(j.future for j in jobs))
        finally:
            for j in jobs:  # on failure or cancellation: the other jobs of this call need not run
                j.future.cancel()
        return [samples for part in parts for samples in part]

    def arrival(self) -> list[bool]:
        """Count one request as on its way (the guard layer calls it per POST; `_arrived` ends it)."""
        with self.cond:
            self.arriving += 1
        flag = [True]
        _ARRIVING.set(flag)
        return flag

    def _arrived(self, flag: list[bool] | None = None) -> None:
        """The request of `flag` (default: this context's) reached the batcher or ended; call with cond held."""
        flag = flag if flag is not None else _ARRIVING.get()
        if flag is not None and flag[0]:
            flag[0] = False
            self.arriving -= 1
            self.cond.notify_all()

    def departed(self, flag: list[bool]) -> None:
        with self.cond:
            self._arrived(flag)

    def _take(self) -> list[_Job] | None:
        with self.cond:
            while not self.pending and not self.closed:
                self.cond.wait()
            if not self.pending:
                return None
            deadline = time.monotonic() + self.gather_s
            while (self.arriving > 0 and sum(len(j.requests) for j in self.pending) < self.max_batch
                   and (left := deadline - time.monotonic()) > 0):
                self.cond.wait(left)
            first = self.pending.popleft()
            group, size = [first], len(first.requests)
            for job in list(self.pending):
                if size >= self.max_batch:
                    break
                if job.params == first.params and size + len(job.requests) <= self.max_batch:
                    self.pending.remove(job)
                    group.append(job)
                    size += len(job.requests)
            return group

    def _loop(self) -> None:
        while (group := self._take()) is not None:
            try:
                self._run(group)
            except Exception as e:  # a bug after the engine call: its requests get 500, the worker goes on
                log.exception("batch worker failed on %d request(s)", len(group))
                for job in group:
                    self._resolve(job, exc=ApiError(500, f"generation failed: {type(e).__name__}: {e}", type="server_error"))

    def _run(self, group: list[_Job]) -> None:
        group = [job for job in group if not job.future.cancelled()]  # a cancelled call's jobs are skipped
        requests = [r for job in group for r in job.requests]
        if not requests:
            return
        try:
            results = self.engine.generate(requests, group[0].params)
            if len(results) != len(requests):
                raise RuntimeError(f"the engine returned {len(results)} results for {len(requests)} requests")
        except Exception as e:  # noqa: BLE001 (an engine failure is answered, never kills the server)
            if len(group) > 1:  # one bad request must not fail the others: each alone
                self.metrics.add("engine_retries")
                for job in group:
                    self._run([job])
                return
            log.warning("engine failed on one request: %s: %s", type(e).__name__, e)
            self._resolve(group[0], exc=e)
            return
        self.batches.append(len(group))
        self.metrics.add("engine_batches")
        self.metrics.add("engine_requests", len(requests))
        self.metrics.add("prompt_tokens", sum(len(s[0].prompt_token_ids or []) for s in results if s))
        self.metrics.add("completion_tokens", sum(len(x.token_ids) for s in results for x in s))
        it = iter(results)
        for job in group:
            self._resolve(job, result=[next(it) for _ in job.requests])

    @staticmethod
    def _resolve(job: _Job, *, result=None, exc: BaseException | None = None) -> None:
        def set_it() -> None:
            if job.future.done():  # the client went away and its task was cancelled
                return
            if exc is not None:
                job.future.set_exception(exc)
            else:
                job.future.set_result(result)

        try:
            job.loop.call_soon_threadsafe(set_it)
        except RuntimeError:  # the event loop is closed: nobody waits for this job
            pass

    def close(self) -> None:
        """Stop the worker; requests still waiting get 503 (the batch being generated finishes first)."""
        with self.cond:
            self.closed = True
            left, self.pending = list(self.pending), deque()
            self.cond.notify_all()
        for job in left:
            self._resolve(job, exc=ApiError(503, "the server is shutting down", type="server_busy", code="shutting_down"))
        self._thread.join(timeout=5)


def engine_failure(e: BaseException) -> ApiError:
    """An engine call that failed on one request alone: its input (400) or the server (500)."""
    from r1rm.errors import R1RMError

    if isinstance(e, ValueError | TypeError | R1RMError):  # processors refuse inputs with these
        return ApiError(400, f"the engine refused this request: {type(e).__name__}: {e}", code="engine_refused")
    return ApiError(500, f"generation failed: {type(e).__name__}: {e}", type="server_error")


# ---------------------------------------------------------------- the guard layer (ASGI)
@dataclass
class ServerState:
    """What the guard layer and the routes share."""

    api_key: str | None
    max_body: int
    metrics: Metrics
    draining: bool = False
    inflight: int = 0
    routes: set[str] = field(default_factory=set)
    open_paths: tuple[str, ...] = ("/health",)
    batcher: Any = None
    pixels: PixelBudget | None = None


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


async def _send_json(send, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
    import json

    data = json.dumps(payload).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


class Guard:
    """Pure ASGI middleware in front of every route: access log, metrics, draining, auth, Content-Type,
    body size (the body is read here, bounded, and replayed to the app)."""

    def __init__(self, app, *, state: ServerState):
        self.app, self.state = app, state

    def _refusal(self, scope) -> ApiError | None:
        st, path, method = self.state, scope["path"], scope["method"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if st.draining and path != "/health":
            return ApiError(503, "the server is shutting down", type="server_busy", code="shutting_down",
                            headers={"Retry-After": str(RETRY_AFTER_S), "Connection": "close"})
        if st.api_key is not None and path not in st.open_paths:
            got = headers.get("authorization", "")
            if not hmac.compare_digest(got.encode(), f"Bearer {st.api_key}".encode()):
                return ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                                type="authentication_error", code="invalid_api_key")
        if method in ("POST", "PUT", "PATCH"):
            length = headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > st.max_body):
                return ApiError(413, f"request body of {length} bytes exceeds judge.max_request_bytes={st.max_body}",
                                code="body_too_large", headers={"Connection": "close"})
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if method == "POST" and path in st.routes and ctype != "application/json":
                return ApiError(415, f"Content-Type must be application/json, got '{ctype or 'none'}'",
                                param="Content-Type", code="unsupported_media_type")
            # every POST route generates: with no room to wait, its body is not read nor its images decoded
            if method == "POST" and path in st.routes and st.batcher is not None and st.batcher.full:
                return QueueFull(st.batcher.max_queue)
        return None

    async def _read_body(self, receive) -> bytes:
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise _ClientGone
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.state.max_body:
                raise _BodyTooLarge
            chunks.append(chunk)
            if not msg.get("more_body", False):
                return b"".join(chunks)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        st, start, sent = self.state, time.perf_counter(), {"status": 0, "bytes": 0}

        async def send_counted(msg):
            if msg["type"] == "http.response.start":
                sent["status"] = msg["status"]
            elif msg["type"] == "http.response.body":
                sent["bytes"] += len(msg.get("body", b""))
            await send(msg)

        refusal = self._refusal(scope)
        # probes are not work: a drain waits for (and /health reports) the requests that generate, never itself
        probe = scope["method"] == "GET" and scope["path"] in ("/health", "/metrics")
        counted, arriving = refusal is None and not probe, None
        reservation = _Reservation(st.pixels) if st.pixels is not None and refusal is None else None
        _RESERVATION.set(reservation)
        try:
            if refusal is not None:
                await _send_json(send_counted, refusal.status, refusal.body(), refusal.headers)
                return
            if counted:
                st.inflight += 1
            if scope["method"] == "POST" and st.batcher is not None:
                arriving = st.batcher.arrival()
            body = await self._read_body(receive) if scope["method"] in ("POST", "PUT", "PATCH") else b""
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send_counted)
        except _BodyTooLarge:
            await _send_json(send_counted, 413, error_json(413, f"request body exceeds judge.max_request_bytes={st.max_body}",
                                                           code="body_too_large"), {"Connection": "close"})
        except _ClientGone:
            sent["status"] = sent["status"] or 499  # nginx's code for a client that closed the connection
        except Exception:  # a bug: logged with its traceback, answered 500, the server goes on
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if not sent["status"]:
                await _send_json(send_counted, 500, error_json(500, "internal server error (logged by the server)"))
        finally:
            if reservation is not None:  # the request's decoded images are let go with it
                reservation.release()
            if arriving is not None:
                st.batcher.departed(arriving)
            if counted:
                st.inflight -= 1
            route = scope["path"] if scope["path"] in st.routes else "unmatched"
            seconds = time.perf_counter() - start
            st.metrics.observe(route, sent["status"], seconds)
            client = scope.get("client") or ("-", 0)
            log.info('%s:%s "%s %s HTTP/%s" %d %dB %.1fms', client[0], client[1], scope["method"], scope["path"],
                     scope.get("http_version", "1.1"), sent["status"], sent["bytes"], seconds * 1000)


# ---------------------------------------------------------------- connection timeouts (uvicorn's h11 protocol)
_REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                    b"content-length: %d\r\n\r\n%s")


TESTED_UVICORN = "0.55"  # the uvicorn whose h11 internals timed_protocol was tested on (pyproject bounds it)
_H11_METHODS = ("connection_made", "data_received", "on_response_complete", "connection_lost")
_H11_FIELDS = {"H11Protocol": ("self.conn", "self.cycle", "self.client", "self.transport", "self.loop"),
               "RequestResponseCycle": ("self.response_started", "self.disconnected", "self.message_event")}


def check_uvicorn() -> None:
    """MissingDependencyError (exit 2) unless uvicorn's h11 protocol has the methods and fields timed_protocol
    uses: they are uvicorn internals, which a release may rename."""
    import inspect

    import uvicorn

    from r1rm.errors import MissingDependencyError

    missing = []
    try:
        from uvicorn.protocols.http import h11_impl

        missing += [f"H11Protocol.{m}" for m in _H11_METHODS if not callable(getattr(h11_impl.H11Protocol, m, None))]
        for cls, fields in _H11_FIELDS.items():
            source = inspect.getsource(getattr(h11_impl, cls))
            missing += [f"{cls}.{f.removeprefix('self.')}" for f in fields if f"{f} =" not in source and f"{f}:" not in source]
    except (ImportError, AttributeError, OSError, TypeError) as e:
        missing.append(f"uvicorn.protocols.http.h11_impl ({type(e).__name__}: {e})")
    if missing:
        raise MissingDependencyError(
            f"uvicorn {uvicorn.__version__} lacks the internals r1rm's connection read timeouts use: {', '.join(missing)}",
            fix=f"install the uvicorn r1rm is tested with: pip install 'uvicorn=={TESTED_UVICORN}.*' (its read timeouts "
                f"subclass uvicorn's h11 protocol; tested on uvicorn {TESTED_UVICORN})")


def timed_protocol(*, header_timeout_s: float, body_timeout_s: float, metrics: Metrics | None = None):
    """uvicorn's h11 protocol class with read timeouts: headers within `header_timeout_s` of a request's first
    byte (or of the connection), the body within `body_timeout_s` of the headers; else 408 and close."""
    import json

    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._phase, self._timer = None, None
            self._arm("headers")

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            state = self.conn.their_state
            if state is h11.IDLE:
                self._arm("headers")
            elif state is h11.SEND_BODY:
                self._arm("body")
            else:
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._disarm()  # idle keep-alive: uvicorn's timeout_keep_alive closes it

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self, phase: str) -> None:
            if self._phase == phase:
                return
            self._disarm()
            seconds = header_timeout_s if phase == "headers" else body_timeout_s
            self._phase, self._timer = phase, self.loop.call_later(seconds, self._expired)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._phase, self._timer = None, None

        def _expired(self) -> None:
            phase, self._timer, self._phase = self._phase, None, None
            if self.transport.is_closing():
                return
            if metrics is not None:
                metrics.add("timeouts")
            client = self.client or ("-", 0)
            log.info("%s:%s request %s timed out: 408, connection closed", client[0], client[1], phase)
            body_phase = phase == "body" and self.cycle is not None
            if not body_phase or not self.cycle.response_started:
                limit = f"judge.body_timeout_s={body_timeout_s}" if body_phase else f"judge.header_timeout_s={header_timeout_s}"
                body = json.dumps(error_json(408, f"request {phase} did not arrive within {limit}", code="timeout")).encode()
                self.transport.write(_REQUEST_TIMEOUT % (len(body), body))
            if body_phase:
                self.cycle.disconnected = True
                self.cycle.message_event.set()
            self.transport.close()

    return TimedH11Protocol


# ---------------------------------------------------------------- the app
# the interpreter's GIL switch interval while serving (run_server says why); Python's default is 5 ms
GIL_SWITCH_S = 0.0005
INLINE_PARSE_BYTES = 64 * 1024
BACKLOG = 2048  # the listen backlog: a burst of connections waits in the kernel instead of being reset


def _parse_chat(raw: bytes, *, cfg, model_name: str, max_positions: int | None, can_logprobs: bool,
                can_top_logprobs: bool) -> tuple[list[dict], SamplingParams, ChatOptions]:
    """A chat request body → (messages, params, options); ApiError for anything malformed."""
    from r1rm.data.files import LineError, loads_json

    try:
        body = loads_json(raw)
    except LineError as e:
        raise ApiError(400, f"body is not valid JSON: {e.brief}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object", code="invalid_json")
    if body.get("model") not in (None, model_name):
        raise ApiError(404, f"model '{body['model']}' is not served here; this server serves '{model_name}' "
                       "(GET /v1/models)", type="not_found_error", param="model", code="model_not_found")
    params, opts = sampling_from_body(body, default_max_tokens=cfg.generation.max_new_tokens,
                                      max_positions=max_positions, can_logprobs=can_logprobs,
                                      can_top_logprobs=can_top_logprobs)
    messages = to_chat_messages(body.get("messages"), max_pixels=cfg.model.max_pixels,
                                max_request_pixels=cfg.judge.max_request_pixels)
    return messages, params, opts


def _install_error_handlers(app) -> None:
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    @app.exception_handler(ApiError)
    async def api_error(request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e: RequestValidationError):  # FastAPI's 422 → OpenAI's 400
        first = e.errors()[0] if e.errors() else {}
        loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or None
        if first.get("type") == "json_invalid":
            return JSONResponse(error_json(400, "body is not valid JSON", code="invalid_json"), status_code=400)
        msg = f"{loc}: {first.get('msg', 'invalid value')}" if loc else first.get("msg", "invalid request body")
        return JSONResponse(error_json(400, msg, param=loc, code=first.get("type")), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request, e: HTTPException):
        method, path = request.method, request.url.path
        message = {404: f"no route {method} {path}", 405: f"method {method} is not allowed on {path}"}.get(
            e.status_code, str(e.detail))
        return JSONResponse(error_json(e.status_code, message), status_code=e.status_code, headers=e.headers)


def make_app(engine, *, cfg, max_positions: int | None = None):
    """The FastAPI app over `engine` (see the module docstring). `app.state`: cfg, model_name, batcher,
    server (the guard's ServerState: draining, inflight, metrics). The API key is read from the environment
    variable `cfg.judge.api_key_env` (unset or empty: no auth)."""
    import os

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, PlainTextResponse

    from r1rm.serving_rewards import router as reward_router

    if max_positions is None:
        max_positions = getattr(engine, "max_positions", None)
    metrics = Metrics()
    state = ServerState(api_key=os.environ.get(cfg.judge.api_key_env) or None, max_body=cfg.judge.max_request_bytes,
                        metrics=metrics, pixels=PixelBudget(cfg.judge.max_inflight_pixels))
    app = FastAPI(title="r1rm judge", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.cfg, app.state.server, app.state.max_positions = cfg, state, max_positions
    app.state.model_name = cfg.judge.served_model_name or cfg.model.path or "r1rm"
    app.state.batcher = Batcher(engine, max_batch=cfg.engine.batch_size, max_queue=cfg.judge.max_queue, metrics=metrics)
    state.batcher = app.state.batcher
    metrics.queue_depth = lambda: app.state.batcher.depth
    metrics.inflight = lambda: state.inflight
    tokenizer = engine_tokenizer(engine)
    # the hf and vLLM engines return the top tokens of each step (Sample.top_logprobs); an endpoint does not
    can_top = tokenizer is not None and bool(getattr(engine, "gives_top_logprobs", False))
    _install_error_handlers(app)

    @app.get("/health")
    async def health():
        worker = app.state.batcher.alive
        status = "shutting_down" if state.draining else "ok" if worker else "worker_dead"
        body = {"status": status, "model": app.state.model_name, "worker_alive": worker,
                "queue_depth": app.state.batcher.depth, "inflight": state.inflight,
                "decoded_pixels": state.pixels.used if state.pixels is not None else 0}
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": app.state.model_name, "object": "model", "created": 0,
                                            "owned_by": "r1rm", "max_model_len": max_positions}]}

    @app.post("/v1/chat/completions")
    async def chat(request: HttpRequest):
        raw = await request.body()
        parse = functools.partial(_parse_chat, raw, cfg=cfg, model_name=app.state.model_name,
                                  max_positions=max_positions, can_logprobs=tokenizer is not None,
                                  can_top_logprobs=can_top)
        # a small body without images is parsed at once; one with an image (a 60 KB PNG can decode to 32
        # Mpx) or a large one in a thread, so that decoding never stalls the other connections and timers
        inline = len(raw) < INLINE_PARSE_BYTES and b"data:" not in raw
        messages, params, opts = parse() if inline else await asyncio.to_thread(parse)
        try:
            samples = (await app.state.batcher.generate([Request(messages)], params))[0]
        except ApiError:
            raise
        except Exception as e:  # noqa: BLE001 (the engine failed on this request alone)
            raise engine_failure(e) from None
        failed = next((s.error for s in samples if s.error), None)
        if failed is not None:
            if failed.startswith("prompt_too_long"):
                raise ApiError(400, failed, param="messages", code="context_length_exceeded")
            raise ApiError(500, f"generation failed: {failed}", type="server_error")
        return completion_json(samples, model=app.state.model_name, opts=opts, tokenizer=tokenizer)

    app.include_router(reward_router)
    state.routes = {getattr(r, "path", "") for r in app.routes}
    app.add_middleware(Guard, state=state)
    return app


# ---------------------------------------------------------------- running it
def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) is reachable only from this machine."""
    import socket

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def check_exposure(cfg, api_key: str | None) -> None:
    """Refuse a non-loopback judge.host without an API key unless judge.allow_public says so."""
    from r1rm.errors import ConfigError

    j = cfg.judge
    if api_key or j.allow_public or is_loopback(j.host):
        return
    raise ConfigError(f"judge.host={j.host} is reachable from other machines and no API key is set "
                      f"(${j.api_key_env} is empty)",
                      fix=f"export {j.api_key_env}=<a secret> (clients send 'Authorization: Bearer <secret>'), or set "
                          "judge.allow_public=true to serve without a key, or bind judge.host=127.0.0.1")


def bind_socket(host: str, port: int):
    """A listening TCP socket on host:port (backlog BACKLOG); ConfigError when the address is taken or invalid.
    Bound before the model loads, so a busy port fails in a second, not after the load."""
    import socket

    from r1rm.errors import ConfigError

    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise ConfigError(f"cannot listen on judge.host={host}: {e}", fix="set judge.host to an address of this machine") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(BACKLOG)
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}",
                          fix="choose another judge.port (0 picks a free one) or stop the process that holds it") from None
    return sock


def setup_logging() -> None:
    """The access log (one line per request) and the server's warnings on stderr."""
    import sys

    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def run_server(app, sock, *, cfg) -> None:
    """Serve `app` on the bound `sock` until SIGTERM / SIGINT, then drain: new requests get 503, those in the
    server finish (at most judge.shutdown_timeout_s), and uvicorn stops. A second signal stops at once."""
    import sys

    import uvicorn

    # the engine's worker thread runs Python between its torch ops; with the default 5 ms GIL switch interval
    # every socket call of the event loop waits up to 5 ms for the GIL, which capped a tiny model at ~45
    # requests/s whatever the batch; 0.5 ms lets the loop keep the engine's batches full
    sys.setswitchinterval(GIL_SWITCH_S)
    j, state = cfg.judge, app.state.server
    protocol = timed_protocol(header_timeout_s=j.header_timeout_s, body_timeout_s=j.body_timeout_s, metrics=state.metrics)
    config = uvicorn.Config(app, http=protocol, loop="asyncio", lifespan="off", log_level="warning", access_log=False,
                            backlog=BACKLOG, timeout_keep_alive=j.keep_alive_s, timeout_graceful_shutdown=5,
                            server_header=False)
    deadline = [float("inf")]

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:  # no re-raise of the signal afterwards: exit 0 when drained
            if state.draining:
                self.should_exit = self.force_exit = True
                return
            state.draining = True
            deadline[0] = time.monotonic() + j.shutdown_timeout_s
            log.warning("signal %d: draining %d request(s) in flight (new requests get 503)", sig, state.inflight)

    server = DrainingServer(config)

    async def watch() -> None:
        while not server.should_exit:
            if state.draining and (state.inflight == 0 or time.monotonic() > deadline[0]):
                server.should_exit = True
            await asyncio.sleep(0.05)

    async def main() -> None:
        watcher = asyncio.create_task(watch())
        try:
            await server.serve(sockets=[sock])
        finally:
            watcher.cancel()

    asyncio.run(main())
