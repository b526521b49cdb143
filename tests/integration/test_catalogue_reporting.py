"""Bad-input catalogue, class "Reporting" (issue 26 §7), through the real CLI.

What a command reports is what it did: judge counts the verdicts it wrote (not the items it was
given); check-data's rejects hold the raw line for every reason, media errors included; a repeated
row in `eval --from-generations` is refused with file:line (never counted twice, never a ValueError);
judge item uids may hold ':' (`item:1` and `item:2` are two items).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_bad_input_catalogue import assert_clean_error, cli, png, row


def common(model: Path | None, out: Path) -> list[str]:
    return [*([f"model.path={model}"] if model else []), f"output_dir={out}", "runtime.device=cpu",
            "runtime.progress=false", "runtime.report_to=none", "generation.max_new_tokens=6", "engine.batch_size=8"]


def write_lines(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------- judge
def test_judge_counts_the_verdicts_written_not_the_items(tmp_path):
    """Every request fails (an endpoint that is not there): 0 verdicts written of 2 items, said as such,
    and the run is incomplete (exit 2), not "verdicts for 2 items"."""
    inp = write_lines(tmp_path / "in.jsonl", [row(uid="a"), row(uid="b", question="Which shape?")])
    out = tmp_path / "o"
    proc = cli("judge", *common(None, out), f"judge.input={inp}", "engine.kind=openai",
               "engine.base_url=http://127.0.0.1:9/v1", "engine.model_name=m", "engine.max_retries=0",
               "engine.timeout_s=5")
    assert_clean_error(proc, "engine failures", "rerun the same command")
    assert "verdicts for 0 of 2 items" in proc.stdout and "0 written now" in proc.stdout
    assert "verdicts for 2 items" not in proc.stdout
    assert not (out / "verdicts.jsonl").read_text()  # nothing presented as a verdict


def test_judge_uids_with_a_colon_are_distinct_items(tiny, tmp_path):
    """`item:1` and `item:2` were cut at ':' and refused as duplicates; a candidates item `item:3`
    (whose pairs are `item:3:i-j`) is a third."""
    inp = write_lines(tmp_path / "in.jsonl", [
        row(uid="item:1"), row(uid="item:2"),
        {"uid": "item:3", "question": "Pick one", "candidates": ["red", "blue", "green"]},
    ])
    out = tmp_path / "o"
    proc = cli("judge", *common(tiny, out), f"judge.input={inp}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(x) for x in (out / "verdicts.jsonl").read_text().splitlines()]
    assert [r["uid"] for r in rows] == ["item:1", "item:2", "item:3"]
    assert rows[2]["n_candidates"] == 3 and len(rows[2]["scores"]) == 3
    assert "verdicts for 3 of 3 items" in proc.stdout and "3 written now" in proc.stdout


@pytest.mark.parametrize("case,rows,line,needle", [
    ("same_uid_twice", [row(uid="item:1"), row(uid="item:1", question="Other?")], 2, "uid 'item:1' is line 1's too"),
    ("same_content_twice_without_uid", [row(uid=...), row(uid=...)], 2, "is line 1's too"),
    ("candidates_uid_twice", [{"uid": "c:1", "question": "q", "candidates": ["a", "b"]},
                              {"uid": "c:1", "question": "q2", "candidates": ["c", "d"]}], 2, "duplicate item"),
])
def test_judge_repeated_items_are_refused(tmp_path, case, rows, line, needle):
    inp = write_lines(tmp_path / "in.jsonl", rows)
    out = tmp_path / "o"
    proc = cli("judge", *common(tmp_path / "no-model-needed", out), f"judge.input={inp}")
    assert_clean_error(proc, f"in.jsonl:{line}", needle, "give each item its own uid")
    assert not out.exists()


# ---------------------------------------------------------------- check-data
@pytest.mark.parametrize("case,files,reason", [
    ("image_missing", {}, "missing_image"),
    ("image_zero_bytes", {"x.png": b""}, None),
    ("image_corrupt", {"x.png": b"\x89PNG\r\n\x1a\nnot a png"}, None),
])
def test_check_data_media_rejects_carry_the_raw_line(tmp_path, case, files, reason):
    """A media error is found after the line parsed: its reject still holds the line itself (not the
    uid), with the good lines counted as valid."""
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    png(tmp_path / "ok.png")
    bad = row(uid="bad-1", modality="image", images=["x.png"])
    f = write_lines(tmp_path / "pairs.jsonl", [row(uid="g1"), bad, row(uid="g2", modality="image", images=["ok.png"])])
    rejects = tmp_path / "rejects.jsonl"
    proc = cli("check-data", f, "--rejects", rejects)
    assert_clean_error(proc, "pairs.jsonl:2", "1 bad line(s)")
    rej = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert [(r["line"], r["raw"]) for r in rej] == [(2, bad)]
    assert reason is None or rej[0]["reason"] == reason
    assert re.search(r"pairs\.jsonl\s*│\s*2\s*│\s*1\s*│", proc.stdout), proc.stdout  # 2 valid, 1 rejected


# ---------------------------------------------------------------- eval --from-generations
def generations(n_items: int = 2) -> list[dict]:
    rows = []
    for i in range(n_items):
        for order, right in (("chosen_first", 1), ("chosen_second", 2)):
            rows.append({"key": [f"u{i}", order, 0], "uid": f"u{i}", "id": f"i{i}", "category": "general",
                         "group": f"i{i}", "order": order, "sample": 0, "text": "<answer>1</answer>", "choice": 1,
                         "choice_source": "answer_tag", "correct": right == 1, "p_choice": None, "probs": None,
                         "n_tokens": 3, "finished": True, "error": None})
    return rows


def test_from_generations_counts_each_record_once(tmp_path):
    f = write_lines(tmp_path / "g.jsonl", generations())
    proc = cli("eval", "--from-generations", f, f"output_dir={tmp_path / 'o'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["n_items"] == 2 and metrics["n_generations"] == 4


@pytest.mark.parametrize("case,lines,line,needle", [
    ("repeated_row", lambda g: [*g, g[1]], 5, "repeated generation record"),
    ("repeated_row_other_verdict", lambda g: [*g[:3], {**g[0], "choice": 2, "correct": False}, g[3]], 4,
     "the same as line 1"),
    ("cut_last_line", lambda g: [*g[:3], json.dumps(g[3])[:40]], 4, "invalid JSON"),
    ("row_without_fields", lambda g: [*g[:2], {"uid": "u9"}, *g[2:]], 3, "lacks"),
])
def test_from_generations_bad_rows_are_refused(tmp_path, case, lines, line, needle):
    f = write_lines(tmp_path / "g.jsonl", lines(generations()))
    out = tmp_path / "o"
    proc = cli("eval", "--from-generations", f, f"output_dir={out}")
    assert_clean_error(proc, f"g.jsonl:{line}", needle)
    assert "ValueError" not in proc.stderr and not (out / "metrics.json").exists()
