"""The cleaning stage of `r1rm build-data`: validate, place media, dedupe, balance, shard.

Rows stream in from r1rm.data.sources; each one is validated (`records.parse_record`:
missing fields, empty / identical responses, bad labels, ...), its media paths are checked
against the source's image root (`path_escapes_root`) and every image is opened and fully
decoded (`missing_image`, `empty_image`, `corrupt_image`, `image_too_large`). A bad row
goes to rejects.jsonl with file:line, reason, message and the raw row; a good one is
written to a spool file (so nothing large stays in memory) after the dedupe check.

Media placement (`MediaStore`): every image / frame a kept record uses is put under
`<output_dir>/images/` named by the sha1 of its bytes (a hard link when the file system
allows, else a copy), so the output folder is self-contained and readers resolve paths
against it (the data file's folder, their default image root). With `resize` on, an image
of more than `max_pixels` pixels is resized to the size the Qwen2-VL / 2.5-VL processor
would give it (`media.smart_resize`, factor 28, min/max pixels), bicubic, so training never
ships the full-size file; smaller images are left as they are for the processor. Video
frames are placed but not resized (the video processor has its own budget).

Dedupe key (`dedupe_key`): sha256 of the question, the context (image files by content,
video frames, caption) and the two responses as an unordered pair — the same pair with the
responses swapped is a duplicate. The first occurrence is kept.

Balance (`balanced_labels`): per source, exactly ⌊n/2⌋ of one label and ⌈n/2⌉ of the other
(which one gets the odd record is drawn from the seed), assigned in a seeded random order;
a record whose label differs from its assignment has its responses swapped (the label
follows). So |#1 − #2| ≤ 1 in every source. Order-dependent texts in meta (`trace`,
`target`: "Response 1 says … <answer>2</answer>") are turned round with it (`swap_trace`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from r1rm.data.files import atomic_path, jsonl_line, write_bytes_atomic
from r1rm.data.media import check_image, folder_frames, resize_image, resolve_path, smart_resize
from r1rm.data.records import Record, Response, parse_record

IMAGES_DIR = "images"


# ---------------------------------------------------------------- pure helpers
def dedupe_key(rec: Record) -> str:
    """sha256 of question + context (images, video, caption) + the unordered response pair."""
    video = rec.video if isinstance(rec.video, str) else list(rec.video)
    blob = json.dumps(
        {
            "question": rec.question,
            "images": list(rec.images),
            "video": video,
            "caption": rec.caption if rec.modality in ("caption", "text") else None,
            "responses": sorted([rec.response1.key(), rec.response2.key()]),
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def balanced_labels(n: int, rng: random.Random) -> list[int]:
    """n labels, ⌊n/2⌋ of one and ⌈n/2⌉ of the other (the odd one drawn from rng), in a random order."""
    first = rng.choice((1, 2))
    labels = [first if i % 2 == 0 else 3 - first for i in range(n)]
    rng.shuffle(labels)
    return labels


def replay_count(n_main: int, ratio: float) -> int:
    """Replay (stage-1 text) samples mixed into n_main caption samples at caption:text = ratio:1.

    ⌊n_main / ratio⌋, so caption:text is never below the ratio (40 caption samples at 4:1 → 10);
    ratio 0 means no replay."""
    if ratio <= 0:
        return 0
    return int(n_main // ratio)


_RESPONSE_N = re.compile(r"\b([Rr]esponse|RESPONSE)(\s*)([12])\b")
_ANSWER_N = re.compile(r"(<answer>\s*)([12])(\s*</answer>)")


def swap_trace(text: str) -> str:
    """A judge text for the swapped pair: "Response 1" ↔ "Response 2" and <answer>1</answer> ↔ 2."""
    text = _RESPONSE_N.sub(lambda m: f"{m.group(1)}{m.group(2)}{3 - int(m.group(3))}", text)
    return _ANSWER_N.sub(lambda m: f"{m.group(1)}{3 - int(m.group(2))}{m.group(3)}", text)


def swap_record(rec: Record) -> Record:
    """rec.swapped() with its order-dependent meta texts (trace, target) turned round too."""
    out = rec.swapped()
    meta = {k: swap_trace(v) if k in ("trace", "target") and isinstance(v, str) else v for k, v in rec.meta.items()}
    return dataclasses.replace(out, meta=meta)


def source_rng(seed: int, name: str, purpose: str) -> random.Random:
    """A random.Random seeded by (seed, source name, purpose): independent of the source order."""
    digest = hashlib.sha256(f"{seed}/{name}/{purpose}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


# ---------------------------------------------------------------- media
@dataclass
class MediaStats:
    placed: int = 0
    resized: int = 0
    linked: int = 0
    copied: int = 0


class MediaStore:
    """Places images / frames under `<out>/images/` by content hash (see the module docstring)."""

    def __init__(self, out: Path, *, resize: bool, max_pixels: int, min_pixels: int, factor: int):
        self.out = out
        self.dir = out / IMAGES_DIR
        self.resize, self.max_pixels, self.min_pixels, self.factor = resize, max_pixels, min_pixels, factor
        self._memo: dict[str, str] = {}
        self.stats = MediaStats()

    def _put(self, src: Path, name: str) -> str:
        dest = self.dir / name
        if not (dest.is_file() and dest.stat().st_size == src.stat().st_size):
            with atomic_path(dest) as tmp:
                if _link_or_copy(src, tmp):
                    self.stats.linked += 1
                else:
                    self.stats.copied += 1
        return f"{IMAGES_DIR}/{name}"

    def image(self, full: Path, *, resize: bool = True) -> str:
        """Check and place one image; return its path relative to the output folder."""
        real = os.path.realpath(full)
        if real in self._memo:
            return self._memo[real]
        w, h = check_image(full, max_pixels=self.max_pixels)
        digest = _sha1(full)
        suffix = full.suffix.lower() or ".img"
        if self.resize and resize and w * h > self.max_pixels:
            nh, nw = smart_resize(h, w, factor=self.factor, min_pixels=self.min_pixels, max_pixels=self.max_pixels)
            with open(full, "rb") as f:
                jpeg = f.read(3) == b"\xff\xd8\xff"
            name = f"{digest[:20]}-{nw}x{nh}{'.jpg' if jpeg else '.png'}"
            dest = self.dir / name
            if not dest.is_file():
                resize_image(full, dest, (nw, nh))
            self.stats.resized += 1
            rel = f"{IMAGES_DIR}/{name}"
        else:
            rel = self._put(full, digest[:20] + suffix)
        self.stats.placed += 1
        self._memo[real] = rel
        return rel

    def video(self, video: str | tuple[str, ...] | list[str], root: Path) -> str | list[str]:
        """Check and place a video: a frames folder → `images/video-<hash>/00000.png …` (frames in
        natural order, hash over their bytes); a list of frames → the placed frame paths. Not resized."""
        if not isinstance(video, str):
            return [self.image(resolve_path(f, root), resize=False) for f in video]
        folder = resolve_path(video, root)
        real = os.path.realpath(folder)
        if real in self._memo:
            return self._memo[real]
        frames = folder_frames(folder)
        for f in frames:
            check_image(f, max_pixels=self.max_pixels)
        digest = hashlib.sha1("\n".join(_sha1(f) for f in frames).encode()).hexdigest()[:20]
        target = self.dir / f"video-{digest}"
        if not target.is_dir():
            with atomic_path(target) as tmp:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
                for i, f in enumerate(frames):
                    _link_or_copy(f, tmp / f"{i:05d}{f.suffix.lower()}")
        self.stats.placed += len(frames)
        self._memo[real] = f"{IMAGES_DIR}/video-{digest}"
        return self._memo[real]

    def record(self, rec: Record, root: Path) -> Record:
        """The record with every media path checked (under `root`) and replaced by its placed path."""
        images = tuple(self.image(resolve_path(p, root)) for p in rec.images)
        video: str | tuple[str, ...] = rec.video
        if rec.video:
            placed = self.video(rec.video, root)
            video = placed if isinstance(placed, str) else tuple(placed)
        r1, r2 = (self._response(r, root) for r in (rec.response1, rec.response2))
        return dataclasses.replace(rec, images=images, video=video, response1=r1, response2=r2)

    def _response(self, r: Response, root: Path) -> Response:
        if r.kind == "image":
            return Response("image", visual=self.image(resolve_path(r.visual, root)))
        if r.kind == "video":
            return Response("video", visual=self.video(r.visual, root))
        return r


def _link_or_copy(src: Path, dest: Path) -> bool:
    """Hard-link src at dest where the file system allows (True), else copy it (False)."""
    try:
        os.link(src, dest)
        return True
    except OSError:
        shutil.copyfile(src, dest)
        return False


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- rows → records
def to_record(row: dict, *, source: str, require_label: bool) -> Record:
    """A canonical dict from a source reader → a validated Record whose `source` is the source name."""
    clean = {k: v for k, v in row.items() if v is not None}
    clean["source"] = source
    return parse_record(clean, require_label=require_label)


# ---------------------------------------------------------------- the spool
class Spool:
    """Append-then-read JSONL of kept records ({"s": source index, "r": record}); read back by offset."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._w = open(path, "wb")
        self._r = None

    def write(self, source_index: int, rec: Record) -> int:
        offset = self._w.tell()
        self._w.write((json.dumps({"s": source_index, "r": rec.to_json()}, ensure_ascii=False) + "\n").encode("utf-8"))
        return offset

    def read(self, offset: int) -> tuple[int, Record]:
        if self._r is None:
            self._w.flush()
            self._r = open(self.path, "rb")
        self._r.seek(offset)
        row = json.loads(self._r.readline())
        return row["s"], parse_record(row["r"], require_label=False)

    def close(self) -> None:
        self._w.close()
        if self._r is not None:
            self._r.close()


