"""`r1rm build-data`: preference data for SFT and RL (R1-Reward §4, MSRL §6; METHOD §4, §6).

One run reads `build.sources`, cleans them into shards, and — by `build.mode` — adds one
model-driven step. At most one model is called per run: the run's `model` / `engine` /
`generation` sections (an `openai` endpoint such as GPT-4o, `vllm serve` or `r1rm judge
--serve`, or a local `hf` / `vllm` model).

1. clean (every mode; r1rm.data.sources, r1rm.data.cleaning): every row validated, bad rows
   to `rejects.jsonl` (file:line, reason, message, raw), media placed under `images/`
   (large images resized with the processor's rule), duplicates dropped, labels balanced
   per source, output shuffled with the seed and written as `data-00000.jsonl` … plus
   `manifest.json` (files, counts, rejects by reason, content hash, config). A source
   rejecting more than `build.max_reject_rate` of its rows stops the run (exit 2) after
   writing rejects.jsonl. A rerun whose sources and cleaning config are unchanged reuses
   the shards (the manifest's `clean_key`), so resuming a teacher run does not re-clean.
2. mode `caption` (MSRL stage 2): before the shards are written, every image / video
   context (and visual response) of a main-role source gets its caption — the record's
   caption field, or the captioner model (`build.caption.source`), cached in
   `caption_cache.jsonl` — and the record turns into caption modality (images kept, task
   type kept; an empty generated caption drops the record: rejects.jsonl, `empty_caption`).
   Replay-role sources (stage-1 text samples) are mixed in at
   `build.caption.replay_ratio` caption:text (⌊n_caption / ratio⌋ samples).
3. mode `teacher` (R1-Reward cold start): the model judges each shard record with the
   `data.prompt` prompt; attempt 1 at `build.teacher.temperature` (0), attempts 2..N at
   `build.teacher.retry_temperature` seeded with seed + attempt (a greedy retry would only
   repeat itself), stopping at the first answer that matches the label. Outputs:
   `teacher.jsonl` (per sample: status right / never, attempts needed, every
   attempt's text, answer and format check), `sft.jsonl` (records whose right attempt is
   also well-formed, the trace in meta.target), `rl.jsonl` (attempts needed ≥ 2 and never
   right), both ordered easy → hard when `build.curriculum`.
4. mode `cmkd` (MSRL cross-modal distillation): for each record with images (or video)
   and a caption, the model (caption-trained) samples `build.cmkd.n` chains on the caption
   version with token log-probabilities; r1rm.core.distill.select_chain keeps the
   well-formed chains whose answer is the label (or the majority) and takes the most
   confident; `sft.jsonl` gets the record in its image modality with meta.target =
   `<caption>…</caption>` + chain and meta.write_caption = true.

Every model call goes through r1rm.engines.cache (`teacher_cache.jsonl`,
`caption_cache.jsonl`, `cmkd_cache.jsonl`: keyed by request content, appended and flushed
per result), so a killed run resumes without paying twice. An endpoint failure (after the
engine's retries) is neither a right nor a wrong attempt: the sample is listed in
`failures.jsonl`, counted, left out of the outputs, the manifest says `complete: false`,
and the command exits 2 asking for a rerun, which asks only for what is missing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from r1rm.config import Config, save_config
from r1rm.errors import ConfigError, DataError, IncompleteRunError

MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"
FAILURES = "failures.jsonl"
MANIFEST_VERSION = 1
# reasons a valid row does not fit the mode (not bad data): listed in rejects.jsonl, not counted
# against build.max_reject_rate
NOT_APPLICABLE = ("unsupported_response", "no_visual")


# ---------------------------------------------------------------- small helpers
def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    buf: list = []
    for x in items:
        buf.append(x)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def _file_stats(path: str) -> list:
    p = Path(path)
    if p.is_file():
        st = p.stat()
        return [[str(p), st.st_size, st.st_mtime_ns]]
    if p.is_dir():
        return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(p.iterdir()) if f.is_file()]
    return [[str(p), None, None]]


def clean_key(cfg: Config) -> str:
    """Hash of everything the clean stage depends on: sources (and their files' sizes and
    mtimes), cleaning settings, seed, pixel bounds, and the captioner in caption mode."""
    b = cfg.build
    settings = b.model_dump(mode="json", exclude={"teacher", "cmkd", "curriculum", "chunk_size"})
    files = [_file_stats(p) for s in b.sources for p in ([s.path] if isinstance(s.path, str) else s.path or [])]
    captioner = None
    if b.mode == "caption":
        captioner = [cfg.engine.kind, cfg.engine.model_name or cfg.model.path, cfg.generation.max_new_tokens]
    blob = json.dumps([MANIFEST_VERSION, settings, files, cfg.seed, cfg.model.min_pixels, cfg.model.max_pixels,
                       cfg.data.prompt, captioner], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _reusable(out: Path, key: str) -> dict | None:
    """The existing manifest when its clean stage matches `key`, is complete, and its shards are intact."""
    from r1rm.data.cleaning import content_hash

    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    if manifest.get("clean_key") != key or not manifest.get("clean_complete"):
        return None
    files = manifest.get("shards", [])
    if not all((out / f["path"]).is_file() for f in files) or content_hash(out, files) != manifest.get("content_sha256"):
        return None
    return manifest


def _engine_id(cfg: Config) -> str:
    return f"{cfg.engine.kind}:{cfg.engine.model_name or cfg.model.path}"


class _LazyEngine:
    """Builds the run's engine on first use (a fully cached run never loads a model)."""

    def __init__(self, cfg: Config):
        self.cfg, self.engine = cfg, None

    def __call__(self):
        if self.engine is None:
            from r1rm.engines import make_engine

            self.engine = make_engine(self.cfg)
        return self.engine

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


