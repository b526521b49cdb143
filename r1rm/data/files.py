"""Reading and writing data files: the one reader per layout, the one atomic writer, the one appender.

Reading. `json_lines` walks a JSONL file line by line (line -> UTF-8 -> JSON): each non-blank
line comes back decoded, or as a `LineError` saying why not, so a caller decides whether a bad
line stops the read or is counted and skipped. `read_rows` reads a file of rows in any of the
layouts r1rm takes — JSONL, a JSON array (.json), parquet, a folder of parquet shards — as
`FileRow`s that say where each row was (file:line, or file:row N for parquet) and its text.

Parsing. What users hand r1rm is parsed by one guarded JSON decoder (`loads_json`: nesting,
keys given twice, NaN, line length bounded) and one guarded YAML loader (`load_yaml`: alias
bombs, recursive aliases, `!!python/` tags, keys given twice refused while composing).

Writing. Every file r1rm writes whole is written under a temporary name beside it and renamed
onto its name when complete (`atomic_path` and the `write_*_atomic` helpers built on it), so a
reader or a killed run never sees half of one. Outputs that grow row by row are appended one
flushed line at a time (`JsonlAppender`); a line cut by a kill is dropped when the file is
opened again (`truncate_partial_line`), so a resumed run neither loses nor repeats a row.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from r1rm.errors import DataError, InputFileError, where

# the most characters of a row's text kept for messages and rejects.jsonl
RAW_CHARS = 2000


# ---------------------------------------------------------------- the environment: what paths are
def check_regular(path: str | os.PathLike, *, what: str = "data file", folders: bool = True) -> None:
    """Refuse a path r1rm would open for reading that is a device, a FIFO or a socket (reading or
    fingerprinting one never ends: /dev/zero, a named pipe); a folder passes where `folders`.
    A missing path passes: the caller says it is missing, in its own words. Only stat, no open."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if stat.S_ISREG(mode) or (folders and stat.S_ISDIR(mode)):
        return
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
            else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a folder" if stat.S_ISDIR(mode) else "not a regular file")
    raise InputFileError(f"{what} '{path}' is {kind}, not a regular file (reading it would not end)",
                         fix="point to a regular file (save a stream to a file first)")


def check_output_dir(path: str | os.PathLike) -> None:
    """Pre-flight before any heavy work: `path` is a folder r1rm can write into, or one it can create
    (the nearest existing parent is a writable folder). Nothing is created here."""
    p = Path(path)
    fix = "set output_dir to a folder you can write (a path that does not exist yet is created)"
    if p.exists() and not p.is_dir():
        raise InputFileError(f"output_dir '{p}' exists and is not a folder", fix=fix)
    q = p.absolute()
    while not q.exists() and q != q.parent:
        q = q.parent
    if not q.is_dir():
        raise InputFileError(f"output_dir '{p}' cannot be created: '{q}' is a file, not a folder", fix=fix)
    if not os.access(q, os.W_OK | os.X_OK):
        raise InputFileError(f"output_dir '{p}' cannot be written: '{q}' is not writable", fix=fix)


# errors writing an output that are the environment's, not r1rm's: exit 2 naming the file
_WRITE_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
                 errno.EFBIG: "the file size limit was reached", errno.EACCES: "permission denied",
                 errno.EPERM: "operation not permitted", errno.EROFS: "the file system is read-only",
                 errno.ENOTDIR: "a parent is a file, not a folder", errno.EEXIST: "a parent is a file, not a folder",
                 errno.EISDIR: "it is a folder"}


def cannot_write(path: str | os.PathLike, e: OSError) -> InputFileError | OSError:
    """The user-facing error for an OSError writing output `path` (disk full, permissions, ...);
    any other OSError is returned unchanged (a bug keeps its traceback)."""
    if e.errno not in _WRITE_ERRORS:
        return e
    return InputFileError(f"cannot write '{path}': {_WRITE_ERRORS[e.errno]} ({e.strerror})",
                          fix="free disk space or fix the permissions, or set output_dir to another folder; "
                          "then rerun the same command (it resumes)")


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
        self.hint = hint
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


# ---------------------------------------------------------------- guarded JSON
# The one JSON decoder for what users hand r1rm (data lines, JSON arrays, manifests, request
# bodies): json's C decoder recurses per level of nesting (RecursionError past ~1000 levels),
# keeps the last of two equal keys silently and takes NaN / Infinity, which JSON does not have.
MAX_JSON_DEPTH = 100  # nesting levels of arrays and objects; real records nest < 10
MAX_LINE_BYTES = 64 * 2**20  # one JSONL line; a record's text, not its images (those are files)
# a JSON string literal (skipped whole) or a bracket: the tokens that change nesting depth
_DEPTH_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


