"""Input sources of `r1rm build-data`: rows of many layouts → canonical record dicts, as a stream.

`iter_source(src, work_dir=..., seed=...)` yields one `SourceRow` per input row: where it
came from (file, line — the row number for parquet / datasets), its raw text, the folder
its media paths resolve against, and either a dict in the canonical record's field names
(ready for `records.parse_record`) or the `RowError` that rejects it. Nothing here opens
images; validation, media checks, dedupe and balance are the caller's (r1rm.data.cleaning).

Formats (`build.sources[].format`):

    canonical       r1rm's JSONL (records.py); a folder is a build-data output: the files its
                    manifest.json lists (else its data-*.jsonl)
    jsonl, parquet, generic pairs with configurable field names (`fields`): question (default
    hf_disk         `question` or `prompt`), chosen + rejected (label 1 = chosen, shuffled later)
                    or response1 + response2 + label, image (a path, a list of paths or HF
                    {bytes, path}), video (a frames folder or a list of frames), caption, id,
                    category. jsonl also reads a JSON array (.json); parquet a folder of
                    shards; hf_disk a `datasets.save_to_disk` folder (`split` for a DatasetDict)
    mm-rlhf         MM-RLHF(-RewardBench) rows: id, prompt, chosen, rejected, image | video;
                    category = first folder of the media path (or `category`)
    vl-rewardbench  VL-RewardBench rows (jsonl: id, prompt, chosen, rejected, image; parquet:
                    query, response[2], human_ranking, embedded image bytes)
    r1reward-rl     R1-Reward's released RL rows (yifanzhang114/R1-Reward-RL): `message` (a
                    JSON string of chat messages whose user turn holds the filled R1-Reward
                    prompt text and the image / video parts), `question`, `answer`
                    (["<answer>2</answer>"]) and, in the parquet release, `image` (the image
                    as base64 or a path). The two responses are cut back out of the prompt
                    text between its `[Response 1]:` / `[Response 2]:` / `**Output Format`
                    headings; the label is the number in `answer`.
    text_pref       HelpSteer3-like text preferences: context (a string, or a chat list of
                    {role, content} rendered as "User: …\\n\\nAssistant: …" turns when it has
                    more than one), response1, response2, overall_preference (< 0: response 1
                    is better, > 0: response 2, 0: a tie → RowError "tie", dropped and counted),
                    domain → category
    genai           generation preferences in GenAI-Bench's layout (MSRL's image / video generation
                    pairs): prompt, left_image + right_image (paths or HF {bytes, path}) or
                    left_video + right_video (frame folders or lists), vote_type (leftvote →
                    label 1, rightvote → 2; tievote → RowError "tie", bothbad_vote → "both_bad":
                    dropped and counted in rejects.jsonl). The responses are the visual outputs.
    synthetic       the synthetic task (r1rm.data.synthetic) in image, caption or text modality
                    (level 6: image-generation pairs with two rendered candidates)

A configured field name that the first row of a file does not have is a ConfigError naming
the source, the field and the names the row does have (exit 2) — a misspelt field would
otherwise reject every row.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1rm.data.benchmarks import GENAI_MEDIA, convert_row, genai_pair, place_genai_media
from r1rm.data.files import (
    RAW_CHARS,
    FileRow,
    LineError,
    RowError,
    json_fallback,
    jsonl_rows,
    loads_json,
    read_rows,
    write_bytes_atomic,
)
from r1rm.data.hub import is_hub_id, media_root, resolve_data
from r1rm.data.media import sniff_image
from r1rm.data.records import dataset_files
from r1rm.errors import ConfigError, DataError, InputFileError, where

GENERIC_FIELDS: dict[str, list[str]] = {
    "id": ["id"],
    "question": ["question", "prompt"],
    "chosen": ["chosen"],
    "rejected": ["rejected"],
    "response1": ["response1"],
    "response2": ["response2"],
    "label": ["label"],
    "image": ["image", "images"],
    "video": ["video"],
    "caption": ["caption"],
    "category": ["category"],
}
# frames kept from each GenAI-Bench video file (its harness samples 16); training samples model.video_max_frames of them
GENAI_VIDEO_FRAMES = 16
TEXT_PREF_FIELDS: dict[str, list[str]] = {
    "id": ["id"],
    "question": ["context"],
    "response1": ["response1"],
    "response2": ["response2"],
    "preference": ["overall_preference"],
    "category": ["domain"],
}


@dataclass
class SourceRow:
    """One input row: its location, raw text, media root and canonical dict (or the error)."""

    file: str
    line: int
    raw: str
    root: Path
    row: dict | None = None
    error: RowError | None = None

    @property
    def where(self) -> str:
        return where(self.file, self.line)


# ---------------------------------------------------------------- file layouts
def _expand(src: Any) -> list[Path]:
    paths = [src.path] if isinstance(src.path, str) else list(src.path or [])
    out = []
    for p in map(Path, paths):
        if not p.exists():
            raise InputFileError(
                f"source '{src.name}': path not found: '{p}'",
                fix="check build.sources[].path (relative paths start from the current directory)",
            )
        out.append(p)
    return out


def check_source_paths(src: Any) -> None:
    """InputFileError for a path of source `src` that does not exist (build-data checks every
    source before it makes output_dir); a synthetic source has none."""
    if src.format in ("canonical", "hf_disk"):
        _expand(src)
    elif src.format != "synthetic":
        for _ in _source_files(src, src.format):  # a hub id, snapshot folder, parquet folder or file
            pass


def _iter_hf_disk(p: Path, split: str | None) -> Iterator[FileRow]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as e:  # datasets raises FileNotFoundError / ValueError for non-dataset folders
        raise DataError(f"cannot load a saved dataset ({type(e).__name__}: {e})", where=str(p),
                        fix="point the hf_disk source at a folder written by Dataset.save_to_disk") from None
    if isinstance(ds, datasets.DatasetDict):
        if split is None and len(ds) == 1:
            split = next(iter(ds))
        if split not in ds:
            raise ConfigError(f"'{p}' is a DatasetDict with splits {sorted(ds)}; split {split!r} is not one of them",
                              fix="set build.sources[].split to one of those")
        ds = ds[split]
    n = 0
    # arrow rows keep Image features as {bytes, path} (no PIL decoding)
    for table in ds.with_format("arrow").iter(batch_size=64):
        for row in table.to_pylist():
            n += 1
            raw = json.dumps(row, ensure_ascii=False, default=json_fallback)[:RAW_CHARS]
            yield FileRow(str(p), n, raw, row, None, where(p, n))


# ---------------------------------------------------------------- field mapping
def _names(src: Any, key: str, defaults: dict[str, list[str]]) -> list[str]:
    value = src.fields.get(key)
    if value is None:
        return defaults.get(key, [key])
    return [value] if isinstance(value, str) else list(value)


def _pick(row: dict, names: list[str]) -> tuple[str | None, Any]:
    for n in names:
        if n in row and row[n] is not None:
            return n, row[n]
    return None, None


def _check_fields(src: Any, row: dict, required: list[list[str]], loc: str, defaults: dict[str, list[str]]) -> None:
    """ConfigError when a required field (any of its alternatives) is absent from the first row of a file."""
    for alternatives in required:
        if all(not any(n in row for n in _names(src, key, defaults)) for key in alternatives):
            key = alternatives[0]
            names = " | ".join(_names(src, key, defaults))
            raise ConfigError(
                f"source '{src.name}': field {names!s} ({key}) is not in the first row; the row has: {', '.join(sorted(row))}",
                where=loc,
                fix=f"set build.sources[].fields.{key} to the name this file uses",
            )


def _unknown_field_keys(src: Any, allowed: dict[str, list[str]]) -> None:
    bad = [k for k in src.fields if k not in allowed]
    if bad:
        raise ConfigError(f"source '{src.name}': unknown key '{bad[0]}' in fields",
                          fix=f"fields may map: {', '.join(sorted(allowed))}")


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise RowError("wrong_type", f"'{name}' must be a text, got {type(value).__name__}")
    return value


def store_bytes(data: bytes, media_dir: Path) -> str:
    """Write embedded image bytes once as `<media_dir>/<sha1>.<ext>`; return the file name."""
    sniffed = sniff_image(data)
    name = hashlib.sha1(data).hexdigest()[:20] + (sniffed[0] if sniffed else ".img")
    dest = media_dir / name
    if not (dest.is_file() and dest.stat().st_size == len(data)):
        write_bytes_atomic(dest, data)
    return name


def _base64_image(text: str) -> bytes | None:
    """Image bytes from a data URL or a base64 string that decodes to an image, else None (then it is a path)."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    elif len(text) < 16 or text.startswith(("/", ".")) or not re.fullmatch(r"[A-Za-z0-9+/=\s]+", text[:4096]):
        return None
    try:
        data = base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError):
        return None
    return data if sniff_image(data) else None


