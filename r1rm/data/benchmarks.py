"""The evaluation benchmarks, read in their own published formats into canonical Records.

METHOD §5. Every item becomes a Record with response1 = chosen, response2 = rejected and
label = 1 (the evaluator shows each pair in both orders itself), `source` = the benchmark
name, `id` = the benchmark's own id, `category` as the benchmark defines it and
`meta["group"]` = the prompt id (the `id` field: pairs sharing an id are one prompt; MM-RLHF
Acc+ is computed over these groups). Benchmark ids are not unique (VL-RewardBench repeats 25
of them), so the uid is a content hash, and a hash seen before gets `-1`, `-2`, … in file
order: the same file always gives the same uids.

Where from: `path` is a file, a folder of parquet shards, a hub snapshot folder or a hub dataset
id (r1rm.data.hub picks the subset / split and the files; docs/benchmarks.md has each release's
layout). Formats read:

    vl-rewardbench          JSONL / JSON as R1-Reward ships it: id, prompt, chosen, rejected, image
                            (chosen_reason / rejected_reason ignored); or the Hugging Face parquet
                            (MMInstruction/VL-RewardBench): id, query, image ({bytes, path} or a
                            path), response [2 texts], human_ranking [2 ints, rank 0 = better].
                            Embedded image bytes are written once, as PNG, to
                            `<media_dir>/embedded/<id>.png` (eval: <output_dir>/media; never
                            next to the data). Category from the id, case-insensitive:
                            reasoning (mathverse, mmmu), hallucination (hallucination_pair, rlaif,
                            rlhf), general otherwise.
    multimodal-rewardbench  facebookresearch/multimodal_rewardbench `data/all_data.json` (a JSON
                            array) or JSONL / parquet with the same fields: ID, Text, Image,
                            Output1, Output2, Better ("Output1" | "Output2"), Category (or
                            Meta.Category, as the harness's answer files carry it). See
                            `mmrb_column` for the category mapping and its source.
    mm-rlhf-rewardbench     JSONL or parquet: id, prompt, chosen, rejected, and image (a file) or
                            video (a folder of frames), paths under the release's images/ folder;
                            category = first folder of that path (mcq, long, short, safety, video).
    genai-bench             GenAI-Bench's image / video generation sets (TIGER-Lab/GenAI-Bench layout):
                            prompt, left_image + right_image (paths or embedded {bytes, path},
                            written under media_dir) or left_video + right_video (video files or
                            the release's URLs, whose files sit in videos/: decoded with PyAV to
                            video_max_frames frames under media_dir; or frame folders / lists), vote_type ∈
                            leftvote / rightvote / tievote / bothbad_vote; id from `id`, `index`
                            or the line number. The *responses are the visual outputs*; decisive
                            votes are scored (category image_generation / video_generation),
                            tievote and bothbad_vote items are counted (skipped, reasons `tie`
                            and `both_bad`), never scored.
    canonical               r1rm's own JSONL (records.py); category from the record; a record with
                            label 2 is turned round (uid kept) so response1 is the chosen one.

Paths resolve under `image_root` (default: hub.media_root — the rows file's folder, a snapshot's
folder, MM-RLHF's images/) and a path that escapes it is an error. A bad row raises DataError naming file:line (file:row N for
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

from r1rm.data.files import FileRow, RowError, json_fallback, read_rows, write_bytes_atomic
from r1rm.data.hub import media_root, r1rm_cache, resolve_data, unzipped
from r1rm.data.media import admit_image, image_header, resolve_path
from r1rm.data.records import (
    Record,
    Reject,
    check_paths,
    check_record_media,
    content_uid,
    dataset_files,
    parse_record,
    read_numbered_records,
)
from r1rm.errors import DataError, InputFileError, where

BENCHMARKS = ("vl-rewardbench", "multimodal-rewardbench", "mm-rlhf-rewardbench", "genai-bench", "canonical")

# GenAI-Bench vote_type -> which output is better (None: not decisive, counted, not scored)
GENAI_VOTES = {"leftvote": 1, "rightvote": 2, "tievote": None, "bothbad_vote": None}
_GENAI_SKIP_REASON = {"tievote": "tie", "bothbad_vote": "both_bad"}
# the columns of a GenAI-Bench row that hold media (image_generation, image_edition, video_generation)
GENAI_MEDIA = ("left_image", "right_image", "source_image", "left_output_image", "right_output_image", "left_video",
               "right_video")

VL_REWARDBENCH_CATEGORIES = ("general", "hallucination", "reasoning")
# The seven columns of the R1-Reward paper's Multimodal RewardBench table; Overall = their mean.
MMRB_COLUMNS = ("correctness", "preference", "knowledge", "math", "coding", "safety", "vqa")

# embedded image bytes are written as <media_dir>/embedded/<id>.png
IMAGE_CACHE_DIR = "embedded"

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
    "genai-bench": "prompt, left_image and right_image (or left_video and right_video: video files, URLs of files in "
    "videos/, frame folders or lists; or image_edition's instruct_prompt, source_image, left_output_image, "
    "right_output_image), vote_type (leftvote, rightvote, tievote, bothbad_vote)",
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


def read_benchmark(name: str, path: str | os.PathLike, **options) -> list[Record]:
    """Read benchmark `name` from `path` into Records (METHOD §5), in file order: `load_benchmark`'s
    records, same keyword options, without the media root."""
    return load_benchmark(name, path, **options).records


@dataclass
class Benchmark:
    """What `load_benchmark` read: the records, the folder their media paths resolve against, the files."""

    records: list[Record]
    root: Path
    files: tuple[Path, ...]
    description: str


def load_benchmark(
    name: str,
    path: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    check_media: bool = False,
    skip_missing_media: bool = False,
    limit: int | None = None,
    skipped: list[Reject] | None = None,
    subset: str | None = None,
    split: str | None = None,
    media_dir: str | os.PathLike | None = None,
    video_max_frames: int = 8,
    max_pixels: int | None = None,
) -> Benchmark:
    """Read benchmark `name` from `path` — a file, a folder of parquet shards, a hub snapshot folder or
    a hub dataset id (r1rm.data.hub; `subset`, `split`) — into Records (METHOD §5), in file order.

    Media paths resolve under `image_root` (default: hub.media_root). Embedded image bytes and
    frames decoded from video files are written under `media_dir` (the run's output folder; default
    r1rm's cache), never next to the data; a file whose items use them resolves every media path
    under `media_dir` (returned as `root`). check_media: pass every image and frame through the media gate
    (r1rm.data.media.admit_image, bounded by 64 x `max_pixels`); one it refuses (missing, unreadable, a
    bomb, an aspect ratio above 200) raises DataError naming the item id and file:line, unless
    skip_missing_media, which skips the item and appends a Reject (with the gate's reason) to `skipped`. `limit` keeps the
    first N items that are kept.
    """
    if name not in BENCHMARKS:
        raise DataError(f"unknown benchmark '{name}'", fix=f"use one of {', '.join(BENCHMARKS)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if name == "canonical":
        p = Path(path)
        if not p.exists():
            raise InputFileError(f"benchmark file not found: '{p}'", fix="check the path (relative paths start from the "
                                 "current directory; a hub dataset id needs eval.benchmark set to its benchmark)")
        root = Path(image_root) if image_root is not None else (p if p.is_dir() else p.parent)
        media = _MediaPolicy(root, check_media, skip_missing_media, skipped, max_pixels=max_pixels)
        # a file, or a build-data output folder (the shards its manifest lists)
        out_records: list[Record] = []
        files = dataset_files(p)
        for f in files:
            left = None if limit is None else limit - len(out_records)
            if left == 0:
                break
            out_records += _read_canonical(f, media, limit=left)
        return Benchmark(out_records, root, tuple(files), str(p))
    data = resolve_data(path, subset=subset, split=split, prefer_splits=("test",), key="eval.path")
    root = media_root(data, image_root, media_dirs=("images",) if name == "mm-rlhf-rewardbench" else ())
    if media_dir is None:
        media_dir = r1rm_cache() / "media" / hashlib.sha1(str(data.folder.resolve()).encode()).hexdigest()[:12]
    media = _MediaPolicy(root, check_media, skip_missing_media, skipped, Path(media_dir), video_max_frames, max_pixels)
    if name == "genai-bench":
        records = _read_genai(data.files, media, limit=limit)
    else:
        records = _read_converted(name, data.files, media, limit=limit)
    records, root = media.one_root(records)
    return Benchmark(records, root, data.files, data.describe())


@dataclass
class _MediaPolicy:
    """Where an item's media resolve, where embedded / decoded media go, whether they are opened, and
    what a bad one does."""

    root: Path
    check: bool
    skip_missing: bool
    skipped: list[Reject] | None
    media_dir: Path | None = None
    video_max_frames: int = 8
    max_pixels: int | None = None  # the media gate's bound: 64 x this many pixels per image (model.max_pixels)
    roots: dict = field(default_factory=dict)  # uid -> the folder its media resolve under

    def keep(self, rec: Record, fr: FileRow, *, name: str | None = None, image_bytes: bytes | None = None,
             root: Path | None = None) -> bool:
        """Write the item's embedded image (`image_bytes`) and, with `check`, open its media (under
        `root`, default the image root): True when all is well; else a DataError naming the item
        (`name`, default its id), or with skip_missing False and the item counted in `skipped`."""
        name = rec.id if name is None else name
        root = self.root if root is None else root
        try:
            if image_bytes is not None:
                _write_cached_image(root / rec.images[0], image_bytes)
            if self.check:
                check_record_media(rec, root, max_pixels=self.max_pixels)
        except RowError as e:
            if not self.skip_missing:
                raise DataError(f"item '{name}': {e} [{e.reason}]", where=fr.where,
                                fix=f"put the media under the image root '{self.root}' (or set eval.image_root), "
                                "or skip such items with eval.skip_missing_media=true (they are counted)") from None
            if self.skipped is not None:
                self.skipped.append(Reject(fr.file, fr.line, e.reason, f"item '{name}': {e}", fr.raw))
            return False
        self.roots[rec.uid] = root
        return True

    def one_root(self, records: list[Record]) -> tuple[list[Record], Path]:
        """The records and the one folder all their media resolve under: the image root, or media_dir
        when some items embed their images (the others' media are then linked in beside them)."""
        if self.media_dir is None or self.media_dir not in self.roots.values():
            return records, self.root
        out = [rec if self.roots.get(rec.uid) == self.media_dir else _relinked(rec, self.root, self.media_dir)
               for rec in records]
        return out, self.media_dir


def _relinked(rec: Record, root: Path, media_dir: Path) -> Record:
    """`rec` with every media path under `root` hard-linked (or copied) to `media_dir`/linked/… and renamed so."""
    import shutil

    real_root = Path(os.path.realpath(root))

    def move(ref: str) -> str:
        src = resolve_path(ref, root)
        rel = Path("linked") / src.relative_to(real_root)
        dest = media_dir / rel
        if src.exists() and not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dest, copy_function=_link_or_copy)
            else:
                _link_or_copy(src, dest)
        return rel.as_posix()

    def response(r):
        if r.kind == "text":
            return r
        return dataclasses.replace(r, visual=move(r.visual) if isinstance(r.visual, str) else [move(f) for f in r.visual])

    video = move(rec.video) if isinstance(rec.video, str) and rec.video else tuple(move(f) for f in rec.video or ())
    return dataclasses.replace(rec, images=tuple(move(p) for p in rec.images), video=video,
                               response1=response(rec.response1), response2=response(rec.response2))


def _link_or_copy(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    try:
        os.link(src, dest)
    except OSError:
        import shutil

        shutil.copyfile(src, dest)


class _Uids:
    """Content-hash uids made unique in file order: a hash seen before gets `-1`, `-2`, …"""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def next(self, fields: dict) -> str:
        base = content_uid(fields)
        n_seen = self.counts.get(base, 0)
        self.counts[base] = n_seen + 1
        return f"{base}-{n_seen}" if n_seen else base


def _read_converted(name: str, files: tuple[Path, ...], media: _MediaPolicy, *, limit: int | None) -> list[Record]:
    """VL-RewardBench, Multimodal RewardBench or MM-RLHF-RewardBench rows → Records."""
    convert = {"vl-rewardbench": _vl_rewardbench, "multimodal-rewardbench": _mmrb, "mm-rlhf-rewardbench": _mm_rlhf}[name]
    out: list[Record] = []
    uids = _Uids()
    cache_names: dict[str, str] = {}
    for fr in _iter_rows(files, name):
        if limit is not None and len(out) >= limit:
            break
        root = media.root
        try:
            item = convert(fr.row)
            if item.image_bytes is not None:
                item.images = [_cache_name(item, cache_names)]
                root = media.media_dir
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
            fields["uid"] = uids.next(fields)
            rec = parse_record(
                {**fields, "label": 1, "category": item.category, "meta": {"group": item.id, **item.meta}}
            )
            check_paths(rec, root)
        except RowError as e:
            raise DataError(
                str(e), where=fr.where, fix=f"correct or remove this row; a {name} row needs {_FIELDS[name]}"
            ) from None
        if media.keep(rec, fr, image_bytes=item.image_bytes, root=root):
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
    better one (1 = left, 2 = right, None for tievote / bothbad_vote), vote_type); RowError if bad.
    image_edition rows (instruct_prompt, source_image, left/right_output_image) show the source image
    as context and the two edits as the responses."""
    vote = row.get("vote_type")
    if vote not in GENAI_VOTES:
        raise RowError("bad_label", f"'vote_type' must be one of {', '.join(GENAI_VOTES)}, got {_short(vote)}")
    context: list[str] = []
    edit = "left_output_image" in row or "right_output_image" in row
    if edit:
        question = _text(row, "instruct_prompt")
        context = [_genai_image(row, "source_image")]
        kind, pair = "image", [_genai_image(row, k) for k in ("left_output_image", "right_output_image")]
    elif "left_image" in row or "right_image" in row:
        question = _text(row, "prompt")
        kind, pair = "image", [_genai_image(row, k) for k in ("left_image", "right_image")]
    elif "left_video" in row or "right_video" in row:
        question = _text(row, "prompt")
        kind, pair = "video", []
        for key in ("left_video", "right_video"):
            v = row.get(key)
            if v is None:
                raise RowError("missing_field", f"missing field '{key}'")
            if not (isinstance(v, str) and v) and not (isinstance(v, list) and v and all(isinstance(f, str) and f for f in v)):
                raise RowError("wrong_type", f"'{key}' must be a frames folder or a list of frame paths, got {_short(v)}")
            pair.append(v)
    else:
        raise RowError("missing_field", "missing fields 'left_image' / 'right_image' (or 'left_video' / 'right_video', "
                                        "or image_edition's 'left_output_image' / 'right_output_image')")
    raw_id = row.get("id", row.get("index", f"line-{line}"))
    item_id = str(raw_id)
    extra = ("left_model", "right_model", "source_prompt", "target_prompt")
    fields = {
        "id": item_id, "source": "genai-bench", "question": question, "modality": "image" if context else "text",
        "images": context, "video": [], "caption": None, "response1": {kind: pair[0]}, "response2": {kind: pair[1]},
        "category": "image_edition" if edit else f"{kind}_generation", "task_type": f"{kind}_generation",
        "meta": {"group": item_id, "vote_type": vote, **{k: row[k] for k in extra if isinstance(row.get(k), str)}},
    }
    return fields, GENAI_VOTES[vote], vote


def _genai_image(row: dict, key: str) -> str:
    probe = _Item("", "", "", "", "")
    _set_image(probe, row, key)
    if probe.image_bytes is not None:  # callers write them first (place_genai_media)
        raise RowError("wrong_type", f"'{key}' holds embedded bytes; write the images to files and give paths")
    if len(probe.images) != 1:
        raise RowError("wrong_type", f"'{key}' must be one image path")
    return probe.images[0]


def place_genai_media(row: dict, *, root: Path, media_dir: Path, max_frames: int) -> tuple[dict, bool]:
    """A GenAI-Bench row with its outputs made files r1rm reads: embedded image bytes ({bytes, path},
    as the released parquet holds them) written once under `media_dir`/embedded, video files (or a
    video URL whose file sits in `root`/videos/) decoded to `max_frames` frames under
    `media_dir`/frames (r1rm.data.video). Returns (row, True) when the outputs now resolve under
    `media_dir`, (row, False) when they stay paths under `root`; RowError when the two outputs differ."""
    from r1rm.data.video import frames_folder, is_video_file

    row = dict(row)
    placed = []
    for key in GENAI_MEDIA:
        v = row.get(key)
        if isinstance(v, dict) and v.get("bytes"):
            data = bytes(v["bytes"])
            name = f"embedded/{hashlib.sha1(data).hexdigest()[:20]}.png"
            _write_cached_image(media_dir / name, data)
            row[key], moved = name, True
        elif isinstance(v, dict):
            row[key], moved = v.get("path"), False
        elif key.endswith("video") and isinstance(v, str) and (is_video_file(v) or v.startswith(("http://", "https://"))):
            folder = frames_folder(_video_file(v, root, key), media_dir / "frames", max_frames)
            row[key], moved = folder.relative_to(media_dir).as_posix(), True
        else:
            continue
        placed.append(moved)
    if placed and len(set(placed)) > 1:
        raise RowError("wrong_type", "one output is embedded (or a video file) and the other a path; give both the same way")
    return row, bool(placed) and placed[0]


def _video_file(value: str, root: Path, key: str) -> Path:
    """The local file of a GenAI-Bench video: a path under `root`, or for a URL its file name in
    `root`/videos/, `root` or `root`/videos.zip (the release lists URLs; the files are fetched separately)."""
    if not value.startswith(("http://", "https://")):
        return resolve_path(value, root)
    name = PurePosixPath(value.split("?", 1)[0]).name
    folders = [root / "videos", root]
    if (root / "videos.zip").is_file():
        folders.append(unzipped(root / "videos.zip"))
    for candidate in (f / name for f in folders):
        if candidate.is_file():
            return candidate
    raise RowError("missing_video", f"'{key}' is a URL ({value[:120]}); its file '{name}' is not in '{root / 'videos'}' — "
                   "download the videos there (or set eval.image_root to their folder)")


def _read_genai(files: tuple[Path, ...], media: _MediaPolicy, *, limit: int | None) -> list[Record]:
    out: list[Record] = []
    uids = _Uids()
    for fr in _iter_rows(files, "genai-bench"):
        if limit is not None and len(out) >= limit:
            break
        vote = fr.row.get("vote_type")
        if vote in _GENAI_SKIP_REASON:  # counted, never scored: its outputs are not read
            if media.skipped is not None:
                item_id = fr.row.get("id", fr.row.get("index", f"line-{fr.line}"))
                media.skipped.append(Reject(fr.file, fr.line, _GENAI_SKIP_REASON[vote], f"item '{item_id}': {vote} "
                                            "(not decisive: counted, not scored)", fr.raw))
            continue
        try:
            row, moved = place_genai_media(fr.row, root=media.root, media_dir=media.media_dir,
                                           max_frames=media.video_max_frames)
            root = media.media_dir if moved else media.root
            fields, better, vote = genai_pair(row, fr.line)
            if better == 2:  # response1 = the chosen output, as for every benchmark; label 1
                fields["response1"], fields["response2"] = fields["response2"], fields["response1"]
            uid = uids.next({k: fields[k] for k in ("id", "source", "question", "response1", "response2")})
            rec = parse_record({**fields, "uid": uid, "label": 1})
            check_paths(rec, root)
        except RowError as e:
            raise DataError(str(e), where=fr.where, fix=f"correct or remove this row; a genai-bench row needs "
                                                        f"{_FIELDS['genai-bench']}") from None
        if media.keep(rec, fr, root=root):
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
        return json.dumps(value, ensure_ascii=False, default=json_fallback)[:80]
    except (TypeError, ValueError):
        return repr(value)[:80]


# ---------------------------------------------------------------- embedded images
def _cache_name(item: _Item, names: dict[str, str]) -> str:
    """Stable path `embedded/<id>.png` (under the media folder) for embedded bytes; a repeated id with
    other bytes gets `<id>-1.png`, `<id>-2.png`, … in file order."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", item.id).lstrip(".") or "image"
    digest = hashlib.sha1(item.image_bytes or b"").hexdigest()
    n = 0
    while True:
        name = f"{IMAGE_CACHE_DIR}/{stem}{f'-{n}' if n else ''}.png"
        if names.setdefault(name, digest) == digest:
            return name
        n += 1


