"""Shared test set-up: offline Hugging Face, paths to the shared fixtures, the CLI runner."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# runtime.report_to defaults to every installed tracker: in tests W&B is a no-op and MLflow writes to a
# temporary store, never to the network or the repository folder (tests/integration/test_tracking.py
# turns them on itself)
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tempfile.mkdtemp(prefix='r1rm-mlflow-')}/mlflow.db")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("R1RM_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared folder not found at {SHARED} (set R1RM_SHARED)")
    return SHARED


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `r1rm ARGS` in a subprocess; returns the completed process (text output)."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "r1rm.cli", *map(str, args)],
        cwd=cwd or REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """The tiny Qwen2.5-VL-shaped model (seed 0), built once per test session; tests only read it."""
    from r1rm.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "m", seed=0)


@contextlib.contextmanager
def served_cli(*args: str, timeout_s: float = 120):
    """Run `r1rm judge --serve ARGS judge.port=0` and yield its base URL; stop it afterwards."""
    import re
    import time

    proc = subprocess.Popen([sys.executable, "-m", "r1rm.cli", "judge", "--serve", *map(str, args), "judge.port=0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = ""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "serving" in line or proc.poll() is not None:
            break
    m = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
    try:
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        yield f"http://127.0.0.1:{m.group(1)}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