class _Media:
    """Turns image values of a row into paths relative to one root (embedded bytes go to media_dir)."""

    def __init__(self, root: Path, media_dir: Path, strip_dirs: bool):
        self.root, self.media_dir, self.strip_dirs = root, media_dir, strip_dirs

    def path(self, value: str) -> str:
        return os.path.basename(value) if self.strip_dirs else value

    def images(self, value: Any, name: str) -> tuple[list[str], Path]:
        """(paths, root) for a path, a list of paths, HF {bytes, path} or a list of those."""
        items = value if isinstance(value, list | tuple) else [value]
        paths: list[str] = []
        embedded = False
        for v in items:
            if isinstance(v, dict) and v.get("bytes"):
                paths.append(store_bytes(bytes(v["bytes"]), self.media_dir))
                embedded = True
            elif isinstance(v, dict) and isinstance(v.get("path"), str) and v["path"]:
                paths.append(self.path(v["path"]))
            elif isinstance(v, str) and v:
                paths.append(self.path(v))
            else:
                raise RowError("wrong_type", f"'{name}' must be an image path, a list of paths or {{bytes, path}}, got {type(v).__name__}")
        if embedded and len(paths) != sum(1 for v in items if isinstance(v, dict) and v.get("bytes")):
            raise RowError("wrong_type", f"'{name}' mixes embedded image bytes and paths")
        return paths, (self.media_dir if embedded else self.root)


