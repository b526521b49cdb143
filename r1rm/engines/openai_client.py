"""An engine that sends each request to an OpenAI-compatible chat endpoint (vLLM serve, SGLang, OpenAI).

The only r1rm module that imports `openai` (lazily, in `OpenAIEngine.__init__`).

- Messages are translated by `to_openai_messages` (pure) after the one preprocessing every
  engine applies (r1rm.data.media.prepare_visuals with the run's MediaBudget: images decoded
  and fitted to model.min_pixels / max_pixels as the Qwen-VL processor would, videos sampled
  to model.video_max_frames frames, each fitted the same way). Each image becomes an
  `image_url` part holding a PNG data URL of exactly those pixels (lossless: the server's
  processor then has nothing left to resize when it is bounded by the same pixels). A video
  becomes ONE `video_url` part (`video_as="video"`, the default): vLLM's server reads a frame
  sequence from `data:video/jpeg;base64,<frame>,<frame>,...` (vllm/multimodal/media/video.py);
  r1rm puts PNG frames there, which vLLM decodes with PIL by their bytes, so they arrive
  lossless, and asks in the body (`media_io_kwargs`) for every frame sent (`num_frames: -1`;
  vLLM's default keeps the first 32) at VIDEO_FPS, the rate the hf engine's processor assumes,
  so the temporal positions agree. `video_as="frames"` sends one `image_url` part per frame
  instead, for endpoints that take no video (OpenAI's own): the model then sees N images, not
  a video — another prompt than the hf and vllm engines give. http(s) and data URLs pass
  through untouched; text stays text.
- Requests run `concurrency` at a time (a thread pool). r1rm sends each request itself (httpx,
  through the openai client's connection pool, URL and key headers) so that `timeout_s` is a
  total deadline per attempt: a watchdog ends an attempt at `timeout_s` however the server
  behaves (stalls after its headers, drips a byte a second — httpx's own timeouts bound each
  read, not the reply); a body over `max_reply_bytes` (32 MiB) is refused unread.
- Every retry is r1rm's and counted: on connection errors, timeouts, HTTP 408/409/425/429 and
  5xx, up to `max_retries` times. The sleep before retry a is full jitter,
  uniform(0, min(60 s, backoff_s * 2**(a-1))); a `Retry-After` header (seconds or an HTTP
  date) is waited in full, capped at 120 s (RETRY_AFTER_CAP_S). No retry starts once
  `retry_budget_s` (engine.retry_budget_s) would be spent since the request's first attempt.
  Time and jitter are injectable (`clock`, `sleep`, `rand`), so tests wait for nothing.
  Other errors (e.g. 400) are not retried. HTTP 401 / 403 (the key) and 404 (the URL or the
  model name) fail every request alike and no rerun cures them: the first one stops the run
  at once with a ConfigError (exit 2) naming the endpoint, the status and the setting to
  change (`endpoint_error`).
- A request that still fails gives `n` samples with empty text, finished=False and
  `error="<kind>: <message>"` (kinds: timeout, connection, http_<status>, bad_response) —
  never an exception, never an invented answer. So does any reply that does not parse
  (not JSON, a content type that is not JSON, an empty body, no choices, empty content, a
  field of the wrong type such as `"index": "a"`; not retried). Counters: `n_requests`,
  `n_retries`, `n_failures` (requests with at least one failed sample), `failure_kinds`
  (`stats()` gives them for metrics.json). Unreadable image files are the caller's mistake
  and raise InputFileError.
- `n` is the API's `n`; with temperature 0 and n > 1 the endpoint is asked for one
  completion and the sample is copied n times (as the hf engine does). `top_k` is not an
  OpenAI parameter: when > 0 it is sent in the body as vLLM / SGLang accept it.
- With `request_logprobs=True` the request asks for `logprobs=True, top_logprobs=5`, and
  `choice_probs` comes from the top logprobs at the token after `<answer>`
  (r1rm.core.choice), when the endpoint returns them.
- With `SamplingParams.logprobs` the request asks for `logprobs=True` and
  `Sample.mean_logprob` is the mean of the returned per-token logprobs and
  `Sample.token_logprobs` the list (None when the endpoint returns none; vLLM returns raw
  logprobs, before temperature). An endpoint gives no token ids: `token_ids` and
  `prompt_token_ids` stay empty / None.
- `requests_per_minute` spaces request starts (retries included) at least 60/rpm seconds
  apart across all threads (`RateLimiter`), for endpoints with a rate limit.
"""

