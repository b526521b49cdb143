"""vLLM tests: they run in .venv-vllm (`make test-vllm`, vLLM's CPU build; the ordinary vllm on a CUDA
machine) and are skipped where vLLM is not installed (the main .venv that `make test` uses).

vLLM's CPU attention needs head_dim >= 32: these tests use the 4-head tiny default (head_dim 32),
never the demo's 8-head model (head_dim 16)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

HAVE_VLLM = importlib.util.find_spec("vllm") is not None

# the engine in-process (colocated RL reaches the model's load_weights through it) and a small KV cache
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def pytest_collection_modifyitems(items):
    """Every test here is marked `vllm`, and skipped where vLLM is not installed (test modules import
    vllm only through r1rm's engine, inside the tests)."""
    here = Path(__file__).parent
    skip = pytest.mark.skip(reason="vLLM is not installed here: `make test-vllm` runs these in .venv-vllm")
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.vllm)
            if not HAVE_VLLM:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny4(tmp_path_factory) -> Path:
    """The 4-head tiny Qwen2.5-VL-shaped model (seed 0, head_dim 32), untrained."""
    from r1rm.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny4") / "m", seed=0)


REPO = Path(__file__).resolve().parents[2]
# where trained test models are kept between runs (a content-hash name each); R1RM_TEST_CACHE moves it
TEST_CACHE = Path(os.environ.get("R1RM_TEST_CACHE", Path.home() / ".cache" / "r1rm-tests"))
# the trained model's recipe: the synthetic colour task (recipes/tiny/synth.yaml, level 1, 112 px images) and
# recipes/tiny/sft.yaml for 600 steps with seed 1. Measured 2026-12-06 on this 2-core x86_64 CPU (one thread,
# ~3.5 min on the busy machine): it names the image's colour right on 48 of 48 held-out (item, order) and its
# verdicts vary with the item (7 of 24 "1"); a model that reads the image is what the engine comparisons need,
# not a good judge.
TRAIN_SYNTH = ["data.synthetic.n=6400", "data.synthetic.n_eval=1"]
TRAIN_SFT = ["seed=1", "sft.max_steps=600", "sft.save_every_steps=600", "runtime.progress=false",
             "runtime.report_to=none"]
# what the cache key hashes besides the overrides: the recipes, and the code that writes the untrained model and
# the data (a change to the training code keeps the cached model: any model that reads images serves)
TRAIN_INPUTS = ("recipes/tiny/base.yaml", "recipes/tiny/synth.yaml", "recipes/tiny/sft.yaml", "r1rm/models/tiny.py",
                "r1rm/data/synthetic.py")


def _trained_key() -> str:
    import torch
    import transformers

    h = hashlib.sha256()
    for rel in TRAIN_INPUTS:
        h.update(rel.encode() + b"\0" + (REPO / rel).read_bytes())
    h.update(json.dumps([TRAIN_SYNTH, TRAIN_SFT, torch.__version__, transformers.__version__]).encode())
    return h.hexdigest()[:16]


def _r1rm(*args) -> None:
    proc = subprocess.run([sys.executable, "-m", "r1rm.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=1800, env={**os.environ, "NO_COLOR": "1"})
    assert proc.returncode == 0, f"r1rm {args[0]} failed:\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="session")
def trained4() -> Path:
    """The 4-head tiny model trained on the synthetic colour task (TRAIN_SYNTH, TRAIN_SFT): built once and kept
    under TEST_CACHE by the content hash of its inputs, so later runs reuse it. Tests only read it."""
    final = TEST_CACHE / f"trained4-{_trained_key()}"
    if (final / "model" / "config.json").is_file():
        return final / "model"
    TEST_CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{final.name}.", dir=TEST_CACHE))
    try:
        _r1rm("tiny-model", work / "base")
        _r1rm("synth", "--recipe", "recipes/tiny/synth.yaml", f"output_dir={work / 'data'}", *TRAIN_SYNTH)
        _r1rm("sft", "--recipe", "recipes/tiny/sft.yaml", f"model.path={work / 'base'}",
              f"data.train=[{work / 'data' / 'train.jsonl'}]", f"output_dir={work / 'sft'}", *TRAIN_SFT)
        staged = work / "done"
        staged.mkdir()
        shutil.move(work / "sft" / "model", staged / "model")
        try:
            staged.rename(final)
        except OSError:  # another session finished the same model first: keep theirs
            pass
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final / "model"
