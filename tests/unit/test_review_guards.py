"""Issue 26 review fixes, at the unit level: media stamps that a resume does not re-read, a judge media check
that reads headers once per path, an appender that does not read the whole file, an endpoint path that does
not decode what it sends unchanged, and the rank reduction of eval's failures and engine counters."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from r1rm.data.records import parse_record


def _record(images: list[str], **extra) -> object:
    return parse_record({"uid": "u", "question": "q", "images": images, "response1": "a", "response2": "b", **extra},
                        require_label=False)


# ---------------------------------------------------------------- media stamps (run.json)
def test_resume_rehashes_only_files_whose_size_or_mtime_changed(tmp_path, monkeypatch):
    from r1rm.runtime import checkpoint
    from r1rm.runtime.checkpoint import MEDIA, _media_changes, media_stamps

    for name, colour in (("a.png", "red"), ("b.png", "blue")):
        Image.new("RGB", (8, 8), colour).save(tmp_path / name)
    recs = [_record(["a.png", "b.png"])]
    first = media_stamps(recs, tmp_path)  # a fresh start: every file read once
    assert set(first) == {"a.png", "b.png"} and all(len(v.split(":")) == 3 for v in first.values())

    opened: list[str] = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: (opened.append(Path(f).name), real_open(f, *a, **k))[1])
    # a resume with nothing changed: stats only, the recorded hashes kept (even a made-up one: not re-read)
    earlier = {**first, "a.png": first["a.png"].replace(first["a.png"].split(":")[1], "recorded")}
    again = media_stamps(recs, tmp_path, earlier=earlier)
    assert opened == [] and again["a.png"].split(":")[1] == "recorded" and again["b.png"] == first["b.png"]
    # touched (mtime changed, same bytes): re-read, and the same content is no change
    st = (tmp_path / "b.png").stat()
    os.utime(tmp_path / "b.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    touched = media_stamps(recs, tmp_path, earlier=first)
    assert opened == ["b.png"] and touched["b.png"] != first["b.png"]
    assert _media_changes({MEDIA: first}, {MEDIA: touched}) == []
    # redrawn under the same name: re-read and refused as other content
    opened.clear()
    Image.new("RGB", (8, 8), "green").save(tmp_path / "a.png")
    redrawn = media_stamps(recs, tmp_path, earlier=first)
    assert "a.png" in opened and _media_changes({MEDIA: first}, {MEDIA: redrawn})
    # a run.json of before this change ("size:hash"): compared by content, re-read once
    old_style = {k: ":".join(v.split(":")[:2]) for k, v in touched.items()}
    changes = _media_changes({MEDIA: old_style}, {MEDIA: media_stamps(recs, tmp_path, earlier=old_style)})
    assert [c.split(":")[0] for c in changes] == ["a.png"]
    assert checkpoint.earlier_media(tmp_path) == {}  # no run.json: a fresh start


def test_eval_stamps_media_on_the_main_process_only(tmp_path, monkeypatch):
    from r1rm.commands import eval as ev
    from r1rm.runtime.checkpoint import MEDIA

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    recs = [_record(["a.png"])]
    monkeypatch.setenv("RANK", "1")
    assert ev._checked_media(tmp_path / "out", {}, recs, tmp_path)[MEDIA] == {}
    monkeypatch.setenv("RANK", "0")
    assert list(ev._checked_media(tmp_path / "out", {}, recs, tmp_path)[MEDIA]) == ["a.png"]


# ---------------------------------------------------------------- judge: header checks, once per path
def test_judge_media_check_reads_headers_once_per_path(tmp_path, monkeypatch):
    from r1rm.commands.judge import check_items_media, parse_item
    from r1rm.data import media

    for n in ("ctx.png", "c0.png", "c1.png", "c2.png"):
        Image.new("RGB", (16, 16)).save(tmp_path / n)
    row = {"id": "x", "question": "q", "images": ["ctx.png"],
           "candidates": [{"image": "c0.png"}, {"image": "c1.png"}, {"image": "c2.png"}]}
    items = [(1, *parse_item(row), row), (2, *parse_item({**row, "id": "y"}), row)]
    seen: list[str] = []
    real = media.image_header
    monkeypatch.setattr(media, "image_header", lambda src, **k: (seen.append(Path(src).name), real(src, **k))[1])
    monkeypatch.setattr(media, "admit_image", lambda *a, **k: pytest.fail("the start decoded an image"))
    check_items_media(items, tmp_path / "in.jsonl", tmp_path, max_pixels=12544)
    # 3 pairs per item, each ctx + 2 candidates: once per distinct record media, not 2 x 3 x 3 decodes
    assert len(seen) == 9 and set(seen) == {"ctx.png", "c0.png", "c1.png", "c2.png"}


# ---------------------------------------------------------------- JsonlAppender: no whole-file read
def test_appender_counts_lines_only_when_a_line_was_cut(tmp_path, monkeypatch):
    from r1rm.data.files import JsonlAppender

    path = tmp_path / "g.jsonl"
    path.write_text("".join(json.dumps({"key": i}) + "\n" for i in range(5)))
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("read the whole file"))
    w = JsonlAppender(path, key="key")
    assert w.repaired == [] and w.done == set(range(5))
    w.close()
    with open(path, "a") as f:
        f.write('{"key": 5, "te')
    w = JsonlAppender(path, key="key")
    assert len(w.repaired) == 1 and w.repaired[0].startswith(f"{path}:6:") and w.done == set(range(5))
    w.close()


# ---------------------------------------------------------------- endpoint: no decode on the pass-through path
def test_endpoint_sends_unchanged_bytes_without_decoding(tmp_path, monkeypatch):
    from r1rm.engines import openai_client
    from r1rm.errors import InputFileError

    Image.new("RGB", (32, 32), "red").save(tmp_path / "a.png")
    Image.new("RGB", (32, 32), "red").save(tmp_path / "a.bmp")
    raw = (tmp_path / "a.png").read_bytes()
    decoded: list = []
    real = openai_client.admit_image
    monkeypatch.setattr(openai_client, "admit_image", lambda src, **k: (decoded.append(k), real(src, **k))[1])
    assert openai_client.image_data_url(tmp_path / "a.png") == "data:image/png;base64," + base64.b64encode(raw).decode()
    assert decoded == []
    assert openai_client.image_data_url(tmp_path / "a.bmp").startswith("data:image/png;base64,") and len(decoded) == 1
    Image.new("RGB", (4000, 10)).save(tmp_path / "wide.png")  # the gate's header refusals stay
    with pytest.raises(InputFileError, match="aspect_ratio"):
        openai_client.image_data_url(tmp_path / "wide.png")


# ---------------------------------------------------------------- eval: every rank's failures and counters
def test_rank_outcomes_are_reduced_on_rank_zero(tmp_path):
    from r1rm.commands import eval as ev

    ev._write_rank_outcome(tmp_path, 0, 2, [{"key": ["a", "chosen_first", 0], "error": "http_500: x"}],
                           {"n_requests": 2, "n_retries": 1, "n_failures": 1, "failures_by_kind": {"http_500": 1}})
    ev._write_rank_outcome(tmp_path, 1, 2, [{"key": ["b", "chosen_first", 0], "error": "timeout: y"},
                                            {"key": ["b", "chosen_second", 0], "error": "http_500: z"}],
                           {"n_requests": 2, "n_retries": 3, "n_failures": 2,
                            "failures_by_kind": {"timeout": 1, "http_500": 1}})
    failures, stats = ev._reduce_ranks(tmp_path, 2)
    assert sorted(f["key"][0] for f in failures) == ["a", "b", "b"]
    assert stats == {"n_requests": 4, "n_retries": 4, "n_failures": 3, "failures_by_kind": {"http_500": 2, "timeout": 1}}
    ev._write_rank_outcome(tmp_path, 1, 2, [], None)  # a rerun with nothing left: its stale files go
    assert not (tmp_path / "failures.rank1.jsonl").exists() and not (tmp_path / "engine.rank1.json").exists()
    assert len(ev._reduce_ranks(tmp_path, 2)[0]) == 1
