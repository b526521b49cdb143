"""Offline replicas of the released benchmark / training-set layouts (a few rows each), for tests.

Each builder writes a folder laid out as `hf download --repo-type dataset ID --local-dir D` writes
the release (or, for Multimodal RewardBench, as its GitHub clone looks after its download
script): the files, splits and column types of the dataset card (docs/benchmarks.md records
them), with tiny PNGs made by PIL and a tiny video encoded by PyAV. `hub_cache` lays a replica
out as the hub cache does (`hub/datasets--ORG--NAME/{refs/main, snapshots/<sha>/…}`), for
hub ids under a temporary HF_HOME with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

# image sizes per replica row: tests check each decoded image has its row's size
SIZES = [(40, 30), (30, 40), (56, 28), (28, 56), (44, 44)]
COLOURS = ["red", "green", "blue", "yellow", "purple"]


def png_bytes(size: tuple[int, int], colour: str = "red", fmt: str = "PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format=fmt)
    return buf.getvalue()


def png(path: Path, size: tuple[int, int], colour: str = "red") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(size, colour))
    return path


def video(path: Path, n_frames: int = 20, size: tuple[int, int] = (32, 24), fps: int = 10) -> Path:
    """A tiny MPEG-4 video whose frame i is filled with grey level 10 * i (PyAV)."""
    import av
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(n_frames):
            img = np.full((size[1], size[0], 3), 10 * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def parquet(path: Path, rows: list[dict], schema=None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def card(folder: Path, configs: list[dict], features: str = "") -> None:
    """README.md with the card's YAML header: the configs (subset → split → file patterns)."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text("---\n" + features + yaml.safe_dump({"configs": configs}, sort_keys=False)
                                      + "---\n\n# Replica for r1rm's tests\n")


def _image_schema(**columns):
    import pyarrow as pa

    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # datasets' Image feature in parquet
    types = {"string": pa.string(), "image": image, "strings": pa.list_(pa.string()), "ints": pa.list_(pa.int64())}
    return pa.schema([(name, types[kind]) for name, kind in columns.items()])


# ---------------------------------------------------------------- VL-RewardBench (MMInstruction/VL-RewardBench)
VLRB_IDS = ["mathverse_1", "RLHF-V_2", "wildvision_3", "hallucination_pair-4"]
VLRB_RANKING = [[0, 1], [1, 0], [0, 1], [1, 0]]


def vl_rewardbench(folder: Path) -> Path:
    """data/test-00000-of-00001.parquet (split test): id, query, response [2], image (Image), human_ranking [2],
    models, judge, rationale, query_source, ground_truth — 4 rows; the better response says 'good'."""
    rows = []
    for i, (item_id, rank) in enumerate(zip(VLRB_IDS, VLRB_RANKING, strict=True)):
        responses = ["good answer", "bad answer"] if rank == [0, 1] else ["bad answer", "good answer"]
        rows.append({"id": item_id, "query": f"What is shown in picture {i}?", "response": responses,
                     "image": {"bytes": png_bytes(SIZES[i], COLOURS[i]), "path": f"{item_id}.png"},
                     "human_ranking": rank, "models": ["m1", "m2"], "judge": "human", "rationale": "r",
                     "query_source": item_id.split("_")[0], "ground_truth": ""})
    schema = _image_schema(id="string", query="string", response="strings", image="image", human_ranking="ints",
                           models="strings", judge="string", rationale="string", query_source="string", ground_truth="string")
    parquet(folder / "data" / "test-00000-of-00001.parquet", rows, schema)
    card(folder, [{"config_name": "default", "data_files": [{"split": "test", "path": "data/test-*"}]}])
    return folder


