"""The generations file: one JSON line per sample a judge drew for a benchmark item, in one order.

`r1rm eval` writes it (appended and flushed as it goes, so a rerun resumes), `r1rm vote`
reads it, and `r1rm rl`'s periodic eval scores its rows the same way. Fields of a row:
`key` ([uid, order, sample], unique), `uid`, `id`, `category`, `group`, `order`, `sample`,
`text`, `choice`, `choice_source`, `correct`, `p_choice`, `probs`, `n_tokens`, `finished`, `error`.

Several processes each write their own `generations.rank{R}.jsonl`; `merge_rank_files` folds
them into `generations.jsonl`, one row per key.
"""

from __future__ import annotations

import os
from pathlib import Path

from r1rm.data.files import JsonlAppender, LineError, check_regular, json_lines
from r1rm.errors import DataError, InputFileError

GENERATIONS = "generations.jsonl"
# the fields a row needs to be scored
REQUIRED = ("uid", "order", "sample", "choice", "correct")


def rank_file(rank: int | str) -> str:
    """The generations file of one process when several split the items ("*": a glob of them all)."""
    return f"generations.rank{rank}.jsonl"


def read_generations(path: str | os.PathLike, *, allow_empty: bool = False) -> list[dict]:
    """Rows of a generations file; a bad line is a DataError naming file:line."""
    p = Path(path)
    check_regular(p, what="generations file", folders=False)
    if not p.is_file():
        raise InputFileError(f"generations file not found: '{p}'", fix="pass the generations.jsonl an eval run wrote")
    rows = []
    seen: dict = {}
    for i, _, row in json_lines(p, allow_nan=True):
        if isinstance(row, LineError):
            what = f"invalid JSON ({row.detail})" if row.reason == "invalid_json" else row.brief
            raise DataError(what, where=f"{p}:{i}", fix="remove the damaged line and rerun eval to regenerate it")
        missing = [k for k in REQUIRED if not isinstance(row, dict) or k not in row]
        if missing:
            raise DataError(f"generation record lacks {missing}", where=f"{p}:{i}", fix="use a generations.jsonl written by r1rm eval")
        # one record per (item, order, sample): a repeated one would be counted twice (or disagree with itself)
        key = (str(row["uid"]), str(row["order"]), str(row["sample"]))
        if key in seen:
            raise DataError(f"repeated generation record (uid {row['uid']!r}, order {row['order']!r}, sample "
                            f"{row['sample']!r}) — the same as line {seen[key]}", where=f"{p}:{i}",
                            fix="remove the repeated line (files joined by hand: keep one record per uid, order "
                                "and sample)")
        seen[key] = i
        rows.append(row)
    if not rows and not allow_empty:
        raise DataError("generations file is empty", where=str(p), fix="run `r1rm eval` first")
    return rows


def generation_row(rec, order: str, sample_idx: int, sample, *, allow_fallback: bool) -> dict:
    """One generations.jsonl record for one sample of `rec` shown in `order`."""
    from r1rm.core.parsing import extract_answer

    right = 1 if order == "chosen_first" else 2
    ans = extract_answer(sample.text, allow_fallback=allow_fallback) if sample.error is None else None
    choice = ans.choice if ans else None
    probs = sample.choice_probs
    return {
        "key": [rec.uid, order, sample_idx],
        "uid": rec.uid,
        "id": rec.id,
        "category": rec.category,
        "group": rec.meta.get("group", rec.id),
        "order": order,
        "sample": sample_idx,
        "text": sample.text,
        "choice": choice,
        "choice_source": ans.source if ans else None,
        "correct": choice == right,
        "p_choice": probs.get(choice) if probs and choice else None,
        "probs": {str(k): v for k, v in probs.items()} if probs else None,
        "n_tokens": len(sample.token_ids),
        "finished": sample.finished,
        "error": sample.error,
    }


def merge_rank_files(out: Path, world: int) -> Path:
    """Fold every process's generations into `out`/generations.jsonl (one row per key); return its path."""
    merged = JsonlAppender(out / GENERATIONS, key="key")
    for r in range(world):
        shard = out / rank_file(r)
        if not shard.exists():
            continue
        for row in read_generations(shard, allow_empty=True):
            if tuple(row["key"]) not in merged.done:
                merged.append(row)
    merged.close()
    return out / GENERATIONS
