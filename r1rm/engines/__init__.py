"""Generation engines behind one protocol (r1rm.engines.base): hf (default), vllm, openai.

`make_engine(cfg)` builds the engine `cfg.engine.kind` names — and only that one: a
missing optional dependency is an error with an install hint, never a silent fallback.
Each engine module is imported inside its branch, so importing r1rm.engines costs nothing
and `vllm` / `openai` are imported only when asked for.

Every engine gets the run's MediaBudget (`media_budget(cfg)`: model.min_pixels, max_pixels,
video_max_frames) and passes each request through the one preprocessing
(r1rm.data.media.prepare_visuals), so one benchmark item is one prompt whatever the engine.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from r1rm.engines.base import Engine, Request, Sample, SamplingParams
from r1rm.errors import ConfigError

if TYPE_CHECKING:
    from r1rm.config import Config

__all__ = ["Engine", "Request", "Sample", "SamplingParams", "check_engine", "make_engine", "media_budget", "sampling_from_config"]


def media_budget(cfg: Config):
    """The run's MediaBudget: every engine fits images and video frames to it (r1rm.data.media)."""
    from r1rm.data.media import MediaBudget

    m = cfg.model
    return MediaBudget(min_pixels=m.min_pixels, max_pixels=m.max_pixels, video_max_frames=m.video_max_frames)


def sampling_from_config(cfg: Config) -> SamplingParams:
    """SamplingParams from `cfg.generation`, seeded with the run's `cfg.seed`."""
    g = cfg.generation
    return SamplingParams(
        max_new_tokens=g.max_new_tokens,
        temperature=g.temperature,
        top_p=g.top_p,
        top_k=g.top_k,
        n=g.n,
        seed=cfg.seed,
    )


def check_engine(cfg: Config) -> None:
    """The checks `make_engine` would fail on, without loading weights or calling an endpoint:
    commands run it before they create output_dir, so a failed start leaves no folder behind.
    It checks the environment too: output_dir can be written, the checkpoint's config.json and
    weight files are whole, and generation.max_new_tokens fits the model's positions."""
    from r1rm.data.files import check_output_dir

    check_output_dir(cfg.output_dir)
    e = cfg.engine
    if e.kind in ("hf", "vllm"):
        from r1rm.models.loading import check_context, check_model, hub_kwargs

        config = check_model(cfg.model.path, **hub_kwargs(cfg.model))
        check_context(config, cfg.model.path, new_tokens=cfg.generation.max_new_tokens, key="generation.max_new_tokens")
    elif e.kind == "openai":
        if not e.base_url:
            raise ConfigError(
                "engine.kind=openai needs an endpoint but engine.base_url is not set",
                fix="set engine.base_url=http://HOST:PORT/v1 (e.g. a `vllm serve` endpoint)",
            )
        if not (e.model_name or cfg.model.path):
            raise ConfigError(
                "engine.kind=openai needs a model name: engine.model_name and model.path are both empty",
                fix="set engine.model_name to the name the endpoint serves",
            )


def make_engine(cfg: Config, *, model=None, processor=None) -> Engine:
    """The engine `cfg.engine.kind` names; hf reuses `model`/`processor` when given."""
    e = cfg.engine
    if e.kind == "hf":
        from r1rm.engines.hf import HFEngine
        from r1rm.models.loading import load_model_for, load_processor_for, resolve_device

        if processor is None:
            processor = load_processor_for(cfg.model)
        if model is None:
            model = load_model_for(cfg.model, device=resolve_device(cfg.runtime.device))
        return HFEngine(model, processor, batch_size=e.batch_size, share_prefill=e.share_prefill,
                        media=media_budget(cfg))
    if e.kind == "openai":
        check_engine(cfg)
        name = e.model_name or cfg.model.path
        from r1rm.engines.openai_client import OpenAIEngine

        return OpenAIEngine(
            e.base_url,
            name,
            api_key=os.environ.get(e.api_key_env) or "EMPTY",
            concurrency=e.concurrency,
            timeout_s=e.timeout_s,
            max_retries=e.max_retries,
            backoff_s=e.backoff_s,
            retry_budget_s=e.retry_budget_s,
            requests_per_minute=e.requests_per_minute,
            media=media_budget(cfg),
            video_as=e.video_as,
            api_key_env=e.api_key_env,
        )
    if e.kind == "vllm":
        from r1rm.engines.vllm import VLLMEngine

        return VLLMEngine(
            cfg.model.path,
            tensor_parallel_size=e.tensor_parallel_size,
            gpu_memory_utilization=e.gpu_memory_utilization,
            dtype=cfg.model.dtype,
            seed=cfg.seed,
            media=media_budget(cfg),
            revision=cfg.model.revision,
            trust_remote_code=cfg.model.trust_remote_code,
        )
    raise ConfigError(f"unknown engine.kind '{e.kind}'", fix="use one of: hf, vllm, openai")
