"""scripts/ablation_stability.py end to end on the tiny model: a run, its table, its rerun
(resumed, not redone) and a reused folder with another lr (refused, exit 2, nothing overwritten)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def ablation(tiny, train, out, *extra, tail=("--only", "stable_reinforce", "--seeds", "0")):
    cmd = [sys.executable, "scripts/ablation_stability.py", f"model.path={tiny}", f"data.train=[{train}]",
           f"data.eval=[{train}]", f"output_dir={out}", "rl.max_steps=1", "rl.rollout_batch_size=2",
           "rl.n_samples_per_prompt=2", "rl.train_batch_size=8", "rl.micro_batch_size=2", "rl.max_new_tokens=8",
           "rl.eval_every_steps=1", "rl.eval_limit=2", "runtime.report_to=none", *extra, *tail]
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_ablation_runs_resumes_and_refuses_another_lr(tiny, tmp_path):
    from r1rm.data.synthetic import write_dataset

    train = write_dataset(tmp_path / "data", 4, seed=3, levels=(1,), modality="image", prefix="train")
    out = tmp_path / "abl"
    proc = ablation(tiny, train, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = out / "stable_reinforce" / "seed-0"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"]["stable_reinforce"]["0"]["steps"] == 1
    assert summary["variants"]["stable_reinforce"]["seeds"] == 1
    assert "| stable_reinforce | 1 |" in (out / "summary.md").read_text()
    assert (out / "stability.png").stat().st_size > 0 and (out / "stability_seeds.png").stat().st_size > 0
    rows = (run / "metrics.jsonl").read_text()
    from r1rm.runtime.checkpoint import model_stamp

    stamp = model_stamp(str(run / "model"))

    # rerun: the finished run is resumed, not redone (its metrics keep their one row, its model is
    # not rewritten: an eval of it would otherwise refuse to resume)
    proc = ablation(tiny, train, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "metrics.jsonl").read_text() == rows and model_stamp(str(run / "model")) == stamp

    # the same folder with another lr: refused before anything is written, no traceback
    before = (run / "config.yaml").read_bytes()
    proc = ablation(tiny, train, out, "rl.lr=0.9")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "rl.lr:" in proc.stderr and "other settings" in proc.stderr
    assert (run / "config.yaml").read_bytes() == before and (run / "metrics.jsonl").read_text() == rows


def test_parallel_runs_each_in_its_own_process_and_refuse_another_lr(tiny, tmp_path):
    """--jobs 2: two `r1rm rl` processes at once, one CPU thread each, output in each run's rl.log;
    the table covers both; a rerun with another lr is refused (exit 2, the run's message, no
    traceback) and leaves the runs as they were."""
    from r1rm.data.synthetic import write_dataset

    train = write_dataset(tmp_path / "data", 4, seed=3, levels=(1,), modality="image", prefix="train")
    out = tmp_path / "abl"
    par = ("--only", "reinforce_pp", "--seeds", "0", "1", "--jobs", "2")
    proc = ablation(tiny, train, out, tail=par)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["variants"]["reinforce_pp"]["seeds"] == 2
    assert proc.stdout.count("ablation: reinforce_pp seed") == 2
    for seed in (0, 1):
        run = out / "reinforce_pp" / f"seed-{seed}"
        assert "rl done: 1 rollout steps" in (run / "rl.log").read_text()
    rows = (out / "reinforce_pp" / "seed-0" / "metrics.jsonl").read_text()
    proc = ablation(tiny, train, out, "rl.lr=0.9", tail=par)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "rl.lr:" in proc.stderr and "other settings" in proc.stderr
    assert (out / "reinforce_pp" / "seed-0" / "metrics.jsonl").read_text() == rows
    proc = ablation(tiny, train, out, tail=(*par[:-1], "0"))
    assert proc.returncode == 2 and "--jobs 0" in proc.stderr and "Traceback" not in proc.stderr


def test_base_keeps_the_first_sft_seed_that_solves_the_task_or_says_none_did(tiny, tmp_path):
    """--base: synthetic data, then SFT seeds in order until one reaches --base-min-strict on the
    held-out pairs; the runs start from that policy. None reaching it: exit 2 naming what each got,
    no base.json and no ablation run. An empty window or --jobs 0: refused before anything is built."""
    base, out = tmp_path / "base", tmp_path / "abl"
    small = ["--base-set", "data.synthetic.n=8", "data.synthetic.n_eval=2", "sft.max_steps=2", "sft.batch_size=2",
             "sft.micro_batch_size=2", "generation.max_new_tokens=8", "--base-model", str(tiny)]
    cmd = [sys.executable, "scripts/ablation_stability.py", f"output_dir={out}", "rl.max_steps=1",
           "rl.rollout_batch_size=2", "rl.n_samples_per_prompt=2", "rl.train_batch_size=8", "rl.micro_batch_size=2",
           "rl.max_new_tokens=8", "rl.eval_every_steps=0", "runtime.report_to=none", "--only", "stable_reinforce",
           "--seeds", "0", "--base", str(base), "--base-seeds", "0", "1", *small]
    env = {**os.environ, "NO_COLOR": "1"}
    proc = subprocess.run([*cmd, "--base-min-strict", "1.01"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)  # an empty window: refused before anything is built
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "is not a window inside 0..1" in proc.stderr and not base.exists()
    proc = subprocess.run([*cmd, "--jobs", "0"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)  # --jobs 0: refused before the base is built
    assert proc.returncode == 2 and "--jobs 0" in proc.stderr and "Traceback" not in proc.stderr
    assert not base.exists() and not out.exists()
    proc = subprocess.run([*cmd, "--base-min-strict", "0.5"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "no SFT seed of [0, 1] reached held-out strict 0.50-1.00" in proc.stderr and "got 0.00, 0.00" in proc.stderr
    assert not (base / "base.json").exists() and not out.exists()
    assert (base / "sft-seed-1" / "heldout" / "metrics.json").is_file()

    proc = subprocess.run([*cmd, "--base-min-strict", "0"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((base / "base.json").read_text())
    assert record["seed"] == 0 and record["tried"] == [{"seed": 0, "heldout_strict": 0.0}] and record["max_strict"] == 1
    run_cfg = (out / "stable_reinforce" / "seed-0" / "config.yaml").read_text()
    assert f"{base / 'sft-seed-0' / 'model'}" in run_cfg and f"{base / 'data' / 'train.jsonl'}" in run_cfg

    # the same base folder with other synth settings: the data is regenerated, and the finished
    # SFT made from the old data refuses to be reused (exit 2, naming the data change)
    other = [x if x != "data.synthetic.n=8" else "data.synthetic.n=10" for x in cmd]
    proc = subprocess.run([*other, "--base-min-strict", "0"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "data.train.sha256" in proc.stderr and "other settings" in proc.stderr