def _chunk_size(cfg: Config, override: int | None) -> int:
    return override or max(cfg.engine.batch_size, cfg.engine.concurrency)


# ---------------------------------------------------------------- checks per mode
def _mode_check(cfg: Config, rec, role: str) -> None:
    """Mode-specific reasons to reject a valid record (RowError)."""
    from r1rm.data.records import RowError

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


# ---------------------------------------------------------------- stage 1 (+2): clean
def _clean(cfg: Config, out: Path, key: str, bar) -> tuple[dict, list[dict]]:
    from r1rm.data.cleaning import (
        MediaStore,
        Spool,
        content_hash,
        dedupe_key,
        plan_output,
        swap_record,
        to_record,
        write_shards,
    )
    from r1rm.data.records import Reject, RowError
    from r1rm.data.sources import iter_source

    b = cfg.build
    work = out / ".work"
    shutil.rmtree(work, ignore_errors=True)
    for stale in out.glob(f".{REJECTS}.tmp.*"):  # left by a killed run
        stale.unlink()
    media = MediaStore(out, resize=b.resize_images, max_pixels=cfg.model.max_pixels,
                       min_pixels=cfg.model.min_pixels, factor=b.resize_factor)
    spool = Spool(work / "spool.jsonl")
    rejects_tmp = out / f".{REJECTS}.tmp.{os.getpid()}"
    rejects_f = open(rejects_tmp, "w", encoding="utf-8")
    shown: dict[str, list[Reject]] = {}
    entries: list[list[tuple[int, int | None]]] = [[] for _ in b.sources]
    stats = {s.name: {"format": s.format, "role": s.role, "read": 0, "kept": 0, "rejected": 0, "rejects_by_reason": Counter(),
                      "duplicates": 0, "ties_dropped": 0, "both_bad_dropped": 0} for s in b.sources}
    seen: dict[str, str] = {}
    uids: set[str] = set()
    caption_jobs: dict[int, list[tuple[str, str]]] = {}  # spool offset → [(slot, job key)]
    job_messages: dict[str, list[dict]] = {}
    job_rows: dict[int, tuple[str, object]] = {}  # spool offset → (source name, its SourceRow)

    def reject(name: str, sr, reason: str, message: str) -> None:
        r = Reject(sr.file, sr.line, reason, message, sr.raw)
        rejects_f.write(json.dumps({"source": name, **r.to_json()}, ensure_ascii=False) + "\n")
        shown.setdefault(name, [])
        if len(shown[name]) < 10 and reason not in ("duplicate", "tie", "both_bad"):
            shown[name].append(r)

    for i, src in enumerate(b.sources):
        st = stats[src.name]
        task = bar.add_task(f"read {src.name}", total=None)
        for sr in iter_source(src, work_dir=work, seed=cfg.seed):
            st["read"] += 1
            bar.advance(task)
            try:
                if sr.error is not None:
                    raise sr.error
                rec = to_record(sr.row, source=src.name, require_label=src.require_label)
                _mode_check(cfg, rec, src.role)
                rec = media.record(rec, sr.root)
                if rec.uid in uids:
                    raise RowError("duplicate_uid", f"uid '{rec.uid}' is already used by another kept record")
            except RowError as e:
                if e.reason in ("tie", "both_bad"):  # no better response: dropped and counted, not an error
                    st["ties_dropped" if e.reason == "tie" else "both_bad_dropped"] += 1
                else:
                    st["rejected"] += 1
                    st["rejects_by_reason"][e.reason] += 1
                reject(src.name, sr, e.reason, str(e))
                continue
            dkey = dedupe_key(rec)
            if dkey in seen:
                st["duplicates"] += 1
                reject(src.name, sr, "duplicate", f"duplicate of {seen[dkey]} (same question, context and response pair)")
                continue
            seen[dkey] = sr.where
            uids.add(rec.uid)
            offset = spool.write(i, rec)
            entries[i].append((offset, rec.label))
            if b.mode == "caption" and src.role == "main":
                jobs = _caption_jobs(cfg, rec, out)
                if jobs:
                    caption_jobs[offset] = [(slot, k) for slot, k, _ in jobs]
                    job_messages.update({k: m for _, k, m in jobs})
                    job_rows[offset] = (src.name, dataclasses.replace(sr, row=None, raw=rec.uid))
        bar.update(task, total=st["read"])

    def finish_rejects() -> None:
        rejects_f.close()
        os.replace(rejects_tmp, out / REJECTS)

    def bad_rate(st: dict) -> float:
        bad = st["rejected"] - sum(st["rejects_by_reason"][r] for r in NOT_APPLICABLE)
        return bad / st["read"] if st["read"] else 0.0

    too_many = [s for s in b.sources if bad_rate(stats[s.name]) > b.max_reject_rate]
    empty = [s for s in b.sources if not entries[b.sources.index(s)]]
    if too_many or empty:
        finish_rejects()
        spool.close()
        bad = too_many[0] if too_many else empty[0]
        st = stats[bad.name]
        lines = "\n  ".join(f"{r.file}:{r.line}: {r.reason}: {r.message}" for r in shown.get(bad.name, []))
        reasons = ", ".join(f"{k}: {v}" for k, v in st["rejects_by_reason"].most_common())
        what = (f"source '{bad.name}' rejected {st['rejected']} of {st['read']} rows ({reasons or 'none'}"
                f"; {st['duplicates']} duplicates, {st['ties_dropped']} ties)"
                + ("" if too_many else "; no row is left") + (f":\n  {lines}" if lines else ""))
        raise DataError(what, fix=f"correct the rows listed in {out / REJECTS} (file:line, reason), fix the source's "
                                  "fields / image_root, or raise build.max_reject_rate")

    failures: list[dict] = []
    captions: dict[str, str] = {}
    caption_info: dict = {}
    if b.mode == "caption":
        captions, caption_info, errors = _run_captioner(cfg, out, job_messages, bar)
        dropped = set()
        for off, jobs in caption_jobs.items():
            keys = [k for _, k in jobs]
            failed = next((errors[k] for k in keys if k in errors), None)
            if failed is not None:
                # endpoint failure: left out, listed, asked again by the rerun
                name, sr = job_rows[off]
                failures.append({"stage": "caption", "source": name, "uid": sr.raw, "file": sr.file, "line": sr.line,
                                 "error": failed})
                dropped.add(off)
            elif any(k not in captions for k in keys):
                # the captioner answered nothing usable (empty text): a property of the model, not retried
                name, sr = job_rows[off]
                stats[name]["rejected"] += 1
                stats[name]["rejects_by_reason"]["empty_caption"] += 1
                reject(name, sr, "empty_caption", "the captioner returned an empty caption for this item's image")
                dropped.add(off)
        for i in range(len(entries)):
            entries[i] = [e for e in entries[i] if e[0] not in dropped]
    finish_rejects()

    plan = plan_output(entries, [s.name for s in b.sources], [s.role for s in b.sources], seed=cfg.seed,
                       shuffle=b.shuffle, replay_ratio=b.caption.replay_ratio)
    counts: dict[str, Counter] = {k: Counter() for k in ("label", "source", "category", "task_type", "modality")}
    per_source_labels: dict[str, Counter] = {s.name: Counter() for s in b.sources}

    def output() -> Iterator:
        for offset in plan.order:
            i, rec = spool.read(offset)
            if b.mode == "caption" and b.sources[i].role == "main":
                rec = _to_caption(rec, caption_jobs.get(offset, []), captions)
            if offset in plan.swap:
                rec = swap_record(rec)
            rec = _name_outputs(rec)
            counts["label"][str(rec.label)] += 1
            counts["source"][rec.source] += 1
            counts["category"][str(rec.category)] += 1
            counts["task_type"][rec.task_type] += 1
            counts["modality"][rec.modality] += 1
            per_source_labels[rec.source][str(rec.label)] += 1
            yield rec

    files = write_shards(out, output(), b.shard_size)
    spool.close()
    shutil.rmtree(work, ignore_errors=True)
    for s in b.sources:
        st = stats[s.name]
        st["kept"] = sum(per_source_labels[s.name].values())
        st["label"] = dict(sorted(per_source_labels[s.name].items()))
        st["rejects_by_reason"] = dict(sorted(st["rejects_by_reason"].items()))
    total_reasons: Counter = Counter()
    for st in stats.values():
        total_reasons.update(st["rejects_by_reason"])
    manifest = {
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
        "images": {"placed": media.stats.placed, "resized": media.stats.resized, "resize_images": b.resize_images,
                   "max_pixels": cfg.model.max_pixels, "min_pixels": cfg.model.min_pixels, "factor": b.resize_factor},
        "clean_key": key,
        "clean_complete": not failures,
        "config": {"build": b.model_dump(mode="json"), "seed": cfg.seed, "prompt": cfg.data.prompt,
                   "model": {"min_pixels": cfg.model.min_pixels, "max_pixels": cfg.model.max_pixels}},
    }
    if plan.replay:
        manifest["replay"] = plan.replay
    if b.mode == "caption":
        manifest["caption"] = caption_info
    return manifest, failures


