"""The paper pipelines' recipes chain: each stage reads what the stage before it writes.

What each command writes (its module docstring): `r1rm sft` / `r1rm rl` -> OUTPUT_DIR/model;
`r1rm build-data` -> shards in OUTPUT_DIR (a folder the next stage reads), plus OUTPUT_DIR/sft.jsonl
(modes teacher, cmkd) and OUTPUT_DIR/rl.jsonl (mode teacher). The recipes are loaded by their
built-in names from an empty folder, as a user outside the repository would.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

import pytest

from r1rm.config import Config, load_config
from r1rm.recipes import find_builtin


def P(path: str) -> PurePosixPath:
    return PurePosixPath(path)


def model_out(cfg: Config) -> PurePosixPath:
    """What `r1rm sft` / `r1rm rl` write: OUTPUT_DIR/model."""
    return P(cfg.output_dir) / "model"


def build_out(cfg: Config, name: str | None = None) -> PurePosixPath:
    """What `r1rm build-data` writes: its shards (the folder) or one of sft.jsonl / rl.jsonl by mode."""
    made = {"clean": set(), "caption": set(), "teacher": {"sft.jsonl", "rl.jsonl"}, "cmkd": {"sft.jsonl"}}[cfg.build.mode]
    if name is None:
        return P(cfg.output_dir)
    assert name in made, f"build-data in mode {cfg.build.mode} writes no {name}"
    return P(cfg.output_dir) / name


def documented_eval(name: str) -> tuple[str, PurePosixPath]:
    """The `r1rm eval --recipe NAME model.path=X` line a training recipe's comments give: (NAME, X)."""
    text = find_builtin(name).read_text(encoding="utf-8")
    m = re.search(r"r1rm eval --recipe (\S+) model\.path=(\S+)", text)
    assert m, f"{name}: its comments should say how to score its result (r1rm eval --recipe ... model.path=...)"
    return m.group(1), P(m.group(2))


@pytest.fixture(autouse=True)
def _outside_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_r1reward_chain_build_data_sft_rl_eval():
    data = load_config("r1reward/build_data")
    sft = load_config("r1reward/sft")
    rl = load_config("r1reward/rl")
    assert data.build.mode == "teacher"
    assert sft.model.path == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert [P(x) for x in sft.data.train] == [build_out(data, "sft.jsonl")]
    assert P(rl.model.path) == model_out(sft)
    assert [P(x) for x in rl.data.train] == [build_out(data, "rl.jsonl")]
    assert rl.data.eval == [] and rl.rl.eval_every_steps == 0  # no placeholder held-out file
    eval_name, eval_model = documented_eval("r1reward/rl")
    assert eval_model == model_out(rl)
    ev = load_config(eval_name, [f"model.path={eval_model}"])
    assert ev.eval.benchmark == "vl-rewardbench" and P(ev.model.path) == model_out(rl)
    # as shipped, the eval recipe reproduces the released checkpoint on the hub's benchmark
    shipped = load_config(eval_name)
    assert (shipped.model.path, shipped.eval.path) == ("yifanzhang114/R1-Reward", "MMInstruction/VL-RewardBench")
    released = load_config("r1reward/rl_released")
    assert P(released.model.path) == model_out(sft) and released.data.train == rl.data.train


def test_msrl_chain_every_stage_cmkd_included():
    d1 = load_config("msrl/data_stage1_text")
    s1 = load_config("msrl/sft_stage1_text")
    r1 = load_config("msrl/rl_stage1_text")
    d2 = load_config("msrl/data_stage2_caption")
    r2 = load_config("msrl/rl_stage2_caption")
    dc = load_config("msrl/data_cmkd")
    sc = load_config("msrl/sft_cmkd")
    d4 = load_config("msrl/data_stage4_multimodal")
    r4 = load_config("msrl/rl_stage4_multimodal")
    stages = [d1, s1, r1, d2, r2, dc, sc, d4, r4]
    assert all(c.data.prompt == "msrl" for c in stages)
    assert len({c.output_dir for c in stages}) == len(stages), "two stages write the same folder"
    # 1: text data (teacher traces + shards) -> SFT -> GRPO
    assert d1.build.mode == "teacher"
    assert s1.model.path == "OpenGVLab/InternVL3_5-8B-HF"
    assert [P(x) for x in s1.data.train] == [build_out(d1, "sft.jsonl")]
    assert P(r1.model.path) == model_out(s1) and [P(x) for x in r1.data.train] == [build_out(d1)]
    # 2: caption data with stage-1 replay -> caption GRPO
    assert d2.build.mode == "caption"
    replay = [s for s in d2.build.sources if s.role == "replay"]
    assert [P(s.path) for s in replay] == [build_out(d1)]
    assert P(r2.model.path) == model_out(r1) and [P(x) for x in r2.data.train] == [build_out(d2)]
    # 3: CMKD data from the caption-trained judge on the caption set -> CMKD SFT
    assert dc.build.mode == "cmkd"
    assert P(dc.model.path) == model_out(r2)
    assert [P(s.path) for s in dc.build.sources] == [build_out(d2)]
    assert P(sc.model.path) == model_out(r2) and [P(x) for x in sc.data.train] == [build_out(dc, "sft.jsonl")]
    # 4: real image pairs -> multimodal GRPO, vision unfrozen
    assert d4.build.mode == "clean"
    assert P(r4.model.path) == model_out(sc) and [P(x) for x in r4.data.train] == [build_out(d4)]
    assert not (r4.model.freeze_vision_tower or r4.model.freeze_projector)
    assert s1.model.freeze_vision_tower and r1.model.freeze_vision_tower and r2.model.freeze_vision_tower
    eval_name, eval_model = documented_eval("msrl/rl_stage4_multimodal")
    assert eval_model == model_out(r4)
    ev = load_config(eval_name, [f"model.path={eval_model}"])
    assert ev.data.prompt == "msrl" and P(ev.model.path) == model_out(r4)
