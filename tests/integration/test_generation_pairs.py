"""Generation pairs (MSRL's image-generation task type): the responses are two images.

The synthetic level-6 variant, the chat messages (outputs in order after the prompt, swapped
with the order, the pixel budget split over both), GenAI-Bench files scored in both orders
with ties and both-bad votes counted, the `genai` build-data source, and the whole flow
build-data → sft → rl → eval → vote on CPU with the tiny model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from PIL import Image

from r1rm.data.chat import oriented, record_messages
from r1rm.data.records import read_records
from r1rm.data.synthetic import make_examples, write_dataset

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gen_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    return write_dataset(d, 12, seed=2, levels=(6,), modality="image", prefix="train")


def genai_file(folder: Path, votes: list[str], *, video: bool = False) -> Path:
    rng = random.Random(len(votes))
    rows = []
    for i, vote in enumerate(votes):
        pair = []
        for side in "lr":
            colour = tuple(rng.randrange(256) for _ in range(3))
            if video:
                frames = folder / f"v{i}{side}"
                frames.mkdir(parents=True)
                for k in range(3):
                    Image.new("RGB", (56, 56), colour).save(frames / f"{k:03d}.png")
                pair.append(frames.name)
            else:
                Image.new("RGB", (56, 56), colour).save(folder / f"{i}{side}.png")
                pair.append(f"{i}{side}.png")
        key = "video" if video else "image"
        rows.append({"index": i, "prompt": f"a red square number {i}", f"left_{key}": pair[0], f"right_{key}": pair[1],
                     "vote_type": vote, "left_model": "m1", "right_model": "m2"})
    f = folder / "genai.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


def test_synthetic_generation_variant():
    ex = make_examples(40, seed=1, levels=(6,), modality="image")
    assert sum(e.label == 1 for e in ex) == 20
    for e in ex:
        rec = e.to_record()
        assert rec["task_type"] == "image_generation" and rec["images"] == []
        assert rec["response1"] == {"image": f"images/{e.uid}_1.png"}
        right = e.facts["candidate_correct"]
        wrong = e.facts["candidate_wrong"]
        assert right["shape"] == wrong["shape"] and right["colour"] != wrong["colour"]
        assert f"a {right['colour']} {right['shape']}" in e.question
        assert e.trace.endswith(f"So Response {e.label} is correct.</think><answer>{e.label}</answer>")
    cap = make_examples(4, seed=1, levels=(6,), modality="caption")[0].to_record()
    assert cap["response1"].startswith("Image A: A ") and cap["response2"].startswith("Image B: A ")


def test_messages_show_both_outputs_in_order_and_split_the_pixel_budget(tiny, gen_data):
    from r1rm.models.loading import load_processor
    from r1rm.runtime.rollout import encode_prompt

    rec = next(iter(read_records(gen_data)))
    root = gen_data.parent
    msgs = record_messages(rec, prompt="msrl", image_root=root)
    parts = msgs[0]["content"]
    assert [p["type"] for p in parts] == ["text", "image", "text", "image", "text"]
    assert parts[0]["text"].index("[Generation prompt]") < parts[0]["text"].index(rec.question)
    assert "<type>" in parts[-1]["text"] and parts[2]["text"].strip().endswith("Image B:")
    first, second = parts[1]["image"], parts[3]["image"]
    assert first.endswith(rec.response1.visual) and second.endswith(rec.response2.visual)
    swapped = record_messages(oriented(rec, "chosen_second" if rec.label == 1 else "chosen_first"), prompt="msrl",
                              image_root=root)[0]["content"]
    assert (swapped[1]["image"], swapped[3]["image"]) == (second, first)  # the two-order eval swaps the outputs

    processor = load_processor(tiny, min_pixels=3136, max_pixels=12544)
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    full = encode_prompt(processor, msgs)["input_ids"][0].tolist().count(pad)
    budget = record_messages(rec, prompt="msrl", image_root=root, max_pixels=12544)
    assert all(p["max_pixels"] == 12544 // 2 for p in budget[0]["content"] if p["type"] == "image")
    split = encode_prompt(processor, budget)
    # one 112x112 image alone is 16 visual tokens at this budget; the pair together stays within it
    assert full == 32 and split["input_ids"][0].tolist().count(pad) <= 16
    assert int(split["image_grid_thw"].prod(dim=1).sum()) * 14 * 14 <= 12544


def test_genai_bench_scored_in_both_orders_ties_counted(cli, tiny, tmp_path):
    (tmp_path / "gb").mkdir()
    f = genai_file(tmp_path / "gb", ["leftvote", "rightvote", "tievote", "bothbad_vote", "leftvote"])
    out = tmp_path / "eval"
    proc = cli("eval", "--recipe", "recipes/tiny/eval.yaml", f"model.path={tiny}", "eval.benchmark=genai-bench",
               f"data.eval=[{f}]", f"output_dir={out}", "generation.max_new_tokens=8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert (m["n_items"], m["n_generations"]) == (3, 6)  # decisive votes only, both orders each
    assert m["skipped_by_reason"] == {"tie": 1, "both_bad": 1}
    assert "Not scored: both_bad 1, tie 1" in (out / "report.md").read_text()
    rows = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    assert sorted(r["order"] for r in rows) == ["chosen_first"] * 3 + ["chosen_second"] * 3
    assert {r["category"] for r in rows} == {"image_generation"}


def test_genai_bench_video_pairs_and_bad_rows(cli, tiny, tmp_path):
    from r1rm.data.benchmarks import read_benchmark
    from r1rm.errors import DataError

    (tmp_path / "v").mkdir()
    f = genai_file(tmp_path / "v", ["rightvote", "tievote"], video=True)
    skipped: list = []
    recs = read_benchmark("genai-bench", f, check_media=True, skipped=skipped)
    assert len(recs) == 1 and recs[0].response1.kind == "video" and recs[0].category == "video_generation"
    assert recs[0].response1.visual == "v0r"  # the right output was voted better: it is the chosen one
    assert [s.reason for s in skipped] == ["tie"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "left_video": "a.mp4", "right_video": "b.mp4", "vote_type": "leftvote"}) + "\n")
    with pytest.raises(DataError, match="bad.jsonl:1.*video file"):
        read_benchmark("genai-bench", bad)
    bad.write_text(json.dumps({"prompt": "p", "left_image": "a.png", "right_image": "b.png", "vote_type": "meh"}) + "\n")
    proc = cli("eval", "--recipe", "recipes/tiny/eval.yaml", "eval.benchmark=genai-bench", f"data.eval=[{bad}]",
               f"output_dir={tmp_path / 'e'}", f"model.path={tiny}")
    assert proc.returncode == 2 and "bad.jsonl:1" in proc.stderr and "vote_type" in proc.stderr
    assert not (tmp_path / "e").exists()  # a failed start leaves no output folder
    assert "Traceback" not in proc.stderr


def test_generation_pairs_flow_build_sft_rl_eval_vote(cli, tiny, tmp_path):
    (tmp_path / "gb").mkdir()
    f = genai_file(tmp_path / "gb", ["leftvote", "rightvote", "tievote", "bothbad_vote", "leftvote", "rightvote"])
    recipe = tmp_path / "build.yaml"
    recipe.write_text(f"""inherit: {REPO / 'recipes/tiny/build_generation.yaml'}