def json_depth(text: str) -> int:
    """The deepest nesting of arrays/objects in JSON `text` (brackets inside strings don't count); the
    scan stops at the first level past MAX_JSON_DEPTH, so a bomb of a million `[` costs 101 steps."""
    opening = text.count("[") + text.count("{")
    if opening <= MAX_JSON_DEPTH:
        return opening  # an upper bound, exact enough below the limit
    depth = deepest = 0
    for m in _DEPTH_TOKENS.finditer(text):
        c = m.group()
        if c == "[" or c == "{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if depth > MAX_JSON_DEPTH:
                    break
        elif c == "]" or c == "}":
            depth -= 1
    return deepest


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise LineError("duplicate_key", f"key '{key[:80]}' is given twice in one object",
                        "keep one of them (JSON readers disagree on which one wins)")
    return obj


def _no_constant(name: str) -> Any:
    raise LineError("invalid_json", f"invalid JSON ({name} is not a JSON number)", "write null or a finite number")


_STRICT = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constant)
_LENIENT = json.JSONDecoder(object_pairs_hook=_unique_keys)


def loads_json(text: str | bytes, *, allow_nan: bool = False) -> Any:
    """One JSON document, guarded: a LineError (reason invalid_json, json_too_deep, duplicate_key,
    not_utf8) instead of RecursionError, a silently dropped key or a NaN. `allow_nan` for r1rm's own
    outputs, which json.dumps may have written NaN into."""
    if isinstance(text, bytes | bytearray):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise LineError("not_utf8", "line is not valid UTF-8", "re-encode the file as UTF-8") from None
    text = text.removeprefix("\ufeff")
    too_deep = LineError("json_too_deep", f"JSON nested deeper than {MAX_JSON_DEPTH} levels",
                         f"flatten the record: r1rm reads at most {MAX_JSON_DEPTH} levels of arrays and objects")
    if json_depth(text) > MAX_JSON_DEPTH:
        raise too_deep
    decoder = _LENIENT if allow_nan else _STRICT
    try:
        value, end = decoder.raw_decode(text, len(text) - len(text.lstrip()))
        if text[end:].strip():
            raise json.JSONDecodeError("Extra data", text, end)
    except json.JSONDecodeError as e:
        hint = "a NUL byte: is this a binary file?" if "\x00" in text else "the line may be truncated"
        at = f"line {e.lineno} column {e.colno}" if e.lineno > 1 else f"column {e.colno}"
        raise LineError("invalid_json", f"invalid JSON ({e.msg} at {at})", hint, detail=e.msg) from None
    except RecursionError:  # only when called deep in a stack already: the depth check ran first
        raise too_deep from None
    return value


def read_json(path: str | os.PathLike, *, fix: str, allow_nan: bool = False) -> Any:
    """A whole JSON file (manifest.json, trainer_state.json, a DeepSpeed config, an eval record)
    through `loads_json`; DataError naming the file and `fix` when it is not JSON r1rm reads."""
    p = Path(path)
    try:
        return loads_json(p.read_bytes(), allow_nan=allow_nan)
    except LineError as e:
        raise DataError(e.brief.replace("line is not", "file is not"), where=str(p), fix=fix) from None


