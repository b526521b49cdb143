"""Every shipped recipe validates against the schema and says at its head what it is for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r1rm.config import load_config

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))


def test_recipes_exist_for_every_family():
    families = {p.parent.name for p in RECIPES}
    assert {"tiny", "r1reward", "msrl", "serve"} <= families
    names = {f"{p.parent.name}/{p.stem}" for p in RECIPES}
    # the paper pipelines, step by step
    assert {"r1reward/build_data", "r1reward/sft", "r1reward/rl", "r1reward/rl_released", "r1reward/voting15"} <= names
    assert {"msrl/sft_stage1_text", "msrl/rl_stage1_text", "msrl/rl_stage2_caption", "msrl/sft_cmkd",
            "msrl/rl_stage4_multimodal"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_validates_and_is_documented(path: Path, monkeypatch):
    monkeypatch.chdir(ROOT)
    head = path.read_text(encoding="utf-8").splitlines()
    comments = [ln for ln in head[:3] if ln.startswith("#")]
    assert len(comments) >= 2, f"{path}: start with at least two comment lines saying what it is and how to run it"
    cfg = load_config(path)
    if cfg.runtime.deepspeed:
        ds = ROOT / cfg.runtime.deepspeed
        assert ds.is_file(), f"{path}: runtime.deepspeed points to a missing file {ds}"
        json.loads(ds.read_text())


def test_paper_hyper_parameters():
    """The numbers METHOD §4 and §6 give, not approximations."""
    paper = load_config(ROOT / "recipes/r1reward/rl.yaml")
    assert (paper.rl.lr, paper.rl.train_batch_size, paper.rl.rollout_batch_size, paper.rl.epochs, paper.rl.kl_coef) == (
        1e-6, 128, 256, 5, 0.0)
    assert paper.rl.algorithm == "stable_reinforce" and paper.rl.pre_clip_ratio == 1000.0
    released = load_config(ROOT / "recipes/r1reward/rl_released.yaml")
    assert (released.rl.lr, released.rl.kl_coef, released.rl.epochs, released.rl.max_new_tokens,
            released.rl.max_prompt_len, released.rl.adv_filter) == (3e-7, 1e-3, 1, 1024, 20480, "official")
    sft = load_config(ROOT / "recipes/r1reward/sft.yaml")
    assert (sft.sft.lr, sft.sft.batch_size, sft.sft.epochs) == (1e-5, 256, 1)
    for stage in ("rl_stage1_text", "rl_stage2_caption", "rl_stage4_multimodal"):
        c = load_config(ROOT / f"recipes/msrl/{stage}.yaml")
        assert c.rl.algorithm == "grpo" and c.rl.n_samples_per_prompt == 8 and c.rl.lr == 1e-6
        assert c.rl.rollout_batch_size * c.rl.n_samples_per_prompt == 128
        assert (c.rl.kl_coef, c.rl.clip_eps, c.rl.clip_eps_high, c.rl.temperature, c.rl.max_new_tokens) == (
            0.0, 0.2, 0.28, 1.0, 1024)
        assert c.data.prompt == "msrl" and c.rl.type_weight == 0.2
        frozen = stage != "rl_stage4_multimodal"
        assert c.model.freeze_vision_tower is frozen and c.model.freeze_projector is frozen


def test_make_demo_chains_its_recipes():
    """`make -n` (dry run): the demo builds its 8-head model and chains the flawed-teacher data, the
    batch-16 SFT and the strong RL recipe; RL chooses its checkpoint on the validation split, and
    the held-out eval and the vote score that kept checkpoint; the stability ablation and the
    transfer miniature build on the 4-head default model they were measured with."""
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    repo = Path(__file__).resolve().parents[2]

    def plan(*target: str) -> str:
        proc = subprocess.run(["make", "-n", *target], cwd=repo, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    demo = plan("demo", "DEMO=out/plan_demo")
    assert "tiny-model --heads 8 --seed 0 out/plan_demo/model" in demo
    # the numerics pinned by default (DEMO_PIN=1): the same kernels on every x86-64 CPU with AVX2
    assert demo.count("env OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2 ONEDNN_MAX_CPU_ISA=AVX2") >= 10
    assert "MKL_CBWR" not in plan("demo", "DEMO=out/plan_demo", "DEMO_PIN=0")
    assert "synth --recipe recipes/tiny/synth_flawed_teacher.yaml output_dir=out/plan_demo/data" in demo
    assert "check-data out/plan_demo/data/train.jsonl out/plan_demo/data/val.jsonl out/plan_demo/data/eval.jsonl" in demo
    assert "sft --recipe recipes/tiny/sft_demo.yaml model.path=out/plan_demo/model" in demo
    assert "rl --recipe recipes/tiny/rl_demo.yaml model.path=out/plan_demo/sft/model data.train=[out/plan_demo/build]" in demo
    assert "data.eval=[out/plan_demo/data/val.jsonl] output_dir=out/plan_demo/rl" in demo
    assert "model.path=out/plan_demo/rl/best output_dir=out/plan_demo/eval_rl" in demo
    assert "model.path=out/plan_demo/rl/best output_dir=out/plan_demo/vote" in demo
    assert "data.eval=[out/plan_demo/data/eval.jsonl] model.path=out/plan_demo/rl/best" in demo
    # the recipes say what the Makefile relies on
    sft = load_config(repo / "recipes/tiny/sft_demo.yaml")
    rl = load_config(repo / "recipes/tiny/rl_demo.yaml")
    synth = load_config(repo / "recipes/tiny/synth_flawed_teacher.yaml")
    assert (sft.sft.max_steps, sft.sft.batch_size, sft.sft.micro_batch_size) == (1000, 16, 16)
    assert rl.rl.keep_best and rl.rl.eval_every_steps and rl.rl.max_steps % rl.rl.eval_every_steps == 0
    assert synth.data.synthetic.n_val > 0 and synth.data.synthetic.teacher_error > 0
    # the flaw README and docs/training.md describe: a position-biased teacher on purple scenes, which
    # RL fixes under consistency weight 1.0 without the order-consistency term (the 2026-12-06 record)
    assert (synth.data.synthetic.teacher_mistake, list(synth.data.synthetic.teacher_blind)) == ("position", ["purple"])
    assert (rl.rl.consistency_weight, rl.rl.order_consistency_weight) == (1.0, 0.0)
    abl = plan("ablation-stability", "-B")
    assert "tiny-model out/tiny4/model" in abl and "--base out/ablation/base" in abl
    assert "--base-model out/tiny4/model" in abl
    assert "--base-min-strict 0.80 --base-max-strict 0.95" in abl and "--heads" not in abl
    transfer = plan("transfer", "-B")
    assert "tiny-model out/tiny4/model" in transfer and "--heads" not in transfer
    assert "model.path=out/tiny4/model data.train=[out/transfer/image/train.jsonl]" in transfer