# ---------------------------------------------------------------- stage 2: captions
def _caption_params(cfg: Config):
    from r1rm.engines.base import SamplingParams

    return SamplingParams(max_new_tokens=cfg.generation.max_new_tokens, temperature=0.0, n=1, seed=cfg.seed)


def _caption_jobs(cfg: Config, rec, out: Path) -> list[tuple[str, str, list[dict]]]:
    """(slot, cache key, captioner messages) for every visual of `rec` that needs a generated caption."""
    from r1rm.core.prompts import user_message
    from r1rm.data.media import resolve_video
    from r1rm.engines.cache import request_key

    c = cfg.build.caption
    params = _caption_params(cfg)
    jobs = []

    def job(slot: str, images: list[str] = (), video: str | list | tuple | None = None) -> None:
        if video:
            frames = [str(p) for p in resolve_video(video if isinstance(video, str) else list(video), out, cfg.model.video_max_frames)]
            messages = user_message(c.video_prompt, video=frames)
        else:
            messages = user_message(c.prompt, images=[str(out / p) for p in images])
        jobs.append((slot, request_key(messages, params, _engine_id(cfg), purpose="caption"), messages))

    if rec.modality in ("image", "video") and (c.source == "model" or not (rec.caption and rec.caption.strip())):
        job("context", images=list(rec.images), video=rec.video if rec.modality == "video" else None)
    for slot, r in (("response1", rec.response1), ("response2", rec.response2)):
        if r.kind == "image":
            job(slot, images=[r.visual])
        elif r.kind == "video":
            job(slot, video=r.visual)
    return jobs