def _read_lines(f: Any) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, its bytes, whether it is too long) per line of binary file f. A line over
    MAX_LINE_BYTES comes as its first RAW_CHARS bytes, the rest read past in 1 MiB pieces, so
    that no more than MAX_LINE_BYTES of a line is ever held."""
    i = 0
    while raw := f.readline(MAX_LINE_BYTES + 1):
        i += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            raw = raw[:RAW_CHARS]
            while (rest := f.readline(2**20)) and not rest.endswith(b"\n"):
                pass
            yield i, raw, True
        else:
            yield i, raw, False


# ---------------------------------------------------------------- guarded YAML
# The one YAML loader (recipes, overrides, a run's config.yaml, dataset cards). PyYAML's safe
# loader builds no Python objects, but an alias names a node again without copying it: nine
# aliases of nine aliases are 9**9 nodes to whoever walks the result (27 s and 3 GB for a 350-byte
# recipe), an alias inside its own anchor is a cycle, and a key given twice keeps the last silently.
MAX_YAML_DEPTH = 50  # nesting levels of mappings and lists
MAX_YAML_ALIAS_NODES = 10_000  # nodes that aliases may add to a document, all aliases together


class YamlError(ValueError):
    """YAML that r1rm refuses: `brief` says why, `line` (1-based) where, `hint` how to fix it."""

    def __init__(self, brief: str, line: int | None, hint: str):
        self.brief, self.line, self.hint = brief, line, hint
        super().__init__(brief)


class _GuardedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses, while composing and before anything walks the document: alias
    expansion past MAX_YAML_ALIAS_NODES, a recursive alias, nesting past MAX_YAML_DEPTH, `!!python/`
    tags and (with `unique_keys`) a key given twice in one mapping."""

    def __init__(self, text: str, unique_keys: bool):
        super().__init__(text)
        self.unique_keys = unique_keys
        self.sizes: dict[int, int] = {}  # id(node) -> its nodes with aliases expanded (set once complete)
        self.aliased = 0
        self.path: list[str] = []

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None and id(target) not in self.sizes:
                raise YamlError(f"alias *{event.anchor} is inside its own anchor &{event.anchor} (a recursive alias)",
                                line, "write the value out instead of the alias")
            node = super().compose_node(parent, index)
            self.aliased += self.sizes[id(node)]
            if self.aliased > MAX_YAML_ALIAS_NODES:
                raise YamlError(f"aliases expand to more than {MAX_YAML_ALIAS_NODES} nodes (an alias bomb?)", line,
                                "write the values out, or use fewer aliases of aliases")
            return node
        if getattr(event, "tag", None) and event.tag.startswith("tag:yaml.org,2002:python/"):
            raise YamlError(f"tag !!{event.tag.removeprefix('tag:yaml.org,2002:')} is not allowed: r1rm never builds "
                            "Python objects from YAML", line, "remove the tag and write a plain value")
        if len(self.path) >= MAX_YAML_DEPTH:
            raise YamlError(f"YAML nested deeper than {MAX_YAML_DEPTH} levels", line, "flatten the document")
        self.path.append(index.value if isinstance(index, yaml.ScalarNode) else "-")
        node = super().compose_node(parent, index)
        self.path.pop()
        kids = [n for kv in node.value for n in kv] if isinstance(node, yaml.MappingNode) else node.value
        self.sizes[id(node)] = 1 + (sum(self.sizes[id(k)] for k in kids) if isinstance(kids, list) else 0)
        return node

    def compose_mapping_node(self, anchor: Any) -> Any:
        node = super().compose_mapping_node(anchor)
        seen: dict[str, int] = {}
        for key, _ in node.value if self.unique_keys else ():
            if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                line = key.start_mark.line + 1
                if key.value in seen:
                    dotted = ".".join([*(k for k in self.path[1:] if k != "-"), key.value])
                    raise YamlError(f"'{dotted}' is given twice, on lines {seen[key.value]} and {line}", line,
                                    "keep one of them (the second would silently replace the first)")
                seen[key.value] = line
        return node


def load_yaml(text: str, *, unique_keys: bool = True) -> tuple[Any, yaml.Node | None]:
    """(value, root node) of one YAML document through the guarded loader; YamlError if refused."""
    loader = _GuardedLoader(text, unique_keys)
    try:
        node = loader.get_single_node()
        return (loader.construct_document(node) if node is not None else None), node
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise YamlError(f"not valid YAML: {getattr(e, 'problem', None) or e}", mark.line + 1 if mark else None,
                        "check indentation and quoting on that line") from None
    finally:
        loader.dispose()


# ---------------------------------------------------------------- reading
def json_lines(path: str | os.PathLike, *, allow_nan: bool = False) -> Iterator[tuple[int, str, Any]]:
    """(line number, the line's text cut to RAW_CHARS, decoded JSON value or LineError) per non-blank line.

    Every line goes through `loads_json`; a UTF-8 BOM that starts a line is skipped; a line longer than
    MAX_LINE_BYTES is a LineError (line_too_long). A file that is one JSON array (or object) written
    over many lines is a DataError, said once."""
    p = Path(path)
    check_regular(p, folders=False)
    if not p.is_file():
        raise InputFileError(f"data file not found: '{p}'", fix="check the path (relative paths start from the current directory)")
    first = True
    with open(p, "rb") as f:
        for i, raw, too_long in _read_lines(f):
            if i == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            if not raw.strip():
                continue
            shown = raw.decode("utf-8", "replace").rstrip("\r\n")[:RAW_CHARS]
            if too_long:
                yield i, shown, LineError("line_too_long", f"line is longer than {MAX_LINE_BYTES // 2**20} MiB",
                                          "one record per line; put images and videos in files the record names")
                first = False
                continue
            try:
                value = loads_json(raw, allow_nan=allow_nan)
            except LineError as e:
                if first and e.reason == "invalid_json" and (raw.lstrip().startswith(b"[") or raw.strip() == b"{"):
                    _refuse_json_document(p, i, array=raw.lstrip().startswith(b"["))
                value = e
            first = False
            yield i, shown, value