# ---------------------------------------------------------------- converters (row → canonical dict)
def _response(value: Any) -> Any:
    """A response given as a chat list (preference sets often store [{role, content}, ...]) → its last
    assistant turn's text; anything else unchanged (parse_record judges it)."""
    if isinstance(value, list) and value and all(isinstance(t, dict) and "content" in t for t in value):
        turns = [t for t in value if t.get("role", "assistant") == "assistant"] or value
        content = turns[-1]["content"]
        if isinstance(content, str):
            return content
    return value


def _generic(row: dict, src: Any, media: _Media, loc_id: str) -> tuple[dict, Path]:
    d = GENERIC_FIELDS
    qn, question = _pick(row, _names(src, "question", d))
    if question is None:
        raise RowError("missing_field", f"missing field '{'|'.join(_names(src, 'question', d))}' (the question)")
    out: dict[str, Any] = {"question": _text(question, qn)}
    cn, chosen = _pick(row, _names(src, "chosen", d))
    if cn is not None or any(n in row for n in _names(src, "rejected", d)):
        rn, rejected = _pick(row, _names(src, "rejected", d))
        if chosen is None or rejected is None:
            missing = "chosen" if chosen is None else "rejected"
            raise RowError("missing_field", f"missing field '{'|'.join(_names(src, missing, d))}' ({missing})")
        out.update(response1=_response(chosen), response2=_response(rejected), label=1)
    else:
        _, r1 = _pick(row, _names(src, "response1", d))
        _, r2 = _pick(row, _names(src, "response2", d))
        _, label = _pick(row, _names(src, "label", d))
        out.update(response1=_response(r1), response2=_response(r2), label=label)
    _, rid = _pick(row, _names(src, "id", d))
    out["id"] = str(rid) if rid is not None else loc_id
    _, category = _pick(row, _names(src, "category", d))
    out["category"] = category if isinstance(category, str) else src.category
    _, caption = _pick(row, _names(src, "caption", d))
    if caption is not None:
        out["caption"] = caption
    root = media.root
    iname, image = _pick(row, _names(src, "image", d))
    if image is not None and image != []:
        out["images"], root = media.images(image, iname)
    vname, video = _pick(row, _names(src, "video", d))
    if video is not None and video != []:
        if isinstance(video, str):
            out["video"] = media.path(video)
        elif isinstance(video, list) and all(isinstance(f, str) for f in video):
            out["video"] = [media.path(f) for f in video]
        else:
            raise RowError("wrong_type", f"'{vname}' must be a frames folder or a list of frame paths")
    return out, root