# ---------------------------------------------------------------- Multimodal RewardBench (GitHub, not the hub)
MMRB_ROWS = [  # (ID, Category, Better)
    ("nocaps_1", "open_generation/correctness_task", "Output1"),
    ("vlfeedback_2", "open_generation/preference_task", "Output2"),
    ("mmmu-pro_3", "knowledge", "Output1"),
    ("mathvista_4", "reasoning", "Output2"),
    ("pairs_5", "safety", "Output1"),
]


def multimodal_rewardbench(folder: Path) -> Path:
    """The repository after scripts/0_download_data.py: data/all_data.json (a JSON array of ID, Text, Image
    (relative to data/), Output1, Output2, Better, Category) and data/images/…; 5 rows."""
    rows = []
    for i, (item_id, category, better) in enumerate(MMRB_ROWS):
        image = f"images/{item_id.split('_')[0]}/{i}.png"
        png(folder / "data" / image, SIZES[i], COLOURS[i])
        good, bad = "good answer", "bad answer"
        rows.append({"ID": item_id, "Text": f"Question {i}?", "Image": image,
                     "Output1": good if better == "Output1" else bad, "Output2": bad if better == "Output1" else good,
                     "Better": better, "Category": category})
    (folder / "data" / "all_data.json").write_text(json.dumps(rows, indent=1))
    (folder / "README.md").write_text("# Multimodal RewardBench (replica)\n")
    (folder / "scripts").mkdir(exist_ok=True)
    return folder


# ---------------------------------------------------------------- MM-RLHF-RewardBench (yifanzhang114/MM-RLHF-RewardBench)
MMRLHF_ROWS = [  # (id, image or video path under images/)
    ("073712_1", "mcq/073712.png", None),
    ("073712_2", "mcq/073712.png", None),
    ("long_3", "long/3.png", None),
    ("vid_4", None, "video/abc"),
]


def mm_rlhf_rewardbench(folder: Path) -> Path:
    """data/train-00000-of-00001.parquet (split train) and mm_reward_bench.jsonl with id, image (path under
    images/, or null), video (a frames folder under images/, or null), prompt, chosen, rejected; images/."""
    rows = []
    for i, (item_id, image, vid) in enumerate(MMRLHF_ROWS):
        if image:
            png(folder / "images" / image, SIZES[i], COLOURS[i])
        else:
            for k in range(3):
                png(folder / "images" / vid / f"c01_{k + 1:04d}.jpeg", (28, 28), COLOURS[k])
        rows.append({"id": item_id, "image": image, "video": vid, "prompt": f"Question {i}?",
                     "chosen": "good answer", "rejected": "bad answer"})
    parquet(folder / "data" / "train-00000-of-00001.parquet", rows)
    (folder / "mm_reward_bench.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n"
                                                          for r in rows))
    card(folder, [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}])
    return folder


# ---------------------------------------------------------------- GenAI-Bench (TIGER-Lab/GenAI-Bench)
GENAI_VOTES = ["leftvote", "rightvote", "tievote", "bothbad_vote", "rightvote"]