def _refuse_json_document(p: Path, line: int, *, array: bool) -> None:
    what = "a JSON array" if array else "one JSON object written over many lines"
    raise DataError(f"this file is {what}, not JSON lines (one JSON object per line)", where=where(p, line),
                    fix=f"write one object per line, e.g. `jq -c '{'.[]' if array else '.'}' {p.name} > {p.stem}.lines.jsonl`")


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
    check_regular(path)
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
            row, end = _STRICT.raw_decode(text, pos)
            if json_depth(text[pos:end]) > MAX_JSON_DEPTH:
                raise RecursionError
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON ({e.msg})", where=where(p, line + text.count("\n", pos, e.pos)), fix="the file may be truncated") from None
        except RecursionError:
            raise DataError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels", where=where(p, line),
                            fix=f"flatten the item: r1rm reads at most {MAX_JSON_DEPTH} levels of arrays and objects") from None
        except LineError as e:  # a key given twice, NaN / Infinity
            raise DataError(e.brief, where=where(p, line), fix=e.hint) from None
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
    tmp = p.with_name(f".{p.name}.tmp.{os.getpid()}")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, p)
    except BaseException as e:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise cannot_write(p, e) from None
        raise


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


def _count_lines(path: Path) -> int:
    """Newlines in `path`, read in 1 MiB pieces (a generations file may be large)."""
    n = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            n += chunk.count(b"\n")
    return n


class JsonlAppender:
    """Append-only JSONL output that survives a kill: each row is one flushed line.

    On open, a last line that a kill cut (no newline yet, or cut mid-JSON and followed by a
    newline) is truncated away and said in `repaired` (its file:line and why) — the run writes it
    again; the `key` of every complete row is loaded into `done`, so a resumed run skips them: no
    record is lost or duplicated. A damaged line before the last is no kill's doing: DataError
    with file:line.
    """

    def __init__(self, path: str | os.PathLike, key: str | None = None, fsync: bool = False):
        self.path = Path(path)
        self.key = key
        self.fsync = fsync
        self.done: set = set()
        self.repaired: list[str] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_partial_line(self.path):  # the cut line's number: the whole lines left before it, plus one
            self.repaired.append(f"{where(self.path, _count_lines(self.path) + 1)}: a line without its end "
                                 "(cut by a kill) dropped")
        if self.path.exists():
            self._load_done()
        self._f = open(self.path, "a", encoding="utf-8")

    def _load_done(self) -> None:
        damaged: tuple[int, LineError] | None = None  # a bad line, refused unless it is the last one
        for i, _, value in json_lines(self.path, allow_nan=True):
            if damaged is not None:
                self._refuse(*damaged)
            if isinstance(value, LineError) and value.reason in ("invalid_json", "not_utf8"):
                damaged = (i, value)
                continue
            if self.key is not None and (not isinstance(value, dict) or self.key not in value):
                self._refuse(i, value)
            if self.key is not None:
                self.done.add(_freeze(value[self.key]))
        if damaged is not None:  # the last line, cut mid-JSON by a kill: drop it, the run writes it again
            i, err = damaged
            with open(self.path, "rb+") as f:
                f.truncate(_line_offset(f, i))
            self.repaired.append(f"{where(self.path, i)}: a cut last line ({err.brief}) dropped")

    def _refuse(self, line: int, value: Any) -> None:
        problem = value.brief if isinstance(value, LineError) else f"the row has no '{self.key}'"
        raise DataError(f"cannot resume {self.path}: {problem} — a damaged line before the last one is not a "
                        "write a kill cut, so it is not repaired", where=where(self.path, line),
                        fix="delete that line (the run writes it again), or use a new output_dir")

    def append(self, row: Any) -> None:
        obj = row.to_json() if hasattr(row, "to_json") else row
        try:
            self._f.write(jsonl_line(obj))
            self._f.flush()
            if self.fsync:
                os.fsync(self._f.fileno())
        except OSError as e:
            raise cannot_write(self.path, e) from None
        if self.key is not None:
            self.done.add(_freeze(obj[self.key]))

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _line_offset(f, line: int) -> int:
    """The byte offset where 1-based `line` starts in the open binary file `f`."""
    f.seek(0)
    offset = 0
    for _ in range(line - 1):
        offset += len(f.readline())
    return offset


def _freeze(value: Any) -> Any:
    return tuple(_freeze(v) for v in value) if isinstance(value, list) else value