def _run_captioner(cfg: Config, out: Path, job_messages: dict[str, list[dict]], bar) -> tuple[dict, dict, dict]:
    """Captions for every job ({key: text}), info for the manifest, and {key: error} for failed calls."""
    from r1rm.engines.cache import ResultCache, generate_cached

    captions: dict[str, str] = {}
    failures: dict[str, str] = {}
    info = {"source": cfg.build.caption.source, "generated_needed": len(job_messages), "model": None, "empty": 0}
    if not job_messages:
        return captions, info, failures
    info["model"] = _engine_id(cfg)
    cache = ResultCache(out / "caption_cache.jsonl")
    engine = _LazyEngine(cfg)
    task = bar.add_task("caption", total=len(job_messages))
    n_calls = 0
    try:
        for chunk in _chunks(iter(job_messages.items()), _chunk_size(cfg, cfg.build.chunk_size)):
            results, errors, calls = generate_cached(engine, cache, chunk, _caption_params(cfg), info={"purpose": "caption"})
            n_calls += calls
            for key, samples in results.items():
                text = samples[0]["text"].strip()
                if text:
                    captions[key] = text
                else:
                    info["empty"] += 1
            failures.update(errors)
            bar.advance(task, len(chunk))
    finally:
        cache.close()
        engine.close()
    info["engine_requests_this_run"] = n_calls
    return captions, info, failures


