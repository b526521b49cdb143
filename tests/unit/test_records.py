import json
import os
from pathlib import Path

import pytest

from r1rm.data.chat import oriented, record_messages
from r1rm.data.files import JsonlAppender, RowError, write_jsonl_atomic
from r1rm.data.media import resolve_path
from r1rm.data.records import parse_record, read_numbered_records, read_records
from r1rm.errors import DataError, InputFileError

GOOD = {"id": "a", "question": "Q?", "response1": "yes", "response2": "no", "label": 1}


def row(**kw):
    out = dict(GOOD)
    out.update(kw)
    return {k: v for k, v in out.items() if v is not ...}


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (row(label=3), "bad_label"),
        (row(label="1"), "bad_label"),
        (row(label=True), "bad_label"),
        (row(label=1.0), "bad_label"),
        (row(label=...), "missing_field"),
        (row(question=...), "missing_field"),
        (row(response1="   "), "empty_response"),
        (row(response2="yes"), "identical_responses"),
        (row(response1=5), "wrong_type"),
        (row(question=["x"]), "wrong_type"),
        (row(images="a.png", modality="video"), "missing_field"),
        (row(modality="caption"), "missing_field"),
        (row(modality="audio"), "bad_modality"),
        (row(task_type="chat"), "bad_task_type"),
        (row(difficulty="hard"), "wrong_type"),
        (row(lable=1), "unknown_field"),
        (row(response1={"image": "a.png"}), "mixed_responses"),
        (row(images=[1, 2]), "wrong_type"),
        (row(meta=[1]), "wrong_type"),
        ([1, 2], "not_object"),
    ],
)
def test_parse_record_rejects_with_reason(bad, reason):
    with pytest.raises(RowError) as e:
        parse_record(bad)
    assert e.value.reason == reason


def test_unknown_field_suggests():
    with pytest.raises(RowError, match="did you mean 'label'"):
        parse_record(row(lable=1))


def test_parse_record_derives_modality_task_type_and_uid():
    rec = parse_record(row(images=["x.png"]))
    assert rec.modality == "image" and rec.task_type == "image_understanding"
    assert rec.uid == parse_record(row(images=["x.png"])).uid  # content hash is stable
    assert rec.uid != parse_record(row(images=["y.png"])).uid
    assert parse_record(row(uid="mine")).uid == "mine"
    gen = parse_record(row(response1={"image": "a.png"}, response2={"image": "b.png"}))
    assert gen.task_type == "image_generation" and gen.response1.kind == "image"
    assert parse_record(row(video="clips/v1")).task_type == "video_understanding"
    assert parse_record(row(caption="A cat.")).modality == "caption"
    # to_json round-trips
    assert parse_record(rec.to_json()) == rec


def test_swapped_and_oriented():
    rec = parse_record(row())
    s = rec.swapped()
    assert s.response1.text == "no" and s.label == 2 and s.chosen.text == "yes"
    assert oriented(rec, "chosen_first") is rec
    assert oriented(rec, "chosen_second").response2.text == "yes"


def test_resolve_path_rejects_escape(tmp_path):
    (tmp_path / "img").mkdir()
    assert resolve_path("a.png", tmp_path / "img") == (tmp_path / "img" / "a.png").resolve()
    with pytest.raises(RowError) as e:
        resolve_path("../secret.png", tmp_path / "img")
    assert e.value.reason == "path_escapes_root"
    with pytest.raises(RowError):
        resolve_path("/etc/passwd", tmp_path / "img")


def write_lines(path: Path, lines: list) -> Path:
    with open(path, "wb") as f:
        for x in lines:
            f.write(x if isinstance(x, bytes) else (x if isinstance(x, str) else json.dumps(x)).encode() + b"\n")
            if isinstance(x, bytes):
                f.write(b"\n")
    return path


def test_reader_reports_file_line(tmp_path):
    p = write_lines(tmp_path / "d.jsonl", [row(id="1"), row(id="2", label=3)])
    with pytest.raises(DataError) as e:
        list(read_records(p))
    assert f"{p}:2" in str(e.value) and "'label' must be 1 or 2" in str(e.value)


def test_reader_collects_rejects_and_keeps_going(tmp_path):
    p = write_lines(
        tmp_path / "d.jsonl",
        [
            row(id="1"),
            '{"id": "2", "question": "Q", "respo',  # truncated line
            b'{"id": "3", "question": "\xff\xfe", "response1": "a", "response2": "b", "label": 1}',
            row(id="4", images=["../../etc/x.png"]),
            row(id="1"),  # exact duplicate of line 1: same uid
            "",
            row(id="5", response1="", response2="b"),
            row(id="6"),
        ],
    )
    rejects = []
    got = list(read_numbered_records(p, rejects=rejects))
    assert [line for line, _ in got] == [1, 8]
    reasons = {r.line: r.reason for r in rejects}
    assert reasons == {2: "invalid_json", 3: "not_utf8", 4: "path_escapes_root", 5: "duplicate_uid", 7: "empty_response"}
    assert all(r.file == str(p) and r.raw for r in rejects)


