import json
from collections import Counter
from pathlib import Path

import pytest

from r1rm.core import metrics
from r1rm.data.benchmarks import (
    BENCHMARKS,
    MMRB_COLUMNS,
    mm_rlhf_category,
    mmrb_column,
    read_benchmark,
    vl_rewardbench_category,
)
from r1rm.data.files import write_jsonl_atomic
from r1rm.data.records import Reject
from r1rm.errors import DataError, InputFileError

FIXTURES = Path(__file__).parents[2].parent / "shared" / "fixtures"
VLRB = FIXTURES / "vl_rewardbench.jsonl"
MMRLHF = FIXTURES / "mm_rlhf_rewardbench.jsonl"


def need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"fixture not found: {path}")
    return path


def png_bytes(color=(255, 0, 0), fmt="PNG") -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 3), color).save(buf, format=fmt)
    return buf.getvalue()


def write_image(path: Path, color=(0, 255, 0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(color))


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


VL_ROW = {"id": "RLAIF-V_1", "prompt": "What is shown?", "chosen": "A cat.", "rejected": "A dog.", "image": "img/a.png"}


# ---------------------------------------------------------------- the shared fixtures
def test_vl_rewardbench_fixture_split_and_uids():
    recs = read_benchmark("vl-rewardbench", need(VLRB))
    assert len(recs) == 1250
    assert Counter(r.category for r in recs) == {"general": 183, "hallucination": 749, "reasoning": 318}
    assert len({r.uid for r in recs}) == 1250
    assert len({r.id for r in recs}) == 1225  # ids repeat; uids do not
    assert all(r.label == 1 and r.source == "vl-rewardbench" and r.modality == "image" for r in recs)
    assert all(r.meta["group"] == r.id for r in recs)
    first = json.loads(VLRB.read_text(encoding="utf-8").splitlines()[0])
    assert recs[0].id == first["id"]
    assert recs[0].response1.text == first["chosen"] and recs[0].response2.text == first["rejected"]
    assert recs[0].question == first["prompt"] and recs[0].images == (first["image"],)
    # the same file gives the same uids
    assert [r.uid for r in read_benchmark("vl-rewardbench", VLRB, limit=20)] == [r.uid for r in recs[:20]]


def test_mm_rlhf_fixture_split_groups_and_video():
    recs = read_benchmark("mm-rlhf-rewardbench", need(MMRLHF))
    assert len(recs) == 170
    assert Counter(r.category for r in recs) == {"mcq": 42, "long": 37, "short": 34, "safety": 32, "video": 25}
    assert len({r.meta["group"] for r in recs}) == 46
    assert len({r.uid for r in recs}) == 170
    videos = [r for r in recs if r.modality == "video"]
    assert len(videos) == 25
    assert all(isinstance(r.video, str) and r.video.startswith("video/") and not r.images for r in videos)
    assert all(r.task_type == "video_understanding" for r in videos)


def test_category_rules():
    assert vl_rewardbench_category("MathVerse_12") == "reasoning"
    assert vl_rewardbench_category("mmmu_pro_x") == "reasoning"
    assert vl_rewardbench_category("RLHF-V_3") == "hallucination"
    assert vl_rewardbench_category("rlaif-v_3") == "hallucination"
    assert vl_rewardbench_category("hallucination_pair-1") == "hallucination"
    assert vl_rewardbench_category("wildvision_9") == "general"
    assert mm_rlhf_category("./mcq/1.png") == "mcq"
    assert mmrb_column("reasoning", "mathvista_1") == "math"
    assert mmrb_column("reasoning", "EMMA-Coding_2") == "coding"
    assert mmrb_column("safety", "pairs_1") == "safety"
    assert mmrb_column("open_generation/preference_task", "x") == "preference"
    assert BENCHMARKS == metrics.BENCHMARKS
    assert MMRB_COLUMNS == metrics.MMRB_COLUMNS


# ---------------------------------------------------------------- uids, limit, errors
def test_identical_rows_get_suffixed_uids_in_file_order(tmp_path):
    other = {**VL_ROW, "chosen": "Another."}
    f = write_jsonl(tmp_path / "b.jsonl", [VL_ROW, VL_ROW, other, VL_ROW])
    uids = [r.uid for r in read_benchmark("vl-rewardbench", f)]
    base = uids[0]
    assert uids == [base, f"{base}-1", uids[2], f"{base}-2"]
    assert "-" not in uids[2]
    assert [r.uid for r in read_benchmark("vl-rewardbench", f)] == uids


def test_limit_keeps_first_items(tmp_path):
    rows = [{**VL_ROW, "id": f"wildvision_{i}"} for i in range(5)]
    f = write_jsonl(tmp_path / "b.jsonl", rows)
    assert [r.id for r in read_benchmark("vl-rewardbench", f, limit=2)] == ["wildvision_0", "wildvision_1"]
    assert read_benchmark("vl-rewardbench", f, limit=0) == []


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ({k: v for k, v in VL_ROW.items() if k != "chosen"}, "missing field 'chosen'"),
        ({k: v for k, v in VL_ROW.items() if k != "image"}, "missing field 'image'"),
        ({**VL_ROW, "prompt": 3}, "'prompt' must be a text"),
        ({**VL_ROW, "rejected": "A cat."}, "identical"),
        ({**VL_ROW, "image": "../outside.png"}, "outside the image root"),
    ],
)
def test_bad_row_names_file_and_line(tmp_path, row, match):
    f = write_jsonl(tmp_path / "b.jsonl", [VL_ROW, row])
    with pytest.raises(DataError, match=match) as e:
        read_benchmark("vl-rewardbench", f)
    assert e.value.where == f"{f}:2"
    assert "a vl-rewardbench row needs" in e.value.fix