# ---------------------------------------------------------------- selection, balance, order
@dataclass
class Plan:
    """Which spooled records go out, in which order, and which get their responses swapped."""

    order: list[int] = field(default_factory=list)  # spool offsets
    swap: set[int] = field(default_factory=set)
    replay: dict = field(default_factory=dict)


def plan_output(
    entries: list[list[tuple[int, int | None]]],
    names: list[str],
    roles: list[str],
    *,
    seed: int,
    shuffle: bool,
    replay_ratio: float,
) -> Plan:
    """entries[i]: (spool offset, label) of source i's kept records, in stream order.

    Replay-role sources form one pool from which `replay_count(n_main, replay_ratio)` records
    are drawn (seeded); then each source's selected records are balanced (`balanced_labels`,
    unlabelled ones left alone) and the whole output is shuffled with the seed (or kept in
    source order)."""
    plan = Plan()
    main = [i for i, r in enumerate(roles) if r == "main"]
    replay = [i for i, r in enumerate(roles) if r == "replay"]
    selected: dict[int, list[tuple[int, int | None]]] = {i: list(entries[i]) for i in main}
    if replay:
        pool = [(i, e) for i in replay for e in entries[i]]
        n_main = sum(len(selected[i]) for i in main)
        want = replay_count(n_main, replay_ratio)
        rng = random.Random(f"{seed}/replay")
        picked = sorted(rng.sample(range(len(pool)), min(want, len(pool))))
        for i in replay:
            selected[i] = []
        for j in picked:
            i, e = pool[j]
            selected[i].append(e)
        plan.replay = {"ratio": replay_ratio, "n_caption": n_main, "wanted": want, "pool": len(pool), "used": len(picked)}
    for i in sorted(selected):
        labelled = [(off, lab) for off, lab in selected[i] if lab is not None]
        for (off, lab), want_label in zip(labelled, balanced_labels(len(labelled), source_rng(seed, names[i], "balance")), strict=True):
            if lab != want_label:
                plan.swap.add(off)
        plan.order += [off for off, _ in selected[i]]
    if shuffle:
        random.Random(f"{seed}/order").shuffle(plan.order)
    return plan


def shard_name(i: int) -> str:
    return f"data-{i:05d}.jsonl"


def write_shards(out: Path, records: Iterable[Record], shard_size: int) -> list[dict]:
    """Write records as data-00000.jsonl … (each atomically); remove stale shards; return
    [{path, rows, sha256}] in order."""
    files: list[dict] = []
    buf: list[Record] = []

    def flush() -> None:
        name = shard_name(len(files))
        data = "".join(jsonl_line(r) for r in buf).encode("utf-8")
        write_bytes_atomic(out / name, data, fsync=True)
        files.append({"path": name, "rows": len(buf), "sha256": hashlib.sha256(data).hexdigest()})
        buf.clear()

    for rec in records:
        buf.append(rec)
        if len(buf) >= shard_size:
            flush()
    if buf:
        flush()
    keep = {f["path"] for f in files}
    for stale in out.glob("data-*.jsonl"):
        if stale.name not in keep:
            stale.unlink()
    return files


def content_hash(out: Path, files: list[dict]) -> str:
    """sha256 over the shards' bytes, in order."""
    h = hashlib.sha256()
    for f in files:
        with open(out / f["path"], "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
