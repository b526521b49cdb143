"""Training sets for `sft` and `rl`: canonical JSONL files or `build-data` output folders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from r1rm.data.files import RowError
from r1rm.data.media import default_image_root
from r1rm.data.records import Record, check_record_media, dataset_files, read_numbered_records
from r1rm.errors import ConfigError, DataError, InputFileError, R1RMError


@dataclass(frozen=True)
class Item:
    """One training sample: the record, its media root, and (SFT) the assistant target text."""

    rec: Record
    root: Path
    target: str | None
    where: str  # file:line, for messages


def data_files(paths: list[str]) -> list[Path]:
    """Expand each path: a JSONL file, or a build-data output folder (the shards its manifest lists)."""
    out = []
    for p in map(Path, paths):
        if not p.exists():
            raise InputFileError(f"training data not found: '{p}'", fix="check data.train")
        out += dataset_files(p)
    return out


def data_fingerprint(paths: list[str]) -> str | None:
    """sha256 over the bytes of every data file behind `paths`, in order (None when one is
    missing or unreadable: reading it reports that). A resumed run checks it: same path, other
    data = other run."""
    import hashlib

    from r1rm.data.files import check_regular

    for path in paths:  # a device or FIFO would never end: refused before anything opens it
        check_regular(path)
    h = hashlib.sha256()
    try:
        for f in data_files(paths):
            check_regular(f, folders=False)
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            h.update(b"\0")
    except (R1RMError, OSError):
        return None
    return h.hexdigest()


def read_items(paths: list[str], *, image_root: str | None, target_field: str | None,
               max_pixels: int | None = None) -> list[Item]:
    """All records of `paths` in file order; with `target_field`, each needs meta[target_field]
    (or meta.trace) — a record without one is a DataError naming file:line. Every image and frame passes
    the media gate's header checks (bounded by 64 x `max_pixels`): one it refuses is a DataError naming
    file:line and the reason, before any model is loaded."""
    if not paths:
        raise ConfigError("no training data", fix="set data.train=[FILE.jsonl, ...]")
    items = []
    for f in data_files(paths):
        root = default_image_root(f, image_root)
        for line, rec in read_numbered_records(f, image_root=root):
            try:
                check_record_media(rec, root, max_pixels=max_pixels, decode=False)
            except RowError as e:
                raise DataError(f"{e} [{e.reason}]", where=f"{f}:{line}",
                                fix="fix or drop this record (`r1rm check-data FILE --rejects R` lists every such line)") from None
            target = None
            if target_field is not None:
                target = rec.meta.get(target_field) or rec.meta.get("trace")
                if not isinstance(target, str) or not target.strip():
                    raise DataError(f"record {rec.uid} has no SFT target in meta.{target_field} (or meta.trace)",
                                    where=f"{f}:{line}", fix="use build-data's sft set, or set sft.target_field")
            items.append(Item(rec, root, target, f"{f}:{line}"))
    return items


def epoch_order(n: int, *, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """The sample order of one epoch: a seeded permutation (same seed + epoch → same order)."""
    import random

    order = list(range(n))
    if shuffle:
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def with_label_noise(items: list[Item], share: float) -> tuple[list[Item], int]:
    """`items` with the label of about `share` of them flipped (r1rm.core.stress.noisy_labels: picked
    by uid, the same items whatever the run's seed) and how many were flipped."""
    import dataclasses

    from r1rm.core.stress import noisy_labels

    labels, flipped = noisy_labels([it.rec.label for it in items], [it.rec.uid for it in items], share=share)
    return [it if lab == it.rec.label else dataclasses.replace(it, rec=dataclasses.replace(it.rec, label=lab))
            for it, lab in zip(items, labels, strict=True)], flipped
