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
- Requests run `concurrency` at a time (a thread pool), each with its own timeout.
  The client is built with `max_retries=0` and r1rm retries itself, so every retry is
  counted: on connection errors, timeouts, HTTP 408/429 and 5xx, up to `max_retries`
  times, sleeping `backoff_s * 2**attempt` in between. Other errors (e.g. 400) are not
  retried. HTTP 401 / 403 (the key) and 404 (the URL or the model name) fail every request
  alike and no rerun cures them: the first one stops the run at once with a ConfigError
  (exit 2) naming the endpoint, the status and the setting to change (`endpoint_error`).
- A request that still fails gives `n` samples with empty text, finished=False and
  `error="<kind>: <message>"` (kinds: timeout, connection, http_<status>, bad_response) —
  never an exception, never an invented answer. So does a garbage response (not JSON,
  no choices, empty content; not retried). Counters: `n_requests`, `n_retries`,
  `n_failures` (requests with at least one failed sample). Unreadable image files are
  the caller's mistake and raise InputFileError.
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
import io
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from r1rm.core.choice import choice_probs_from_logprobs, find_answer_position
from r1rm.data.media import VIDEO_FPS, MediaBudget, prepare_visuals, sniff_image, video_frame_list
from r1rm.engines.base import ProgressFn, Request, Sample, SamplingParams
from r1rm.errors import ConfigError, InputFileError, MissingDependencyError

TOP_LOGPROBS = 5
# image formats an endpoint takes as they are; any other image is sent re-encoded as PNG
_ENDPOINT_MIMES = ("image/png", "image/jpeg", "image/gif", "image/webp")


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
    sniffed = sniff_image(data)
    if sniffed is not None and sniffed[1] in _ENDPOINT_MIMES:
        return f"data:{sniffed[1]};base64," + base64.b64encode(data).decode("ascii")
    with Image.open(io.BytesIO(data)) as img:
        return _png_data_url(img.convert("RGB"))


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


def samples_from_completion(completion: Any, n: int) -> tuple[list[Sample], bool]:
    """(n samples, ok) from a chat.completions response; garbage gives error samples and ok=False."""
    choices = _get(completion, "choices") if completion is not None else None
    if not isinstance(choices, list) or not choices:
        what = "an empty choices list" if isinstance(choices, list) else f"{type(completion).__name__} {_short(repr(completion), 80)}"
        return [Sample(text="", finished=False, error=f"bad_response: no choices in the reply ({what})") for _ in range(n)], False
    samples, ok = [], True
    for choice in sorted(choices, key=lambda c: _get(c, "index") or 0)[:n]:
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


# ---------------------------------------------------------------- the engine (I/O)
def _import_openai():
    try:
        import openai
    except ImportError:
        raise MissingDependencyError("the openai client is not installed", fix="pip install openai") from None
    return openai


class OpenAIEngine:
    """Generates through an OpenAI-compatible chat completions endpoint (see the module docstring)."""

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
        request_logprobs: bool = False,
        requests_per_minute: float | None = None,
        media: MediaBudget | None = None,
        video_as: str = "video",
        api_key_env: str | None = None,
        settings: str = "engine",
    ):
        if video_as not in ("video", "frames"):
            raise ValueError(f"video_as must be 'video' or 'frames', got {video_as!r}")
        openai = _import_openai()
        self._openai = openai
        self.base_url = base_url
        self.model_name = model_name
        self.concurrency = max(1, concurrency)
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.request_logprobs = request_logprobs
        self.limiter = RateLimiter(requests_per_minute) if requests_per_minute else None
        # the run's budget for images and video frames (the one preprocessing of every engine)
        self.media = media
        self.video_as = video_as
        # retries are r1rm's (counted), not the client's
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "EMPTY", max_retries=0, timeout=timeout_s)
        # for the message of a refused key: where the key came from, and the config section to fix
        self.api_key_env, self.key_set, self.settings = api_key_env, bool(api_key and api_key != "EMPTY"), settings
        self._lock = threading.Lock()
        # set by the first refused key / unknown model: no request starts after it
        self._refused = threading.Event()
        self.n_requests = 0
        self.n_retries = 0
        self.n_failures = 0

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
        extra: dict[str, Any] = {}
        if params.top_k > 0:
            extra["top_k"] = params.top_k
        if has_video(translated):
            # vLLM: every frame of the video_url sequence, at the rate the hf engine assumes
            extra["media_io_kwargs"] = copy.deepcopy(VIDEO_IO_KWARGS)
        if extra:
            body["extra_body"] = extra
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
        with self._lock:
            self.n_requests += 1
        error = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
                with self._lock:
                    self.n_retries += 1
            if self.limiter is not None:
                self.limiter.acquire()
            try:
                completion = self.client.chat.completions.create(**body, timeout=self.timeout_s)
            except self._openai.OpenAIError as e:
                if isinstance(e, self._openai.APIStatusError) and e.status_code in FATAL_STATUSES:
                    self._refused.set()
                    raise endpoint_error(e.status_code, e.message, base_url=self.base_url, model=self.model_name,
                                         key_env=self.api_key_env, key_set=self.key_set, settings=self.settings) from None
                error, retry = self._classify(e)
                if retry:
                    continue
                break
            except ValueError as e:
                # the client parses a JSON content type itself: a malformed body raises JSONDecodeError
                error = f"bad_response: reply is not valid JSON ({_short(str(e), 120)})"
                break
            samples, ok = samples_from_completion(completion, body["n"])
            if not ok:
                with self._lock:
                    self.n_failures += 1
            if body["n"] < params.n:
                samples = [copy.deepcopy(samples[0]) for _ in range(params.n)]
            return samples
        with self._lock:
            self.n_failures += 1
        return [Sample(text="", finished=False, error=error) for _ in range(params.n)]

    def _classify(self, e: Exception) -> tuple[str, bool]:
        """('<kind>: <message>', retryable) for a client exception."""
        o = self._openai
        if isinstance(e, o.APITimeoutError):
            return f"timeout: no reply within {self.timeout_s}s", True
        if isinstance(e, o.APIConnectionError):
            cause = e.__cause__ or e
            return f"connection: {type(cause).__name__}: {cause}", True
        if isinstance(e, o.APIStatusError):
            code = e.status_code
            return f"http_{code}: {_short(e.message)}", code in (408, 429) or code >= 500
        return f"{type(e).__name__}: {_short(str(e))}", False

    def close(self) -> None:
        self.client.close()


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
