"""Mode teacher (R1-Reward cold start): the model judges every shard record, retrying until it
matches the label; right, well-formed traces go to sft.jsonl, hard and never-right records to rl.jsonl."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

from r1rm.commands.build_data.stage import Buckets, LazyEngine, chunk_size, chunks, engine_id, shard_records
from r1rm.config import Config


def teacher(cfg: Config, out: Path, manifest: dict, bar) -> tuple[dict, list[dict]]:
    """Judge the shards; return the manifest's `teacher` block (with `_run`: this run's requests) and the failed calls."""
    from r1rm.engines.cache import ResultCache

    b, t = cfg.build, cfg.build.teacher
    params = _attempt_params(cfg)
    cache = ResultCache(out / "teacher_cache.jsonl")
    engine = LazyEngine(cfg)
    sft, rl, log = Buckets(out, "sft.jsonl"), Buckets(out, "rl.jsonl"), Buckets(out, "teacher.jsonl")
    failures: list[dict] = []
    needed: Counter = Counter()
    stats = Counter()
    n_calls = 0
    task = bar.add_task("teacher", total=manifest["n_records"])
    try:
        for chunk in chunks(shard_records(out, manifest), chunk_size(cfg, b.chunk_size)):
            labelled = [r for r in chunk if r.label is not None]
            stats["unlabelled_skipped"] += len(chunk) - len(labelled)
            attempts, failed, calls = _judge(cfg, out, engine, cache, labelled, params)
            n_calls += calls
            for r in labelled:
                if r.uid in failed:
                    failures.append({"stage": "teacher", "uid": r.uid, "id": r.id, "attempt": len(attempts[r.uid]) + 1,
                                     "error": failed[r.uid]})
                    stats["failed"] += 1
                    continue
                _sort(cfg, r, attempts[r.uid], sft, rl, log, needed, stats)
            bar.advance(task, len(chunk))
    finally:
        cache.close()
        engine.close()
    order = ["all"] + [str(a) for a in range(1, t.attempts + 1)] + ["never"]
    n_sft, n_rl = sft.write(order), rl.write(order)
    log.write(["all"])
    info = {
        "model": engine_id(cfg),
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


def _attempt_params(cfg: Config) -> list:
    """Sampling of each attempt: the first at build.teacher.temperature, retries at retry_temperature
    seeded with seed + attempt (a greedy retry would only repeat itself)."""
    from r1rm.engines.base import SamplingParams

    t, g = cfg.build.teacher, cfg.generation
    return [
        SamplingParams(max_new_tokens=g.max_new_tokens, temperature=t.temperature if a == 0 else t.retry_temperature,
                       top_p=g.top_p, top_k=g.top_k, n=1, seed=cfg.seed + a)
        for a in range(t.attempts)
    ]


def _judge(cfg: Config, out: Path, engine, cache, records: list, params: list) -> tuple[dict[str, list[dict]], dict[str, str], int]:
    """Attempts per record until one is right: ({uid: attempts}, {uid: error of a failed call}, requests made)."""
    from r1rm.core.distill import score_attempt
    from r1rm.data.chat import record_messages
    from r1rm.engines.cache import generate_cached, request_key

    prompt = cfg.data.prompt
    messages = {r.uid: record_messages(r, prompt=prompt, image_root=out, video_max_frames=cfg.model.video_max_frames,
                                       max_pixels=cfg.model.max_pixels)
                for r in records}
    attempts: dict[str, list[dict]] = {r.uid: [] for r in records}
    failed: dict[str, str] = {}
    n_calls = 0
    active = records
    for a, p in enumerate(params):
        if not active:
            break
        keys = {r.uid: request_key(messages[r.uid], p, engine_id(cfg), purpose="teacher", attempt=a + 1) for r in active}
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
    return attempts, failed, n_calls


def _sort(cfg: Config, r, tries: list[dict], sft: Buckets, rl: Buckets, log: Buckets, needed: Counter,
          stats: Counter) -> None:
    """Log the record's attempts; a right, well-formed trace goes to sft, a record needing ≥ 2
    attempts (or never right) to rl — bucketed by attempts needed when build.curriculum."""
    from r1rm.core.distill import attempts_needed

    b, prompt = cfg.build, cfg.data.prompt
    k = attempts_needed([x["correct"] for x in tries])
    bucket = str(k) if k is not None else "never"
    needed[bucket] += 1
    teacher_meta = {"attempts_needed": k, "attempts": b.teacher.attempts, "model": engine_id(cfg)}
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
