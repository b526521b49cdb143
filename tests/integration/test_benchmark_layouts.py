"""Benchmarks and training sets as the hub hands them out: snapshot folders, hub ids, parquet with embedded
images, GenAI-Bench's videos — read from offline replicas of each release's layout (tests/replicas.py)."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import replicas as R  # noqa: E402

from r1rm.data.benchmarks import load_benchmark  # noqa: E402
from r1rm.errors import ConfigError, DataError, InputFileError  # noqa: E402


@pytest.fixture(scope="module")
def rep(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("replicas")
    R.vl_rewardbench(base / "vl")
    R.multimodal_rewardbench(base / "mmrb")
    R.mm_rlhf_rewardbench(base / "mmrlhf")
    R.genai_bench(base / "genai")
    R.r1reward_rl(base / "r1rl")
    return base


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def sizes(bench) -> list[tuple[int, int]]:
    from PIL import Image

    out = []
    for rec in bench.records:
        with Image.open(bench.root / rec.images[0]) as im:
            out.append(im.size)
    return out


def test_vl_rewardbench_snapshot_file_and_shard_folder(rep, tmp_path):
    before = listing(rep / "vl")
    bench = load_benchmark("vl-rewardbench", rep / "vl", check_media=True, media_dir=tmp_path / "media")
    assert [r.id for r in bench.records] == R.VLRB_IDS
    assert [r.category for r in bench.records] == ["reasoning", "hallucination", "general", "hallucination"]
    assert {r.response1.text for r in bench.records} == {"good answer"}  # human_ranking [1, 0] turned round
    assert sizes(bench) == R.SIZES[:4] and bench.root == tmp_path / "media"
    assert listing(rep / "vl") == before  # nothing written next to the data
    # the snapshot, its data/ folder and the parquet file itself read the same
    for p in (rep / "vl" / "data", rep / "vl" / "data" / "test-00000-of-00001.parquet"):
        again = load_benchmark("vl-rewardbench", p, media_dir=tmp_path / "media")
        assert [r.uid for r in again.records] == [r.uid for r in bench.records]


def test_multimodal_rewardbench_clone_and_mm_rlhf_snapshot(rep, tmp_path):
    mmrb = load_benchmark("multimodal-rewardbench", rep / "mmrb", check_media=True, media_dir=tmp_path / "m")
    assert [r.category for r in mmrb.records] == ["correctness", "preference", "knowledge", "math", "safety"]
    assert {r.response1.text for r in mmrb.records} == {"good answer"}
    assert mmrb.root == rep / "mmrb" / "data" and sizes(mmrb) == R.SIZES
    # MM-RLHF-RewardBench: the card's parquet and the top-level JSONL give the same items; media under images/
    pq = load_benchmark("mm-rlhf-rewardbench", rep / "mmrlhf", check_media=True, media_dir=tmp_path / "m")
    js = load_benchmark("mm-rlhf-rewardbench", rep / "mmrlhf" / "mm_reward_bench.jsonl", check_media=True)
    assert [r.uid for r in pq.records] == [r.uid for r in js.records]
    assert [r.category for r in pq.records] == ["mcq", "mcq", "long", "video"]
    assert [r.meta["group"] for r in pq.records][:2] == ["073712_1", "073712_2"]
    assert pq.root == rep / "mmrlhf" / "images" and pq.records[3].video == "video/abc"
    # rows 1 and 2 share one image (as the release's pairs of one prompt do)
    assert sizes(type(pq)(pq.records[:3], pq.root, pq.files, "")) == [R.SIZES[1], R.SIZES[1], R.SIZES[2]]
    assert not (tmp_path / "m").exists()  # nothing embedded: nothing written at all


def test_zipped_media_in_a_read_only_download(rep, tmp_path, monkeypatch):
    import shutil
    import zipfile

    monkeypatch.setenv("R1RM_CACHE", str(tmp_path / "cache"))
    snap = tmp_path / "mmrlhf"
    shutil.copytree(rep / "mmrlhf", snap, ignore=shutil.ignore_patterns("images"))
    with zipfile.ZipFile(snap / "images.zip", "w") as z:
        for f in sorted((rep / "mmrlhf" / "images").rglob("*")):
            z.write(f, f.relative_to(rep / "mmrlhf").as_posix())
    for p in [snap, *snap.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        bench = load_benchmark("mm-rlhf-rewardbench", snap, check_media=True, media_dir=tmp_path / "media")
        ref = load_benchmark("mm-rlhf-rewardbench", rep / "mmrlhf")
        assert [r.uid for r in bench.records] == [r.uid for r in ref.records]
        assert bench.root.parent.parent == tmp_path / "cache" / "unzipped" and bench.root.name == "images"
        assert listing(snap) == ["README.md", "data", "data/train-00000-of-00001.parquet", "images.zip", "mm_reward_bench.jsonl"]
    finally:
        for p in [snap, *snap.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)


def test_genai_bench_image_and_video_subsets(rep, tmp_path):
    from PIL import Image

    with pytest.raises(ConfigError, match="several subsets.*image_edition, image_generation, video_generation") as e:
        load_benchmark("genai-bench", rep / "genai")
    assert "eval.subset" in e.value.fix
    skipped: list = []
    img = load_benchmark("genai-bench", rep / "genai", subset="image_generation", check_media=True, skipped=skipped,
                         media_dir=tmp_path / "media")
    assert len(img.records) == 3 and sorted(s.reason for s in skipped) == ["both_bad", "tie"]  # counted, not scored
    # leftvote: the left (white) output is chosen; rightvote: the right (black) one
    chosen = []
    for rec in img.records:
        with Image.open(img.root / rec.response1.visual) as im:
            chosen.append((im.getpixel((0, 0)), im.size))
    assert chosen == [((255, 255, 255), R.SIZES[0]), ((0, 0, 0), R.SIZES[1]), ((0, 0, 0), R.SIZES[4])]
    v1 = load_benchmark("genai-bench", rep / "genai", subset="image_generation", split="test_v1", media_dir=tmp_path / "media")
    assert len(v1.records) == 2
    # image_edition: the source image is the context, the two edits the responses
    edit = load_benchmark("genai-bench", rep / "genai", subset="image_edition", check_media=True, media_dir=tmp_path / "media")
    assert [(r.category, r.task_type, r.question) for r in edit.records] == [
        ("image_edition", "image_generation", "turn the cat into a dog")] * 2
    assert [r.response1.visual == img.records[i].response1.visual for i, r in enumerate(edit.records)] == [True, True]
    assert sizes(edit) == R.SIZES[:2]
    # videos: the release lists URLs; their files sit in videos/ and are decoded with PyAV, 4 frames sampled uniformly
    vid = load_benchmark("genai-bench", rep / "genai", subset="video_generation", check_media=True, video_max_frames=4,
                         media_dir=tmp_path / "media")
    assert [r.category for r in vid.records] == ["video_generation"] * 2
    frames = sorted((vid.root / vid.records[0].response1.visual).iterdir())
    assert [f.name for f in frames] == ["0001.png", "0002.png", "0003.png", "0004.png"]
    greys = []
    for f in frames:
        with Image.open(f) as im:
            greys.append(im.getpixel((16, 12))[0])
    # frames 2, 7, 12, 17 of 20 (grey level 10 * i), within the codec's loss
    assert all(abs(g - 10 * i) <= 8 for g, i in zip(greys, (2, 7, 12, 17), strict=True)), greys
    assert "frames" not in listing(rep / "genai") and "embedded" not in listing(rep / "genai")
    # a video file handed to an engine (judge requests) is decoded the same way
    from r1rm.data.media import video_frame_list

    decoded = video_frame_list(str(rep / "genai" / "videos" / "l0.mp4"), 4)
    assert [im.size for im in decoded] == [(32, 24)] * 4
    assert [abs(im.getpixel((16, 12))[0] - g) <= 8 for im, g in zip(decoded, greys, strict=True)] == [True] * 4


def test_bad_layouts_say_what_and_how(rep, tmp_path):
    empty = tmp_path / "snap"
    R.png(empty / "images" / "a.png", (8, 8))
    (empty / "README.md").write_text("# no data here\n")
    with pytest.raises(InputFileError, match="holds no data files") as e:
        load_benchmark("vl-rewardbench", empty)
    assert "hf download --repo-type dataset" in e.value.fix
    rows = [{"id": "x", "query": "q", "image": {"bytes": R.png_bytes((8, 8)), "path": None}, "response": ["a", "b"]}]
    bad = R.parquet(tmp_path / "bad" / "test-00000-of-00001.parquet", rows)
    with pytest.raises(DataError, match="'human_ranking' missing; the file has id, image, query, response") as e:
        load_benchmark("vl-rewardbench", bad)
    assert e.value.where == str(bad) and "eval.benchmark" in e.value.fix
    with pytest.raises(ConfigError, match="no split 'validation'; it has test"):
        load_benchmark("vl-rewardbench", rep / "vl", split="validation")


def recipe(tmp_path: Path, body: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def eval_args(tiny, out) -> list[str]:
    return [f"model.path={tiny}", f"output_dir={out}", "runtime.device=cpu", "runtime.progress=false",
            "runtime.report_to=none", "generation.max_new_tokens=6", "engine.batch_size=8"]


def test_eval_hub_id_from_a_read_only_hub_cache(cli, tiny, rep, tmp_path, monkeypatch):
    hf_home = tmp_path / "hf"
    snap = R.hub_cache(hf_home, "MMInstruction/VL-RewardBench", rep / "vl")
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = listing(hf_home)
    for p in [snap, *snap.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        out = tmp_path / "out"
        proc = cli("eval", "--recipe", "recipes/tiny/eval.yaml", *eval_args(tiny, out), "eval.benchmark=vl-rewardbench",
                   "eval.path=MMInstruction/VL-RewardBench")
        assert proc.returncode == 0, proc.stderr[-3000:]
        m = json.loads((out / "metrics.json").read_text())
        assert (m["n_items"], m["n_generations"]) == (4, 8)
        assert sorted(m["accuracy"]["chosen_first"]["per_category"]) == ["general", "hallucination", "reasoning"]
        assert sorted(os.listdir(out / "media" / "embedded")) == sorted(f"{i}.png" for i in R.VLRB_IDS)
        assert listing(hf_home) == before  # the cache (read-only) is only read
        # an id that is not in the cache, offline: exit 2 saying what to download and how
        proc = cli("eval", "--recipe", "recipes/tiny/eval.yaml", *eval_args(tiny, tmp_path / "o2"),
                   "eval.benchmark=vl-rewardbench", "eval.path=Org/Missing-Bench")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "HF_HUB_OFFLINE is set" in proc.stderr and "hf download --repo-type dataset Org/Missing-Bench" in proc.stderr
        assert not (tmp_path / "o2").exists()
    finally:
        for p in [snap, *snap.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)


def test_eval_genai_bench_videos_end_to_end(cli, tiny, rep, tmp_path):
    out = tmp_path / "out"
    before = listing(rep / "genai")
    proc = cli("eval", "--recipe", "recipes/tiny/eval.yaml", *eval_args(tiny, out), "eval.benchmark=genai-bench",
               f"eval.path={rep / 'genai'}", "eval.subset=video_generation", "model.video_max_frames=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert (m["n_items"], m["n_generations"], m["skipped_by_reason"]) == (2, 4, {"tie": 1})
    assert len(list((out / "media" / "frames").iterdir())) == 4  # two outputs of two scored items
    assert listing(rep / "genai") == before


def test_build_data_reads_released_training_layouts(cli, rep, tmp_path, monkeypatch):
    hf_home = tmp_path / "hf"
    R.hub_cache(hf_home, "yifanzhang114/R1-Reward-RL", rep / "r1rl")
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    sources = [
        {"name": "r1rl", "format": "r1reward-rl", "path": "yifanzhang114/R1-Reward-RL"},
        {"name": "mmrlhf", "format": "mm-rlhf", "path": str(rep / "mmrlhf")},
        {"name": "genai", "format": "genai", "path": str(rep / "genai"), "subset": "image_generation", "split": "test"},
    ]
    body = {"seed": 0, "output_dir": str(out), "model": {"path": "unused", "min_pixels": 784, "max_pixels": 12544},
            "runtime": {"device": "cpu", "progress": False}, "build": {"sources": sources}}
    proc = cli("build-data", "--recipe", recipe(tmp_path, body))
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    st = m["sources"]
    assert (st["r1rl"]["kept"], st["mmrlhf"]["kept"], st["genai"]["kept"]) == (4, 4, 3)
    assert (st["genai"]["ties_dropped"], st["genai"]["both_bad_dropped"]) == (1, 1)
    rows = [json.loads(x) for f in m["files"] for x in (out / f).read_text().splitlines()]
    r1 = sorted((r for r in rows if r["source"] == "r1rl"), key=lambda r: r["question"])
    assert [r["question"] for r in r1] == [f"What is in picture {i}?" for i in range(4)]
    for r in rows:  # every image was placed inside the output folder
        for p in r["images"]:
            assert (out / p).is_file() and not Path(p).is_absolute()
