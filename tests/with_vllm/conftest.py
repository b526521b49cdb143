"""vLLM tests: they run in .venv-vllm (`make test-vllm`, vLLM's CPU build; the ordinary vllm on a CUDA
machine) and are skipped where vLLM is not installed (the main .venv that `make test` uses).

vLLM's CPU attention needs head_dim >= 32: these tests use the 4-head tiny default (head_dim 32),
never the demo's 8-head model (head_dim 16)."""

from __future__ import annotations

import os
from pathlib import Path

import importlib.util

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
