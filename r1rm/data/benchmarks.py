"""The three evaluation benchmarks, read in their own published formats into canonical Records.

METHOD §5. Every item becomes a Record with response1 = chosen, response2 = rejected and
label = 1 (the evaluator shows each pair in both orders itself), `source` = the benchmark
name, `id` = the benchmark's own id, `category` as the benchmark defines it and
`meta["group"]` = the prompt id (the `id` field: pairs sharing an id are one prompt; MM-RLHF
Acc+ is computed over these groups). Benchmark ids are not unique (VL-RewardBench repeats 25
of them), so the uid is a content hash, and a hash seen before gets `-1`, `-2`, … in file
order: the same file always gives the same uids.

Formats read:

    vl-rewardbench          JSONL / JSON as R1-Reward ships it: id, prompt, chosen, rejected, image
                            (chosen_reason / rejected_reason ignored); or the Hugging Face parquet
                            (MMInstruction/VL-RewardBench): id, query, image ({bytes, path} or a
                            path), response [2 texts], human_ranking [2 ints, rank 0 = better].
                            Embedded image bytes are written once, as PNG, to
                            `<image_root or parquet folder>/.r1rm_images/<id>.png` (delete the
                            folder to refresh it). Category from the id, case-insensitive:
                            reasoning (mathverse, mmmu), hallucination (hallucination_pair, rlaif,
                            rlhf), general otherwise.
    multimodal-rewardbench  facebookresearch/multimodal_rewardbench `data/all_data.json` (a JSON
                            array) or JSONL / parquet with the same fields: ID, Text, Image,
                            Output1, Output2, Better ("Output1" | "Output2"), Category (or
                            Meta.Category, as the harness's answer files carry it). See
                            `mmrb_column` for the category mapping and its source.
    mm-rlhf-rewardbench     JSONL: id, prompt, chosen, rejected, and image (a file) or video (a
                            folder of frames); category = first folder of that path (mcq, long,
                            short, safety, video).
    genai-bench             GenAI-Bench's image / video generation sets (TIGER-Lab/GenAI-Bench layout):
                            prompt, left_image + right_image (paths or {bytes, path}) or
                            left_video + right_video (frame folders or frame lists), vote_type ∈
                            leftvote / rightvote / tievote / bothbad_vote; id from `id`, `index`
                            or the line number. The *responses are the visual outputs*; decisive
                            votes are scored (category image_generation / video_generation),
                            tievote and bothbad_vote items are counted (skipped, reasons `tie`
                            and `both_bad`), never scored.
    canonical               r1rm's own JSONL (records.py); category from the record; a record with
                            label 2 is turned round (uid kept) so response1 is the chosen one.

Paths resolve under `image_root` (default: the benchmark file's folder) and a path that
escapes it is an error. A bad row raises DataError naming file:line (file:row N for
parquet) and what to fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from r1rm.data.media import check_image, list_frames
from r1rm.data.records import (
    Record,
    Reject,
    RowError,
    content_uid,
    dataset_files,
    iter_lines,
    parse_record,
    read_numbered_records,
    record_paths,
    resolve_path,
)
from r1rm.errors import DataError, InputFileError, where

BENCHMARKS = ("vl-rewardbench", "multimodal-rewardbench", "mm-rlhf-rewardbench", "genai-bench", "canonical")

# GenAI-Bench vote_type -> which output is better (None: not decisive, counted, not scored)
GENAI_VOTES = {"leftvote": 1, "rightvote": 2, "tievote": None, "bothbad_vote": None}
_GENAI_SKIP_REASON = {"tievote": "tie", "bothbad_vote": "both_bad"}

VL_REWARDBENCH_CATEGORIES = ("general", "hallucination", "reasoning")
MM_RLHF_CATEGORIES = ("mcq", "long", "short", "safety", "video")
# The seven columns of the R1-Reward paper's Multimodal RewardBench table; Overall = their mean.
MMRB_COLUMNS = ("correctness", "preference", "knowledge", "math", "coding", "safety", "vqa")

IMAGE_CACHE_DIR = ".r1rm_images"

# Multimodal RewardBench `Category` values -> paper column. The six raw values are those of
# facebookresearch/multimodal_rewardbench data/all_data.json (seen in outputs/example.jsonl:
# "open_generation/correctness_task"; scripts/2_get_accuracy.py special-cases "safety" and
# "reasoning"; the full list, with "open_generation/preference_task", "knowledge", "vqa", in
# third-party scorers of the same file). The harness's derived sub-categories and the column
# names themselves are accepted too, so files already split that way read the same.
_MMRB_CATEGORY = {
    "open_generation/correctness_task": "correctness",
    "open_generation/preference_task": "preference",
    "knowledge": "knowledge",
    "reasoning": None,  # math or coding: decided by the ID, as in scripts/2_get_accuracy.py
    "safety": "safety",
    "vqa": "vqa",
    "reasoning/math": "math",
    "reasoning/coding": "coding",
    "safety/bias": "safety",
    "safety/toxicity": "safety",
    **{c: c for c in MMRB_COLUMNS},
}

_FIELDS = {
    "vl-rewardbench": "id, prompt, chosen, rejected, image (or, in the parquet layout: id, query, "
    "image, response, human_ranking)",
    "multimodal-rewardbench": "ID, Text, Image, Output1, Output2, Better, Category",
    "mm-rlhf-rewardbench": "id, prompt, chosen, rejected, and image or video",
    "genai-bench": "prompt, left_image and right_image (or left_video and right_video: frame folders or lists), "
    "vote_type (leftvote, rightvote, tievote, bothbad_vote)",
}
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def vl_rewardbench_category(item_id: str) -> str:
    """VL-RewardBench category from an item id, case-insensitive (METHOD §5)."""
    low = item_id.lower()
    if "mathverse" in low or "mmmu" in low:
        return "reasoning"
    if "hallucination_pair" in low or "rlaif" in low or "rlhf" in low:
        return "hallucination"
    return "general"


def mmrb_column(category: str, item_id: str) -> str:
    """The R1-Reward paper column (MMRB_COLUMNS) of a Multimodal RewardBench item (METHOD §5).

    Mapping, from facebookresearch/multimodal_rewardbench (scripts/2_get_accuracy.py and the
    `Category` values of data/all_data.json):
        open_generation/correctness_task -> correctness
        open_generation/preference_task  -> preference
        knowledge                        -> knowledge
        reasoning                        -> math if the ID starts with "math" (MathVista),
                                            else coding (EMMA-Coding, image2struct)
        safety                           -> safety (bias: IDs starting "pairs"; toxicity: the rest)
        vqa                              -> vqa
    Raises KeyError for any other value.
    """
    column = _MMRB_CATEGORY[category]
    if column is None:
        return "math" if item_id.lower().startswith("math") else "coding"
    return column


def mm_rlhf_category(path: str) -> str:
    """MM-RLHF-RewardBench category: the first folder of the image / video path (METHOD §5)."""
    parts = [p for p in PurePosixPath(path.replace("\\", "/")).parts if p not in (".", "/")]
    if len(parts) < 2:
        raise RowError("no_category", f"cannot derive a category from path '{path}': it has no folder (e.g. mcq/x.png)")
    return parts[0]


@dataclass
class _Item:
    """One benchmark item converted from its source row, before it becomes a Record."""

    id: str
    question: str
    chosen: str
    rejected: str
    category: str
    images: list[str] = field(default_factory=list)
    video: str | None = None
    image_bytes: bytes | None = None
    meta: dict = field(default_factory=dict)


BenchmarkItem = _Item


def read_benchmark(
    name: str,
    path: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    check_media: bool = False,
    skip_missing_media: bool = False,
    limit: int | None = None,
    skipped: list[Reject] | None = None,
) -> list[Record]:
    """Read benchmark `name` from `path` into Records (METHOD §5), in file order.

    check_media: open every image (and list every frames folder); a missing or unreadable one
    raises DataError naming the item id and file:line, unless skip_missing_media, which skips
    the item and appends a Reject (reason, message) to `skipped`. `limit` keeps the first N
    items that are kept.
    """
    if name not in BENCHMARKS:
        raise DataError(f"unknown benchmark '{name}'", fix=f"use one of {', '.join(BENCHMARKS)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    p = Path(path)
    if not p.exists():
        raise InputFileError(f"benchmark file not found: '{p}'", fix="check the path (relative paths start from the current directory)")
    root = Path(image_root) if image_root is not None else (p if p.is_dir() else p.parent)
    if name == "canonical":
        # a file, or a build-data output folder (the shards its manifest lists)
        out_records: list[Record] = []
        for f in dataset_files(p):
            left = None if limit is None else limit - len(out_records)
            if left == 0:
                break
            out_records += _read_canonical(f, root, check_media=check_media, skip_missing_media=skip_missing_media,
                                           limit=left, skipped=skipped)
        return out_records

    if name == "genai-bench":
        return _read_genai(p, root, check_media=check_media, skip_missing_media=skip_missing_media, limit=limit,
                           skipped=skipped)
    convert = {"vl-rewardbench": _vl_rewardbench, "multimodal-rewardbench": _mmrb, "mm-rlhf-rewardbench": _mm_rlhf}[name]
    out: list[Record] = []
    uid_counts: dict[str, int] = {}
    cache_names: dict[str, str] = {}
    for loc, file, line, row, raw in _iter_rows(p):
        if limit is not None and len(out) >= limit:
            break
        try:
            item = convert(row)
            if item.image_bytes is not None:
                item.images = [_cache_name(item, cache_names)]
            fields = {
                "id": item.id,
                "source": name,
                "question": item.question,
                "modality": "video" if item.video else "image",
                "images": item.images,
                "video": item.video,
                "caption": None,
                "response1": item.chosen,
                "response2": item.rejected,
            }
            base = content_uid(fields)
            n_seen = uid_counts.get(base, 0)
            uid_counts[base] = n_seen + 1
            fields["uid"] = f"{base}-{n_seen}" if n_seen else base
            rec = parse_record(
                {**fields, "label": 1, "category": item.category, "meta": {"group": item.id, **item.meta}}
            )
            for ref in record_paths(rec):
                resolve_path(ref, root)
        except RowError as e:
            raise DataError(
                str(e), where=loc, fix=f"correct or remove this row; a {name} row needs {_FIELDS[name]}"
            ) from None
        try:
            if item.image_bytes is not None:
                _write_cached_image(root / rec.images[0], item.image_bytes)
            if check_media:
                _check_media(rec, root)
        except RowError as e:
            if not skip_missing_media:
                raise DataError(
                    f"item '{rec.id}': {e}",
                    where=loc,
                    fix=f"put the media under the image root '{root}' (or set image_root), "
                    "or skip such items with skip_missing_media (they are counted)",
                ) from None
            if skipped is not None:
                skipped.append(Reject(file, line, e.reason, f"item '{rec.id}': {e}", raw))
            continue
        out.append(rec)
    return out


# ---------------------------------------------------------------- per-benchmark rows
def _vl_rewardbench(row: dict) -> _Item:
    item_id = _id(row, "id")
    if "response" in row or "human_ranking" in row:
        # Hugging Face parquet layout
        responses = row.get("response")
        if not isinstance(responses, list | tuple) or len(responses) != 2 or not all(isinstance(r, str) for r in responses):
            raise RowError("wrong_type", f"'response' must be a list of 2 texts, got {_short(responses)}")
        ranking = row.get("human_ranking")
        if not isinstance(ranking, list | tuple) or sorted(ranking) != [0, 1]:
            raise RowError(
                "bad_label", f"'human_ranking' must be [0, 1] (first better) or [1, 0] (second better), got {_short(ranking)}"
            )
        best = list(ranking).index(0)
        item = _Item(item_id, _text(row, "query"), responses[best], responses[1 - best], vl_rewardbench_category(item_id))
    else:
        item = _Item(item_id, _text(row, "prompt"), _text(row, "chosen"), _text(row, "rejected"), vl_rewardbench_category(item_id))
    _set_image(item, row, "image")
    return item


def _mmrb(row: dict) -> _Item:
    item_id = _id(row, "ID")
    better = row.get("Better")
    if better not in ("Output1", "Output2"):
        raise RowError("bad_label", f"'Better' must be \"Output1\" or \"Output2\", got {_short(better)}")
    out1, out2 = _text(row, "Output1"), _text(row, "Output2")
    chosen, rejected = (out1, out2) if better == "Output1" else (out2, out1)
    category = row.get("Category")
    if category is None and isinstance(row.get("Meta"), dict):
        category = row["Meta"].get("Category")
    if category is None:
        raise RowError("missing_field", "missing field 'Category'")
    if not isinstance(category, str) or category not in _MMRB_CATEGORY:
        raise RowError(
            "unknown_category",
            f"unknown Multimodal RewardBench Category {_short(category)}; known: {', '.join(sorted(_MMRB_CATEGORY))}",
        )
    column = mmrb_column(category, item_id)
    meta: dict[str, Any] = {"mmrb_category": category}
    if category == "safety":
        meta["subcategory"] = "bias" if item_id.lower().startswith("pairs") else "toxicity"
    item = _Item(item_id, _text(row, "Text"), chosen, rejected, column, meta=meta)
    _set_image(item, row, "Image")
    return item


def _mm_rlhf(row: dict, default_category: str | None = None) -> _Item:
    item_id = _id(row, "id")
    item = _Item(item_id, _text(row, "prompt"), _text(row, "chosen"), _text(row, "rejected"), "")
    video = row.get("video")
    if row.get("image") is not None:
        _set_image(item, row, "image")
        media = item.images[0] if item.images else None
    elif video is not None:
        if not isinstance(video, str) or not video:
            raise RowError("wrong_type", f"'video' must be the path of a folder of frames, got {_short(video)}")
        item.video = video
        media = video
    else:
        raise RowError("missing_field", "missing field 'image' (or 'video': a folder of frames)")
    try:
        item.category = mm_rlhf_category(media) if media is not None else (default_category or "")
    except RowError:
        if default_category is None:
            raise
        item.category = default_category
    return item


def genai_pair(row: dict, line: int) -> tuple[dict, int | None, str]:
    """One GenAI-Bench row → (canonical fields with the two outputs as visual responses, the
    better one (1 = left, 2 = right, None for tievote / bothbad_vote), vote_type); RowError if bad."""
    vote = row.get("vote_type")
    if vote not in GENAI_VOTES:
        raise RowError("bad_label", f"'vote_type' must be one of {', '.join(GENAI_VOTES)}, got {_short(vote)}")
    question = _text(row, "prompt")
    if "left_image" in row or "right_image" in row:
        kind, pair = "image", []
        for key in ("left_image", "right_image"):
            probe = _Item("", "", "", "", "")
            _set_image(probe, row, key)
            if probe.image_bytes is not None:
                raise RowError("wrong_type", f"'{key}' holds embedded bytes; write the images to files and give paths")
            if len(probe.images) != 1:
                raise RowError("wrong_type", f"'{key}' must be one image path")
            pair.append(probe.images[0])
    elif "left_video" in row or "right_video" in row:
        kind, pair = "video", []
        for key in ("left_video", "right_video"):
            v = row.get(key)
            if v is None:
                raise RowError("missing_field", f"missing field '{key}'")
            if isinstance(v, str) and v.lower().endswith((".mp4", ".webm", ".avi", ".mov", ".mkv")):
                raise RowError("unsupported_video", f"'{key}' is a video file ({v}); give a folder of extracted frames "
                               "(e.g. ffmpeg -i v.mp4 frames/%04d.png)")
            if not (isinstance(v, str) and v) and not (isinstance(v, list) and v and all(isinstance(f, str) and f for f in v)):
                raise RowError("wrong_type", f"'{key}' must be a frames folder or a list of frame paths, got {_short(v)}")
            pair.append(v)
    else:
        raise RowError("missing_field", "missing fields 'left_image' / 'right_image' (or 'left_video' / 'right_video')")
    raw_id = row.get("id", row.get("index", f"line-{line}"))
    item_id = str(raw_id)
    fields = {
        "id": item_id, "source": "genai-bench", "question": question, "modality": "text", "images": [],
        "video": [], "caption": None, "response1": {kind: pair[0]}, "response2": {kind: pair[1]},
        "category": f"{kind}_generation", "task_type": f"{kind}_generation",
        "meta": {"group": item_id, "vote_type": vote,
                 **{k: row[k] for k in ("left_model", "right_model") if isinstance(row.get(k), str)}},
    }
    return fields, GENAI_VOTES[vote], vote


def _read_genai(p: Path, root: Path, *, check_media: bool, skip_missing_media: bool, limit: int | None,
                skipped: list[Reject] | None) -> list[Record]:
    out: list[Record] = []
    seen: dict[str, int] = {}
    for loc, file, line, row, raw in _iter_rows(p):
        if limit is not None and len(out) >= limit:
            break
        try:
            fields, better, vote = genai_pair(row, line)
            if better is None:
                if skipped is not None:
                    skipped.append(Reject(file, line, _GENAI_SKIP_REASON[vote], f"item '{fields['id']}': {vote} "
                                          "(not decisive: counted, not scored)", raw))
                continue
            if better == 2:  # response1 = the chosen output, as for every benchmark; label 1
                fields["response1"], fields["response2"] = fields["response2"], fields["response1"]
            base = content_uid({k: fields[k] for k in ("id", "source", "question", "response1", "response2")})
            n_seen = seen.get(base, 0)
            seen[base] = n_seen + 1
            rec = parse_record({**fields, "uid": f"{base}-{n_seen}" if n_seen else base, "label": 1})
            for ref in record_paths(rec):
                resolve_path(ref, root)
        except RowError as e:
            raise DataError(str(e), where=loc, fix=f"correct or remove this row; a genai-bench row needs "
                                                   f"{_FIELDS['genai-bench']}") from None
        if check_media:
            try:
                _check_media(rec, root)
            except RowError as e:
                if not skip_missing_media:
                    raise DataError(f"item '{rec.id}': {e}", where=loc,
                                    fix=f"put the media under the image root '{root}' (or set image_root), "
                                    "or skip such items with skip_missing_media (they are counted)") from None
                if skipped is not None:
                    skipped.append(Reject(file, line, e.reason, f"item '{rec.id}': {e}", raw))
                continue
        out.append(rec)
    return out


def convert_row(benchmark: str, row: dict, *, default_category: str | None = None) -> BenchmarkItem:
    """One row of a benchmark-style file → BenchmarkItem (id, question, chosen, rejected, category,
    images or embedded image_bytes, video, meta); raises RowError. Used by `r1rm build-data`
    to read training rows laid out like the benchmarks (MM-RLHF, VL-RewardBench)."""
    if benchmark == "mm-rlhf-rewardbench":
        return _mm_rlhf(row, default_category)
    convert = {"vl-rewardbench": _vl_rewardbench, "multimodal-rewardbench": _mmrb}[benchmark]
    return convert(row)


def _id(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RowError("missing_field", f"missing field '{key}'")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RowError("wrong_type", f"'{key}' must be a string, got {_short(value)}")
    return str(value)


def _text(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None:
        raise RowError("missing_field", f"missing field '{key}'")
    if not isinstance(value, str):
        raise RowError("wrong_type", f"'{key}' must be a text, got {type(value).__name__} {_short(value)}")
    return value


def _set_image(item: _Item, row: dict, key: str) -> None:
    """Fill item.images (a path) or item.image_bytes (embedded bytes) from row[key]."""
    value = row.get(key)
    if isinstance(value, dict):
        if value.get("bytes"):
            item.image_bytes = bytes(value["bytes"])
            return
        value = value.get("path")
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        item.images = list(value)
        return
    if isinstance(value, str) and value:
        item.images = [value]
        return
    if value is None:
        raise RowError("missing_field", f"missing field '{key}' (the image path)")
    raise RowError("wrong_type", f"'{key}' must be an image path or {{bytes, path}}, got {_short(value)}")


def _short(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    try:
        return json.dumps(value, ensure_ascii=False, default=_json_default)[:80]
    except (TypeError, ValueError):
        return repr(value)[:80]


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    return repr(value)


# ---------------------------------------------------------------- embedded images
def _cache_name(item: _Item, names: dict[str, str]) -> str:
    """Stable cache path `.r1rm_images/<id>.png` for embedded bytes; a repeated id with other
    bytes gets `<id>-1.png`, `<id>-2.png`, … in file order."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", item.id).lstrip(".") or "image"
    digest = hashlib.sha1(item.image_bytes or b"").hexdigest()
    n = 0
    while True:
        name = f"{IMAGE_CACHE_DIR}/{stem}{f'-{n}' if n else ''}.png"
        if names.setdefault(name, digest) == digest:
            return name
        n += 1


