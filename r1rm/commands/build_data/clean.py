"""Stage 1 of every mode, clean (and stage 2 in mode caption): sources → validated, deduplicated,
balanced, shuffled shards, rejects.jsonl and the manifest (r1rm.data.sources, r1rm.data.cleaning).

The steps: read every source row by row (validate, place media, dedupe, spool), refuse a
source that rejects too much or keeps nothing, caption the main-role records (mode caption),
then plan the output (replay mix, balance, order) and write it as shards."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r1rm.commands.build_data.caption import caption_jobs, name_outputs, run_captioner, to_caption, uncaptioned
from r1rm.commands.build_data.manifest import MANIFEST_VERSION, REJECTS
from r1rm.config import Config
from r1rm.data.files import RowError, atomic_path
from r1rm.errors import DataError

# reasons a valid row does not fit the mode (not bad data): listed in rejects.jsonl, not counted
# against build.max_reject_rate
NOT_APPLICABLE = ("unsupported_response", "no_visual")
# counted in the manifest but never shown as examples of what to fix
_NOT_SHOWN = ("duplicate", "tie", "both_bad")


class RejectLog:
    """rejects.jsonl, one line per dropped row; the first ten of each source kept for the error message."""

    def __init__(self, f):
        self.f = f
        self.shown: dict[str, list] = {}

    def add(self, name: str, sr, reason: str, message: str) -> None:
        import json

        from r1rm.data.records import Reject

        r = Reject(sr.file, sr.line, reason, message, sr.raw)
        self.f.write(json.dumps({"source": name, **r.to_json()}, ensure_ascii=False) + "\n")
        self.shown.setdefault(name, [])
        if len(self.shown[name]) < 10 and reason not in _NOT_SHOWN:
            self.shown[name].append(r)


@dataclass
class Kept:
    """What the read step keeps: per source, (spool offset, label) of each record; and the
    captioner jobs of main-role records in mode caption."""

    entries: list[list[tuple[int, int | None]]]
    caption_jobs: dict[int, list[tuple[str, str]]] = field(default_factory=dict)  # spool offset → [(slot, job key)]
    job_messages: dict[str, list[dict]] = field(default_factory=dict)
    job_rows: dict[int, tuple[str, Any]] = field(default_factory=dict)  # spool offset → (source name, its SourceRow)


def clean(cfg: Config, out: Path, key: str, bar) -> tuple[dict, list[dict]]:
    """Run the clean stage into `out`; return the manifest and the failed model calls (mode caption)."""
    from r1rm.data.cleaning import MediaStore, Spool

    b = cfg.build
    work = out / ".work"
    shutil.rmtree(work, ignore_errors=True)
    for stale in out.glob(f".{REJECTS}.tmp.*"):  # left by a killed run
        stale.unlink()
    media = MediaStore(out, resize=b.resize_images, max_pixels=cfg.model.max_pixels,
                       min_pixels=cfg.model.min_pixels, factor=b.resize_factor)
    spool = Spool(work / "spool.jsonl")
    stats = {s.name: {"format": s.format, "role": s.role, "read": 0, "kept": 0, "rejected": 0, "rejects_by_reason": Counter(),
                      "duplicates": 0, "ties_dropped": 0, "both_bad_dropped": 0} for s in b.sources}
    failures: list[dict] = []
    captions: dict[str, str] = {}
    caption_info: dict = {}
    with atomic_path(out / REJECTS) as tmp, open(tmp, "w", encoding="utf-8") as f:
        rejects = RejectLog(f)
        kept = _read_sources(cfg, out, work, media, spool, rejects, stats, bar)
        refusal = _refusal(cfg, out, kept, stats, rejects)
        if refusal is None and b.mode == "caption":
            captions, caption_info, failures = _caption(cfg, out, kept, stats, rejects, bar)
    if refusal is not None:
        spool.close()
        raise refusal
    written, replay = _write_output(cfg, out, spool, kept, captions, stats)
    shutil.rmtree(work, ignore_errors=True)
    manifest = {
        **written,
        "images": {"placed": media.stats.placed, "resized": media.stats.resized, "resize_images": b.resize_images,
                   "max_pixels": cfg.model.max_pixels, "min_pixels": cfg.model.min_pixels, "factor": b.resize_factor},
        "clean_key": key,
        "clean_complete": not failures,
        "config": {"build": b.model_dump(mode="json"), "seed": cfg.seed, "prompt": cfg.data.prompt,
                   "model": {"min_pixels": cfg.model.min_pixels, "max_pixels": cfg.model.max_pixels}},
    }
    if replay:
        manifest["replay"] = replay
    if b.mode == "caption":
        manifest["caption"] = caption_info
    return manifest, failures


# ---------------------------------------------------------------- read
def _read_sources(cfg: Config, out: Path, work: Path, media, spool, rejects: RejectLog, stats: dict, bar) -> Kept:
    """Every row of every source validated, its media placed, deduplicated and spooled (or rejected)."""
    from r1rm.data.cleaning import dedupe_key
    from r1rm.data.sources import iter_source

    b = cfg.build
    kept = Kept([[] for _ in b.sources])
    seen: dict[str, str] = {}
    uids: set[str] = set()
    for i, src in enumerate(b.sources):
        st = stats[src.name]
        task = bar.add_task(f"read {src.name}", total=None)
        for sr in iter_source(src, work_dir=work, seed=cfg.seed):
            st["read"] += 1
            bar.advance(task)
            try:
                rec = _admitted(cfg, src, sr, media, uids)
            except RowError as e:
                if e.reason in ("tie", "both_bad"):  # no better response: dropped and counted, not an error
                    st["ties_dropped" if e.reason == "tie" else "both_bad_dropped"] += 1
                else:
                    st["rejected"] += 1
                    st["rejects_by_reason"][e.reason] += 1
                rejects.add(src.name, sr, e.reason, str(e))
                continue
            dkey = dedupe_key(rec)
            if dkey in seen:
                st["duplicates"] += 1
                rejects.add(src.name, sr, "duplicate", f"duplicate of {seen[dkey]} (same question, context and response pair)")
                continue
            seen[dkey] = sr.where
            uids.add(rec.uid)
            offset = spool.write(i, rec)
            kept.entries[i].append((offset, rec.label))
            if b.mode == "caption" and src.role == "main":
                _add_caption_jobs(cfg, out, kept, offset, rec, src.name, sr)
        bar.update(task, total=st["read"])
    return kept


def _admitted(cfg: Config, src, sr, media, uids: set[str]):
    """The source row as a valid record whose media are checked and placed; RowError if it is not one."""
    from r1rm.data.cleaning import to_record

    if sr.error is not None:
        raise sr.error
    rec = to_record(sr.row, source=src.name, require_label=src.require_label)
    _mode_check(cfg, rec, src.role)
    rec = media.record(rec, sr.root)
    if rec.uid in uids:
        raise RowError("duplicate_uid", f"uid '{rec.uid}' is already used by another kept record")
    return rec


def _mode_check(cfg: Config, rec, role: str) -> None:
    """Mode-specific reasons to reject a valid record (RowError)."""
    mode = cfg.build.mode
    visual_responses = rec.response1.kind != "text" or rec.response2.kind != "text"
    if mode in ("teacher", "cmkd") and visual_responses:
        raise RowError("unsupported_response", f"visual responses ({rec.response1.kind}) cannot be judged in mode {mode}")
    if mode == "cmkd":
        if not (rec.images or rec.video):
            raise RowError("no_visual", "cmkd needs the real image (or video) of the item; the record has none")
        if not (rec.caption and rec.caption.strip()):
            raise RowError("missing_caption", "cmkd needs the item's caption (run mode caption first, or map a caption field)")
    if mode == "caption" and role == "main" and cfg.build.caption.source == "field":
        if rec.modality in ("image", "video") and not (rec.caption and rec.caption.strip()):
            raise RowError("missing_caption", "build.caption.source=field but the record has no caption")
        if visual_responses:
            raise RowError("missing_caption", "visual responses need the captioner (build.caption.source=auto or model)")


def _add_caption_jobs(cfg: Config, out: Path, kept: Kept, offset: int, rec, name: str, sr) -> None:
    import dataclasses

    jobs = caption_jobs(cfg, rec, out)
    if jobs:
        kept.caption_jobs[offset] = [(slot, k) for slot, k, _ in jobs]
        kept.job_messages.update({k: m for _, k, m in jobs})
        kept.job_rows[offset] = (name, dataclasses.replace(sr, row=None, raw=rec.uid))


# ---------------------------------------------------------------- refuse
def _refusal(cfg: Config, out: Path, kept: Kept, stats: dict, rejects: RejectLog) -> DataError | None:
    """The error that stops the run when a source rejects more than build.max_reject_rate of its
    rows or keeps none (raised once rejects.jsonl is written), else None."""
    b = cfg.build

    def bad_rate(st: dict) -> float:
        bad = st["rejected"] - sum(st["rejects_by_reason"][r] for r in NOT_APPLICABLE)
        return bad / st["read"] if st["read"] else 0.0

    too_many = [s for s in b.sources if bad_rate(stats[s.name]) > b.max_reject_rate]
    empty = [s for s in b.sources if not kept.entries[b.sources.index(s)]]
    if not (too_many or empty):
        return None
    bad = too_many[0] if too_many else empty[0]
    st = stats[bad.name]
    lines = "\n  ".join(f"{r.file}:{r.line}: {r.reason}: {r.message}" for r in rejects.shown.get(bad.name, []))
    reasons = ", ".join(f"{k}: {v}" for k, v in st["rejects_by_reason"].most_common())
    what = (f"source '{bad.name}' rejected {st['rejected']} of {st['read']} rows ({reasons or 'none'}"
            f"; {st['duplicates']} duplicates, {st['ties_dropped']} ties)"
            + ("" if too_many else "; no row is left") + (f":\n  {lines}" if lines else ""))
    return DataError(what, fix=f"correct the rows listed in {out / REJECTS} (file:line, reason), fix the source's "
                               "build.sources[].fields / build.sources[].image_root, or raise build.max_reject_rate")


# ---------------------------------------------------------------- caption (mode caption)
def _caption(cfg: Config, out: Path, kept: Kept, stats: dict, rejects: RejectLog, bar) -> tuple[dict, dict, list[dict]]:
    """Captions of the main-role records' visuals; a record whose call failed is left out and listed
    (a rerun asks again), one given an empty caption is rejected (`empty_caption`)."""
    captions, info, errors = run_captioner(cfg, out, kept.job_messages, bar)
    failed, empty = uncaptioned(kept.caption_jobs, captions, errors)
    failures = []
    for off, error in failed.items():
        name, sr = kept.job_rows[off]
        failures.append({"stage": "caption", "source": name, "uid": sr.raw, "file": sr.file, "line": sr.line, "error": error})
    for off in empty:  # the captioner answered nothing usable: a property of the model, not retried
        name, sr = kept.job_rows[off]
        stats[name]["rejected"] += 1
        stats[name]["rejects_by_reason"]["empty_caption"] += 1
        rejects.add(name, sr, "empty_caption", "the captioner returned an empty caption for this item's image")
    dropped = set(failed) | set(empty)
    kept.entries = [[e for e in entries if e[0] not in dropped] for entries in kept.entries]
    return captions, info, failures


# ---------------------------------------------------------------- write
def _write_output(cfg: Config, out: Path, spool, kept: Kept, captions: dict[str, str], stats: dict) -> tuple[dict, dict]:
    """Plan the output (replay mix, balance, order) and write it as shards; return the manifest's
    part on the data (files, counts, sources) and the replay mix (empty without replay sources)."""
    from r1rm.data.cleaning import content_hash, plan_output, write_shards

    b = cfg.build
    plan = plan_output(kept.entries, [s.name for s in b.sources], [s.role for s in b.sources], seed=cfg.seed,
                       shuffle=b.shuffle, replay_ratio=b.caption.replay_ratio)
    counts: dict[str, Counter] = {k: Counter() for k in ("label", "source", "category", "task_type", "modality")}
    per_source_labels: dict[str, Counter] = {s.name: Counter() for s in b.sources}
    files = write_shards(out, _output(cfg, spool, plan, kept, captions, counts, per_source_labels), b.shard_size)
    spool.close()
    for s in b.sources:
        st = stats[s.name]
        st["kept"] = sum(per_source_labels[s.name].values())
        st["label"] = dict(sorted(per_source_labels[s.name].items()))
        st["rejects_by_reason"] = dict(sorted(st["rejects_by_reason"].items()))
    total_reasons: Counter = Counter()
    for st in stats.values():
        total_reasons.update(st["rejects_by_reason"])
    written = {
        "version": MANIFEST_VERSION,
        "mode": b.mode,
        "prompt": cfg.data.prompt,
        "image_root": ".",
        "files": [f["path"] for f in files],
        "shards": files,
        "n_records": sum(f["rows"] for f in files),
        "content_sha256": content_hash(out, files),
        "counts": {k: dict(sorted(v.items())) for k, v in counts.items()},
        "sources": stats,
        "n_rejected": sum(st["rejected"] for st in stats.values()),
        "rejects_by_reason": dict(sorted(total_reasons.items())),
        "duplicates": sum(st["duplicates"] for st in stats.values()),
        "ties_dropped": sum(st["ties_dropped"] for st in stats.values()),
        "both_bad_dropped": sum(st["both_bad_dropped"] for st in stats.values()),
    }
    return written, plan.replay


def _output(cfg: Config, spool, plan, kept: Kept, captions: dict[str, str], counts: dict[str, Counter],
            per_source_labels: dict[str, Counter]) -> Iterator:
    """The planned records in order, captioned (mode caption), swapped where balance says, counted."""
    from r1rm.data.cleaning import swap_record

    b = cfg.build
    for offset in plan.order:
        i, rec = spool.read(offset)
        if b.mode == "caption" and b.sources[i].role == "main":
            rec = to_caption(rec, kept.caption_jobs.get(offset, []), captions)
        if offset in plan.swap:
            rec = swap_record(rec)
        rec = name_outputs(rec)
        counts["label"][str(rec.label)] += 1
        counts["source"][rec.source] += 1
        counts["category"][str(rec.category)] += 1
        counts["task_type"][rec.task_type] += 1
        counts["modality"][rec.modality] += 1
        per_source_labels[rec.source][str(rec.label)] += 1
        yield rec