def _benchmark(kind: str, row: dict, src: Any, media: _Media) -> tuple[dict, Path]:
    item = convert_row(kind, row, default_category=src.category)
    root = media.root
    images = [media.path(p) for p in item.images]
    if item.image_bytes is not None:
        images, root = [store_bytes(item.image_bytes, media.media_dir)], media.media_dir
    out = {
        "id": item.id, "question": item.question, "response1": item.chosen, "response2": item.rejected, "label": 1,
        "category": item.category or src.category, "images": images,
        "video": media.path(item.video) if item.video else None, "meta": dict(item.meta),
    }
    return out, root


_R1_PROMPT = re.compile(
    r"\[Question\]:\n(?P<q>.*?)[ ]*\n\n#+ \[Response 1\]:\n(?P<a1>.*?)[ ]*\n\n#+ \[Response 2\]:\n(?P<a2>.*?)"
    r"[ ]*\n\n#+ \*\*Output Format[^\n]*\n[^\n]*\s*\Z",
    re.DOTALL,
)


def parse_r1reward_prompt(text: str) -> tuple[str, str, str]:
    """(question, response 1, response 2) cut out of a filled R1-Reward prompt; RowError if it is not one."""
    m = _R1_PROMPT.search(text)
    if m is None:
        raise RowError("bad_prompt", "the message text is not a filled R1-Reward prompt ([Question] / [Response 1] / "
                                     "[Response 2] / **Output Format sections)")
    return m.group("q"), m.group("a1"), m.group("a2")


def _r1reward_rl(row: dict, src: Any, media: _Media, loc_id: str) -> tuple[dict, Path]:
    message = row.get("message")
    if message is None:
        raise RowError("missing_field", "missing field 'message'")
    if isinstance(message, str):
        try:
            message = loads_json(message)
        except LineError as e:  # the guarded decoder: nesting bounded, no key twice, no NaN
            raise RowError(e.reason, f"'message' is not a JSON list of chat messages ({e.brief})") from None
    if isinstance(message, dict):
        message = [message]
    users = [m for m in message if isinstance(m, dict) and m.get("role") == "user"] if isinstance(message, list) else []
    if not users:
        raise RowError("wrong_type", "'message' must be a list of chat messages with a user turn")
    content = users[-1].get("content")
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
    text = "".join(p.get("text", "") for p in parts if isinstance(p, dict) and p.get("type") == "text")
    q, a1, a2 = parse_r1reward_prompt(text)
    answer = row.get("answer")
    if isinstance(answer, list | tuple):
        answer = answer[0] if answer else None
    if answer is None:
        raise RowError("missing_field", "missing field 'answer' (e.g. [\"<answer>2</answer>\"])")
    m = re.fullmatch(r"\s*(?:<answer>\s*)?([12])(?:\s*</answer>)?\s*", str(answer))
    if m is None:
        raise RowError("bad_label", f"'answer' must be <answer>1</answer> or <answer>2</answer>, got {str(answer)[:40]!r}")
    question = row.get("question")
    out: dict[str, Any] = {
        "id": str(row["id"]) if row.get("id") is not None else loc_id,
        "question": question if isinstance(question, str) and question.strip() else q,
        "response1": a1, "response2": a2, "label": int(m.group(1)), "category": src.category,
    }
    root = media.root
    column = row.get("image")
    data = _base64_image(column) if isinstance(column, str) and column else None
    if data is not None:
        out["images"], root = [store_bytes(data, media.media_dir)], media.media_dir
    elif isinstance(column, dict) and column.get("bytes"):
        out["images"], root = media.images(column, "image")
    else:
        images = [p.get("image") or p.get("image_url", {}).get("url") for p in parts
                  if isinstance(p, dict) and p.get("type") in ("image", "image_url")]
        images = [i for i in images if i]
        if isinstance(column, str) and column and not images:
            images = [column]
        if images:
            out["images"], root = media.images(images, "message image")
        videos = [p.get("video") for p in parts if isinstance(p, dict) and p.get("type") == "video"]
        if videos:
            v = videos[0]
            out["video"] = media.path(v) if isinstance(v, str) else [media.path(f) for f in v]
    return out, root