def _to_caption(rec, jobs: list[tuple[str, str]], captions: dict[str, str]):
    """The record in caption modality: its context caption (generated or its own), visual responses as captions."""
    from r1rm.data.records import Response

    by_slot = {slot: captions[k] for slot, k in jobs}
    changes: dict = {}
    if rec.modality in ("image", "video"):
        changes.update(modality="caption", caption=by_slot.get("context", rec.caption), task_type=rec.task_type)
    kinds = {rec.response1.kind, rec.response2.kind}
    for slot in ("response1", "response2"):
        if slot in by_slot:
            changes[slot] = Response("text", text=by_slot[slot])
    if "response1" in by_slot and "response2" in by_slot:  # generated outputs, described one by one
        changes["meta"] = {**rec.meta, "described_outputs": "Video" if "video" in kinds else "Image"}
    return dataclasses.replace(rec, **changes)


def _name_outputs(rec):
    """Described generated outputs read "Image A: …" / "Image B: …" in their final order."""
    from r1rm.data.records import Response

    noun = rec.meta.get("described_outputs")
    if not noun or rec.response1.kind != "text":
        return rec
    meta = {k: v for k, v in rec.meta.items() if k != "described_outputs"}
    return dataclasses.replace(rec, response1=Response("text", text=f"{noun} A: {rec.response1.text}"),
                               response2=Response("text", text=f"{noun} B: {rec.response2.text}"), meta=meta)


# ---------------------------------------------------------------- shard records
def _shard_records(out: Path, manifest: dict) -> Iterator:
    from r1rm.data.records import read_records

    for f in manifest["files"]:
        yield from read_records(out / f, image_root=out, require_label=False)


class _Buckets:
    """Temp JSONL files per bucket, concatenated into one output in a chosen bucket order."""

    def __init__(self, out: Path, name: str):
        self.out, self.name, self.files, self.counts = out, name, {}, Counter()

    def add(self, bucket: str, row: dict) -> None:
        if bucket not in self.files:
            self.files[bucket] = open(self.out / f".{self.name}.{bucket}.tmp", "w", encoding="utf-8")
        self.files[bucket].write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
        self.counts[bucket] += 1

    def write(self, order: list[str]) -> int:
        tmp = self.out / f".{self.name}.tmp.{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as dest:
            for bucket in order:
                f = self.files.get(bucket)
                if f is None:
                    continue
                f.close()
                with open(f.name, encoding="utf-8") as src:
                    shutil.copyfileobj(src, dest)
                os.unlink(f.name)
        os.replace(tmp, self.out / self.name)
        return sum(self.counts[b] for b in order)