def _write_cached_image(dest: Path, data: bytes) -> None:
    """Write image bytes as PNG at dest, once: an existing non-empty file is reused. PNG bytes are written as
    they are (after the media gate's header checks); any other format is decoded by the gate and written as
    its RGB PNG. The gate's reasons (corrupt_image, image_too_large, aspect_ratio) are the row's."""
    if dest.is_file() and dest.stat().st_size > 0:
        return
    what = f"embedded in the data ({dest.name})"
    if data.startswith(_PNG_MAGIC):
        image_header(data, max_pixels=None, what=what)
    else:
        buf = io.BytesIO()
        admit_image(data, max_pixels=None, what=what).save(buf, format="PNG")
        data = buf.getvalue()
    write_bytes_atomic(dest, data)


# ---------------------------------------------------------------- file layouts
# the fix named for a bad line of a JSONL benchmark file, by its reason
_LINE_FIX = {"not_utf8": "re-encode the file as UTF-8", "invalid_json": "the line may be truncated; fix or remove it",
             "not_object": "one JSON object per line"}


def _iter_rows(files: tuple[Path, ...], name: str) -> Iterator[FileRow]:
    """The rows of JSONL, JSON-array or parquet files in order; a bad line, a file without rows or a
    parquet file without one of the benchmark's columns raises DataError."""
    for p in files:
        n = 0
        for fr in read_rows(p, folder_fix="point to the benchmark file"):
            if fr.error is not None:
                raise DataError(fr.error.brief, where=fr.where, fix=_LINE_FIX.get(fr.error.reason, fr.error.hint))
            if n == 0 and p.suffix.lower() == ".parquet":
                _check_columns(name, fr.row, p)
            n += 1
            yield fr
        if n == 0:
            raise DataError("file has no items (it is empty)", where=str(p), fix="point to the benchmark file")


