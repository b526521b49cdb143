"""Reading and writing data files: the one reader per layout, the one atomic writer, the one appender.

Reading. `json_lines` walks a JSONL file line by line (line -> UTF-8 -> JSON): each non-blank
line comes back decoded, or as a `LineError` saying why not, so a caller decides whether a bad
line stops the read or is counted and skipped. `read_rows` reads a file of rows in any of the
layouts r1rm takes — JSONL, a JSON array (.json), parquet, a folder of parquet shards — as
`FileRow`s that say where each row was (file:line, or file:row N for parquet) and its text.

Writing. Every file r1rm writes whole is written under a temporary name beside it and renamed
onto its name when complete (`atomic_path` and the `write_*_atomic` helpers built on it), so a
reader or a killed run never sees half of one. Outputs that grow row by row are appended one
flushed line at a time (`JsonlAppender`); a line cut by a kill is dropped when the file is
opened again (`truncate_partial_line`), so a resumed run neither loses nor repeats a row.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1rm.errors import DataError, InputFileError, where

# the most characters of a row's text kept for messages and rejects.jsonl
RAW_CHARS = 2000


class RowError(ValueError):
    """A row failed validation; `reason` is a short code, the message says what to fix."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


class LineError(RowError):
    """A line of a JSONL file that is not UTF-8, not JSON, or not an object.

    `brief` says what is wrong; the message adds how to fix it. `detail` is the JSON decoder's
    own words (invalid_json only)."""

    def __init__(self, reason: str, brief: str, hint: str | None = None, *, detail: str = ""):
        self.brief = brief
        self.detail = detail
        super().__init__(reason, f"{brief}; {hint}" if hint else brief)


@dataclass(frozen=True)
class FileRow:
    """One row of a data file: where it is, its text (cut to RAW_CHARS), and the row or why not."""

    file: str
    line: int  # line of a JSONL or JSON-array file; 1-based row number of a parquet file
    raw: str
    row: dict | None
    error: LineError | None
    where: str  # "file:line", or "file:row N" for parquet


# ---------------------------------------------------------------- reading
def json_lines(path: str | os.PathLike) -> Iterator[tuple[int, str, Any]]:
    """(line number, the line's text cut to RAW_CHARS, decoded JSON value or LineError) per non-blank line."""
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"data file not found: '{p}'", fix="check the path (relative paths start from the current directory)")
    with open(p, "rb") as f:
        for i, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                shown = raw.decode("utf-8", "replace").rstrip("\n")[:RAW_CHARS]
                yield i, shown, LineError("not_utf8", "line is not valid UTF-8", "re-encode the file as UTF-8")
                continue
            shown = text.rstrip("\n")[:RAW_CHARS]
            try:
                yield i, shown, json.loads(text)
            except json.JSONDecodeError as e:
                yield i, shown, LineError("invalid_json", f"invalid JSON ({e.msg} at column {e.colno})",
                                          "the line may be truncated", detail=e.msg)


def jsonl_rows(path: str | os.PathLike) -> Iterator[FileRow]:
    """The rows of a JSONL file; a line that is not a JSON object comes with its LineError."""
    p = Path(path)
    for line, shown, value in json_lines(p):
        error = value if isinstance(value, LineError) else None
        if error is None and not isinstance(value, dict):
            error = LineError("not_object", f"each line must be a JSON object, got {type(value).__name__}")
        yield FileRow(str(p), line, shown, None if error else value, error, where(p, line))


def read_rows(path: Path, *, folder_fix: str) -> Iterator[FileRow]:
    """The rows of a JSONL, JSON-array or parquet file, or of a folder of parquet shards (sorted).

    A bad JSONL line comes as a FileRow with its error; a JSON array or parquet file that cannot
    be read, or holds no row, raises DataError. `folder_fix` is the fix named when a folder
    holds no parquet file."""
    if path.is_dir():
        shards = sorted(path.glob("*.parquet"))
        if not shards:
            raise InputFileError(f"'{path}' is a folder with no .parquet files", fix=folder_fix)
        for shard in shards:
            yield from _parquet_rows(shard)
        return
    if path.suffix.lower() == ".parquet":
        yield from _parquet_rows(path)
        return
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:].lstrip()
    if head.startswith(b"["):
        yield from _json_array_rows(path)
        return
    yield from jsonl_rows(path)


