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

    # the environment first (output_dir writable, the checkpoint whole, max_new_tokens within its positions),
    # then the model and the benchmark, all before output_dir is made: a failed start leaves no folder
    eval_path(cfg)  # a config mistake (no benchmark named) is said before the environment's
    check_engine(cfg)
    identity = _checked_identity(cfg, out)  # generations already here must be this eval's (before any write)
    from r1rm.runtime.tracking import resolve

    resolve(cfg.runtime.report_to)  # an unknown / uninstalled tracker stops the run now, not after generating
    records, root, skipped = _read_items(cfg)
    identity = _checked_media(out, identity, records, root)  # the images the generations were drawn from
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
    _say_repaired(writer)
    todo = _pending(cfg, records[rank::world], writer)
    n_total = len(records[rank::world]) * len(cfg.eval.orders)
    failures, speedups, stats = (_generate(cfg, todo, writer, params, root=root, n_total=n_total, rank=rank,
                                           world=world) if todo else ([], None, None))
    writer.close()
    _write_rank_outcome(out, rank, world, failures, stats)
    failures_where = str(out / "failures.jsonl")
    if world > 1:
        state.wait_for_everyone()
        if not state.is_main_process:
            return {}
        gen_path = merge_rank_files(out, world)
        failures, stats = _reduce_ranks(out, world)  # every process's failures count, not rank 0's alone
        failures_where = f"{out}/failures.rank*.jsonl"
    return _score(cfg, out, records, gen_path, skipped=skipped, failures=failures, params=params, speedups=speedups,
                  repaired=len(writer.repaired), engine_stats=stats, failures_where=failures_where)


def _write_rank_outcome(out: Path, rank: int, world: int, failures: list[dict], stats: dict | None) -> None:
    """This process's engine failures (failures.jsonl, or failures.rank{R}.jsonl with several processes) and,
    with several, its engine counters (engine.rank{R}.json) for rank 0 to add up; a run that left nothing to
    retry (or made no engine) supersedes an earlier run's file."""
    failures_path = out / (f"failures.rank{rank}.jsonl" if world > 1 else "failures.jsonl")
    if failures:
        write_jsonl_atomic(failures_path, failures)
    else:
        failures_path.unlink(missing_ok=True)
    if world > 1:
        stats_path = out / f"engine.rank{rank}.json"
        if stats is not None:
            write_json_atomic(stats_path, stats)
        else:
            stats_path.unlink(missing_ok=True)


def _reduce_ranks(out: Path, world: int) -> tuple[list[dict], dict | None]:
    """Every process's engine failures (failures.rank*.jsonl) and engine counters (engine.rank*.json, summed;
    None when no process made an engine), read by rank 0 after the barrier."""
    from r1rm.data.files import json_lines, read_json

    failures: list[dict] = []
    stats: dict | None = None
    for r in range(world):
        path = out / f"failures.rank{r}.jsonl"
        if path.is_file():
            failures += [row for _, _, row in json_lines(path) if isinstance(row, dict)]
        path = out / f"engine.rank{r}.json"
        if path.is_file():
            part = read_json(path, fix=f"delete {path} and rerun")
            stats = _add_stats(stats, part) if isinstance(part, dict) else stats
    return failures, stats


def _add_stats(total: dict | None, part: dict) -> dict:
    """Engine counters added up: numbers summed, `failures_by_kind` summed per kind."""
    total = dict(total or {})
    for key, value in part.items():
        if isinstance(value, dict):
            total[key] = dict(Counter(total.get(key, {})) + Counter(value))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            total[key] = total.get(key, 0) + value
    return total


def _earlier(out: Path, key: str) -> dict | None:
    """What an earlier invocation of this eval recorded under `key` in metrics.json (None: nothing)."""
    from r1rm.data.files import LineError, loads_json

    try:
        earlier = loads_json((out / "metrics.json").read_bytes(), allow_nan=True)
    except (OSError, LineError):
        return None
    return earlier.get(key) if isinstance(earlier, dict) else None


def _say_repaired(writer: JsonlAppender) -> None:
    """Say (stderr) what a kill left cut at the end of the output that opening it dropped: it is written again."""
    import sys

    for line in writer.repaired:
        sys.stderr.write(f"repaired {line}; it is written again\n")


def _checked_identity(cfg: Config, out: Path) -> dict:
    """What the generations belong to (run.json); refuses an output_dir holding another eval's."""
    from r1rm.data.training_sets import data_fingerprint
    from r1rm.runtime.checkpoint import check_same_eval, identity_of, model_stamp

    identity = {**identity_of(cfg.model_dump(mode="json"), "eval"), "model.stamp": model_stamp(cfg.model.path),
                "eval.data.sha256": data_fingerprint(_eval_files(cfg))}
    check_same_eval(out, identity, [out / GENERATIONS, *out.glob(rank_file("*"))])
    return identity