def test_invalid_json_and_missing_file(tmp_path):
    f = tmp_path / "b.jsonl"
    f.write_text(json.dumps(VL_ROW) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match="invalid JSON") as e:
        read_benchmark("vl-rewardbench", f)
    assert e.value.where == f"{f}:2"
    with pytest.raises(InputFileError):
        read_benchmark("vl-rewardbench", tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="unknown benchmark"):
        read_benchmark("vlrewardbench", f)


# ---------------------------------------------------------------- media checks
def test_check_media_missing_image_fails_or_is_skipped(tmp_path):
    write_image(tmp_path / "img" / "a.png")
    rows = [VL_ROW, {**VL_ROW, "id": "wildvision_2", "image": "img/missing.png"}]
    f = write_jsonl(tmp_path / "b.jsonl", rows)
    assert len(read_benchmark("vl-rewardbench", f)) == 2  # not checked by default
    with pytest.raises(DataError, match="item 'wildvision_2'.*image not found") as e:
        read_benchmark("vl-rewardbench", f, check_media=True)
    assert e.value.where == f"{f}:2"
    skipped: list[Reject] = []
    recs = read_benchmark("vl-rewardbench", f, check_media=True, skip_missing_media=True, skipped=skipped)
    assert [r.id for r in recs] == ["RLAIF-V_1"]
    assert len(skipped) == 1 and skipped[0].line == 2 and skipped[0].reason == "missing_image"
    assert "wildvision_2" in skipped[0].message and skipped[0].file == str(f)


def test_check_media_corrupt_image_and_image_root(tmp_path):
    root = tmp_path / "media"
    (root / "img").mkdir(parents=True)
    (root / "img" / "a.png").write_bytes(b"not an image")
    f = write_jsonl(tmp_path / "b.jsonl", [VL_ROW])
    with pytest.raises(DataError, match="cannot be decoded"):
        read_benchmark("vl-rewardbench", f, image_root=root, check_media=True)
    write_image(root / "img" / "a.png")
    assert len(read_benchmark("vl-rewardbench", f, image_root=root, check_media=True)) == 1


def test_check_media_video_frames_folder(tmp_path):
    row = {"id": "v1", "prompt": "What happens?", "chosen": "A run.", "rejected": "A swim.", "video": "video/clip"}
    img = {"id": "m1", "prompt": "Q", "chosen": "A", "rejected": "B", "image": "mcq/1.png"}
    write_image(tmp_path / "mcq" / "1.png")
    f = write_jsonl(tmp_path / "b.jsonl", [img, row])
    skipped: list[Reject] = []
    recs = read_benchmark("mm-rlhf-rewardbench", f, check_media=True, skip_missing_media=True, skipped=skipped)
    assert [r.id for r in recs] == ["m1"] and skipped[0].reason == "missing_video"
    (tmp_path / "video" / "clip").mkdir(parents=True)
    with pytest.raises(DataError, match="item 'v1'.*no image frames") as e:
        read_benchmark("mm-rlhf-rewardbench", f, check_media=True)
    assert e.value.where == f"{f}:2"
    for i in range(3):
        write_image(tmp_path / "video" / "clip" / f"{i}.png")
    recs = read_benchmark("mm-rlhf-rewardbench", f, check_media=True)
    assert recs[1].modality == "video" and recs[1].video == "video/clip" and recs[1].category == "video"