output_dir: {tmp_path / 'built'}
build:
  mode: clean
  sources:
    - {{name: genai-pairs, format: genai, path: {f}}}
    - {{name: synthetic-generation, format: synthetic, n: 24, levels: [6], modality: image, seed: 21}}
""")
    built = tmp_path / "built"
    proc = cli("build-data", "--recipe", recipe, "runtime.progress=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["ties_dropped"] == 1 and manifest["both_bad_dropped"] == 1
    recs = [r for p in manifest["files"] for r in read_records(built / p, image_root=built)]
    assert len(recs) == 4 + 24 and all(r.response1.kind == "image" for r in recs)
    assert sum(r.label == 1 for r in recs) == 14  # balanced: images swapped with the label
    common = [f"model.path={tiny}", "runtime.progress=false", "runtime.report_to=none"]
    sft = tmp_path / "sft"
    train = write_dataset(tmp_path / "syn", 16, seed=4, levels=(6,), modality="image", prefix="train")
    proc = cli("sft", "--recipe", "recipes/tiny/sft.yaml", *common, f"data.train=[{train}]", f"output_dir={sft}",
               "sft.max_steps=2", "sft.save_every_steps=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rl = tmp_path / "rl"
    proc = cli("rl", "--recipe", "recipes/tiny/rl.yaml", f"model.path={sft / 'model'}", "runtime.progress=false",
               "runtime.report_to=none", f"data.train=[{built}]", "data.eval=[]", f"output_dir={rl}",
               "rl.max_steps=1", "rl.rollout_batch_size=4", "rl.train_batch_size=16", "rl.max_new_tokens=12",
               "rl.eval_every_steps=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads((rl / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["rollout_samples"] == 4 * 2 * 2 and row.get("invalid_responses", 0) == 0
    vote = tmp_path / "vote"
    proc = cli("eval", "--recipe", "recipes/tiny/vote.yaml", f"model.path={rl / 'model'}", f"data.eval=[{built}]",
               f"output_dir={vote}", "generation.max_new_tokens=12", "eval.limit=6")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = cli("vote", "--recipe", "recipes/tiny/vote.yaml", f"output_dir={vote}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    votes = json.loads((vote / "votes.json").read_text())
    assert [p["k"] for p in votes["curve"]] == [1, 2, 3, 4, 5] and (vote / "votes.png").exists()