# ---------------------------------------------------------------- stage 3: teacher
def _teacher(cfg: Config, out: Path, manifest: dict, bar) -> tuple[dict, list[dict]]:
    from r1rm.core.distill import attempts_needed, score_attempt
    from r1rm.data.chat import record_messages
    from r1rm.engines.base import SamplingParams
    from r1rm.engines.cache import ResultCache, generate_cached, request_key

    b, t, g = cfg.build, cfg.build.teacher, cfg.generation
    prompt = cfg.data.prompt
    params = [
        SamplingParams(max_new_tokens=g.max_new_tokens, temperature=t.temperature if a == 0 else t.retry_temperature,
                       top_p=g.top_p, top_k=g.top_k, n=1, seed=cfg.seed + a)
        for a in range(t.attempts)
    ]
    cache = ResultCache(out / "teacher_cache.jsonl")
    engine = _LazyEngine(cfg)
    sft, rl, log = _Buckets(out, "sft.jsonl"), _Buckets(out, "rl.jsonl"), _Buckets(out, "teacher.jsonl")
    failures: list[dict] = []
    needed: Counter = Counter()
    stats = Counter()
    n_calls = 0
    task = bar.add_task("teacher", total=manifest["n_records"])
    try:
        for chunk in _chunks(_shard_records(out, manifest), _chunk_size(cfg, b.chunk_size)):
            labelled = [r for r in chunk if r.label is not None]
            stats["unlabelled_skipped"] += len(chunk) - len(labelled)
            messages = {r.uid: record_messages(r, prompt=prompt, image_root=out, video_max_frames=cfg.model.video_max_frames, max_pixels=cfg.model.max_pixels)
                        for r in labelled}
            attempts: dict[str, list[dict]] = {r.uid: [] for r in labelled}
            failed: dict[str, str] = {}
            active = labelled
            for a, p in enumerate(params):
                if not active:
                    break
                keys = {r.uid: request_key(messages[r.uid], p, _engine_id(cfg), purpose="teacher", attempt=a + 1) for r in active}
                results, errors, calls = generate_cached(engine, cache, [(keys[r.uid], messages[r.uid]) for r in active], p,
                                                         info={"purpose": "teacher", "attempt": a + 1})
                n_calls += calls
                still = []
                for r in active:
                    k = keys[r.uid]
                    if k in errors:
                        failed[r.uid] = errors[k]
                        continue
                    text = results[k][0]["text"]
                    s = score_attempt(text, r.label, prompt=prompt)
                    attempts[r.uid].append({"attempt": a + 1, "text": text, "answer": s.answer, "correct": s.correct,
                                            "format_ok": s.format_ok})
                    if not s.correct:
                        still.append(r)
                active = still
            for r in labelled:
                tries = attempts[r.uid]
                if r.uid in failed:
                    failures.append({"stage": "teacher", "uid": r.uid, "id": r.id, "attempt": len(tries) + 1,
                                     "error": failed[r.uid]})
                    stats["failed"] += 1
                    continue
                k = attempts_needed([x["correct"] for x in tries])
                bucket = str(k) if k is not None else "never"
                needed[bucket] += 1
                teacher_meta = {"attempts_needed": k, "attempts": t.attempts, "model": _engine_id(cfg)}
                log.add("all", {"uid": r.uid, "id": r.id, "status": "right" if k else "never", "attempts_needed": k,
                                "attempts": tries})
                if k is not None:
                    right = tries[k - 1]
                    if right["format_ok"]:
                        meta = {**r.meta, "target": right["text"], "prompt": prompt, "teacher": teacher_meta}
                        sft.add(bucket if b.curriculum else "all", dataclasses.replace(r, meta=meta).to_json())
                    else:
                        stats["right_bad_format"] += 1
                if k is None or k >= 2:
                    meta = {**r.meta, "prompt": prompt, "teacher": teacher_meta}
                    rl.add(bucket if b.curriculum else "all", dataclasses.replace(r, meta=meta).to_json())
            bar.advance(task, len(chunk))
    finally:
        cache.close()
        engine.close()
    order = ["all"] + [str(a) for a in range(1, t.attempts + 1)] + ["never"]
    n_sft, n_rl = sft.write(order), rl.write(order)
    log.write(["all"])
    info = {
        "model": _engine_id(cfg),
        "attempts": t.attempts,
        "temperature": t.temperature,
        "retry_temperature": t.retry_temperature,
        "attempts_needed": {k: needed[k] for k in [str(a) for a in range(1, t.attempts + 1)] + ["never"]},
        "failed": stats["failed"],
        "right_bad_format": stats["right_bad_format"],
        "unlabelled_skipped": stats["unlabelled_skipped"],
        "curriculum": b.curriculum,
        "sft": {"path": "sft.jsonl", "rows": n_sft},
        "rl": {"path": "rl.jsonl", "rows": n_rl},
        "complete": not failures,
    }
    return {**info, "_run": {"engine_requests_this_run": n_calls}}, failures


