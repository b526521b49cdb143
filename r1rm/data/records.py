"""The canonical pairwise-preference record: its fields, validation and reader.

One JSON object per line (JSONL). Fields:

    uid         unique key of the record (sha1 of its content when absent; source ids
                are not trusted to be unique)
    id          the id the row had in its source (free text)
    source      where the row came from (e.g. "synthetic", "mm-rlhf")
    question    the user question / generation prompt (text)
    modality    what the judge sees as context: "image" | "video" | "caption" | "text"
    images      list of image paths (relative to the image root)         [modality image]
    video       list of frame paths, or one folder of frames            [modality video]
    caption     text that stands in for the visual context              [modality caption]
    response1   a text (JSON string) or a visual output: {"image": path} or
    response2   {"video": [frame paths] | folder}
    label       1 or 2: which response is better (no ties)
    category    benchmark / data category (optional)
    task_type   image_understanding | image_generation | video_understanding |
                video_generation | text (derived from modality and responses when absent)
    difficulty  integer level or null
    meta        free JSON object (teacher traces, attempts, ...)

A record may carry both images and a caption (CMKD: the model sees the image and
writes the caption); `modality` says which the prompt shows.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from r1rm.data.files import LineError, RowError, json_lines, loads_json
from r1rm.data.media import resolve_path
from r1rm.errors import DataError, InputFileError, where

MODALITIES = ("image", "video", "caption", "text")
TASK_TYPES = (
    "image_understanding",
    "image_generation",
    "video_understanding",
    "video_generation",
    "text",
)
FIELDS = (
    "uid",
    "id",
    "source",
    "question",
    "modality",
    "images",
    "video",
    "caption",
    "response1",
    "response2",
    "label",
    "category",
    "task_type",
    "difficulty",
    "meta",
)
REQUIRED = ("question", "response1", "response2", "label")


@dataclass(frozen=True)
class Response:
    """One candidate: text, or a generated image / video (MSRL generation tasks)."""

    kind: Literal["text", "image", "video"]
    text: str | None = None
    # image: one path; video: a list of frame paths or one folder path
    visual: str | list[str] | None = None

    def to_json(self) -> Any:
        if self.kind == "text":
            return self.text
        return {self.kind: self.visual}

    def key(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, ensure_ascii=False)


@dataclass(frozen=True)
class Record:
    """A validated canonical record. Build with `parse_record`, serialise with `to_json`."""

    uid: str
    question: str
    response1: Response
    response2: Response
    label: int | None
    modality: str = "text"
    id: str = ""
    source: str = ""
    images: tuple[str, ...] = ()
    video: tuple[str, ...] | str = ()
    caption: str | None = None
    category: str | None = None
    task_type: str = "text"
    difficulty: int | None = None
    meta: dict = field(default_factory=dict)

    @property
    def chosen(self) -> Response:
        return self.response1 if self.label == 1 else self.response2

    @property
    def rejected(self) -> Response:
        return self.response2 if self.label == 1 else self.response1

    def swapped(self) -> Record:
        """The same pair with the responses in the other order (label follows)."""
        label = None if self.label is None else 3 - self.label
        return dataclasses.replace(self, response1=self.response2, response2=self.response1, label=label)

    def to_json(self) -> dict:
        """Every field, in FIELDS order (the order a JSONL line shows them in)."""
        out: dict[str, Any] = {name: getattr(self, name) for name in FIELDS}
        out.update(images=list(self.images), video=self.video if isinstance(self.video, str) else list(self.video),
                   response1=self.response1.to_json(), response2=self.response2.to_json())
        return out


def content_uid(row: dict) -> str:
    """A stable 16-hex key from the content of a record (source, id, question, visuals, responses)."""
    keys = ("source", "id", "question", "modality", "images", "video", "caption", "response1", "response2")
    blob = json.dumps({k: row.get(k) for k in keys}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()[:16]


def _parse_response(value: Any, name: str) -> Response:
    if isinstance(value, str):
        if not value.strip():
            raise RowError("empty_response", f"'{name}' is empty; every response needs content")
        return Response("text", text=value)
    if isinstance(value, dict) and len(value) == 1:
        (kind, visual), = value.items()
        if kind == "text" and isinstance(visual, str):
            return _parse_response(visual, name)
        if kind == "image" and isinstance(visual, str) and visual:
            return Response("image", visual=visual)
        if kind == "video" and (
            (isinstance(visual, str) and visual)
            or (isinstance(visual, list) and visual and all(isinstance(f, str) and f for f in visual))
        ):
            return Response("video", visual=visual if isinstance(visual, str) else list(visual))
    raise RowError(
        "wrong_type",
        f"'{name}' must be a text (string), {{\"image\": path}} or {{\"video\": [frames] | folder}}, "
        f"got {json.dumps(value, ensure_ascii=False)[:80]}",
    )


def _expect(row: dict, key: str, types: type | tuple[type, ...], what: str) -> Any:
    value = row.get(key)
    if value is not None and not isinstance(value, types):
        raise RowError("wrong_type", f"'{key}' must be {what}, got {type(value).__name__} {json.dumps(value)[:60]}")
    return value


def _str_list(row: dict, key: str) -> tuple[str, ...]:
    value = row.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise RowError("wrong_type", f"'{key}' must be a list of non-empty path strings, got {json.dumps(value)[:60]}")
    return tuple(value)


def derive_task_type(modality: str, response_kinds: Iterable[str]) -> str:
    """The MSRL task type implied by the context modality and the kinds of the responses."""
    kinds = set(response_kinds)
    if "video" in kinds:
        return "video_generation"
    if "image" in kinds:
        return "image_generation"
    if modality == "video":
        return "video_understanding"
    if modality in ("image", "caption"):
        return "image_understanding"
    return "text"


def parse_record(row: Any, *, require_label: bool = True) -> Record:
    """Validate one decoded JSON row and return a Record; raises RowError with a reason code.

    `require_label=False` accepts unlabelled pairs (label absent or null), for judging."""
    if not isinstance(row, dict):
        raise RowError("not_object", f"each line must be a JSON object, got {type(row).__name__}")
    unknown = [k for k in row if k not in FIELDS]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, FIELDS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else "; put extra data under 'meta'"
        if {"chosen", "rejected"} & set(row) or "prompt" in row:
            hint = (f"; a {{{', '.join(k for k in ('prompt', 'question', 'chosen', 'rejected') if k in row)}}} row is not "
                    "canonical ({question, response1, response2, label}): convert the file with `r1rm build-data`, "
                    "a source with `format: jsonl` reads prompt / chosen / rejected as they are (`fields` maps other names)")
        raise RowError("unknown_field", f"unknown field '{k}'{hint}")
    for key in REQUIRED:
        if row.get(key) is None and (require_label or key != "label"):
            raise RowError("missing_field", f"missing field '{key}'")
    question = _expect(row, "question", str, "a string")
    label = row.get("label")
    if label is None and not require_label:
        pass
    elif isinstance(label, bool) or label not in (1, 2) or isinstance(label, float):
        raise RowError("bad_label", f"'label' must be 1 or 2 (which response is better; no ties), got {json.dumps(label)}")
    r1 = _parse_response(row["response1"], "response1")
    r2 = _parse_response(row["response2"], "response2")
    if r1.key() == r2.key():
        raise RowError("identical_responses", "response1 and response2 are identical; a pair needs two different responses")
    if {r1.kind, r2.kind} == {"text", "image"} or {r1.kind, r2.kind} == {"text", "video"} or {r1.kind, r2.kind} == {"image", "video"}:
        raise RowError("mixed_responses", f"response1 is {r1.kind} but response2 is {r2.kind}; both must be of one kind")
    images = _str_list(row, "images")
    raw_video = row.get("video")
    video: tuple[str, ...] | str = raw_video if isinstance(raw_video, str) and raw_video else _str_list(row, "video")
    caption = _expect(row, "caption", str, "a string")
    modality = row.get("modality")
    if modality is None:
        modality = "image" if images else "video" if video else "caption" if caption else "text"
    if modality not in MODALITIES:
        raise RowError("bad_modality", f"'modality' must be one of {', '.join(MODALITIES)}, got {json.dumps(modality)}")
    if modality == "image" and not images:
        raise RowError("missing_field", "modality 'image' needs a non-empty 'images' list")
    if modality == "video" and not video:
        raise RowError("missing_field", "modality 'video' needs 'video' (a list of frames or a folder)")
    if modality == "caption" and not (caption and caption.strip()):
        raise RowError("missing_field", "modality 'caption' needs a non-empty 'caption'")
    task_type = row.get("task_type") or derive_task_type(modality, (r1.kind, r2.kind))
    if task_type not in TASK_TYPES:
        raise RowError("bad_task_type", f"'task_type' must be one of {', '.join(TASK_TYPES)}, got {json.dumps(task_type)}")
    difficulty = row.get("difficulty")
    if difficulty is not None and (isinstance(difficulty, bool) or not isinstance(difficulty, int)):
        raise RowError("wrong_type", f"'difficulty' must be an integer or null, got {json.dumps(difficulty)}")
    meta = _expect(row, "meta", dict, "an object") or {}
    source = _expect(row, "source", str, "a string") or ""
    category = _expect(row, "category", str, "a string")
    rid = row.get("id")
    rid = "" if rid is None else str(rid)
    uid = _expect(row, "uid", str, "a string") or content_uid({**row, "id": rid, "source": source})
    return Record(uid=uid, id=rid, source=source, question=question, modality=modality, images=images, video=video,
                  caption=caption, response1=r1, response2=r2, label=None if label is None else int(label),
                  category=category, task_type=task_type, difficulty=difficulty, meta=meta)


def record_paths(rec: Record) -> list[str]:
    """Every file or folder path a record refers to (context and visual responses)."""
    paths = list(rec.images)
    paths += [rec.video] if isinstance(rec.video, str) else list(rec.video)
    for r in (rec.response1, rec.response2):
        if r.kind != "text":
            paths += [r.visual] if isinstance(r.visual, str) else list(r.visual or [])
    return paths


def check_paths(rec: Record, root: str | os.PathLike) -> None:
    """Resolve every path of `rec` under `root`: RowError 'path_escapes_root' for one outside it."""
    for ref in record_paths(rec):
        resolve_path(ref, root)


def check_record_media(rec: Record, root: str | os.PathLike, *, max_pixels: int | None, decode: bool = True) -> None:
    """Pass every image and video frame of `rec` (context, video, visual responses; resolved under `root`)
    through the media gate (r1rm.data.media.admit_image, bounded by 64 x `max_pixels`); RowError with the
    gate's reason on the first one refused. `decode=False` reads headers only (size, aspect ratio, format:
    cheap enough for a whole training set; the trainers decode through the gate when they use an image)."""
    from r1rm.data.media import admit_image, folder_frames, image_header

    gate = admit_image if decode else image_header

    def frames(video: str | list[str] | tuple[str, ...]) -> list[Path]:
        if isinstance(video, str):
            return folder_frames(resolve_path(video, root), name_suffixes=True)
        return [resolve_path(f, root) for f in video]

    for p in rec.images:
        gate(resolve_path(p, root), max_pixels=max_pixels)
    for f in frames(rec.video) if rec.video else ():
        gate(f, max_pixels=max_pixels)
    for r in (rec.response1, rec.response2):
        if r.kind == "image":
            gate(resolve_path(r.visual, root), max_pixels=max_pixels)
        elif r.kind == "video":
            for f in frames(r.visual):
                gate(f, max_pixels=max_pixels)


@dataclass
class Reject:
    """A row that failed validation: where it was, why, and the raw text."""

    file: str
    line: int
    reason: str
    message: str
    raw: str

    def to_json(self) -> dict:
        return {"file": self.file, "line": self.line, "reason": self.reason, "message": self.message, "raw": self.raw}


def dataset_files(path: str | os.PathLike) -> list[Path]:
    """The canonical JSONL files behind `path`: the file itself, or for a folder written by
    `r1rm build-data` the shards its manifest.json lists (else its data-*.jsonl, sorted)."""
    p = Path(path)
    if not p.is_dir():
        return [p]
    manifest = p / "manifest.json"
    if manifest.is_file():
        try:
            files = [p / (f if isinstance(f, str) else f["path"]) for f in loads_json(manifest.read_bytes(), allow_nan=True)["files"]]
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"manifest.json is not a build-data manifest ({type(e).__name__}: {e})", where=str(manifest),
                            fix="rerun r1rm build-data, or point to the data-*.jsonl files") from None
    else:
        files = sorted(p.glob("data-*.jsonl"))
    if not files:
        raise InputFileError(f"'{p}' is a folder with neither manifest.json nor data-*.jsonl",
                             fix="point to a JSONL file or a build-data output folder")
    return files


def read_records(
    path: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    rejects: list[Reject] | None = None,
    require_label: bool = True,
) -> Iterator[Record]:
    """Stream validated records from a canonical JSONL file (see `read_numbered_records`)."""
    for _, rec in read_numbered_records(path, image_root=image_root, rejects=rejects, require_label=require_label):
        yield rec


def read_numbered_records(
    path: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    rejects: list[Reject] | None = None,
    require_label: bool = True,
) -> Iterator[tuple[int, Record]]:
    """Stream (line number, validated record) from a canonical JSONL file.

    Paths are checked against `image_root` (default: the file's folder). With `rejects`
    given, bad lines are appended to it and skipped; otherwise the first bad line raises
    DataError naming file:line. Duplicate uids count as bad lines. A file with no valid
    record at all raises DataError.
    """
    p = Path(path)
    root = Path(image_root) if image_root is not None else p.parent
    seen: dict[str, int] = {}
    n_ok = 0
    n_lines = 0
    for line, raw, row in json_lines(p):
        n_lines += 1
        try:
            if isinstance(row, LineError):
                raise row
            rec = parse_record(row, require_label=require_label)
            check_paths(rec, root)
            if rec.uid in seen:
                raise RowError("duplicate_uid", f"uid '{rec.uid}' already used at line {seen[rec.uid]}; uids must be unique")
            seen[rec.uid] = line
        except RowError as e:
            if rejects is None:
                raise DataError(str(e), where=where(p, line), fix="correct or remove this line") from None
            rejects.append(Reject(str(p), line, e.reason, str(e), raw))
            continue
        n_ok += 1
        yield line, rec
    if n_lines == 0:
        raise DataError("file has no records (it is empty)", where=str(p), fix="point to a JSONL file with one record per line")
    if n_ok == 0 and rejects is None:
        raise DataError("no valid record in file", where=str(p))