def _write_cached_image(dest: Path, data: bytes) -> None:
    """Write image bytes as PNG at dest, once: an existing non-empty file is reused."""
    if dest.is_file() and dest.stat().st_size > 0:
        return
    if not data.startswith(_PNG_MAGIC):
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                if im.mode not in ("1", "L", "LA", "I", "P", "RGB", "RGBA"):
                    im = im.convert("RGB")
                buf = io.BytesIO()
                im.save(buf, format="PNG")
                data = buf.getvalue()
        except Exception as e:  # PIL raises many types for broken bytes
            raise RowError("corrupt_image", f"embedded image bytes cannot be decoded ({type(e).__name__}: {e})") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp.{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, dest)


# ---------------------------------------------------------------- media checks
def _check_media(rec: Record, root: Path) -> None:
    """Raise RowError if an image of rec is missing or unreadable, or a frames folder is empty."""
    for ref in record_paths(rec):
        full = resolve_path(ref, root)
        folder = (isinstance(rec.video, str) and ref == rec.video) or any(
            r.kind == "video" and r.visual == ref for r in (rec.response1, rec.response2))
        if folder:
            if not full.is_dir():
                raise RowError("missing_video", f"video frames folder not found: '{full}'")
            frames = list_frames(full)
            if not frames:
                raise RowError("missing_video", f"video folder '{full}' holds no image frames")
            for frame in frames:
                check_image(frame)
        else:
            check_image(full)