def test_reader_empty_and_missing_files(tmp_path):
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="empty"):
        list(read_records(empty))
    with pytest.raises(InputFileError, match="not found"):
        list(read_records(tmp_path / "none.jsonl"))


def test_write_jsonl_atomic_leaves_no_temp(tmp_path):
    p = tmp_path / "sub" / "o.jsonl"
    n = write_jsonl_atomic(p, [parse_record(row(id=str(i))) for i in range(3)])
    assert n == 3 and len(list(read_records(p))) == 3
    assert sorted(os.listdir(p.parent)) == ["o.jsonl"]


def test_appender_truncates_partial_tail_and_resumes(tmp_path):
    p = tmp_path / "gen.jsonl"
    with JsonlAppender(p, key="k") as out:
        out.append({"k": "a", "v": 1})
        out.append({"k": "b", "v": 2})
    with open(p, "ab") as f:  # a write cut by a kill
        f.write(b'{"k": "c", "v"')
    out = JsonlAppender(p, key="k")
    assert out.done == {"a", "b"}
    out.append({"k": "c", "v": 3})
    out.close()
    rows = [json.loads(x) for x in p.read_text().splitlines()]
    assert [r["k"] for r in rows] == ["a", "b", "c"]


def test_appender_list_keys(tmp_path):
    p = tmp_path / "g.jsonl"
    with JsonlAppender(p, key="key") as out:
        out.append({"key": ["u1", "chosen_first", 0]})
    assert JsonlAppender(p, key="key").done == {("u1", "chosen_first", 0)}


def test_record_messages_by_modality(tmp_path):
    img = parse_record(row(images=["i.png"], question="What colour?"))
    msgs = record_messages(img, image_root=tmp_path)
    content = msgs[0]["content"]
    assert content[0] == {"type": "image", "image": str((tmp_path / "i.png").resolve())}
    assert "[Question]:\nWhat colour?" in content[1]["text"] and "[Response 1]:\nyes" in content[1]["text"]
    cap = parse_record(row(caption="A red circle.", images=["i.png"], modality="caption"))
    msgs = record_messages(cap, image_root=tmp_path)
    assert [p["type"] for p in msgs[0]["content"]] == ["text"]
    assert "[Image description]: A red circle.\nQ?" in msgs[0]["content"][0]["text"]
    msrl = record_messages(cap, image_root=tmp_path, prompt="msrl")
    assert "<type>" in msrl[0]["content"][0]["text"]
    swapped = record_messages(oriented(img, "chosen_second"), image_root=tmp_path)
    assert "[Response 1]:\nno" in swapped[0]["content"][1]["text"]


def test_label_noise_flips_a_stable_share_of_labelled_items():
    """rl.stress.label_noise: about `share` of the items flipped (1 <-> 2), picked by uid — the same
    items in any order — and unlabelled items left alone."""
    from pathlib import Path

    from r1rm.data.records import Record, Response
    from r1rm.data.training_sets import Item, with_label_noise

    items = [Item(Record(uid=f"u{i}", question="q", response1=Response("text", "a"), response2=Response("text", "b"),
                         label=None if i % 10 == 0 else 1 + i % 2), Path("."), None, f"f:{i}") for i in range(2000)]
    same, n0 = with_label_noise(items, 0.0)
    assert n0 == 0 and same == items
    noisy, n = with_label_noise(items, 0.2)
    changed = [(a, b) for a, b in zip(items, noisy, strict=True) if a != b]
    assert len(changed) == n and 0.15 * 1800 < n < 0.25 * 1800
    assert all(b.rec.label == 3 - a.rec.label and b.rec.uid == a.rec.uid for a, b in changed)
    assert all(b == a for a, b in zip(items, noisy, strict=True) if a.rec.label is None)
    again, _ = with_label_noise(items[::-1], 0.2)
    assert {it.rec.uid for it in again if it.rec.label != items[int(it.rec.uid[1:])].rec.label} == {
        a.rec.uid for a, _ in changed}



def test_resume_of_a_damaged_output_names_the_line(tmp_path):
    p = tmp_path / "g.jsonl"
    p.write_text('{"key": 1}\n{"key": 2, bad\n{"key": 3}\n')
    with pytest.raises(DataError) as e:
        JsonlAppender(p, key="key")
    assert e.value.where == f"{p}:2" and "invalid JSON" in e.value.what
    p.write_text('{"key": 1}\n{"other": 2}\n')
    with pytest.raises(DataError, match="has no 'key'"):
        JsonlAppender(p, key="key")
    p.write_text('{"key": 1}\n{"key": [2, 3]}\n')
    with JsonlAppender(p, key="key") as w:
        assert w.done == {1, (2, 3)}
