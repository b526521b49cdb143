"""`r1rm check-data`: validate canonical JSONL files line by line, and their media (every image and
frame through the media gate, r1rm.data.media.admit_image, bounded by 64 x --max-pixels).

Bad lines are reported with file:line and reason (and written to --rejects); the
command exits with code 2 when any line is bad, 0 when all are valid.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from r1rm.data.files import RowError, write_jsonl_atomic
from r1rm.data.media import default_image_root
from r1rm.data.records import Reject, check_record_media, dataset_files, read_numbered_records
from r1rm.errors import DataError


def _with_raw_lines(f: Path, rejects: list[Reject]) -> list[Reject]:
    """`rejects` with the raw text of their lines (a media error is found after the line was parsed): the
    rejects file holds what to correct, as for every other bad line."""
    from dataclasses import replace

    from r1rm.data.files import json_lines

    want = {r.line for r in rejects if not r.raw}
    if not want:
        return rejects
    raw = {i: text for i, text, _ in json_lines(f) if i in want}
    return [replace(r, raw=raw.get(r.line, "")) if not r.raw else r for r in rejects]


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
                    check_record_media(rec, root, max_pixels=max_pixels)
                except RowError as e:
                    mine.append(Reject(str(f), line, e.reason, str(e), ""))  # its raw line: filled in below
                    continue
            ok += 1
            labels[rec.label] += 1
            modalities[rec.modality] += 1
        rejects += _with_raw_lines(f, mine)
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