def _json_array_rows(p: Path) -> Iterator[FileRow]:
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError("file is not valid UTF-8", where=str(p), fix="re-encode the file as UTF-8") from None
    decoder = json.JSONDecoder()
    ws = re.compile(r"\s*")
    pos = ws.match(text, 0).end() + 1  # past '['
    line, counted = 1, 0
    n = 0
    while True:
        pos = ws.match(text, pos).end()
        if pos < len(text) and text[pos] == "]":
            break
        if n:
            if pos >= len(text) or text[pos] != ",":
                line += text.count("\n", counted, pos)
                raise DataError("expected ',' or ']' between items of the JSON array", where=where(p, line), fix="the file may be truncated")
            pos = ws.match(text, pos + 1).end()
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            row, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON ({e.msg})", where=where(p, line + text.count("\n", pos, e.pos)), fix="the file may be truncated") from None
        if not isinstance(row, dict):
            raise DataError(f"each item must be a JSON object, got {type(row).__name__}", where=where(p, line), fix="a JSON array of objects")
        yield FileRow(str(p), line, text[pos:end][:RAW_CHARS], row, None, where(p, line))
        n += 1
        pos = end
    if n == 0:
        raise DataError("file has no items (the JSON array is empty)", where=str(p), fix="point to the benchmark file")


def _parquet_rows(p: Path) -> Iterator[FileRow]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(p)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for non-parquet files
        raise DataError(f"cannot read parquet ({type(e).__name__}: {e})", where=str(p), fix="point to a .parquet file") from None
    n = 0
    for batch in pf.iter_batches(batch_size=64):
        for row in batch.to_pylist():
            n += 1
            raw = json.dumps(row, ensure_ascii=False, default=json_fallback)[:RAW_CHARS]
            yield FileRow(str(p), n, raw, row, None, f"{p}:row {n}")
    if n == 0:
        raise DataError("parquet file has no rows", where=str(p), fix="point to the benchmark file")


def json_fallback(value: Any) -> Any:
    """`json.dumps(default=...)` for values JSON has no type for: bytes as "<N bytes>", the rest as repr."""
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    return repr(value)


# ---------------------------------------------------------------- writing whole files
@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` to write a file (or build a folder) at, renamed onto `path`
    when the block ends without an error; on an error it is removed and `path` left as it was."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp.{os.getpid()}")
    try:
        yield tmp
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, p)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> None:
    """Write `data` to `path` atomically; `fsync` makes it durable before the rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any, *, ensure_ascii: bool = True) -> None:
    """Write `obj` as indented JSON (2 spaces, a final newline) to `path` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=ensure_ascii) + "\n")


def jsonl_line(row: Any) -> str:
    """One JSONL line (newline included) for a dict or an object with to_json: compact, UTF-8 as is."""
    obj = row.to_json() if hasattr(row, "to_json") else row
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[Any]) -> int:
    """Write rows (dicts or objects with to_json) to `path` atomically and durably; return the count."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(jsonl_line(row))
            n += 1
        f.flush()
        os.fsync(f.fileno())
    return n


# ---------------------------------------------------------------- appending row by row
def truncate_partial_line(path: Path) -> bool:
    """Cut a trailing partial line (a write cut by a kill) off `path`; True when something was cut."""
    if not path.exists():
        return False
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        # walk back to the last newline; everything after it is an incomplete write
        pos = size
        block = 4096
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                cut = start + nl + 1
                if cut != size:
                    f.truncate(cut)
                return cut != size
            pos = start
        f.truncate(0)
        return size > 0


class JsonlAppender:
    """Append-only JSONL output that survives a kill: each row is one flushed line.

    On open, a trailing partial line (a write cut by a kill) is truncated away and the
    `key` of every complete row is loaded into `done`, so a resumed run skips them: no
    record is lost or duplicated.
    """

    def __init__(self, path: str | os.PathLike, key: str | None = None, fsync: bool = False):
        self.path = Path(path)
        self.key = key
        self.fsync = fsync
        self.done: set = set()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        truncate_partial_line(self.path)
        if key is not None and self.path.exists():
            for i, _, value in json_lines(self.path):
                if not isinstance(value, dict) or key not in value:
                    problem = value.brief if isinstance(value, LineError) else f"the row has no '{key}'"
                    raise DataError(f"cannot resume {self.path}: {problem}", where=where(self.path, i),
                                    fix="delete that line (the run writes it again), or use a new output_dir")
                self.done.add(_freeze(value[key]))
        self._f = open(self.path, "a", encoding="utf-8")

    def append(self, row: Any) -> None:
        obj = row.to_json() if hasattr(row, "to_json") else row
        self._f.write(jsonl_line(obj))
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())
        if self.key is not None:
            self.done.add(_freeze(obj[self.key]))

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _freeze(value: Any) -> Any:
    return tuple(_freeze(v) for v in value) if isinstance(value, list) else value