# the columns a parquet file of each benchmark must have: every group needs one of its alternatives
_COLUMNS: dict[str, list[list[tuple[str, ...]]]] = {
    "vl-rewardbench": [[("id",)], [("query", "response", "human_ranking"), ("prompt", "chosen", "rejected")], [("image",)]],
    "multimodal-rewardbench": [[("ID", "Text", "Image", "Output1", "Output2", "Better")]],
    "mm-rlhf-rewardbench": [[("id", "prompt", "chosen", "rejected")], [("image",), ("video",)]],
    "genai-bench": [[("vote_type",)], [("prompt", "left_image", "right_image"), ("prompt", "left_video", "right_video"),
                                      ("instruct_prompt", "source_image", "left_output_image", "right_output_image")]],
}


def _check_columns(name: str, row: dict, p: Path) -> None:
    for group in _COLUMNS.get(name, []):
        if any(all(c in row for c in alt) for alt in group):
            continue
        best = min(group, key=lambda alt: sum(c not in row for c in alt))
        missing = [c for c in best if c not in row]
        raise DataError(
            f"{name}: column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} missing; the file has "
            f"{', '.join(sorted(row))}", where=str(p),
            fix=f"is eval.benchmark right? a {name} file needs {_FIELDS[name]} (or pick another subset / split)")


# ---------------------------------------------------------------- canonical
def _read_canonical(p: Path, media: _MediaPolicy, *, limit: int | None) -> list[Record]:
    out: list[Record] = []
    for line, rec in read_numbered_records(p, image_root=media.root):
        if limit is not None and len(out) >= limit:
            break
        if rec.label == 2:
            rec = rec.swapped()
        group = rec.meta.get("group", rec.id or None)
        rec = dataclasses.replace(rec, source=rec.source or "canonical", meta={**rec.meta, "group": group})
        if media.check:
            at = FileRow(str(p), line, json.dumps(rec.to_json())[:2000], None, None, where(p, line))
            if not media.keep(rec, at, name=rec.id or rec.uid):
                continue
        out.append(rec)
    return out