# ---------------------------------------------------------------- stage 4: CMKD
def _cmkd(cfg: Config, out: Path, manifest: dict, bar) -> tuple[dict, list[dict]]:
    from r1rm.core.distill import Chain, cmkd_target, select_chain
    from r1rm.data.chat import record_messages
    from r1rm.engines.base import SamplingParams
    from r1rm.engines.cache import ResultCache, generate_cached, request_key

    c, g = cfg.build.cmkd, cfg.generation
    params = SamplingParams(max_new_tokens=g.max_new_tokens, temperature=c.temperature, top_p=g.top_p, top_k=g.top_k,
                            n=c.n, seed=cfg.seed, logprobs=True)
    cache = ResultCache(out / "cmkd_cache.jsonl")
    engine = _LazyEngine(cfg)
    sft = _Buckets(out, "sft.jsonl")
    failures: list[dict] = []
    stats = Counter()
    n_calls = 0
    task = bar.add_task("cmkd", total=manifest["n_records"])
    try:
        for chunk in _chunks(_shard_records(out, manifest), _chunk_size(cfg, cfg.build.chunk_size)):
            jobs = []
            for r in chunk:
                as_caption = dataclasses.replace(r, modality="caption")
                msgs = record_messages(as_caption, prompt="msrl", image_root=out, video_max_frames=cfg.model.video_max_frames, max_pixels=cfg.model.max_pixels)
                jobs.append((request_key(msgs, params, _engine_id(cfg), purpose="cmkd"), msgs))
            results, errors, calls = generate_cached(engine, cache, jobs, params, info={"purpose": "cmkd"})
            n_calls += calls
            for r, (key, _) in zip(chunk, jobs, strict=True):
                if key in errors:
                    failures.append({"stage": "cmkd", "uid": r.uid, "id": r.id, "error": errors[key]})
                    stats["failed"] += 1
                    continue
                chains = [Chain(s["text"], s.get("mean_logprob")) for s in results[key]]
                sel = select_chain(chains, r.label)
                stats["chains"] += len(chains)
                stats["chains_bad_format"] += sel.n_bad_format
                stats["chains_wrong_answer"] += sel.n_wrong_answer
                stats["chains_without_logprob"] += sum(ch.mean_logprob is None for ch in chains)
                if sel.index is None:
                    stats[sel.reason] += 1
                    continue
                stats["selected"] += 1
                stats[f"target_from_{sel.target_source}"] += 1
                chain = chains[sel.index]
                meta = {**r.meta, "target": cmkd_target(r.caption, chain.text), "prompt": "msrl", "write_caption": True,
                        "cmkd": {"chains": len(chains), "kept": sel.n_kept, "mean_logprob": chain.mean_logprob,
                                 "target_source": sel.target_source, "model": _engine_id(cfg)}}
                sample = dataclasses.replace(r, modality="image" if r.images else "video", label=sel.target, meta=meta)
                sft.add("all", sample.to_json())
            bar.advance(task, len(chunk))
    finally:
        cache.close()
        engine.close()
    n = sft.write(["all"])
    keys = ("selected", "no_correct_chain", "no_valid_chain", "no_majority", "failed", "chains", "chains_bad_format",
            "chains_wrong_answer", "chains_without_logprob", "target_from_label", "target_from_majority")
    info = {"model": _engine_id(cfg), "n": c.n, "temperature": c.temperature, **{k: stats[k] for k in keys},
            "sft": {"path": "sft.jsonl", "rows": n}, "complete": not failures}
    return {**info, "_run": {"engine_requests_this_run": n_calls}}, failures