def render_context(context: Any) -> str:
    """HelpSteer3 `context` → question text: a string as is; a one-turn chat its content;
    a longer chat as "User: …" / "Assistant: …" turns separated by blank lines."""
    if isinstance(context, str):
        return context
    if not isinstance(context, list) or not context:
        raise RowError("wrong_type", "'context' must be a string or a non-empty list of {role, content} turns")
    turns = []
    for t in context:
        if not isinstance(t, dict) or not isinstance(t.get("content"), str):
            raise RowError("wrong_type", "each context turn must be {role, content: text}")
        turns.append((str(t.get("role", "user")), t["content"]))
    if len(turns) == 1:
        return turns[0][1]
    return "\n\n".join(f"{role.capitalize()}: {text}" for role, text in turns)


def _text_pref(row: dict, src: Any, media: _Media, loc_id: str) -> tuple[dict, Path]:
    d = TEXT_PREF_FIELDS
    qn, context = _pick(row, _names(src, "question", d))
    if context is None:
        raise RowError("missing_field", f"missing field '{'|'.join(_names(src, 'question', d))}' (the context)")
    pn, pref = _pick(row, _names(src, "preference", d))
    if pref is None:
        raise RowError("missing_field", f"missing field '{'|'.join(_names(src, 'preference', d))}' (the preference score)")
    if isinstance(pref, bool) or not isinstance(pref, int | float):
        raise RowError("bad_label", f"'{pn}' must be a number (< 0: response 1 better, > 0: response 2), got {pref!r}")
    if pref == 0:
        raise RowError("tie", f"'{pn}' is 0: a tie (no better response)")
    _, r1 = _pick(row, _names(src, "response1", d))
    _, r2 = _pick(row, _names(src, "response2", d))
    _, rid = _pick(row, _names(src, "id", d))
    _, category = _pick(row, _names(src, "category", d))
    out = {
        "id": str(rid) if rid is not None else loc_id, "question": render_context(context),
        "response1": r1, "response2": r2, "label": 1 if pref < 0 else 2,
        "category": category if isinstance(category, str) else src.category,
        "meta": {"preference": pref},
    }
    return out, media.root


def _genai(row: dict, src: Any, media: _Media, line: int) -> tuple[dict, Path]:
    row = dict(row)
    for key in GENAI_MEDIA:
        v = row.get(key)
        if isinstance(v, dict) and not v.get("bytes") and isinstance(v.get("path"), str):
            row[key] = media.path(v["path"])
        elif isinstance(v, str) and not v.startswith(("http://", "https://")):
            row[key] = media.path(v)
    vote = row.get("vote_type")
    if vote in ("tievote", "bothbad_vote"):  # no better output: its media are never read
        raise RowError("tie" if vote == "tievote" else "both_bad", f"vote_type {vote}: no better output (dropped and counted)")
    # embedded bytes → files, video files → frames folders, both under the run's media folder
    row, moved = place_genai_media(row, root=media.root, media_dir=media.media_dir, max_frames=GENAI_VIDEO_FRAMES)
    fields, better, vote = genai_pair(row, line)
    fields["label"] = better
    fields["meta"].pop("group", None)
    if src.category:
        fields["category"] = src.category
    return fields, (media.media_dir if moved else media.root)


# ---------------------------------------------------------------- the stream
def iter_source(src: Any, *, work_dir: Path, seed: int) -> Iterator[SourceRow]:
    """Every row of source `src` (a SourceConfig) as a SourceRow, in file order, up to `src.limit`."""
    media_dir = work_dir / "embedded"
    n = 0
    for row in _rows(src, work_dir=work_dir, media_dir=media_dir, seed=seed):
        if src.limit is not None and n >= src.limit:
            return
        n += 1
        yield row


