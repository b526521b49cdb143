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
from r1rm.data.files import LineError, RowError, json_lines
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
        key = recs[0].uid.split(":")[0]
        if key in seen:
            raise DataError(f"duplicate item (same content as line {seen[key]})", where=f"{path}:{line}",
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
    from r1rm.core.ranking import bradley_terry, pick_best, rank, win_rates

    n = len(row["candidates"])
    wins = [[0.0] * n for _ in range(n)]
    undecided = 0
    for rec, (first, second) in zip(recs, verdicts, strict=True):
        i, j = (int(x) for x in rec.uid.rsplit(":", 1)[1].split("-"))
        for v in (first, second):
            if v is None:
                continue
            if v["choice"] == 1:
                wins[i][j] += 1
            elif v["choice"] == 2:
                wins[j][i] += 1
            else:
                undecided += 1
    rates = win_rates(wins)
    strength = bradley_terry(wins)
    order = rank(strength)
    best, why = pick_best(wins, strength)
    return {
        "uid": recs[0].uid.rsplit(":", 1)[0], "id": recs[0].id, "n_candidates": n,
        "scores": [{"candidate": i, "win_rate": rates[i], "strength": strength[i]} for i in range(n)],
        "ranking": order, "best": best, "best_reason": why, "wins": wins, "undecided_verdicts": undecided,
    }


def run(cfg: Config) -> Path:
    from rich.console import Console

    from r1rm.data.chat import record_messages
    from r1rm.data.files import JsonlAppender
    from r1rm.data.media import default_image_root
    from r1rm.engines import check_engine, make_engine, sampling_from_config
    from r1rm.engines.base import Request
    from r1rm.runtime.progress import make_progress

    if not cfg.judge.input:
        raise ConfigError("no input to judge", fix="set judge.input=FILE.jsonl (pairs or question + candidates)")
    path = Path(cfg.judge.input)
    if not path.is_file():
        raise InputFileError(f"judge input not found: '{path}'", fix="check judge.input")
    out = Path(cfg.output_dir)
    params = sampling_from_config(cfg)
    if params.n != 1:
        raise ConfigError("judge uses one sample per order", fix="set generation.n=1 (voting over samples is `r1rm eval` + `r1rm vote`)")
    root = default_image_root(path, cfg.data.image_root)
    items = read_items(path)
    check_engine(cfg)  # input, settings and model checked before output_dir is made: a failed start leaves no folder
    save_config(cfg)
    writer = JsonlAppender(out / VERDICTS, key="uid")
    todo = [it for it in items if (it[2][0].uid if it[1] == "pair" else it[2][0].uid.rsplit(":", 1)[0]) not in writer.done]
    engine = make_engine(cfg) if todo else None
    failures, first_error = 0, ""
    with make_progress(enabled=cfg.runtime.progress, unit="items") as bar:
        task = bar.add_task("judge", total=len(items), completed=len(items) - len(todo))
        chunk = max(1, cfg.engine.batch_size)
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            requests = []
            for _, _, recs, _ in part:
                for rec in recs:
                    try:
                        requests.append(Request(record_messages(rec, prompt=cfg.data.prompt, image_root=root,
                                                                video_max_frames=cfg.model.video_max_frames, max_pixels=cfg.model.max_pixels)))
                        if cfg.judge.both_orders:
                            requests.append(Request(record_messages(rec.swapped(), prompt=cfg.data.prompt, image_root=root,
                                                                    video_max_frames=cfg.model.video_max_frames, max_pixels=cfg.model.max_pixels)))
                    except RowError as e:
                        raise DataError(str(e), where=f"{path}", fix="check the item's media paths") from None
            results = iter(engine.generate(requests, params))
            for _, kind, recs, row in part:
                verdicts = []
                for _rec in recs:
                    first = _verdict(next(results)[0], swapped=False)
                    second = _verdict(next(results)[0], swapped=True) if cfg.judge.both_orders else None
                    errors = [v["error"] for v in (first, second) if v is not None and v["error"]]
                    failures, first_error = failures + len(errors), first_error or (errors[0] if errors else "")
                    verdicts.append((first, second))
                if any(v["error"] for pair in verdicts for v in pair if v is not None):
                    continue  # an engine failure is not a verdict: a rerun retries this item
                if kind == "pair":
                    writer.append(_pair_output(recs[0], *verdicts[0]))
                else:
                    writer.append(_candidates_output(row, recs, verdicts))
            bar.advance(task, len(part))
    writer.close()
    if engine is not None:
        engine.close()
    Console().print(f"verdicts for {len(items)} items in [bold]{out / VERDICTS}[/]")
    if failures:
        from r1rm.errors import IncompleteRunError

        raise IncompleteRunError(f"{failures} engine failures (the first: {first_error}): their items have no verdict yet",
                                 fix="rerun the same command: it judges only what is missing")
    return out / VERDICTS


def serve(cfg: Config) -> None:
    """Run the OpenAI-compatible server over the configured engine until interrupted."""
    import sys

    from r1rm.engines import make_engine
    from r1rm.serving import make_server

    engine = make_engine(cfg)  # the model loads (or fails) before output_dir is made
    save_config(cfg)
    name = cfg.judge.served_model_name or cfg.model.path or "r1rm"
    server = make_server(
        engine, model_name=name, host=cfg.judge.host, port=cfg.judge.port, api_key=cfg.judge.api_key,
        max_request_bytes=cfg.judge.max_request_bytes, max_batch=cfg.engine.batch_size,
        default_max_tokens=cfg.generation.max_new_tokens,
    )
    host, port = server.server_address[:2]
    sys.stdout.write(f"serving {name} at http://{host}:{port}/v1 (OpenAI-compatible; Ctrl-C stops)\n")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        server.batcher.close()
        engine.close()