def _checked_media(out: Path, identity: dict, records: list, root) -> dict:
    """The identity with the media the records refer to (content stamps, and where they resolved);
    refuses an output_dir whose generations were drawn from other images under the same names."""
    from r1rm.runtime.checkpoint import MEDIA, MEDIA_ROOT, check_same_eval, earlier_media, media_stamps

    # the main process stamps (and run.json records) the media; the others, which neither write run.json nor
    # need to refuse twice, skip reading them. A resume re-reads only files whose size or mtime changed.
    main = os.environ.get("RANK", "0") == "0"
    stamps = media_stamps(records, root, earlier=earlier_media(out)) if main else {}
    identity = {**identity, MEDIA_ROOT: str(root) if root is not None else None, MEDIA: stamps}
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
            max_pixels=cfg.model.max_pixels,  # the media gate refuses images above 64 x this before decoding
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
              world: int) -> tuple[list[dict], dict | None, dict | None]:
    """Generate what is missing, appending each sample as it comes; engine failures are returned, not written,
    with the engine's speed-ups (on, or off and why: r1rm.models.families) and its counters (an endpoint's
    requests, retries and failures by kind: OpenAIEngine.stats; None for an engine without them)."""
    from r1rm.data.chat import oriented, record_messages
    from r1rm.engines import make_engine
    from r1rm.engines.base import Request
    from r1rm.runtime.checkpoint import kill_point
    from r1rm.runtime.progress import make_progress

    failures: list[dict] = []
    engine = make_engine(cfg)
    kill_point("load")
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
                    kill_point("record")  # the kill-and-resume test's moments (no effect unless _R1RM_TEST_KILL_AT says)
    engine.close()
    stats = engine.stats() if callable(getattr(engine, "stats", None)) else None
    return failures, getattr(engine, "speedups", None), stats


def _score(cfg: Config, out: Path, records: list, gen_path: Path, *, skipped: list, failures: list, params,
           speedups: dict | None = None, repaired: int = 0, engine_stats: dict | None = None,
           failures_where: str = "") -> dict:
    """metrics.json / report.md from every generation of these records; an incomplete eval raises after writing."""
    from r1rm.core.metrics import compute_metrics

    k = cfg.eval.k
    rows = read_generations(gen_path, allow_empty=True)
    wanted = {rec.uid for rec in records}
    rows = [r for r in rows if r["uid"] in wanted and r["order"] in cfg.eval.orders and r["sample"] < k]
    # this invocation's engine failures count in error_rate: their samples are not in the generations
    metrics = compute_metrics(rows, benchmark=cfg.eval.benchmark, n_failures=len(failures))
    metrics["n_engine_failures"] = len(failures)
    metrics["engine_failures_by_kind"] = dict(Counter(f["error"].split(":", 1)[0] for f in failures))
    expected = len(records) * len(cfg.eval.orders) * k
    metrics["complete"] = len(rows) == expected
    metrics["n_missing_generations"] = expected - len(rows)
    metrics["n_skipped"] = len(skipped)
    metrics["n_repaired_lines"] = repaired  # a last line a kill cut, dropped and written again
    metrics["skipped_by_reason"] = dict(Counter(r.reason for r in skipped))
    metrics["sampling"] = {"k": k, "temperature": params.temperature, "max_new_tokens": params.max_new_tokens}
    # no engine this invocation (every generation already written): the run's record stays
    speedups = speedups if speedups is not None else _earlier(out, "speedups")
    if speedups is not None:
        metrics["speedups"] = speedups
    engine_stats = engine_stats if engine_stats is not None else _earlier(out, "engine")
    if engine_stats is not None:  # an endpoint's requests, retries, failures by kind (this invocation's)
        metrics["engine"] = engine_stats
    write_metrics(out, metrics)
    from r1rm.runtime.checkpoint import kill_point

    kill_point("end")  # the kill-and-resume test's "after the end" moment
    print_metrics(metrics)
    if metrics["complete"]:  # an incomplete eval's rerun logs the whole result
        from r1rm.runtime.tracking import log_eval

        log_eval(cfg, out, metrics)
    if not metrics["complete"]:
        raise IncompleteRunError(
            f"eval incomplete: {metrics['n_missing_generations']} of {expected} generations are missing "
            f"({len(failures)} engine failures listed in {failures_where or out / 'failures.jsonl'}"
            + (f", the first: {failures[0]['error']}" if failures else "") + "); metrics.json says complete: false",
            fix="shorten those items or lower generation.max_new_tokens (a prompt_too_long failure comes back on "
            "every rerun), then rerun" if failures and all(str(f["error"]).startswith("prompt_too_long")
                                                           for f in failures)
            else "rerun the same command: it generates only what is missing",
        )
    return metrics