def test_mm_rlhf_needs_image_or_video(tmp_path):
    f = write_jsonl(tmp_path / "b.jsonl", [{"id": "x", "prompt": "Q", "chosen": "A", "rejected": "B"}])
    with pytest.raises(DataError, match="missing field 'image'"):
        read_benchmark("mm-rlhf-rewardbench", f)
    f = write_jsonl(tmp_path / "c.jsonl", [{"id": "x", "prompt": "Q", "chosen": "A", "rejected": "B", "image": "x.png"}])
    with pytest.raises(DataError, match="no folder"):
        read_benchmark("mm-rlhf-rewardbench", f)


# ---------------------------------------------------------------- VL-RewardBench parquet
def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_vl_rewardbench_parquet_embedded_images_cached_once(tmp_path):
    red, blue = png_bytes((255, 0, 0)), png_bytes((0, 0, 255), fmt="JPEG")
    rows = [
        {"id": "mathverse_1", "query": "Q1", "image": {"bytes": red, "path": "a.png"}, "response": ["good", "bad"], "human_ranking": [0, 1]},
        {"id": "RLHF-V/2", "query": "Q2", "image": {"bytes": blue, "path": None}, "response": ["worse", "better"], "human_ranking": [1, 0]},
        {"id": "mathverse_1", "query": "Q1", "image": {"bytes": blue, "path": None}, "response": ["x", "y"], "human_ranking": [0, 1]},
        {"id": "wildvision_3", "query": "Q3", "image": {"bytes": None, "path": "img/c.png"}, "response": ["c1", "c2"], "human_ranking": [0, 1]},
    ]
    data = tmp_path / "data"
    data.mkdir()
    f = write_parquet(data / "test-00000-of-00001.parquet", rows)
    media = tmp_path / "media"
    recs = read_benchmark("vl-rewardbench", f, media_dir=media)
    # embedded bytes go under media_dir (never next to the data); a path row is linked in beside them
    assert [r.images for r in recs] == [
        ("embedded/mathverse_1.png",),
        ("embedded/RLHF-V_2.png",),
        ("embedded/mathverse_1-1.png",),
        ("linked/img/c.png",),
    ]
    assert sorted(x.name for x in data.iterdir()) == ["test-00000-of-00001.parquet"]
    assert [r.category for r in recs] == ["reasoning", "hallucination", "reasoning", "general"]
    assert (recs[1].response1.text, recs[1].response2.text) == ("better", "worse")
    assert (recs[0].response1.text, recs[0].response2.text) == ("good", "bad")
    cached = media / "embedded" / "mathverse_1.png"
    assert cached.read_bytes() == red
    from PIL import Image

    with Image.open(media / "embedded" / "RLHF-V_2.png") as im:
        assert im.format == "PNG" and im.size == (4, 3)
    # a second read reuses the cache (no rewrite) and gives the same records
    mtime = cached.stat().st_mtime_ns
    again = read_benchmark("vl-rewardbench", f, media_dir=media)
    assert [r.uid for r in again] == [r.uid for r in recs]
    assert cached.stat().st_mtime_ns == mtime
    # path rows resolve under image_root; check_media then finds every image (row 4's file is missing)
    root = tmp_path / "root"
    with pytest.raises(DataError, match="item 'wildvision_3'") as e:
        read_benchmark("vl-rewardbench", f, image_root=root, check_media=True, media_dir=media)
    assert e.value.where == f"{f}:row 4"
    write_image(root / "img" / "c.png")
    assert len(read_benchmark("vl-rewardbench", f, image_root=root, check_media=True, media_dir=media)) == 4
    assert (media / "linked" / "img" / "c.png").is_file()


def test_vl_rewardbench_parquet_bad_rows(tmp_path):
    good = {"id": "a", "query": "Q", "image": "x.png", "response": ["1", "2"], "human_ranking": [0, 1]}
    f = write_parquet(tmp_path / "t.parquet", [good, {**good, "human_ranking": [0, 0]}])
    with pytest.raises(DataError, match="human_ranking") as e:
        read_benchmark("vl-rewardbench", f)
    assert e.value.where == f"{f}:row 2"
    f = write_parquet(tmp_path / "u.parquet", [{**good, "image": {"bytes": b"garbage", "path": None}}])
    with pytest.raises(DataError, match="cannot be decoded"):
        read_benchmark("vl-rewardbench", f)
    skipped: list[Reject] = []
    assert read_benchmark("vl-rewardbench", f, skip_missing_media=True, skipped=skipped) == []
    assert skipped[0].reason == "corrupt_image"


