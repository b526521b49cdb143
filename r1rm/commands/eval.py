"""`r1rm eval`: score a generative reward model on a benchmark, in both orders of every pair.

Reads the benchmark in its own format (`eval.benchmark`, `eval.path`), shows each pair with
the chosen response first and second (`eval.orders`), draws `eval.k` samples per order
(greedy when k = 1, temperature 1.0 otherwise unless `eval.temperature` says), and writes:

- `generations.jsonl`: one record per sample (r1rm.data.generations), appended and flushed
  as it goes: a rerun resumes where it stopped, with no duplicate and no missing record;
- `metrics.json` and `report.md` (METHOD §5: per order, both-orders mean and strict,
  per category, macro, Acc+ / seven-column overall where the benchmark defines them).

Several processes (`torchrun` / `accelerate launch`) split the items: each writes its own
`generations.rank{R}.jsonl`; rank 0 merges them once every rank is done.
`--from-generations FILE` recomputes the metrics from a generations file without a model.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from r1rm.config import Config, save_config
from r1rm.data.files import JsonlAppender, write_json_atomic, write_jsonl_atomic, write_text_atomic
from r1rm.data.generations import GENERATIONS, generation_row, merge_rank_files, rank_file, read_generations
from r1rm.errors import ConfigError, IncompleteRunError


def eval_path(cfg: Config) -> str:
    path = cfg.eval.path or (cfg.data.eval[0] if cfg.data.eval else None)
    if not path:
        raise ConfigError("no benchmark file to evaluate", fix="set eval.path=FILE (or data.eval=[FILE])")
    return path


def eval_temperature(cfg: Config) -> float:
    if cfg.eval.temperature is not None:
        return cfg.eval.temperature
    return 1.0 if cfg.eval.k > 1 else 0.0


def write_metrics(out: Path, metrics: dict) -> None:
    from r1rm.core.metrics import format_report

    write_json_atomic(out / "metrics.json", metrics)
    write_text_atomic(out / "report.md", format_report(metrics))


def print_metrics(metrics: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{metrics['benchmark']}: {metrics['n_items']} items")
    table.add_column("accuracy")
    table.add_column("overall", justify="right")
    table.add_column("macro", justify="right")
    cats = sorted({c for b in metrics["accuracy"].values() for c in b["per_category"]})
    for c in cats:
        table.add_column(c, justify="right")
    for name, block in metrics["accuracy"].items():
        macro = block.get("macro")
        table.add_row(
            name,
            "-" if block.get("overall") is None else f"{100 * block['overall']:.2f}",
            "-" if macro is None else f"{100 * macro:.2f}",
            *[f"{100 * block['per_category'][c]['accuracy']:.2f}" if c in block["per_category"] else "-" for c in cats],
        )
    console = Console()
    console.print(table)
    def pct(key: str) -> str:
        v = metrics.get(key)
        return "-" if v is None else f"{100 * v:.1f}%"

    console.print(
        f"parse failures {pct('parse_fail_rate')} · picks Response 1 {pct('first_choice_rate')} · "
        f"position consistency {pct('position_consistency')} · answers by fallback {pct('fallback_rate')}"
    )


def run(cfg: Config, *, from_generations: str | os.PathLike | None = None) -> dict:
    from r1rm.core.metrics import compute_metrics

    out = Path(cfg.output_dir)
    if from_generations is not None:
        metrics = compute_metrics(read_generations(from_generations), benchmark=cfg.eval.benchmark)
        save_config(cfg)
        write_metrics(out, metrics)
        print_metrics(metrics)
        return metrics

    from r1rm.engines import check_engine
    from r1rm.runtime.dist import process_state

    identity = _checked_identity(cfg, out)  # generations already here must be this eval's (before any write)
    from r1rm.runtime.tracking import resolve

    resolve(cfg.runtime.report_to)  # an unknown / uninstalled tracker stops the run now, not after generating
    # the model and the benchmark are checked before output_dir is made: a failed start leaves no folder
    check_engine(cfg)
    records, root, skipped = _read_items(cfg)
    save_config(cfg)
    if skipped:
        write_jsonl_atomic(out / "skipped.jsonl", skipped)
    state = process_state(cfg.runtime.device)
    rank, world = state.process_index, state.num_processes
    gen_path = out / (GENERATIONS if world == 1 else rank_file(rank))
    if state.is_main_process:
        write_json_atomic(out / "run.json", identity)
    params = _sampling(cfg)
    writer = JsonlAppender(gen_path, key="key")
    todo = _pending(cfg, records[rank::world], writer)
    n_total = len(records[rank::world]) * len(cfg.eval.orders)
    failures, speedups = (_generate(cfg, todo, writer, params, root=root, n_total=n_total, rank=rank, world=world)
                          if todo else ([], None))
    writer.close()
    if failures:
        write_jsonl_atomic(out / (f"failures.rank{rank}.jsonl" if world > 1 else "failures.jsonl"), failures)
    if world > 1:
        state.wait_for_everyone()
        if not state.is_main_process:
            return {}
        gen_path = merge_rank_files(out, world)
    return _score(cfg, out, records, gen_path, skipped=skipped, failures=failures, params=params, speedups=speedups)


def _checked_identity(cfg: Config, out: Path) -> dict:
    """What the generations belong to (run.json); refuses an output_dir holding another eval's."""
    from r1rm.data.training_sets import data_fingerprint
    from r1rm.runtime.checkpoint import check_same_eval, identity_of, model_stamp

    identity = {**identity_of(cfg.model_dump(mode="json"), "eval"), "model.stamp": model_stamp(cfg.model.path),
                "eval.data.sha256": data_fingerprint(_eval_files(cfg))}
    check_same_eval(out, identity, [out / GENERATIONS, *out.glob(rank_file("*"))])
    return identity