# ---------------------------------------------------------------- file layouts
def _iter_rows(p: Path) -> Iterator[tuple[str, str, int, dict, str]]:
    """Yield (location, file, line, row, raw text) from a JSONL, JSON-array or parquet file
    (or a folder of parquet shards); `line` is the 1-based row number for parquet."""
    if p.is_dir():
        shards = sorted(p.glob("*.parquet"))
        if not shards:
            raise InputFileError(f"'{p}' is a folder with no .parquet files", fix="point to the benchmark file")
        for shard in shards:
            yield from _iter_parquet(shard)
        return
    if p.suffix.lower() == ".parquet":
        yield from _iter_parquet(p)
        return
    with open(p, "rb") as f:
        head = f.read(4096).lstrip()
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:].lstrip()
    if head.startswith(b"["):
        yield from _iter_json_array(p)
        return
    n = 0
    for line, text, _raw in iter_lines(p):
        n += 1
        loc = where(p, line)
        if text is None:
            raise DataError("line is not valid UTF-8", where=loc, fix="re-encode the file as UTF-8")
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON ({e.msg} at column {e.colno})", where=loc, fix="the line may be truncated; fix or remove it") from None
        if not isinstance(row, dict):
            raise DataError(f"each line must be a JSON object, got {type(row).__name__}", where=loc, fix="one JSON object per line")
        yield loc, str(p), line, row, text.rstrip("\n")[:2000]
    if n == 0:
        raise DataError("file has no items (it is empty)", where=str(p), fix="point to the benchmark file")


