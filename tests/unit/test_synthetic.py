"""The synthetic preference task: valid records, balance, determinism, modalities, images, traces."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
from PIL import Image

from r1rm.data.records import parse_record, read_records
from r1rm.data.synthetic import (
    COLOURS,
    GENERATION,
    LEVELS,
    SHAPES,
    make_examples,
    mistaken_trace,
    render_image,
    teacher_trace,
    write_dataset,
)
from r1rm.errors import ConfigError

# the understanding levels; level 6 (generation pairs) has its own tests (tests/integration/test_generation_pairs.py)
ALL_LEVELS = tuple(lv for lv in sorted(LEVELS) if lv != GENERATION)
TRACE_RE = re.compile(r"^<think>.*?</think><answer>[12]</answer>$", re.DOTALL)
CONCLUSION_RE = re.compile(r"So Response ([12]) is correct\.</think>")


def _read(path):
    return list(read_records(path))


@pytest.mark.parametrize("modality", ["image", "caption", "text"])
def test_written_records_validate(tmp_path, modality):
    path = write_dataset(tmp_path, 50, seed=0, levels=ALL_LEVELS, modality=modality)
    assert path == tmp_path / "synthetic.jsonl"
    recs = _read(path)
    assert len(recs) == 50
    assert len({r.uid for r in recs}) == 50
    for i, r in enumerate(recs):
        assert r.source == "synthetic"
        assert r.id == f"synthetic-{i}"
        assert r.modality == modality
        assert r.category == LEVELS[r.difficulty]
        assert r.task_type == ("text" if modality == "text" else "image_understanding")
        assert set(r.meta) >= {"trace", "facts"}
        assert r.response1.kind == r.response2.kind == "text"
        if modality == "image":
            assert r.images == (f"images/{r.uid}.png",)
        else:
            assert r.images == ()
            assert not (tmp_path / "images").exists()
        if modality == "caption":
            assert r.caption and r.caption.endswith(".")
        if modality == "text":
            assert r.caption is None
            assert r.question.startswith("Scene: ")
    assert {r.difficulty for r in recs} == set(ALL_LEVELS)


def test_examples_convert_through_parse_record():
    for ex in make_examples(20, seed=5, levels=ALL_LEVELS, modality="caption"):
        rec = parse_record(ex.to_record("train"))
        assert rec.id == f"train-{ex.index}"
        assert rec.label == ex.label


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 51, 100, 333])
@pytest.mark.parametrize("levels", [(1,), (1, 2, 3, 4, 5), (2, 4)])
def test_labels_balanced(n, levels):
    labels = Counter(ex.label for ex in make_examples(n, seed=n, levels=levels, modality="text"))
    assert sum(labels.values()) == n
    assert abs(labels[1] - labels[2]) <= 1


def test_labels_and_levels_balanced_per_level():
    exs = make_examples(101, seed=2, levels=ALL_LEVELS, modality="text")
    per_level = Counter(ex.level for ex in exs)
    assert max(per_level.values()) - min(per_level.values()) <= 1
    for lv in ALL_LEVELS:
        c = Counter(ex.label for ex in exs if ex.level == lv)
        assert abs(c[1] - c[2]) <= 1


def test_labels_not_trivially_alternating():
    labels = [ex.label for ex in make_examples(200, seed=0, modality="text")]
    assert labels != [1 + i % 2 for i in range(200)] and labels != [2 - i % 2 for i in range(200)]


def test_deterministic_bytes(tmp_path):
    a = write_dataset(tmp_path / "a", 40, seed=7, levels=ALL_LEVELS, modality="image")
    b = write_dataset(tmp_path / "b", 40, seed=7, levels=ALL_LEVELS, modality="image")
    c = write_dataset(tmp_path / "c", 40, seed=8, levels=ALL_LEVELS, modality="image")
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    imgs_a = sorted(p.name for p in (tmp_path / "a" / "images").iterdir())
    imgs_b = sorted(p.name for p in (tmp_path / "b" / "images").iterdir())
    assert imgs_a == imgs_b and len(imgs_a) == 40
    for name in imgs_a:
        assert (tmp_path / "a" / "images" / name).read_bytes() == (tmp_path / "b" / "images" / name).read_bytes()
    # different seed: different content, not only different uids
    qa = [json.loads(line)["meta"]["facts"] for line in a.read_text().splitlines()]
    qc = [json.loads(line)["meta"]["facts"] for line in c.read_text().splitlines()]
    assert qa != qc


def test_modalities_share_facts():
    kw = dict(seed=11, levels=ALL_LEVELS)
    by_mod = {m: make_examples(60, modality=m, **kw) for m in ("image", "caption", "text")}
    recs = {m: [ex.to_record() for ex in exs] for m, exs in by_mod.items()}
    for img, cap, txt in zip(recs["image"], recs["caption"], recs["text"], strict=True):
        for key in ("label", "response1", "response2", "difficulty", "category"):
            assert img[key] == cap[key] == txt[key]
        assert img["meta"]["facts"] == cap["meta"]["facts"] == txt["meta"]["facts"]
        assert img["question"] == cap["question"]
        assert txt["question"] == f"Scene: {cap['meta']['facts']['description']}.\n{cap['question']}"
        assert cap["caption"] == img["caption"]
        assert cap["caption"].lower() == cap["meta"]["facts"]["description"] + "."
        assert len({img["uid"], cap["uid"], txt["uid"]}) == 3
    for a, b in zip(by_mod["image"], by_mod["text"], strict=True):
        assert a.scene == b.scene


def test_images_size_and_level1_colour(tmp_path):
    path = write_dataset(tmp_path, 30, seed=3, levels=(1,), modality="image", image_size=112)
    for rec in _read(path):
        img = Image.open(tmp_path / rec.images[0])
        assert img.format == "PNG"
        assert img.size == (112, 112)
        img = img.convert("RGB")
        (shape,) = rec.meta["facts"]["shapes"]
        colour = rec.meta["facts"]["correct"]
        assert rec.chosen.text == f"The shape is {colour}."
        assert shape["colour"] == colour
        assert shape["size"] >= 1 / 3
        centre = (int(shape["x"] * 112), int(shape["y"] * 112))
        assert img.getpixel(centre) == COLOURS[colour]
        assert img.getpixel((0, 0)) == (255, 255, 255) or shape["size"] > 0.9
        # the shape covers a good part of the image
        n_colour = sum(1 for px in img.getdata() if px == COLOURS[colour])
        assert n_colour >= 0.08 * 112 * 112


def test_render_other_sizes_and_all_shapes():
    for ex in make_examples(30, seed=4, levels=(2, 3, 4, 5), modality="image"):
        for size in (64, 112, 224):
            img = render_image(ex.scene, size)
            assert img.size == (size, size) and img.mode == "RGB"
            for s in ex.scene.shapes:
                assert img.getpixel((int(s.x * size), int(s.y * size))) == COLOURS[s.colour]


def test_trace_format_and_answer():
    for m in ("image", "caption", "text"):
        for ex in make_examples(50, seed=9, levels=ALL_LEVELS, modality=m):
            rec = ex.to_record()
            trace = rec["meta"]["trace"]
            assert TRACE_RE.match(trace)
            for tag in ("<think>", "</think>", "<answer>", "</answer>"):
                assert trace.count(tag) == 1
            assert trace.endswith(f"<answer>{rec['label']}</answer>")
            assert CONCLUSION_RE.search(trace).group(1) == str(rec["label"])
            lead = {"image": "The image shows ", "caption": "The caption says ", "text": "The scene is "}[m]
            assert lead in trace
            for k in (1, 2):
                claim = rec[f"response{k}"][0].lower() + rec[f"response{k}"][1:-1]
                assert f"Response {k} says {claim}." in trace
            other = teacher_trace(ex, 3 - ex.label)
            assert TRACE_RE.match(other) and other.endswith(f"<answer>{3 - ex.label}</answer>")
            assert CONCLUSION_RE.search(other).group(1) == str(3 - ex.label)
    with pytest.raises(ValueError):
        teacher_trace(ex, 0)


QUESTION_KIND = {
    1: re.compile(r"^What colour is the shape\?$"),
    2: re.compile(r"^What kind of shape is it\?$"),
    3: re.compile(r"^How many (circle|square|triangle)s are there\?$"),
    4: re.compile(r"^Which side is the (red|green|blue|yellow|purple) shape on\?$"),
    5: re.compile(r"^What colour is the (circle|square|triangle)\?$"),
}


@pytest.mark.parametrize("level", ALL_LEVELS)
def test_each_level_asks_its_question(level):
    exs = make_examples(40, seed=level, levels=(level,), modality="caption")
    assert {ex.level for ex in exs} == {level}
    for ex in exs:
        assert QUESTION_KIND[level].match(ex.question), ex.question
        assert ex.correct != ex.wrong
        assert ex.response1 != ex.response2
        assert {ex.response1, ex.response2} == {ex.correct, ex.wrong}
        assert ex.category == LEVELS[level]
        f = ex.facts
        shapes = f["shapes"]
        if level in (1, 2):
            assert len(shapes) == 1
            assert f["correct"] == shapes[0]["colour" if level == 1 else "shape"]
            assert f["wrong"] in (COLOURS if level == 1 else SHAPES)
        elif level == 3:
            assert 1 <= len(shapes) <= 4 and f["correct"] == len(shapes)
            assert len({(s["shape"], s["colour"]) for s in shapes}) == 1
            assert f["wrong"] in (1, 2, 3, 4) and f["wrong"] != f["correct"]
        elif level == 4:
            left, right = sorted(shapes, key=lambda s: s["x"])
            assert left["x"] < 0.5 < right["x"] and left["colour"] != right["colour"]
            target = left if f["correct"] == "left" else right
            assert target["colour"] == f["asked"]["colour"]
            assert {f["correct"], f["wrong"]} == {"left", "right"}
        else:
            a, b = shapes
            assert a["shape"] != b["shape"] and a["colour"] != b["colour"]
            asked = a if a["shape"] == f["asked"]["shape"] else b
            other = b if asked is a else a
            assert f["correct"] == asked["colour"] and f["wrong"] == other["colour"]
    # every level uses some variety of answers
    assert len({str(ex.facts["correct"]) for ex in exs}) >= 2


def test_no_uid_collision_between_seeds():
    for m in ("image", "caption", "text"):
        a = {ex.uid for ex in make_examples(300, seed=0, levels=ALL_LEVELS, modality=m)}
        b = {ex.uid for ex in make_examples(300, seed=1, levels=ALL_LEVELS, modality=m)}
        assert len(a) == len(b) == 300
        assert not a & b


def test_prefix_names_file_and_ids(tmp_path):
    path = write_dataset(tmp_path, 5, seed=0, levels=(1,), modality="text", prefix="heldout")
    assert path.name == "heldout.jsonl"
    assert [r.id for r in _read(path)] == [f"heldout-{i}" for i in range(5)]


def test_bad_arguments():
    with pytest.raises(ConfigError):
        make_examples(5, seed=0, levels=(7,))
    with pytest.raises(ConfigError):
        make_examples(5, seed=0, levels=())
    with pytest.raises(ConfigError):
        make_examples(5, seed=0, modality="video")
    with pytest.raises(ConfigError):
        make_examples(-1, seed=0)
    with pytest.raises(ConfigError):
        make_examples(5, seed=0, image_size=8)
    assert make_examples(0, seed=0) == []


def test_thousand_images_fast(tmp_path):
    import time

    t = time.perf_counter()
    path = write_dataset(tmp_path, 1000, seed=0, levels=ALL_LEVELS, modality="image")
    elapsed = time.perf_counter() - t
    assert len(list((tmp_path / "images").iterdir())) == 1000
    assert sum(1 for _ in path.open()) == 1000
    assert elapsed < 10, elapsed


# ---------------------------------------------------------------- the simulated imperfect teacher
def test_teacher_error_zero_leaves_records_unchanged():
    plain = [ex.to_record() for ex in make_examples(60, seed=4, levels=ALL_LEVELS)]
    same = [ex.to_record() for ex in make_examples(60, seed=4, levels=ALL_LEVELS, teacher_error=0.0,
                                                   teacher_blind=["purple"])]
    assert plain == same
    assert all("teacher_correct" not in r["meta"] for r in plain)


@pytest.mark.parametrize("level", ALL_LEVELS)
def test_mistaken_trace_sees_what_the_wrong_response_says(level):
    exs = make_examples(120, seed=5, levels=(level,), teacher_error=1.0)
    for ex in exs:
        rec = ex.to_record()
        trace = rec["meta"]["trace"]
        assert rec["meta"]["teacher_correct"] is False
        assert TRACE_RE.match(trace)
        wrong = 3 - rec["label"]
        assert trace.endswith(f"<answer>{wrong}</answer>")
        assert CONCLUSION_RE.search(trace).group(1) == str(wrong)
        # the stated fact is the wrong response's claim; the responses are quoted as they are
        wrong_claim = rec[f"response{wrong}"]
        assert f" {wrong_claim} So Response {wrong} is correct." in trace
        for k in (1, 2):
            claim = rec[f"response{k}"][0].lower() + rec[f"response{k}"][1:-1]
            assert f"Response {k} says {claim}." in trace
        # the scene it describes is not the true one (it saw what the wrong response says)
        assert f"The image shows {ex.scene.describe()}." not in trace
        # the same example with a perfect teacher: the labelled trace
        assert make_examples(120, seed=5, levels=(level,))[ex.index].trace == teacher_trace(ex, ex.label)


def test_teacher_blind_spot_and_error_rate():
    exs = make_examples(3000, seed=6, levels=(1,), teacher_error=0.6, teacher_blind=["purple"])
    purple = [e for e in exs if e.facts["correct"] == "purple"]
    others = [e for e in exs if e.facts["correct"] != "purple"]
    assert all(e.teacher_correct for e in others)
    assert all(e.trace == teacher_trace(e, e.label) for e in others)
    wrong_share = sum(not e.teacher_correct for e in purple) / len(purple)
    assert 0.55 < wrong_share < 0.65, wrong_share  # ~600 purple scenes: 3 standard errors
    # deterministic per uid: the same call marks the same examples
    again = make_examples(3000, seed=6, levels=(1,), teacher_error=0.6, teacher_blind=["purple"])
    assert [e.teacher_correct for e in again] == [e.teacher_correct for e in exs]
    # the labels never change with the teacher
    assert [e.label for e in exs] == [e.label for e in make_examples(3000, seed=6, levels=(1,))]


@pytest.mark.parametrize("level", ALL_LEVELS)
def test_position_biased_teacher_reasons_right_and_names_response_1(level):
    exs = make_examples(120, seed=5, levels=(level,), teacher_error=1.0, teacher_mistake="position")
    perfect = make_examples(120, seed=5, levels=(level,))
    for ex, good in zip(exs, perfect, strict=True):
        rec = ex.to_record()
        trace = rec["meta"]["trace"]
        assert TRACE_RE.match(trace)
        if rec["label"] == 1:  # it errs only by preferring the first response
            assert rec["meta"]["teacher_correct"] is True
            assert trace == good.trace
            continue
        assert rec["meta"]["teacher_correct"] is False
        assert trace.endswith("So Response 1 is correct.</think><answer>1</answer>")
        # the reasoning is the correct trace's, word for word; only the conclusion differs
        body = good.trace.split(" So Response 2 is correct.")[0]
        assert good.trace.endswith("So Response 2 is correct.</think><answer>2</answer>")
        assert trace == body + " So Response 1 is correct.</think><answer>1</answer>"
    assert {e.label for e in exs if not e.teacher_correct} == {2}


def test_position_biased_teacher_rate_and_blind_spot():
    exs = make_examples(3000, seed=6, levels=(1,), teacher_error=0.7, teacher_blind=["purple"],
                        teacher_mistake="position")
    hit = [e for e in exs if e.facts["correct"] == "purple" and e.label == 2]
    hit_uids = {e.uid for e in hit}
    assert all(e.teacher_correct for e in exs if e.uid not in hit_uids)
    share = sum(not e.teacher_correct for e in hit) / len(hit)
    assert 0.62 < share < 0.78, share  # ~300 purple label-2 scenes: ~3 standard errors
    # the same uids as the perception teacher's mistakes, where the label is 2
    perception = make_examples(3000, seed=6, levels=(1,), teacher_error=0.7, teacher_blind=["purple"])
    assert [e.teacher_correct for e in hit] == [p.teacher_correct for p in perception if p.uid in hit_uids]


def test_teacher_bad_arguments():
    with pytest.raises(ConfigError, match="teacher_error"):
        make_examples(4, seed=0, teacher_error=1.5)
    with pytest.raises(ConfigError, match="teacher_mistake 'lazy'"):
        make_examples(4, seed=0, teacher_error=0.5, teacher_mistake="lazy")
    with pytest.raises(ValueError, match="teacher mistake"):
        mistaken_trace(make_examples(4, seed=0)[0], kind="lazy")
    with pytest.raises(ConfigError, match="teacher_blind entry 'pink'"):
        make_examples(4, seed=0, teacher_error=0.5, teacher_blind=["pink"])


def test_config_blind_spot_names_are_the_tasks_colours_and_shapes():
    from typing import get_args

    from r1rm.config import SyntheticAttribute

    assert set(get_args(SyntheticAttribute)) == set(COLOURS) | set(SHAPES)


def test_config_teacher_mistakes_are_the_generators():
    from typing import get_args

    from r1rm.config import TeacherMistake
    from r1rm.data.synthetic import TEACHER_MISTAKES

    assert get_args(TeacherMistake) == TEACHER_MISTAKES