# ---------------------------------------------------------------- Multimodal RewardBench
def mmrb_row(item_id, category, better="Output1", **kw):
    row = {"ID": item_id, "Text": f"Q {item_id}", "Image": f"images/{item_id}.jpg", "Output1": "first", "Output2": "second",
           "Better": better, "Category": category}
    row.update(kw)
    return row


def test_mmrb_categories_map_to_seven_columns(tmp_path):
    rows = [
        mmrb_row("nocaps_1", "open_generation/correctness_task"),
        mmrb_row("visitbench_2", "open_generation/preference_task", better="Output2"),
        mmrb_row("mmmu-s_3", "knowledge"),
        mmrb_row("mathvista_4", "reasoning"),
        mmrb_row("EMMA-Coding_5", "reasoning"),
        mmrb_row("image2struct_6", "reasoning"),
        mmrb_row("pairs_7", "safety"),
        mmrb_row("hateful_memes_8", "safety"),
        mmrb_row("RealworldQA_9", "vqa"),
    ]
    f = write_jsonl(tmp_path / "mmrb.jsonl", rows)
    recs = read_benchmark("multimodal-rewardbench", f)
    assert [r.category for r in recs] == [
        "correctness", "preference", "knowledge", "math", "coding", "coding", "safety", "safety", "vqa",
    ]
    assert {r.category for r in recs} == set(MMRB_COLUMNS)
    assert (recs[1].response1.text, recs[1].response2.text) == ("second", "first")
    assert (recs[0].response1.text, recs[0].response2.text) == ("first", "second")
    assert recs[6].meta["subcategory"] == "bias" and recs[7].meta["subcategory"] == "toxicity"
    assert recs[0].images == ("images/nocaps_1.jpg",) and recs[0].source == "multimodal-rewardbench"


def test_mmrb_unknown_category_and_bad_better(tmp_path):
    f = write_jsonl(tmp_path / "mmrb.jsonl", [mmrb_row("a", "vqa"), mmrb_row("b", "chitchat")])
    with pytest.raises(DataError, match="unknown Multimodal RewardBench Category \"chitchat\"") as e:
        read_benchmark("multimodal-rewardbench", f)
    assert e.value.where == f"{f}:2"
    f = write_jsonl(tmp_path / "b.jsonl", [mmrb_row("a", "vqa", better="A")])
    with pytest.raises(DataError, match="'Better' must be"):
        read_benchmark("multimodal-rewardbench", f)


def test_mmrb_json_array_with_meta_category_names_lines(tmp_path):
    rows = [mmrb_row("a", "vqa"), {k: v for k, v in mmrb_row("b", "x").items() if k != "Category"} | {"Meta": {"Category": "knowledge"}}]
    f = tmp_path / "all_data.json"
    f.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    recs = read_benchmark("multimodal-rewardbench", f)
    assert [r.category for r in recs] == ["vqa", "knowledge"]
    bad = [mmrb_row("a", "vqa"), mmrb_row("b", "vqa", Output1=None)]
    f.write_text(json.dumps(bad, indent=2), encoding="utf-8")
    with pytest.raises(DataError, match="missing field 'Output1'") as e:
        read_benchmark("multimodal-rewardbench", f)
    second_start = [i for i, line in enumerate(f.read_text().splitlines(), start=1) if line == "  {"][1]
    assert e.value.where == f"{f}:{second_start}"


# ---------------------------------------------------------------- canonical
def test_canonical_records_oriented_chosen_first(tmp_path):
    rows = [
        {"id": "p1", "question": "Q", "response1": "worse", "response2": "better", "label": 2, "category": "cats"},
        {"id": "p1", "question": "Q2", "response1": "good", "response2": "bad", "label": 1, "source": "mine",
         "images": ["a.png"], "meta": {"group": "g"}},
    ]
    f = tmp_path / "c.jsonl"
    write_jsonl_atomic(f, rows)
    recs = read_benchmark("canonical", f)
    assert [(r.response1.text, r.label) for r in recs] == [("better", 1), ("good", 1)]
    assert recs[0].category == "cats" and recs[0].meta["group"] == "p1" and recs[0].source == "canonical"
    assert recs[1].meta["group"] == "g" and recs[1].source == "mine"
    with pytest.raises(DataError, match="item 'p1'.*image not found"):
        read_benchmark("canonical", f, check_media=True)
    skipped: list[Reject] = []
    assert len(read_benchmark("canonical", f, check_media=True, skip_missing_media=True, skipped=skipped)) == 1
    assert skipped[0].line == 2
