"""Mode cmkd (MSRL cross-modal distillation): the caption-trained model samples chains on the caption
version of each record; the most confident right (or majority) chain becomes the image-modality
record's target `<caption>…</caption>` + chain in sft.jsonl (r1rm.core.distill)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

from r1rm.commands.build_data.stage import Buckets, LazyEngine, chunk_size, chunks, engine_id, shard_records
from r1rm.config import Config

# the counters the manifest's `cmkd` block reports, in its order
_REPORTED = ("selected", "no_correct_chain", "no_valid_chain", "no_majority", "failed", "chains", "chains_bad_format",
             "chains_wrong_answer", "chains_without_logprob", "target_from_label", "target_from_majority")


def cmkd(cfg: Config, out: Path, manifest: dict, bar) -> tuple[dict, list[dict]]:
    """Distil the shards; return the manifest's `cmkd` block (with `_run`: this run's requests) and the failed calls."""
    from r1rm.data.chat import record_messages
    from r1rm.engines.base import SamplingParams
    from r1rm.engines.cache import ResultCache, generate_cached, request_key

    c, g = cfg.build.cmkd, cfg.generation
    params = SamplingParams(max_new_tokens=g.max_new_tokens, temperature=c.temperature, top_p=g.top_p, top_k=g.top_k,
                            n=c.n, seed=cfg.seed, logprobs=True)
    cache = ResultCache(out / "cmkd_cache.jsonl")
    engine = LazyEngine(cfg)
    sft = Buckets(out, "sft.jsonl")
    failures: list[dict] = []
    stats = Counter()
    n_calls = 0
    task = bar.add_task("cmkd", total=manifest["n_records"])
    try:
        for chunk in chunks(shard_records(out, manifest), chunk_size(cfg, cfg.build.chunk_size)):
            jobs = []
            for r in chunk:
                as_caption = dataclasses.replace(r, modality="caption")
                msgs = record_messages(as_caption, prompt="msrl", image_root=out, video_max_frames=cfg.model.video_max_frames, max_pixels=cfg.model.max_pixels)
                jobs.append((request_key(msgs, params, engine_id(cfg), purpose="cmkd"), msgs))
            results, errors, calls = generate_cached(engine, cache, jobs, params, info={"purpose": "cmkd"})
            n_calls += calls
            for r, (key, _) in zip(chunk, jobs, strict=True):
                if key in errors:
                    failures.append({"stage": "cmkd", "uid": r.uid, "id": r.id, "error": errors[key]})
                    stats["failed"] += 1
                    continue
                sample = _distilled(cfg, r, results[key], stats)
                if sample is not None:
                    sft.add("all", sample.to_json())
            bar.advance(task, len(chunk))
    finally:
        cache.close()
        engine.close()
    n = sft.write(["all"])
    info = {"model": engine_id(cfg), "n": c.n, "temperature": c.temperature, **{k: stats[k] for k in _REPORTED},
            "sft": {"path": "sft.jsonl", "rows": n}, "complete": not failures}
    return {**info, "_run": {"engine_requests_this_run": n_calls}}, failures


def _distilled(cfg: Config, r, samples: list[dict], stats: Counter):
    """The record in its image modality with the selected chain as target, or None (no chain selected)."""
    from r1rm.core.distill import Chain, cmkd_target, select_chain

    chains = [Chain(s["text"], s.get("mean_logprob")) for s in samples]
    sel = select_chain(chains, r.label)
    stats["chains"] += len(chains)
    stats["chains_bad_format"] += sel.n_bad_format
    stats["chains_wrong_answer"] += sel.n_wrong_answer
    stats["chains_without_logprob"] += sum(ch.mean_logprob is None for ch in chains)
    if sel.index is None:
        stats[sel.reason] += 1
        return None
    stats["selected"] += 1
    stats[f"target_from_{sel.target_source}"] += 1
    chain = chains[sel.index]
    meta = {**r.meta, "target": cmkd_target(r.caption, chain.text), "prompt": "msrl", "write_caption": True,
            "cmkd": {"chains": len(chains), "kept": sel.n_kept, "mean_logprob": chain.mean_logprob,
                     "target_source": sel.target_source, "model": engine_id(cfg)}}
    return dataclasses.replace(r, modality="image" if r.images else "video", label=sel.target, meta=meta)
