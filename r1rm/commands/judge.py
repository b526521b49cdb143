"""`r1rm judge`: verdicts for pairs, rankings for N candidates, or an OpenAI-compatible server.

Batch input (`judge.input`, JSONL), one item per line, either
- a pair in the canonical format (label optional: when present, `correct` is reported), or
- `{"id", "question", images | video | caption, "candidates": [text, ...]}` (N ≥ 2).

Every pair is judged as given and swapped (`judge.both_orders`). Output
`<output_dir>/verdicts.jsonl`, one line per item, appended as it goes (a rerun resumes):
- pairs: `choice` (1/2 in the input's numbering, or null when the orders disagree and
  the probabilities cannot break it), `agree`, `p_choice`, and per order the raw verdict,
  its reasoning and P(choice);
- candidates: every pair in both orders → per-candidate `win_rate` and Bradley–Terry
  `strength`, a `ranking` (best first) and `best` — best-of-N selection with a
  generative judge. `best` is null when the verdicts name none, and `best_reason` says why:
  `undecided` (no verdict was decided) or `tie` (the top strengths are equal).

`--serve` starts the HTTP server of r1rm.serving over the configured engine instead.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from r1rm.config import Config, save_config
from r1rm.data.files import LineError, RowError, json_lines, write_json_atomic
from r1rm.data.records import Record, parse_record
from r1rm.errors import ConfigError, DataError, InputFileError

VERDICTS = "verdicts.jsonl"
_CONTEXT_KEYS = ("id", "source", "question", "modality", "images", "video", "caption", "category", "task_type", "meta")


def parse_item(row: dict) -> tuple[str, list[Record]]:
    """An input line → ("pair", [record]) or ("candidates", [record for every pair i<j])."""
    if not isinstance(row, dict):
        raise RowError("not_object", "each line must be a JSON object")
    if "candidates" not in row:
        return "pair", [parse_record(row, require_label=False)]
    cands = row["candidates"]
    if not isinstance(cands, list) or len(cands) < 2:
        raise RowError("wrong_type", "'candidates' must be a list of at least 2 responses")
    extra = [k for k in row if k not in (*_CONTEXT_KEYS, "candidates", "uid")]
    if extra:
        raise RowError("unknown_field", f"unknown field '{extra[0]}' in a candidates item")
    base = {k: row[k] for k in _CONTEXT_KEYS if k in row}
    base_uid = parse_record({**base, "response1": "a", "response2": "b"}, require_label=False).uid
    uid = row.get("uid") or base_uid
    pairs = []
    for i, j in itertools.combinations(range(len(cands)), 2):
        rec = parse_record({**base, "uid": f"{uid}:{i}-{j}", "response1": cands[i], "response2": cands[j]}, require_label=False)
        pairs.append(rec)
    return "candidates", pairs


def item_uid(kind: str, recs: list[Record]) -> str:
    """The uid of an input item: a pair's own uid (which may hold ':'); for candidates, the uid their
    pairs share (each pair's is `<item uid>:<i>-<j>`: only that last suffix is cut)."""
    return recs[0].uid if kind == "pair" else recs[0].uid.rsplit(":", 1)[0]


def check_items_media(items: list, path: Path, root: Path, *, max_pixels: int | None) -> None:
    """Every image and frame of the input through the media gate's header check (r1rm.data.records.
    check_record_media, decode=False: size, aspect ratio, format — as sft and rl; the engine decodes each image
    through the gate when it uses it), each set of media once (a candidates item's pairs share their context;
    items may share images): the first one refused is a DataError naming file:line and the gate's reason."""
    from r1rm.data.records import check_record_media
    from r1rm.runtime.checkpoint import media_paths

    seen: set[tuple[str, ...]] = set()
    for line, _, recs, _ in items:
        try:
            for rec in recs:
                key = tuple(media_paths([rec]))
                if key in seen:
                    continue
                check_record_media(rec, root, max_pixels=max_pixels, decode=False)
                seen.add(key)
        except RowError as e:
            raise DataError(f"{e} [{e.reason}]", where=f"{path}:{line}",
                            fix="fix the item's media, or drop the item (`r1rm check-data` finds every such file)") from None


def read_items(path: str | Path) -> list[tuple[int, str, list[Record], dict]]:
    """(line, kind, records, raw row) for each input line; the first bad line is a DataError with file:line."""
    items = []
    seen: dict[str, int] = {}
    for line, _, row in json_lines(path):
        try:
            if isinstance(row, LineError):
                raise RowError(row.reason, row.brief)
            kind, recs = parse_item(row)
        except RowError as e:
            raise DataError(str(e), where=f"{path}:{line}", fix="correct or remove this line") from None
        key = item_uid(kind, recs)
        if key in seen:
            raise DataError(f"duplicate item: uid {key!r} is line {seen[key]}'s too (the same uid given twice, or the "
                            "same content twice without one)", where=f"{path}:{line}",
                            fix="remove the repeated line or give each item its own uid")
        seen[key] = line
        items.append((line, kind, recs, row))
    if not items:
        raise DataError("input has no items (it is empty)", where=str(path))
    return items


def combine_orders(first: dict | None, second: dict | None) -> tuple[int | None, bool | None, float | None]:
    """Final choice (input numbering), whether the two orders agree, and mean P(choice).

    `second` is the swapped order's verdict already mapped back to input numbering. When the
    orders disagree, the choice with the larger summed probability wins; without
    probabilities it stays undecided (None)."""
    verdicts = [v for v in (first, second) if v is not None and v["choice"] is not None]
    if not verdicts:
        return None, None, None
    if len(verdicts) == 1 or second is None:
        v = verdicts[0]
        return v["choice"], (None if second is None else False), v.get("p_choice")
    a, b = verdicts
    if a["choice"] == b["choice"]:
        ps = [v["p_choice"] for v in verdicts if v.get("p_choice") is not None]
        return a["choice"], True, (sum(ps) / len(ps) if ps else None)
    pa, pb = a.get("p_choice"), b.get("p_choice")
    if pa is None or pb is None or pa == pb:
        return None, False, None
    return (a["choice"], False, pa) if pa > pb else (b["choice"], False, pb)


def _verdict(sample, swapped: bool) -> dict:
    from r1rm.core.parsing import extract_answer

    if sample.error is not None:
        return {"choice": None, "raw_choice": None, "p_choice": None, "text": "", "error": sample.error}
    ans = extract_answer(sample.text)
    raw = ans.choice
    choice = None if raw is None else (3 - raw if swapped else raw)
    p = sample.choice_probs.get(raw) if sample.choice_probs and raw else None
    return {"choice": choice, "raw_choice": raw, "choice_source": ans.source, "p_choice": p, "text": sample.text, "error": None}


def _pair_output(rec: Record, first: dict, second: dict | None) -> dict:
    choice, agree, p = combine_orders(first, second)
    out = {"uid": rec.uid, "id": rec.id, "choice": choice, "agree": agree, "p_choice": p,
           "orders": {"as_given": first, **({"swapped": second} if second is not None else {})}}
    if rec.label is not None:
        out["label"] = rec.label
        out["correct"] = choice == rec.label
    return out


def _candidates_output(row: dict, recs: list[Record], verdicts: list[tuple[dict, dict | None]]) -> dict:
    from r1rm.core.ranking import count_win, ranking_summary

    n = len(row["candidates"])
    wins = [[0.0] * n for _ in range(n)]
    undecided = 0
    for rec, (first, second) in zip(recs, verdicts, strict=True):
        i, j = (int(x) for x in rec.uid.rsplit(":", 1)[1].split("-"))
        for v in (first, second):
            if v is not None and not count_win(wins, i, j, v["choice"]):
                undecided += 1
    return {"uid": recs[0].uid.rsplit(":", 1)[0], "id": recs[0].id, "n_candidates": n, **ranking_summary(wins),
            "undecided_verdicts": undecided}


def _checked_identity(cfg: Config, out: Path, path: Path, items: list, root) -> dict:
    """What the verdicts belong to (run.json: the model, its weights, the prompt, the sampling, the input's
    bytes and its media); refuses an output_dir holding another judge run's verdicts, before any write."""
    from r1rm.data.training_sets import data_fingerprint
    from r1rm.runtime import checkpoint as ck

    records = [rec for _, _, recs, _ in items for rec in recs]  # every candidate's media (stamped once per path)
    identity = {**ck.identity_of(cfg.model_dump(mode="json"), "judge"),
                "model.stamp": ck.model_stamp(cfg.model.path) if cfg.model.path else None,
                "judge.input.sha256": data_fingerprint([str(path)]), ck.MEDIA_ROOT: str(root),
                ck.MEDIA: ck.media_stamps(records, root, earlier=ck.earlier_media(out))}
    ck.check_same_eval(out, identity, [out / VERDICTS], what="verdicts", command="judge")
    return identity


def _write_metrics(out: Path, *, n_items: int, done: int, written: int, failures: int, stats: dict | None) -> None:
    """metrics.json: how many items have a verdict, this invocation's engine failures, and the engine's
    counters (an endpoint's requests, retries and failures by kind: OpenAIEngine.stats) — an earlier
    invocation's when this one made no engine."""
    from r1rm.data.files import LineError, loads_json

    if stats is None:
        try:
            earlier = loads_json((out / "metrics.json").read_bytes())
            stats = earlier.get("engine") if isinstance(earlier, dict) else None
        except (OSError, LineError):
            stats = None
    write_json_atomic(out / "metrics.json", {"n_items": n_items, "n_verdicts": done, "n_written": written,
                                             "complete": done == n_items, "n_engine_failures": failures,
                                             **({"engine": stats} if stats is not None else {})})


def run(cfg: Config) -> Path:
    import sys

    from rich.console import Console

    from r1rm.data.chat import record_messages
    from r1rm.data.files import JsonlAppender, write_jsonl_atomic
    from r1rm.data.media import default_image_root
    from r1rm.engines import check_engine, make_engine, sampling_from_config
    from r1rm.engines.base import Request
    from r1rm.runtime.progress import make_progress

    if not cfg.judge.input:
        raise ConfigError("no input to judge", fix="set judge.input=FILE.jsonl (pairs or question + candidates)")
    path = Path(cfg.judge.input)
    from r1rm.data.files import check_regular

    check_regular(path, what="judge.input", folders=False)  # a device or FIFO would never end
    if not path.is_file():
        raise InputFileError(f"judge input not found: '{path}'", fix="check judge.input")
    out = Path(cfg.output_dir)
    params = sampling_from_config(cfg)
    if params.n != 1:
        raise ConfigError("judge uses one sample per order", fix="set generation.n=1 (voting over samples is `r1rm eval` + `r1rm vote`)")
    root = default_image_root(path, cfg.data.image_root)
    items = read_items(path)
    check_items_media(items, path, root, max_pixels=cfg.model.max_pixels)  # the media gate, before anything is made
    identity = _checked_identity(cfg, out, path, items, root)  # verdicts already here must be this run's
    check_engine(cfg)  # input, settings and model checked before output_dir is made: a failed start leaves no folder
    save_config(cfg)
    write_json_atomic(out / "run.json", identity)
    writer = JsonlAppender(out / VERDICTS, key="uid")
    for line in writer.repaired:  # a last line a kill cut: dropped, judged again
        sys.stderr.write(f"repaired {line}; it is judged again\n")
    todo = [it for it in items if item_uid(it[1], it[2]) not in writer.done]
    written = 0
    engine = make_engine(cfg) if todo else None
    failures, first_error = 0, ""
    failed: list[dict] = []  # failures.jsonl: the items an engine failure left without a verdict
    with make_progress(enabled=cfg.runtime.progress, unit="items") as bar:
        task = bar.add_task("judge", total=len(items), completed=len(items) - len(todo))
        chunk = max(1, cfg.engine.batch_size)
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            requests = []
            for line, _, recs, _ in part:
                for rec in recs:
                    try:
                        requests.append(Request(record_messages(rec, prompt=cfg.data.prompt, image_root=root,
                                                                video_max_frames=cfg.model.video_max_frames, max_pixels=cfg.model.max_pixels)))
                        if cfg.judge.both_orders:
                            requests.append(Request(record_messages(rec.swapped(), prompt=cfg.data.prompt, image_root=root,
                                                                    video_max_frames=cfg.model.video_max_frames, max_pixels=cfg.model.max_pixels)))
                    except RowError as e:
                        raise DataError(f"{e} [{e.reason}]", where=f"{path}:{line}",
                                        fix="fix the item's media, or drop the item (`r1rm check-data` finds every such line)") from None
            results = iter(engine.generate(requests, params))
            for _, kind, recs, row in part:
                verdicts = []
                for _rec in recs:
                    first = _verdict(next(results)[0], swapped=False)
                    second = _verdict(next(results)[0], swapped=True) if cfg.judge.both_orders else None
                    errors = [v["error"] for v in (first, second) if v is not None and v["error"]]
                    failures, first_error = failures + len(errors), first_error or (errors[0] if errors else "")
                    verdicts.append((first, second))
                errors = [v["error"] for pair in verdicts for v in pair if v is not None and v["error"]]
                if errors:
                    failed.append({"uid": item_uid(kind, recs), "errors": errors})
                    continue  # an engine failure is not a verdict: a rerun retries this item
                if kind == "pair":
                    writer.append(_pair_output(recs[0], *verdicts[0]))
                else:
                    writer.append(_candidates_output(row, recs, verdicts))
                written += 1
            bar.advance(task, len(part))
    writer.close()
    stats = None
    if engine is not None:
        engine.close()
        stats = engine.stats() if callable(getattr(engine, "stats", None)) else None
    if failed:
        write_jsonl_atomic(out / "failures.jsonl", failed)
    else:  # a run that left nothing to retry supersedes an earlier run's list
        (out / "failures.jsonl").unlink(missing_ok=True)
    # what is in the file now, not what was asked: an engine failure leaves its item without a verdict
    done = len(items) - len(todo) + written
    _write_metrics(out, n_items=len(items), done=done, written=written, failures=failures, stats=stats)
    Console().print(f"verdicts for {done} of {len(items)} items in [bold]{out / VERDICTS}[/] ({written} written now, "
                    f"{len(items) - len(todo)} by an earlier run" + (f", {len(writer.repaired)} cut line repaired"
                                                                      if writer.repaired else "") + ")")
    if failures:
        from r1rm.errors import IncompleteRunError

        raise IncompleteRunError(f"{failures} engine failures (the first: {first_error}): their {len(failed)} items "
                                 f"have no verdict yet (listed in {out / 'failures.jsonl'})",
                                 fix="shorten those items or lower generation.max_new_tokens, then rerun"
                                 if str(first_error).startswith("prompt_too_long")
                                 else "rerun the same command: it judges only what is missing")
    return out / VERDICTS


def serve(cfg: Config) -> None:
    """Run the HTTP service of r1rm.serving over the configured engine until SIGTERM / Ctrl-C (then it drains)."""
    import os
    import sys

    from r1rm.engines import check_engine, make_engine
    from r1rm.serving import bind_socket, check_exposure, check_uvicorn, make_app, run_server, setup_logging

    check_exposure(cfg, os.environ.get(cfg.judge.api_key_env) or None)  # public without a key: refused
    check_uvicorn()  # the read timeouts use uvicorn internals: a release without them fails here, not later
    check_engine(cfg)
    sock = bind_socket(cfg.judge.host, cfg.judge.port)  # the port is checked before the model loads
    engine = app = None
    try:
        engine = make_engine(cfg)
        save_config(cfg)  # the key lives in the environment only: config.yaml names the variable
        positions = getattr(engine, "max_positions", None)
        if positions is None and cfg.engine.kind == "vllm":
            from r1rm.models.loading import check_model, hub_kwargs, max_positions

            positions = max_positions(check_model(cfg.model.path, **hub_kwargs(cfg.model)))
        app = make_app(engine, cfg=cfg, max_positions=positions)
        setup_logging()
        host, port = sock.getsockname()[:2]
        url_host = f"[{host}]" if ":" in host else host
        auth = f"API key from ${cfg.judge.api_key_env}" if app.state.server.api_key else "no API key"
        sys.stdout.write(f"serving {app.state.model_name} at http://{url_host}:{port}/v1 (OpenAI-compatible; {auth}; "
                         "SIGTERM or Ctrl-C drains and stops)\n")
        sys.stdout.flush()
        run_server(app, sock, cfg=cfg)
        sys.stdout.write("server stopped\n")
    finally:
        sock.close()
        if app is not None:
            app.state.batcher.close()
        if engine is not None:
            engine.close()