from __future__ import annotations

import base64
import copy
import datetime
import email.utils
import io
import json
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from r1rm.core.choice import choice_probs_from_logprobs, find_answer_position
from r1rm.data.files import RowError
from r1rm.data.media import (
    VIDEO_FPS,
    MediaBudget,
    admit_image,
    image_header,
    prepare_visuals,
    sniff_image,
    video_frame_list,
)
from r1rm.engines.base import ProgressFn, Request, Sample, SamplingParams
from r1rm.errors import ConfigError, InputFileError, MissingDependencyError, R1RMError

TOP_LOGPROBS = 5
# image formats an endpoint takes as they are; any other image is sent re-encoded as PNG
_ENDPOINT_MIMES = ("image/png", "image/jpeg", "image/gif", "image/webp")
# pixel modes an endpoint decodes as they are (8-bit); CMYK JPEG, 16-bit PNG, ... are sent re-encoded
_ENDPOINT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA")


# ---------------------------------------------------------------- message translation (pure)
def _png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _png_data_url(img) -> str:
    return "data:image/png;base64," + base64.b64encode(_png_bytes(img)).decode("ascii")


def image_data_url(image: Any) -> str:
    """A data URL for a PIL image or an image file; http(s) and data URLs pass through."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return _png_data_url(image)
    if isinstance(image, str) and image.startswith(("http://", "https://", "data:")):
        return image
    path = Path(image)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputFileError(f"cannot read image '{path}': {e.strerror or e}", fix="check the image paths of the request") from None
    # the media gate: a bomb, a broken file or an aspect ratio no processor takes is refused here, not by the server
    # (its header check: size, aspect ratio, format); the pixels are decoded only to convert what an endpoint
    # cannot take — the original bytes of a PNG / JPEG / ... in an RGB-like mode go as they are
    try:
        mode = image_header(data, max_pixels=None, what=str(path))[1]
        sniffed = sniff_image(data)
        if sniffed is not None and sniffed[1] in _ENDPOINT_MIMES and mode in _ENDPOINT_MODES:
            return f"data:{sniffed[1]};base64," + base64.b64encode(data).decode("ascii")
        img = admit_image(data, max_pixels=None, what=str(path))
    except RowError as e:
        raise InputFileError(f"{e} [{e.reason}]", fix="fix or drop the image (`r1rm check-data` finds every such file)") from None
    return _png_data_url(img)  # BMP, TIFF, CMYK, 16-bit, ...: the gate's 8-bit RGB, as PNG


def video_data_url(frames: Sequence[Any]) -> str:
    """One data URL holding a video's frames the way vLLM reads a frame sequence
    ("data:video/jpeg;base64," + the frames' base64 joined by commas), each frame as PNG
    (lossless; vLLM decodes each frame with PIL, which goes by the bytes, not the MIME type)."""
    from PIL import Image

    parts = []
    for f in frames:
        if isinstance(f, Image.Image):
            parts.append(base64.b64encode(_png_bytes(f)).decode("ascii"))
        else:
            parts.append(image_data_url(f).split(",", 1)[1])
    return "data:video/jpeg;base64," + ",".join(parts)


# media_io_kwargs a vLLM server (and LLM) needs for the frames of video_data_url: every frame sent, at VIDEO_FPS
VIDEO_IO_KWARGS = {"video": {"num_frames": -1, "fps": VIDEO_FPS}}


def video_frames(video: Any) -> list:
    """The frames of a video part: a list of images, or the image files of a folder (natural order)."""
    return video_frame_list(video)


def _image_part(image: Any) -> dict:
    return {"type": "image_url", "image_url": {"url": image_data_url(image)}}


def to_openai_content(part: dict, *, video_as: str = "video") -> list[dict]:
    """One r1rm content part → the OpenAI chat parts it stands for (a video: one `video_url` part,
    or with video_as="frames" one `image_url` part per frame)."""
    kind = part.get("type")
    if kind in ("image_url", "video_url") or "image_url" in part or "video_url" in part:
        return [part]
    if kind == "text" or ("text" in part and kind is None):
        return [{"type": "text", "text": part["text"]}]
    if kind == "video" or "video" in part:
        frames = video_frames(part["video"])
        if video_as == "frames":
            return [_image_part(f) for f in frames]
        return [{"type": "video_url", "video_url": {"url": video_data_url(frames)}}]
    if kind == "image" or "image" in part or "path" in part or "url" in part:
        value = next(part[k] for k in ("image", "path", "url") if k in part)
        return [_image_part(value)]
    raise ValueError(f"unsupported message part {sorted(part)} (type {kind!r})")


def to_openai_messages(messages: list[dict], media: MediaBudget | None = None, *, video_as: str = "video") -> list[dict]:
    """Chat messages in r1rm's format (processor style) → OpenAI chat messages, after the one
    preprocessing of every engine (`prepare_visuals`; `media` None: images decoded, no budget)."""
    if video_as not in ("video", "frames"):
        raise ValueError(f"video_as must be 'video' or 'frames', got {video_as!r}")
    out = []
    for msg in prepare_visuals(messages, media or MediaBudget()):
        content = msg.get("content")
        if isinstance(content, list):
            content = [p for part in content for p in to_openai_content(part, video_as=video_as)]
        out.append({**msg, "content": content})
    return out


def has_video(messages: list[dict]) -> bool:
    """Whether translated messages hold a `video_url` part."""
    return any(isinstance(p, dict) and p.get("type") == "video_url"
               for m in messages if isinstance(m.get("content"), list) for p in m["content"])


# ---------------------------------------------------------------- response translation (pure)
def choice_probs_from_openai_logprobs(content: Sequence[Any] | None) -> dict[int, float] | None:
    """{1: p1, 2: p2} from a choice's `logprobs.content` (token, logprob, top_logprobs per token), or None."""
    if not content:
        return None
    pieces = [_get(t, "token") or "" for t in content]
    i = find_answer_position(pieces)
    if i is None:
        return None
    entry = content[i]
    top = {_get(t, "token"): _get(t, "logprob") for t in (_get(entry, "top_logprobs") or [])}
    top.setdefault(_get(entry, "token"), _get(entry, "logprob"))
    return choice_probs_from_logprobs({k: v for k, v in top.items() if k is not None and v is not None})


def token_logprobs_from_openai_logprobs(content: Sequence[Any] | None) -> list[float] | None:
    """The per-token `logprob` of a choice's `logprobs.content`, or None when any is missing."""
    values = [_get(t, "logprob") for t in content or ()]
    return [float(v) for v in values] if values and all(isinstance(v, int | float) for v in values) else None


def mean_logprob_from_openai_logprobs(content: Sequence[Any] | None) -> float | None:
    """Mean of the per-token `logprob` of a choice's `logprobs.content`, or None."""
    values = [_get(t, "logprob") for t in content or ()]
    values = [v for v in values if isinstance(v, int | float)]
    return sum(values) / len(values) if values else None


def _get(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _logprob_problem(logprobs: Any) -> str | None:
    """What is wrong with a choice's `logprobs` (None, or {"content": None | [token entries]}), or None."""
    if logprobs is None:
        return None
    content = logprobs.get("content") if isinstance(logprobs, dict) else logprobs
    if not isinstance(logprobs, dict) or not (content is None or isinstance(content, list)):
        return "'logprobs' is not an object with a 'content' list"
    for t in content or ():
        if not isinstance(t, dict) or not isinstance(t.get("token"), str) or not _number(t.get("logprob")):
            return f"a logprobs entry is not {{token: string, logprob: number}}: {_short(repr(t), 80)}"
        top = t.get("top_logprobs")
        if top is not None and not (isinstance(top, list) and all(
                isinstance(x, dict) and isinstance(x.get("token"), str) and _number(x.get("logprob")) for x in top)):
            return f"'top_logprobs' is not a list of {{token, logprob}}: {_short(repr(top), 80)}"
    return None


def completion_problem(obj: Any) -> str | None:
    """What makes a parsed chat.completions reply unusable (a field missing or of the wrong type), or None.
    Checked where the reply enters, so that no malformed field reaches the code that reads it."""
    if not isinstance(obj, dict):
        return f"the reply is a JSON {type(obj).__name__}, not an object"
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices:
        return "no choices in the reply" + ("" if isinstance(choices, list) else f" ('choices' is {_short(repr(choices), 60)})")
    for k, c in enumerate(choices):
        if not isinstance(c, dict):
            return f"choice {k} is not an object"
        if "index" in c and not (isinstance(c["index"], int) and not isinstance(c["index"], bool)):
            return f"choice {k} has 'index': {_short(repr(c['index']), 40)}, not an integer"
        message = c.get("message")
        if not isinstance(message, dict) or not (message.get("content") is None or isinstance(message["content"], str)):
            return f"choice {k} has no message with a text 'content'"
        if not (c.get("finish_reason") is None or isinstance(c["finish_reason"], str)):
            return f"choice {k} has 'finish_reason': {_short(repr(c['finish_reason']), 40)}"
        problem = _logprob_problem(c.get("logprobs"))
        if problem:
            return f"choice {k}: {problem}"
    return None


def samples_from_completion(completion: Any, n: int) -> tuple[list[Sample], bool]:
    """(n samples, ok) from a chat.completions response; garbage gives error samples and ok=False."""
    choices = _get(completion, "choices") if completion is not None else None
    if not isinstance(choices, list) or not choices:
        what = "an empty choices list" if isinstance(choices, list) else f"{type(completion).__name__} {_short(repr(completion), 80)}"
        return [Sample(text="", finished=False, error=f"bad_response: no choices in the reply ({what})") for _ in range(n)], False
    samples, ok = [], True
    # a missing or malformed index keeps the reply's order
    order = [(_get(c, "index") if isinstance(_get(c, "index"), int) else k, k) for k, c in enumerate(choices)]
    for _, k in sorted(order)[:n]:
        choice = choices[k]
        message = _get(choice, "message")
        text = _get(message, "content") if message is not None else None
        if not isinstance(text, str) or not text:
            samples.append(Sample(text="", finished=False, error="bad_response: empty message content"))
            ok = False
            continue
        logprobs = _get(choice, "logprobs")
        content = _get(logprobs, "content") if logprobs else None
        samples.append(
            Sample(
                text=text,
                choice_probs=choice_probs_from_openai_logprobs(content),
                finished=_get(choice, "finish_reason") == "stop",
                mean_logprob=mean_logprob_from_openai_logprobs(content),
                token_logprobs=token_logprobs_from_openai_logprobs(content),
            )
        )
    if len(samples) < n:
        missing = n - len(samples)
        samples += [
            Sample(text="", finished=False, error=f"bad_response: {len(choices)} of {n} choices returned")
            for _ in range(missing)
        ]
        ok = False
    return samples, ok


# ---------------------------------------------------------------- errors that stop the run
# statuses that every request of the run would get alike: a wrong key, a wrong URL or model name
FATAL_STATUSES = (401, 403, 404)


def endpoint_error(status: int, message: str, *, base_url: str, model: str, key_env: str | None,
                   key_set: bool, settings: str = "engine") -> ConfigError:
    """The error for a FATAL_STATUSES reply: what the endpoint said and which setting fixes it.

    `key_env`: the environment variable the key was read from (`key_set`: whether it was set);
    `settings`: the config section the endpoint's keys live in (engine, rl.consistency)."""
    said = f"HTTP {status}: {_short(message, 200)}"
    if status in (401, 403):
        var = key_env or "OPENAI_API_KEY"
        sent = f"the key in ${var}" if key_set else f"no key (${var} is not set; r1rm sent the placeholder 'EMPTY')"
        what = (f"the endpoint {base_url} refused {sent} ({said})" if status == 401 else
                f"the endpoint {base_url} denies {sent} access to model '{model}' ({said})")
        return ConfigError(what, fix=f"export {var}=<a key this endpoint accepts> (or name another variable in "
                                     f"{settings}.api_key_env), then rerun")
    return ConfigError(
        f"the endpoint {base_url} has no model '{model}' or no chat completions route ({said})",
        fix=f"check {settings}.base_url (an OpenAI-compatible server's URL ends in /v1) and {settings}.model_name "
            f"(GET {base_url.rstrip('/')}/models lists the names it serves)",
    )


# ---------------------------------------------------------------- rate limit
class RateLimiter:
    """At most `rpm` starts per minute: each `acquire` waits until 60/rpm s after the previous start."""

    def __init__(self, rpm: float, *, clock=time.monotonic, sleep=time.sleep):
        self.interval_s = 60.0 / rpm
        self._clock, self._sleep = clock, sleep
        self._next = float("-inf")
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Block until this caller may start; return the seconds waited."""
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.interval_s
        wait = start - now
        if wait > 0:
            self._sleep(wait)
        return wait


# ---------------------------------------------------------------- retry timing (pure)
# the longest wait a Retry-After header buys (a server asking for an hour is asked again after this)
RETRY_AFTER_CAP_S = 120.0
# the longest exponential backoff step before jitter
BACKOFF_CAP_S = 60.0
# a reply body larger than this is refused unread (a chat completion with logprobs is well under 1 MB)
MAX_REPLY_BYTES = 32 * 2**20
RETRY_STATUSES = (408, 409, 425, 429)


def parse_retry_after(value: str | None, *, now_s: float) -> float | None:
    """Seconds a `Retry-After` header asks to wait (delta-seconds or an HTTP date; `now_s`: epoch seconds),
    0 for a date in the past, None when absent or unreadable."""
    if not value or not value.strip():
        return None
    text = value.strip()
    try:
        wait = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)
        wait = when.timestamp() - now_s
    return max(0.0, wait) if math.isfinite(wait) else None


def backoff_s(attempt: int, *, base_s: float, retry_after_s: float | None, rand: float) -> float:
    """The sleep before retry `attempt` (1, 2, ...): full jitter, `rand` (uniform in [0, 1)) times
    min(BACKOFF_CAP_S, base_s * 2**(attempt-1)); a Retry-After (capped at RETRY_AFTER_CAP_S) is waited
    in full, plus `rand * base_s` so that the threads it stopped do not all come back at once."""
    step = min(BACKOFF_CAP_S, base_s * 2.0 ** min(attempt - 1, 64))
    if retry_after_s is None:
        return rand * step
    return min(retry_after_s, RETRY_AFTER_CAP_S) + rand * base_s


# ---------------------------------------------------------------- the engine (I/O)
def _import_openai():
    try:
        import openai
    except ImportError:
        raise MissingDependencyError("the openai client is not installed", fix="pip install openai") from None
    return openai


class _Failed(Exception):
    """One attempt's failure: `kind: message`, whether a retry may cure it, the wait the server asked for."""

    def __init__(self, kind: str, message: str, *, retry: bool, retry_after_s: float | None = None):
        super().__init__(f"{kind}: {message}")
        self.kind, self.retry, self.retry_after_s = kind, retry, retry_after_s


class OpenAIEngine:
    """Generates through an OpenAI-compatible chat completions endpoint (see the module docstring).

    `clock` / `sleep` / `rand` time and jitter the retries (tests inject them: no real waiting);
    `wall_clock` gives epoch seconds for a Retry-After date."""

    def __init__(
        self,
        base_url: str,
        model_name: str,
        *,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        retry_budget_s: float = 300.0,
        request_logprobs: bool = False,
        requests_per_minute: float | None = None,
        media: MediaBudget | None = None,
        video_as: str = "video",
        api_key_env: str | None = None,
        settings: str = "engine",
        max_reply_bytes: int = MAX_REPLY_BYTES,
        clock=time.monotonic,
        sleep=time.sleep,
        rand=random.random,
        wall_clock=time.time,
    ):
        if video_as not in ("video", "frames"):
            raise ValueError(f"video_as must be 'video' or 'frames', got {video_as!r}")
        openai = _import_openai()
        import httpx

        self._httpx = httpx
        self.base_url = base_url
        self.model_name = model_name
        self.concurrency = max(1, concurrency)
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.retry_budget_s = retry_budget_s
        self.max_reply_bytes = max_reply_bytes
        self.request_logprobs = request_logprobs
        self.limiter = RateLimiter(requests_per_minute) if requests_per_minute else None
        self._clock, self._sleep, self._rand, self._wall_clock = clock, sleep, rand, wall_clock
        # the run's budget for images and video frames (the one preprocessing of every engine)
        self.media = media
        self.video_as = video_as
        # the openai client holds the URL and the key's headers; r1rm sends each request itself, through the
        # same connection pool, so that it can end a reply at its deadline and count every retry
        self.http = httpx.Client(limits=httpx.Limits(max_connections=self.concurrency + 4), timeout=timeout_s)
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "EMPTY", max_retries=0, timeout=timeout_s,
                                    http_client=self.http)
        self.url = str(self.client.base_url).rstrip("/") + "/chat/completions"
        headers = {k: v for k, v in self.client.default_headers.items() if isinstance(v, str)}
        self.headers = {**headers, **self.client.auth_headers}
        # for the message of a refused key: where the key came from, and the config section to fix
        self.api_key_env, self.key_set, self.settings = api_key_env, bool(api_key and api_key != "EMPTY"), settings
        self._lock = threading.Lock()
        # set by the first refused key / unknown model: no request starts after it
        self._refused = threading.Event()
        self.n_requests = 0
        self.n_retries = 0
        self.n_failures = 0
        self.failure_kinds: Counter = Counter()

    def generate(
        self, requests: Sequence[Request], params: SamplingParams, progress: ProgressFn | None = None
    ) -> list[list[Sample]]:
        """`params.n` samples per request, in request order. `progress(k)`: k more requests done."""
        results: list[list[Sample] | None] = [None] * len(requests)
        self._refused.clear()
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="r1rm-openai") as pool:
            futures = {pool.submit(self._one, r.messages, params): i for i, r in enumerate(requests)}
            try:
                for fut in as_completed(futures):
                    results[futures[fut]] = fut.result()
                    if progress is not None:
                        progress(1)
            except BaseException:
                # a refused key / unknown model (or Ctrl-C): the queued requests are not sent
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        return results  # type: ignore[return-value]

    def stats(self) -> dict:
        """The counters a run reports (metrics.json's `engine`)."""
        return {"n_requests": self.n_requests, "n_retries": self.n_retries, "n_failures": self.n_failures,
                "failures_by_kind": dict(self.failure_kinds)}

    def _body(self, messages: list[dict], params: SamplingParams) -> dict:
        n_api = 1 if params.greedy else params.n
        translated = to_openai_messages(messages, self.media, video_as=self.video_as)
        body: dict[str, Any] = dict(
            model=self.model_name,
            messages=translated,
            n=n_api,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
        )
        if params.seed is not None:
            body["seed"] = params.seed
        # not OpenAI parameters; vLLM / SGLang read them from the body
        if params.top_k > 0:
            body["top_k"] = params.top_k
        if has_video(translated):
            # vLLM: every frame of the video_url sequence, at the rate the hf engine assumes
            body["media_io_kwargs"] = copy.deepcopy(VIDEO_IO_KWARGS)
        if self.request_logprobs:
            body.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
        elif params.logprobs:
            body["logprobs"] = True
        return body

    def _one(self, messages: list[dict], params: SamplingParams) -> list[Sample]:
        """All attempts for one request → its samples (errors become error samples)."""
        body = self._body(messages, params)
        if self._refused.is_set():
            return [Sample(text="", finished=False, error="not sent: the endpoint refused the run") for _ in range(params.n)]
        payload = json.dumps(body).encode()
        with self._lock:
            self.n_requests += 1
        started = self._clock()
        attempt = 0
        while True:
            if self.limiter is not None:
                self.limiter.acquire()
            try:
                samples, ok = self._attempt(payload, body["n"])
                break
            except _Failed as e:
                error = str(e)
                wait = self._retry_wait(e, attempt + 1, started)
                if wait is None:
                    with self._lock:
                        self.n_failures += 1
                        self.failure_kinds[e.kind] += 1
                    return [Sample(text="", finished=False, error=error) for _ in range(params.n)]
            attempt += 1
            self._sleep(wait)
            with self._lock:
                self.n_retries += 1
        if not ok:
            # a reply with an empty or missing choice: its good choices are kept, the request counts as failed
            with self._lock:
                self.n_failures += 1
                self.failure_kinds["bad_response"] += 1
        if body["n"] < params.n:
            samples = [copy.deepcopy(samples[0]) for _ in range(params.n)]
        return samples

    def _retry_wait(self, e: _Failed, attempt: int, started: float) -> float | None:
        """Seconds to sleep before retry `attempt`, or None: not retryable, retries or retry budget spent."""
        if not e.retry or attempt > self.max_retries or self._refused.is_set():
            return None
        wait = backoff_s(attempt, base_s=self.backoff_s, retry_after_s=e.retry_after_s, rand=self._rand())
        if self._clock() - started + wait > self.retry_budget_s:
            return None
        return wait

    def _attempt(self, payload: bytes, n: int) -> tuple[list[Sample], bool]:
        """One HTTP attempt → (n samples, all good); a failure raises _Failed (a refused key: ConfigError)."""
        status, headers, data = self._post(payload)
        if status in FATAL_STATUSES:
            self._refused.set()
            raise endpoint_error(status, _error_message(data), base_url=self.base_url, model=self.model_name,
                                 key_env=self.api_key_env, key_set=self.key_set, settings=self.settings)
        if not 200 <= status < 300:
            retry_after = parse_retry_after(headers.get("retry-after"), now_s=self._wall_clock())
            retry = status in RETRY_STATUSES or status >= 500
            raise _Failed(f"http_{status}", _error_message(data), retry=retry, retry_after_s=retry_after)
        ctype = headers.get("content-type", "")
        if "json" not in ctype.lower():
            raise _Failed("bad_response", f"content type {ctype or 'none'!r}, not JSON ({_short(repr(data[:80]), 120)})",
                          retry=False)
        try:
            completion = json.loads(data)
        except (ValueError, RecursionError) as e:
            # ValueError covers bytes that are not UTF-8 and JSON that does not parse (an empty body too)
            raise _Failed("bad_response", f"reply is not valid JSON ({_short(str(e), 120)})", retry=False) from None
        problem = completion_problem(completion)
        if problem:
            raise _Failed("bad_response", f"malformed reply: {problem}", retry=False)
        try:
            samples, ok = samples_from_completion(completion, n)
        except (TypeError, ValueError, AttributeError, KeyError, IndexError, RecursionError) as e:
            # a field of the wrong type or shape: the reply is a failure, never the end of the run
            raise _Failed("bad_response", f"malformed reply ({type(e).__name__}: {_short(str(e), 120)})",
                          retry=False) from None
        return samples, ok

    def _post(self, payload: bytes) -> tuple[int, Any, bytes]:
        """(status, headers, body) of one POST, ended at `timeout_s` whatever the server does: the request
        runs in a watchdog thread that this one stops waiting for at the deadline (httpx's own timeouts
        bound each read, not the whole reply: a body dripping a byte a second never trips them)."""
        deadline = time.monotonic() + self.timeout_s
        box: dict[str, Any] = {}
        done = threading.Event()

        def work():
            try:
                box["reply"] = self._read(payload, deadline)
            except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
                box["error"] = e
            finally:
                done.set()

        threading.Thread(target=work, name="r1rm-openai-request", daemon=True).start()
        if not done.wait(self.timeout_s):
            raise _Failed("timeout", f"no complete reply within {self.timeout_s}s (engine.timeout_s)", retry=True)
        if "error" in box:
            raise self._transport_failure(box["error"])
        return box["reply"]

    def _read(self, payload: bytes, deadline: float) -> tuple[int, Any, bytes]:
        """The reply, read in chunks until `deadline` or `max_reply_bytes` (runs in the watchdog thread)."""
        timeout = self._httpx.Timeout(max(0.001, deadline - time.monotonic()))
        with self.http.stream("POST", self.url, content=payload, headers=self.headers, timeout=timeout) as resp:
            declared = resp.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_reply_bytes:
                raise _Failed("bad_response", f"reply of {int(declared)} bytes, over the {self.max_reply_bytes} "
                                              "bytes a completion may take", retry=False)
            chunks, size = [], 0
            for chunk in resp.iter_bytes():
                size += len(chunk)
                if size > self.max_reply_bytes:
                    raise _Failed("bad_response", f"reply over the {self.max_reply_bytes} bytes a completion "
                                                  "may take", retry=False)
                if time.monotonic() > deadline:
                    raise _Failed("timeout", f"no complete reply within {self.timeout_s}s (engine.timeout_s)",
                                  retry=True)
                chunks.append(chunk)
            return resp.status_code, resp.headers, b"".join(chunks)

    def _transport_failure(self, e: BaseException) -> BaseException:
        """What an exception of the watchdog thread becomes: _Failed, or itself (ConfigError, a bug)."""
        h = self._httpx
        if isinstance(e, _Failed | R1RMError):
            return e
        if isinstance(e, h.UnsupportedProtocol | h.InvalidURL):
            return ConfigError(f"the endpoint URL {self.base_url!r} cannot be used ({e})",
                               fix=f"set {self.settings}.base_url=http://HOST:PORT/v1")
        if isinstance(e, h.TimeoutException):
            return _Failed("timeout", f"no complete reply within {self.timeout_s}s (engine.timeout_s)", retry=True)
        if isinstance(e, h.DecodingError):
            return _Failed("bad_response", f"reply body cannot be decoded ({_short(str(e), 120)})", retry=False)
        if isinstance(e, h.TransportError | OSError):
            return _Failed("connection", f"{type(e).__name__}: {_short(str(e) or repr(e), 200)}", retry=True)
        return e

    def close(self) -> None:
        self.client.close()
        self.http.close()


def _error_message(data: bytes) -> str:
    """The message of an error reply: its JSON `error.message` when there is one, else its text."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return _short(data[:400].decode("utf-8", "replace")) or "(empty body)"
    err = obj.get("error") if isinstance(obj, dict) else None
    msg = err.get("message") if isinstance(err, dict) else (err if isinstance(err, str) else None)
    if msg is None and isinstance(obj, dict):
        msg = obj.get("message") or obj.get("detail")
    return _short(str(msg if msg is not None else obj))


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
