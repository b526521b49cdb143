"""An on-disk cache of engine results keyed by the content of the request, and a generate that uses it.

`build-data` pays for every teacher / captioner / CMKD call once: before asking the engine,
it looks the request up by `request_key` — sha256 over the messages (every image or frame
path replaced by the sha1 of the file's bytes, so moving the data does not invalidate the
cache), the model name and every sampling parameter (with the attempt's seed). The cache
file is append-only JSONL, one flushed line per request (`{"key", "samples": [...]}`), so a
run killed at any point keeps every result it received; a line cut by the kill is truncated
away when the cache is opened. Only successful results are cached: a request that failed
(endpoint error after the engine's retries) is asked again by the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from r1rm.data.files import truncate_partial_line
from r1rm.engines.base import Request, Sample, SamplingParams
from r1rm.errors import DataError

_hash_memo: dict[tuple[str, int, int], str] = {}


def file_sha1(path: str | os.PathLike) -> str:
    """sha1 of a file's bytes (memoised by path, size and mtime)."""
    st = os.stat(path)
    memo_key = (os.fspath(path), st.st_size, st.st_mtime_ns)
    if memo_key not in _hash_memo:
        h = hashlib.sha1()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _hash_memo[memo_key] = h.hexdigest()
    return _hash_memo[memo_key]


def _media_id(value: Any) -> Any:
    if isinstance(value, str | Path) and not str(value).startswith(("http://", "https://", "data:")) and os.path.isfile(value):
        return {"sha1": file_sha1(value)}
    if isinstance(value, list | tuple):
        return [_media_id(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return repr(value)


def request_key(messages: list[dict], params: SamplingParams, model: str, **extra: Any) -> str:
    """sha256 (hex) of the request content: messages (media by file hash), model, sampling params, extra."""
    norm = []
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, list):
            content = [{k: (_media_id(v) if k in ("image", "video", "path") else v) for k, v in part.items()} for part in content]
        norm.append({"role": msg.get("role"), "content": content})
    blob = json.dumps({"messages": norm, "model": model, "params": asdict(params), "extra": extra},
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def sample_to_json(s: Sample) -> dict:
    return {"text": s.text, "finished": s.finished, "n_tokens": len(s.token_ids), "mean_logprob": s.mean_logprob}


class ResultCache:
    """Append-only JSONL `{"key": ..., "samples": [...]}` with an in-memory index key → byte offset."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.index: dict[str, int] = {}
        # a line cut by a kill: only ever the last one (each line is one write)
        self.n_truncated = int(truncate_partial_line(self.path))
        if self.path.exists():
            self._load()
        self._append = open(self.path, "ab")
        self._read = open(self.path, "rb")

    def _load(self) -> None:
        offset = 0
        with open(self.path, "rb") as f:
            for line_no, raw in enumerate(f, start=1):
                try:
                    key = json.loads(raw)["key"]
                except (ValueError, KeyError, TypeError):
                    raise DataError("damaged cache line", where=f"{self.path}:{line_no}",
                                    fix="delete that line (its request is asked again) or the whole cache file") from None
                self.index.setdefault(key, offset)
                offset += len(raw)

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def __len__(self) -> int:
        return len(self.index)

    def get(self, key: str) -> list[dict] | None:
        offset = self.index.get(key)
        if offset is None:
            return None
        self._read.seek(offset)
        return json.loads(self._read.readline())["samples"]

    def put(self, key: str, samples: list[dict], **info: Any) -> None:
        line = (json.dumps({"key": key, **info, "samples": samples}, ensure_ascii=False) + "\n").encode("utf-8")
        offset = self._append.seek(0, os.SEEK_END)
        self._append.write(line)
        self._append.flush()
        self.index.setdefault(key, offset)

    def close(self) -> None:
        self._append.close()
        self._read.close()


def generate_cached(
    get_engine: Callable[[], Any],
    cache: ResultCache,
    jobs: Sequence[tuple[str, list[dict]]],
    params: SamplingParams,
    *,
    info: dict | None = None,
) -> tuple[dict[str, list[dict]], dict[str, str], int]:
    """Samples for each (key, messages) job: from the cache, else from the engine (then cached).

    get_engine: builds the engine on first need (a fully cached run never loads a model).
    Returns ({key: samples}, {key: error} for requests that failed, number of engine requests).
    """
    results: dict[str, list[dict]] = {}
    errors: dict[str, str] = {}
    todo: list[tuple[str, list[dict]]] = []
    seen: set[str] = set()
    for key, messages in jobs:
        hit = cache.get(key)
        if hit is not None:
            results[key] = hit
        elif key not in seen:
            seen.add(key)
            todo.append((key, messages))
    if not todo:
        return results, errors, 0
    out = get_engine().generate([Request(m, key=k) for k, m in todo], params)
    for (key, _), samples in zip(todo, out, strict=True):
        failed = next((s.error for s in samples if s.error is not None), None)
        if failed is not None:
            errors[key] = failed
            continue
        rows = [sample_to_json(s) for s in samples]
        cache.put(key, rows, **(info or {}))
        results[key] = rows
    return results, errors, len(todo)
