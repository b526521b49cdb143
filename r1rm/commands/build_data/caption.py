"""Mode caption (MSRL stage 2): every image / video context and visual response of a main-role
record gets its caption — the record's own, or the captioner model's — and the record turns into
caption modality before the shards are written (r1rm.commands.build_data.clean runs these steps)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from r1rm.commands.build_data.stage import LazyEngine, chunk_size, chunks, engine_id
from r1rm.config import Config


def _caption_params(cfg: Config):
    from r1rm.engines.base import SamplingParams

    return SamplingParams(max_new_tokens=cfg.generation.max_new_tokens, temperature=0.0, n=1, seed=cfg.seed)


def caption_jobs(cfg: Config, rec, out: Path) -> list[tuple[str, str, list[dict]]]:
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
        jobs.append((slot, request_key(messages, params, engine_id(cfg), purpose="caption"), messages))

    if rec.modality in ("image", "video") and (c.source == "model" or not (rec.caption and rec.caption.strip())):
        job("context", images=list(rec.images), video=rec.video if rec.modality == "video" else None)
    for slot, r in (("response1", rec.response1), ("response2", rec.response2)):
        if r.kind == "image":
            job(slot, images=[r.visual])
        elif r.kind == "video":
            job(slot, video=r.visual)
    return jobs


def run_captioner(cfg: Config, out: Path, job_messages: dict[str, list[dict]], bar) -> tuple[dict, dict, dict]:
    """Captions for every job ({key: text}), info for the manifest, and {key: error} for failed calls."""
    from r1rm.engines.cache import ResultCache, generate_cached

    captions: dict[str, str] = {}
    failures: dict[str, str] = {}
    info = {"source": cfg.build.caption.source, "generated_needed": len(job_messages), "model": None, "empty": 0}
    if not job_messages:
        return captions, info, failures
    info["model"] = engine_id(cfg)
    cache = ResultCache(out / "caption_cache.jsonl")
    engine = LazyEngine(cfg)
    task = bar.add_task("caption", total=len(job_messages))
    n_calls = 0
    try:
        for chunk in chunks(iter(job_messages.items()), chunk_size(cfg, cfg.build.chunk_size)):
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


def uncaptioned(jobs_by_record: dict[int, list[tuple[str, str]]], captions: dict[str, str],
                errors: dict[str, str]) -> tuple[dict[int, str], list[int]]:
    """The records (by spool offset) the captioner could not serve: {offset: error} for those with a
    failed call (asked again by a rerun), and the offsets given an empty caption (dropped as data)."""
    failed: dict[int, str] = {}
    empty: list[int] = []
    for off, jobs in jobs_by_record.items():
        keys = [k for _, k in jobs]
        error = next((errors[k] for k in keys if k in errors), None)
        if error is not None:
            failed[off] = error
        elif any(k not in captions for k in keys):
            empty.append(off)
    return failed, empty


def to_caption(rec, jobs: list[tuple[str, str]], captions: dict[str, str]):
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


def name_outputs(rec):
    """Described generated outputs read "Image A: …" / "Image B: …" in their final order."""
    from r1rm.data.records import Response

    noun = rec.meta.get("described_outputs")
    if not noun or rec.response1.kind != "text":
        return rec
    meta = {k: v for k, v in rec.meta.items() if k != "described_outputs"}
    return dataclasses.replace(rec, response1=Response("text", text=f"{noun} A: {rec.response1.text}"),
                               response2=Response("text", text=f"{noun} B: {rec.response2.text}"), meta=meta)