# ---------------------------------------------------------------- the command
def _print_summary(manifest: dict, out: Path, run_info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"build-data ({manifest['mode']}): {manifest['n_records']} records in {len(manifest['files'])} shard(s)")
    for col in ("source", "format", "read", "kept", "rejected", "duplicates", "ties", "label 1", "label 2"):
        table.add_column(col, justify="right" if col not in ("source", "format") else "left")
    for name, st in manifest["sources"].items():
        table.add_row(name, st["format"], str(st["read"]), str(st["kept"]), str(st["rejected"]), str(st["duplicates"]),
                      str(st["ties_dropped"]), str(st["label"].get("1", 0)), str(st["label"].get("2", 0)))
    console.print(table)
    if manifest["rejects_by_reason"]:
        console.print("rejects by reason: " + ", ".join(f"{k} {v}" for k, v in manifest["rejects_by_reason"].items())
                      + f" → {out / REJECTS}")
    if "replay" in manifest:
        console.print(f"replay: {manifest['replay']}")
    for stage in ("caption", "teacher", "cmkd"):
        if stage in manifest:
            shown = {k: v for k, v in manifest[stage].items() if k not in ("sft", "rl")}
            console.print(f"{stage}: {shown}")
    for stage, info in run_info.items():
        console.print(f"{stage} this run: {info}")


def run(cfg: Config) -> dict:
    from r1rm.runtime.progress import make_progress

    b = cfg.build
    if not b.sources:
        raise ConfigError("build.sources is empty: nothing to build",
                          fix="list sources in the recipe: build.sources: [{name, format, path}] (see recipes/tiny/build_data.yaml)")
    if b.mode == "cmkd" and cfg.data.prompt != "msrl":
        raise ConfigError("build.mode=cmkd samples MSRL chains but data.prompt is 'r1reward'", fix="set data.prompt=msrl")
    if b.mode == "teacher" and any(not s.require_label for s in b.sources):
        raise ConfigError("build.mode=teacher needs labels, but a source has require_label: false",
                          fix="drop require_label: false (the teacher's attempts are checked against the label)")
    out = Path(cfg.output_dir)
    save_config(cfg)
    key = clean_key(cfg)
    failures: list[dict] = []
    run_info: dict = {}
    with make_progress(enabled=cfg.runtime.progress, unit="rows") as bar:
        manifest = _reusable(out, key)
        if manifest is None:
            manifest, failures = _clean(cfg, out, key, bar)
            if "caption" in manifest:
                run_info["caption"] = {"engine_requests": manifest["caption"].pop("engine_requests_this_run", 0)}
        else:
            bar.console.print(f"clean stage: reusing the {len(manifest['files'])} shard(s) of {out / MANIFEST} (same sources and settings)")
        manifest["mode"] = b.mode
        for stage in ("teacher", "cmkd"):
            manifest.pop(stage, None)
        if manifest["n_records"] == 0:
            raise DataError("no record is left after cleaning", fix=f"see {out / REJECTS}")
        if b.mode in ("teacher", "cmkd") and not failures:
            stage_fn = _teacher if b.mode == "teacher" else _cmkd
            info, stage_failures = stage_fn(cfg, out, manifest, bar)
            run_info[b.mode] = info.pop("_run")
            manifest[b.mode] = info
            failures += stage_failures
    manifest["complete"] = not failures
    if failures:
        _write_jsonl(out / FAILURES, failures)
    elif (out / FAILURES).exists():
        (out / FAILURES).unlink()
    _write_json(out / MANIFEST, manifest)
    _print_summary(manifest, out, run_info)
    if failures:
        stages = Counter(f["stage"] for f in failures)
        raise IncompleteRunError(
            f"build-data incomplete: {len(failures)} model call(s) failed ({', '.join(f'{k}: {v}' for k, v in stages.items())}); "
            f"listed in {out / FAILURES}; manifest.json says complete: false",
            fix="rerun the same command: cached results are reused and only the failed calls are made again",
        )
    return manifest


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    from r1rm.data.records import write_jsonl_atomic

    write_jsonl_atomic(path, rows)

