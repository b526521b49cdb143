"""scripts/ablation_stability.py end to end on the tiny model: a run, its table, its rerun
(resumed, not redone) and a reused folder with another lr (refused, exit 2, nothing overwritten)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def ablation(tiny, train, out, *extra):
    cmd = [sys.executable, "scripts/ablation_stability.py", f"model.path={tiny}", f"data.train=[{train}]",
           f"data.eval=[{train}]", f"output_dir={out}", "rl.max_steps=1", "rl.rollout_batch_size=2",
           "rl.n_samples_per_prompt=2", "rl.train_batch_size=8", "rl.micro_batch_size=2", "rl.max_new_tokens=8",
           "rl.eval_every_steps=1", "rl.eval_limit=2", "runtime.tensorboard=false", *extra,
           "--only", "stable_reinforce", "--seeds", "0"]
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
    assert (out / "stability.png").stat().st_size > 0
    rows = (run / "metrics.jsonl").read_text()

    # rerun: the finished run is resumed, not redone (its metrics keep their one row)
    proc = ablation(tiny, train, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "metrics.jsonl").read_text() == rows

    # the same folder with another lr: refused before anything is written, no traceback
    before = (run / "config.yaml").read_bytes()
    proc = ablation(tiny, train, out, "rl.lr=0.9")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "rl.lr:" in proc.stderr and "other settings" in proc.stderr
    assert (run / "config.yaml").read_bytes() == before and (run / "metrics.jsonl").read_text() == rows