def genai_bench(folder: Path) -> Path:
    """image_generation/{test,test_v1}-00000-of-00001.parquet (prompt, left_model, right_model, left_image,
    right_image (Image), vote_type, tstamp), image_edition/test-… (instruct_prompt, source_image,
    left_output_image, right_output_image, …) and video_generation/test-00000-of-00001.parquet (left_video /
    right_video: URLs of the files, fetched into videos/); the card's configs per subset."""
    image_rows = []
    for i, vote in enumerate(GENAI_VOTES):
        image_rows.append({"prompt": f"a {COLOURS[i]} cat", "left_model": "A", "right_model": "B",
                           "left_image": {"bytes": png_bytes(SIZES[i], "white"), "path": None},
                           "right_image": {"bytes": png_bytes(SIZES[i], "black"), "path": None},
                           "vote_type": vote, "tstamp": 1700000000.0 + i})
    import pyarrow as pa

    schema = _image_schema(prompt="string", left_model="string", right_model="string", left_image="image",
                           right_image="image", vote_type="string").append(pa.field("tstamp", pa.float64()))
    parquet(folder / "image_generation" / "test-00000-of-00001.parquet", image_rows, schema)
    parquet(folder / "image_generation" / "test_v1-00000-of-00001.parquet", image_rows[:2], schema)
    edit_rows = []
    for i, vote in enumerate(["leftvote", "rightvote", "tievote"]):
        edit_rows.append({"source_prompt": f"a {COLOURS[i]} cat", "target_prompt": f"a {COLOURS[i]} dog",
                          "instruct_prompt": "turn the cat into a dog", "left_model": "A", "right_model": "B",
                          "source_image": {"bytes": png_bytes(SIZES[i], COLOURS[i]), "path": None},
                          "left_output_image": {"bytes": png_bytes(SIZES[i], "white"), "path": None},
                          "right_output_image": {"bytes": png_bytes(SIZES[i], "black"), "path": None}, "vote_type": vote})
    schema = _image_schema(source_prompt="string", target_prompt="string", instruct_prompt="string", left_model="string",
                           right_model="string", source_image="image", left_output_image="image",
                           right_output_image="image", vote_type="string")
    parquet(folder / "image_edition" / "test-00000-of-00001.parquet", edit_rows, schema)
    video_rows = []
    for i, vote in enumerate(["leftvote", "tievote", "rightvote"]):
        names = [f"l{i}.mp4", f"r{i}.mp4"]
        for n in names:
            video(folder / "videos" / n)
        video_rows.append({"prompt": f"a video {i}", "left_model": "A", "right_model": "B",
                           "left_video": f"https://example.org/genai/{names[0]}",
                           "right_video": f"https://example.org/genai/{names[1]}", "vote_type": vote,
                           "tstamp": 1700000100.0 + i})
    parquet(folder / "video_generation" / "test-00000-of-00001.parquet", video_rows)
    card(folder, [
        {"config_name": "image_generation", "data_files": [{"split": "test", "path": "image_generation/test-*"},
                                                          {"split": "test_v1", "path": "image_generation/test_v1-*"}]},
        {"config_name": "image_edition", "data_files": [{"split": "test", "path": "image_edition/test-*"}]},
        {"config_name": "video_generation", "data_files": [{"split": "test", "path": "video_generation/test-*"}]},
    ])
    return folder


# ---------------------------------------------------------------- R1-Reward's RL set (yifanzhang114/R1-Reward-RL)
def r1reward_rl(folder: Path, n: int = 4) -> Path:
    """data/train-00000-of-00001.parquet (split train): question (string), message (a JSON string of chat
    messages; the user turn holds the filled R1-Reward prompt), answer (["<answer>k</answer>"]), image
    (the image as base64 text)."""
    from r1rm.core.prompts import r1reward_text

    rows = []
    for i in range(n):
        q, a1, a2 = f"What is in picture {i}?", f"A {COLOURS[i]} square.", f"A {COLOURS[i + 1]} circle."
        message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": r1reward_text(q, a1, a2)}]}]
        rows.append({"question": q, "message": json.dumps(message), "answer": [f"<answer>{1 + i % 2}</answer>"],
                     "image": base64.b64encode(png_bytes(SIZES[i], COLOURS[i])).decode()})
    parquet(folder / "data" / "train-00000-of-00001.parquet", rows)
    card(folder, [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}])
    return folder


# ---------------------------------------------------------------- the hub cache
def hub_cache(hf_home: Path, repo_id: str, replica: Path, sha: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """Lay `replica` out as the hub cache holds dataset `repo_id`: hub/datasets--ORG--NAME/refs/main and
    snapshots/<sha>/… (files, not the cache's blob symlinks); returns the snapshot folder."""
    repo = hf_home / "hub" / ("datasets--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(sha)
    snap = repo / "snapshots" / sha
    shutil.copytree(replica, snap)
    return snap