def _iter_json_array(p: Path) -> Iterator[tuple[str, str, int, dict, str]]:
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
        yield where(p, line), str(p), line, row, text[pos:end][:2000]
        n += 1
        pos = end
    if n == 0:
        raise DataError("file has no items (the JSON array is empty)", where=str(p), fix="point to the benchmark file")


def _iter_parquet(p: Path) -> Iterator[tuple[str, str, int, dict, str]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(p)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for non-parquet files
        raise DataError(f"cannot read parquet ({type(e).__name__}: {e})", where=str(p), fix="point to a .parquet file") from None
    n = 0
    for batch in pf.iter_batches(batch_size=64):
        for row in batch.to_pylist():
            n += 1
            yield f"{p}:row {n}", str(p), n, row, json.dumps(row, ensure_ascii=False, default=_json_default)[:2000]
    if n == 0:
        raise DataError("parquet file has no rows", where=str(p), fix="point to the benchmark file")


# ---------------------------------------------------------------- canonical
def _read_canonical(
    p: Path,
    root: Path,
    *,
    check_media: bool,
    skip_missing_media: bool,
    limit: int | None,
    skipped: list[Reject] | None,
) -> list[Record]:
    out: list[Record] = []
    for line, rec in read_numbered_records(p, image_root=root):
        if limit is not None and len(out) >= limit:
            break
        if rec.label == 2:
            rec = rec.swapped()
        group = rec.meta.get("group", rec.id or None)
        rec = dataclasses.replace(rec, source=rec.source or "canonical", meta={**rec.meta, "group": group})
        if check_media:
            try:
                _check_media(rec, root)
            except RowError as e:
                loc = where(p, line)
                if not skip_missing_media:
                    raise DataError(
                        f"item '{rec.id or rec.uid}': {e}",
                        where=loc,
                        fix=f"put the media under the image root '{root}' (or set image_root), "
                        "or skip such items with skip_missing_media (they are counted)",
                    ) from None
                if skipped is not None:
                    skipped.append(Reject(str(p), line, e.reason, f"item '{rec.id or rec.uid}': {e}", json.dumps(rec.to_json())[:2000]))
                continue
        out.append(rec)
    return out


# row iterators shared with `r1rm build-data` (r1rm.data.sources): (location, file, row number, row, raw text)
iter_json_array = _iter_json_array
iter_parquet = _iter_parquet