def _rows(src: Any, *, work_dir: Path, media_dir: Path, seed: int) -> Iterator[SourceRow]:
    fmt = src.format
    if fmt == "synthetic":
        from r1rm.data.synthetic import write_dataset

        path = write_dataset(work_dir / "synthetic" / src.name, src.n, seed=seed if src.seed is None else src.seed,
                             levels=src.levels, modality=src.modality, image_size=src.image_size, prefix=src.name,
                             teacher_error=src.teacher_error, teacher_blind=src.teacher_blind,
                             teacher_mistake=src.teacher_mistake)
        yield from _canonical(path, path.parent, src)
        return
    if fmt == "canonical":
        for p in _expand(src):
            root = p if p.is_dir() else p.parent
            for f in dataset_files(p):
                yield from _canonical(f, Path(src.image_root) if src.image_root else root, src)
        return
    allowed, required = _FIELD_RULES.get(fmt, ({}, []))
    _unknown_field_keys(src, allowed)
    for rows, data_root in _source_files(src, fmt):
        first = True
        for fr in rows:
            root = Path(src.image_root) if src.image_root else data_root
            if fr.row is not None and first and required:
                _check_fields(src, fr.row, required, where(fr.file, fr.line), allowed)
            if fr.row is not None:
                first = False
            sr = SourceRow(fr.file, fr.line, fr.raw, root, error=fr.error)
            if fr.error is None:
                try:
                    sr.row, sr.root = _convert(fmt, fr, src, _Media(root, media_dir, src.strip_image_dirs))
                except RowError as e:
                    sr.error = e
            yield sr


def _source_files(src: Any, fmt: str) -> Iterator[tuple[Iterator[FileRow], Path]]:
    """(its rows, the folder its media resolve against) per file of the source: an hf_disk folder,
    or a file / parquet folder / hub snapshot folder / hub dataset id (r1rm.data.hub; subset, split)."""
    paths = [src.path] if isinstance(src.path, str) else list(src.path or [])
    if fmt == "hf_disk":
        for p in _expand(src):
            yield _iter_hf_disk(p, src.split), p
        return
    for i, path in enumerate(paths):
        key = f"build.sources[{src.name}].path" + (f"[{i}]" if len(paths) > 1 else "")
        if not is_hub_id(str(path)) and not Path(path).exists():
            raise InputFileError(f"source '{src.name}': path not found: '{path}'",
                                 fix="check build.sources[].path (relative paths start from the current directory; "
                                     "a hub dataset id is ORG/NAME)")
        data = resolve_data(path, subset=src.subset, split=src.split, prefer_splits=("train",), key=key)
        root = media_root(data, None, media_dirs=("images",) if fmt == "mm-rlhf" else ())
        for f in data.files:
            yield read_rows(f, folder_fix="point the source at its files"), root


# the field names a format maps (defaults), and the fields the first row must have (any of each list)
_FIELD_RULES: dict[str, tuple[dict[str, list[str]], list[list[str]]]] = {
    **{fmt: (GENERIC_FIELDS, [["question"], ["chosen", "response1"]]) for fmt in ("jsonl", "parquet", "hf_disk")},
    "text_pref": (TEXT_PREF_FIELDS, [["question"], ["response1"], ["response2"], ["preference"]]),
}
_BENCHMARK_KIND = {"mm-rlhf": "mm-rlhf-rewardbench", "vl-rewardbench": "vl-rewardbench"}


def _convert(fmt: str, fr: FileRow, src: Any, media: _Media) -> tuple[dict, Path]:
    """A row of format `fmt` → (canonical dict, media root); RowError if it cannot be converted."""
    loc_id = f"{Path(fr.file).stem}:{fr.line}"
    if fmt in ("jsonl", "parquet", "hf_disk"):
        return _generic(fr.row, src, media, loc_id)
    if fmt == "text_pref":
        return _text_pref(fr.row, src, media, loc_id)
    if fmt == "r1reward-rl":
        return _r1reward_rl(fr.row, src, media, loc_id)
    if fmt == "genai":
        return _genai(fr.row, src, media, fr.line)
    return _benchmark(_BENCHMARK_KIND[fmt], fr.row, src, media)


def _canonical(path: Path, root: Path, src: Any) -> Iterator[SourceRow]:
    for fr in jsonl_rows(path):
        sr = SourceRow(fr.file, fr.line, fr.raw, root, row=fr.row, error=fr.error)
        if fr.row is not None and src.category and fr.row.get("category") is None:
            fr.row["category"] = src.category
        yield sr
