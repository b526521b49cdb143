"""A verl custom reward function that asks an r1rm judge (`r1rm judge --serve`) for each response's reward.

verl (v0.7.0; docs/preparation/reward_function.rst) loads a file named by `custom_reward_function.path`
and calls the function named by `custom_reward_function.name`:

- `compute_score(data_source, solution_str, ground_truth, extra_info=None)` → float, one response at a
  time (the default `naive` reward manager);
- `compute_score_batch(data_sources, solution_strs, ground_truths, extra_infos)` → list of floats, with
  `reward_model.reward_manager=batch` and `custom_reward_function.name=compute_score_batch` (the calls
  go out concurrently, and the server batches them into engine calls).

Each response is judged against the reference response (`ground_truth`, or `extra_info["reference"]`)
by `POST /v1/judge`; the reward is p1, the probability that the policy's response is the better one, in
[0, 1]. verl hands the reward function no prompt: the question comes from `extra_info["question"]`
(verl's own preprocessing scripts put it there), images from `extra_info["images"]` (data URLs, image
file paths, or {"bytes": ...} / {"path": ...} dicts as verl's image datasets hold them).

Settings, from the environment of verl's reward workers:
  R1RM_JUDGE_URL        the server, e.g. http://127.0.0.1:8000 (required)
  R1RM_API_KEY          its API key, when it has one
  R1RM_JUDGE_TIMEOUT_S  seconds per HTTP call (default 300)
  R1RM_JUDGE_RETRIES    retries after a connection error, 429 or 5xx (default 3; backoff 1, 2, 4 s ...)
  R1RM_JUDGE_K          samples per order (default 1); R1RM_JUDGE_CONCURRENCY: batch calls in flight (16)
`reward_kwargs` in verl's config may set the same as keyword arguments (url, api_key, k, timeout_s, retries).

Standard library only, so verl's environment needs nothing new: point `custom_reward_function.path` at
this file.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

RETRY_STATUS = (408, 429, 500, 502, 503, 504)


class JudgeServerError(RuntimeError):
    """The judge server could not give a reward: what failed, the URL, and how to fix it."""


def _setting(kwargs: dict, key: str, env: str, default: Any = None) -> Any:
    value = kwargs.get(key)
    return value if value is not None else os.environ.get(env, default)


def _image_url(image: Any, where: str) -> str:
    """A data URL for one image of extra_info["images"]."""
    if isinstance(image, dict):
        if image.get("bytes"):
            return _data_url(bytes(image["bytes"]), "image/png")
        image = image.get("path") or image.get("image")
    if isinstance(image, bytes | bytearray):
        return _data_url(bytes(image), "image/png")
    if isinstance(image, str) and image.startswith("data:"):
        return image
    if isinstance(image, str | os.PathLike) and Path(image).is_file():
        mime = mimetypes.guess_type(str(image))[0] or "image/png"
        return _data_url(Path(image).read_bytes(), mime)
    raise JudgeServerError(f"{where} is not an image the judge can be sent: {str(image)[:80]!r} "
                           "(give a data URL, an image file path, or {'bytes': ...})")


def _data_url(raw: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(raw).decode("ascii")


def judge_body(solution_str: str, ground_truth: Any, extra_info: dict | None, *, k: int = 1) -> dict:
    """The /v1/judge request for one response: response1 = the policy's, response2 = the reference."""
    extra = dict(extra_info or {})
    reference = extra.get("reference") or ground_truth
    if not isinstance(reference, str) or not reference.strip():
        raise JudgeServerError("no reference response: verl's ground_truth (reward_model.ground_truth) is empty and "
                               "extra_info has no 'reference'; put the reference response in the dataset")
    question = extra.get("question")
    if not isinstance(question, str):
        raise JudgeServerError("extra_info has no 'question' (verl gives a reward function no prompt): add the question "
                               "to each row's extra_info, as verl's preprocessing scripts do")
    images = extra.get("images") or []
    body = {"question": question, "response1": solution_str, "response2": reference, "k": int(k),
            "images": [_image_url(img, f"extra_info['images'][{i}]") for i, img in enumerate(images)]}
    return body


def post_json(url: str, body: dict, *, api_key: str | None, timeout_s: float, retries: int) -> dict:
    """POST `body` as JSON, retrying connection errors, 408/429/5xx with exponential backoff; a 4xx is the
    request's fault and raised at once with the server's message."""
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(2 ** (attempt - 1), 30))
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=timeout_s) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:500]
            try:
                detail = json.loads(detail)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                pass
            if e.code not in RETRY_STATUS:
                fix = " (set R1RM_API_KEY to the server's key)" if e.code == 401 else ""
                raise JudgeServerError(f"{url} refused the request: HTTP {e.code}: {detail}{fix}") from None
            last = f"HTTP {e.code}: {detail}"
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
    raise JudgeServerError(f"{url} gave no reward after {retries + 1} attempts (last: {last}); is `r1rm judge --serve` "
                           "running there? (R1RM_JUDGE_URL, R1RM_JUDGE_RETRIES, R1RM_JUDGE_TIMEOUT_S)")


def _client(kwargs: dict) -> tuple[str, dict]:
    url = _setting(kwargs, "url", "R1RM_JUDGE_URL")
    if not url:
        raise JudgeServerError("R1RM_JUDGE_URL is not set: export R1RM_JUDGE_URL=http://HOST:PORT (the address of "
                               "`r1rm judge --serve`) where verl's reward workers run, or pass reward_kwargs.url")
    url = url.rstrip("/")
    url = url[: -len("/v1")] if url.endswith("/v1") else url
    opts = {"api_key": _setting(kwargs, "api_key", "R1RM_API_KEY"),
            "timeout_s": float(_setting(kwargs, "timeout_s", "R1RM_JUDGE_TIMEOUT_S", 300)),
            "retries": int(_setting(kwargs, "retries", "R1RM_JUDGE_RETRIES", 3))}
    return url + "/v1/judge", opts


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  **kwargs: Any) -> float:
    """verl's custom reward function: P(the policy's response beats the reference), in [0, 1]."""
    url, opts = _client(kwargs)
    body = judge_body(solution_str, ground_truth, extra_info, k=int(_setting(kwargs, "k", "R1RM_JUDGE_K", 1)))
    return float(post_json(url, body, **opts)["p1"])


def compute_score_batch(data_sources: list, solution_strs: list[str], ground_truths: list, extra_infos: list,
                        **kwargs: Any) -> list[float]:
    """verl's batch reward function (reward_manager=batch): `compute_score` for every item, concurrently."""
    n = len(solution_strs)
    workers = int(_setting(kwargs, "concurrency", "R1RM_JUDGE_CONCURRENCY", 16))
    infos = list(extra_infos) if extra_infos is not None else [None] * n
    with ThreadPoolExecutor(max_workers=max(1, min(workers, n or 1))) as pool:
        futures = [pool.submit(compute_score, data_sources[i], solution_strs[i], ground_truths[i], infos[i], **kwargs)
                   for i in range(n)]
        return [f.result() for f in futures]
