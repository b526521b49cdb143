"""`r1rm check-data`: validate canonical JSONL files line by line, and their media.

Bad lines are reported with file:line and reason (and written to --rejects); the
command exits with code 2 when any line is bad, 0 when all are valid.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from r1rm.data.files import RowError, write_jsonl_atomic
from r1rm.data.media import check_image, default_image_root, resolve_path, resolve_video
from r1rm.data.records import Record, Reject, dataset_files, read_numbered_records
from r1rm.errors import DataError


def check_record_media(rec: Record, root: Path, max_pixels: int | None = None) -> None:
    """Open every image / frame the record refers to; raise RowError on the first bad one
    (an image above 64 x `max_pixels` pixels is refused before it is decoded)."""
    for p in rec.images:
        check_image(resolve_path(p, root), max_pixels=max_pixels)
    if rec.video:
        for frame in resolve_video(rec.video, root, max_frames=10**9):
            check_image(frame, max_pixels=max_pixels)
    for r in (rec.response1, rec.response2):
        if r.kind == "image":
            check_image(resolve_path(r.visual, root), max_pixels=max_pixels)
        elif r.kind == "video":
            for frame in resolve_video(r.visual, root, max_frames=10**9):
                check_image(frame, max_pixels=max_pixels)


def run(files: list[Path], *, image_root: Path | None, check_media: bool = True, rejects_path: Path | None = None,
        max_pixels: int | None = None) -> dict:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    rejects: list[Reject] = []
    table = Table(title="check-data")
    for col in ("file", "valid", "rejected", "label 1", "label 2", "modalities"):
        table.add_column(col)
    totals = {"valid": 0, "rejected": 0}
    # a build-data output folder stands for its shards
    files = [f for given in files for f in dataset_files(given)]
    for f in files:
        root = default_image_root(f, str(image_root) if image_root else None)
        mine: list[Reject] = []
        labels: Counter = Counter()
        modalities: Counter = Counter()
        ok = 0
        for line, rec in read_numbered_records(f, image_root=root, rejects=mine):
            if check_media:
                try:
                    check_record_media(rec, root, max_pixels)
                except RowError as e:
                    mine.append(Reject(str(f), line, e.reason, str(e), rec.uid))
                    continue
            ok += 1
            labels[rec.label] += 1
            modalities[rec.modality] += 1
        rejects += mine
        totals["valid"] += ok
        totals["rejected"] += len(mine)
        table.add_row(str(f), str(ok), str(len(mine)), str(labels[1]), str(labels[2]),
                      ", ".join(f"{k}:{v}" for k, v in sorted(modalities.items())))
    console.print(table)
    if rejects_path is not None:
        write_jsonl_atomic(rejects_path, rejects)
    if rejects:
        reasons = Counter(r.reason for r in rejects)
        shown = "\n  ".join(f"{r.file}:{r.line}: {r.message}" for r in rejects[:10])
        more = f"\n  ... and {len(rejects) - 10} more" if len(rejects) > 10 else ""
        raise DataError(
            f"{len(rejects)} bad line(s) ({', '.join(f'{k}: {v}' for k, v in reasons.most_common())}):\n  {shown}{more}",
            fix="correct or remove the lines named above" + ("" if rejects_path else " (--rejects FILE lists them all)"),
        )
    return totals