def _eval_files(cfg: Config) -> list[str]:
    """The files behind eval.path (a hub id or snapshot folder resolves to its data files), for the fingerprint."""
    from r1rm.data.hub import resolve_data

    path = eval_path(cfg)
    if cfg.eval.benchmark == "canonical":
        return [path]
    return [str(f) for f in resolve_data(path, subset=cfg.eval.subset, split=cfg.eval.split).files]


def _read_items(cfg: Config) -> tuple[list, str | None, list]:
    """The benchmark's records, the folder media resolve against, and the skipped items."""
    import shutil

    from r1rm.data.benchmarks import load_benchmark
    from r1rm.errors import R1RMError

    path = eval_path(cfg)
    skipped: list = []
    # embedded images and decoded video frames go under the run's folder, never next to the data
    out = Path(cfg.output_dir)
    existed = out.exists()
    try:
        bench = load_benchmark(
            cfg.eval.benchmark, path, image_root=cfg.eval.image_root or cfg.data.image_root, check_media=True,
            skip_missing_media=cfg.eval.skip_missing_media, limit=cfg.eval.limit, skipped=skipped, subset=cfg.eval.subset,
            split=cfg.eval.split, media_dir=out / "media", video_max_frames=cfg.model.video_max_frames,
        )
    except R1RMError:
        if not existed:  # a failed start leaves no folder (media written before the bad row go too)
            shutil.rmtree(out, ignore_errors=True)
        raise
    return bench.records, bench.root, skipped


def _sampling(cfg: Config):
    from r1rm.engines.base import SamplingParams

    return SamplingParams(
        max_new_tokens=cfg.generation.max_new_tokens,
        temperature=eval_temperature(cfg),
        top_p=cfg.generation.top_p,
        top_k=cfg.generation.top_k,
        n=cfg.eval.k,
        seed=cfg.seed,
    )


