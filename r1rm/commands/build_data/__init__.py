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

One module per stage: `clean` (1, and 2 in mode caption, with `caption`), `teacher` (3),
`cmkd` (4); `manifest` names the files a run writes and decides when the shards are reused,
`stage` holds what the model-driven stages share (the lazily built engine, chunks, buckets).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from r1rm.commands.build_data.clean import clean
from r1rm.commands.build_data.cmkd import cmkd
from r1rm.commands.build_data.manifest import FAILURES, MANIFEST, REJECTS, clean_key, reusable
from r1rm.commands.build_data.teacher import teacher
from r1rm.config import Config, save_config
from r1rm.data.files import write_json_atomic, write_jsonl_atomic
from r1rm.errors import ConfigError, DataError, IncompleteRunError


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


def _check_config(cfg: Config) -> None:
    b = cfg.build
    if not b.sources:
        raise ConfigError("build.sources is empty: nothing to build",
                          fix="list sources in the recipe: build.sources: [{name, format, path}] (see recipes/tiny/build_data.yaml)")
    if b.mode == "cmkd" and cfg.data.prompt != "msrl":
        raise ConfigError("build.mode=cmkd samples MSRL chains but data.prompt is 'r1reward'", fix="set data.prompt=msrl")
    if b.mode == "teacher" and any(not s.require_label for s in b.sources):
        raise ConfigError("build.mode=teacher needs labels, but a source has require_label: false",
                          fix="drop build.sources[].require_label: false (the teacher's attempts are checked against the label)")


def _check_inputs(cfg: Config) -> None:
    """Every source's files, and the model when the mode calls one (settings and config, no weights)."""
    from r1rm.data.sources import check_source_paths
    from r1rm.engines import check_engine

    b = cfg.build
    for src in b.sources:
        check_source_paths(src)
    if b.mode in ("teacher", "cmkd") or (b.mode == "caption" and b.caption.source == "model"):
        check_engine(cfg)


def run(cfg: Config) -> dict:
    """Clean the sources (or reuse the shards of an identical earlier clean), run the mode's model
    stage, write manifest.json (and failures.jsonl); exit 2 when a model call failed."""
    from r1rm.runtime.progress import make_progress

    _check_config(cfg)
    b = cfg.build
    out = Path(cfg.output_dir)
    if not out.exists():
        _check_inputs(cfg)  # a failed start leaves no folder behind
    save_config(cfg)
    key = clean_key(cfg)
    failures: list[dict] = []
    run_info: dict = {}
    with make_progress(enabled=cfg.runtime.progress, unit="rows") as bar:
        manifest = reusable(out, key)
        if manifest is None:
            manifest, failures = clean(cfg, out, key, bar)
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
            stage_fn = teacher if b.mode == "teacher" else cmkd
            info, stage_failures = stage_fn(cfg, out, manifest, bar)
            run_info[b.mode] = info.pop("_run")
            manifest[b.mode] = info
            failures += stage_failures
    manifest["complete"] = not failures
    if failures:
        write_jsonl_atomic(out / FAILURES, failures)
    elif (out / FAILURES).exists():
        (out / FAILURES).unlink()
    write_json_atomic(out / MANIFEST, manifest, ensure_ascii=False)
    _print_summary(manifest, out, run_info)
    if failures:
        stages = Counter(f["stage"] for f in failures)
        raise IncompleteRunError(
            f"build-data incomplete: {len(failures)} model call(s) failed ({', '.join(f'{k}: {v}' for k, v in stages.items())}); "
            f"listed in {out / FAILURES}; manifest.json says complete: false",
            fix="rerun the same command: cached results are reused and only the failed calls are made again",
        )
    return manifest
