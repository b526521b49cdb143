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
def served_process(*args: str, env: dict | None = None, timeout_s: float = 120):
    """Run `r1rm judge --serve ARGS judge.port=0` (environment `env` added to this one) and yield
    (base URL ending in /v1, the process, the path of its stderr: the access log); stop it afterwards and
    delete the log. stderr goes to a file, so a long access log never fills a pipe and blocks the server."""
    import re
    import time

    log = Path(tempfile.mkstemp(prefix="r1rm-serve-", suffix=".log")[1])
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "r1rm.cli", "judge", "--serve", *map(str, args), "judge.port=0"],
                                stdout=subprocess.PIPE, stderr=err, text=True, env={**os.environ, **(env or {})})
    line, m = "", None
    deadline = time.monotonic() + timeout_s
    # the server's own line names its URL (vLLM's INFO lines on stdout may say "serving" too)
    while time.monotonic() < deadline and m is None:
        line = proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
        if m is None and not line and proc.poll() is not None:
            break
    try:
        assert m, (line, log.read_text())
        yield f"http://127.0.0.1:{m.group(1)}/v1", proc, log
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        finally:
            log.unlink(missing_ok=True)  # the server's log lives as long as the server


@contextlib.contextmanager
def served_cli(*args: str, env: dict | None = None, timeout_s: float = 120):
    """`served_process`, yielding only the base URL."""
    with served_process(*args, env=env, timeout_s=timeout_s) as (url, _, _):
        yield url