def _pending(cfg: Config, mine: list, writer: JsonlAppender) -> list[tuple]:
    """(record, order, missing sample indices) for every (item, order) of this process not yet written."""
    todo = []
    for rec in mine:
        for order in cfg.eval.orders:
            missing = [s for s in range(cfg.eval.k) if (rec.uid, order, s) not in writer.done]
            if missing:
                todo.append((rec, order, missing))
    return todo


def _generate(cfg: Config, todo: list, writer: JsonlAppender, params, *, root, n_total: int, rank: int,
              world: int) -> tuple[list[dict], dict | None]:
    """Generate what is missing, appending each sample as it comes; engine failures are returned, not written,
    with the engine's speed-ups (on, or off and why: r1rm.models.families)."""
    from r1rm.data.chat import oriented, record_messages
    from r1rm.engines import make_engine
    from r1rm.engines.base import Request
    from r1rm.runtime.progress import make_progress

    failures: list[dict] = []
    engine = make_engine(cfg)
    chunk = max(1, cfg.engine.batch_size) * 4
    with make_progress(enabled=cfg.runtime.progress, unit="items") as bar:
        task = bar.add_task(f"eval {cfg.eval.benchmark}" + (f" [rank {rank}/{world}]" if world > 1 else ""),
                            total=n_total, completed=n_total - len(todo))
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            requests = [
                Request(record_messages(oriented(rec, order), prompt=cfg.data.prompt, image_root=root,
                                        video_max_frames=cfg.model.video_max_frames, max_pixels=cfg.model.max_pixels), key=i)
                for i, (rec, order, _) in enumerate(part)
            ]
            # the bar moves as each engine batch (hf) or request (openai) finishes, not per chunk
            results = engine.generate(requests, params, progress=lambda k: bar.advance(task, k))
            for (rec, order, missing), samples in zip(part, results, strict=True):
                for s in missing:
                    if samples[s].error is not None:
                        # an engine failure is not an answer: leave the slot open for a rerun
                        failures.append({"key": [rec.uid, order, s], "error": samples[s].error})
                        continue
                    writer.append(generation_row(rec, order, s, samples[s], allow_fallback=cfg.eval.answer_fallback))
    engine.close()
    return failures, getattr(engine, "speedups", None)


def _score(cfg: Config, out: Path, records: list, gen_path: Path, *, skipped: list, failures: list, params,
           speedups: dict | None = None) -> dict:
    """metrics.json / report.md from every generation of these records; an incomplete eval raises after writing."""
    from r1rm.core.metrics import compute_metrics

    k = cfg.eval.k
    rows = read_generations(gen_path, allow_empty=True)
    wanted = {rec.uid for rec in records}
    rows = [r for r in rows if r["uid"] in wanted and r["order"] in cfg.eval.orders and r["sample"] < k]
    metrics = compute_metrics(rows, benchmark=cfg.eval.benchmark)
    expected = len(records) * len(cfg.eval.orders) * k
    metrics["complete"] = len(rows) == expected
    metrics["n_missing_generations"] = expected - len(rows)
    metrics["n_skipped"] = len(skipped)
    metrics["skipped_by_reason"] = dict(Counter(r.reason for r in skipped))
    metrics["sampling"] = {"k": k, "temperature": params.temperature, "max_new_tokens": params.max_new_tokens}
    if speedups is not None:  # the engine of this invocation (none when every generation was already written)
        metrics["speedups"] = speedups
    write_metrics(out, metrics)
    print_metrics(metrics)
    if metrics["complete"]:  # an incomplete eval's rerun logs the whole result
        from r1rm.runtime.tracking import log_eval

        log_eval(cfg, out, metrics)
    if not metrics["complete"]:
        raise IncompleteRunError(
            f"eval incomplete: {metrics['n_missing_generations']} of {expected} generations are missing "
            f"({len(failures)} engine failures listed in {out}/failures.jsonl"
            + (f", the first: {failures[0]['error']}" if failures else "") + "); metrics.json says complete: false",
            fix="rerun the same command: it generates only what is missing",
        )
    return metrics
