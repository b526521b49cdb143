"""A prompt prefilled once for a group of rows: the KV cache built for B prompts, then copied to
n rows per prompt.

Used by the hf engine (n samples per request: prefill once, `generate` continues from the
cache) and by rl's grouped update forward (an RL prompt's n samples: prompt once, responses on
the copied cache, gradients flowing through it). Both drive a transformers model with a cache
they built themselves, so the transformers internals they rely on live here only:

- positions come from generate's own rule, `_prepare_position_ids_for_generation` (left
  padding; for Qwen-VL the [text; t; h; w] mrope rows, and it stores the (B, 1) rope deltas on
  the inner model, which later positions add to the text position);
- the cache comes back as `out.cache` (transformers >= 5.2x) or `out.past_key_values`, and the
  forward takes it under the same name;
- the rope deltas are repeated with the cache, so generate's decode steps (and rl's response
  positions) see one delta per row.

Families without mrope (InternVL, LLaVA-OneVision) get plain 1-D positions from the same rule and
keep no rope deltas. Callers use these functions only for a family of r1rm.models.families whose
results are tested equal to the plain forward (tests/integration/test_families.py); others run with
them off (r1rm.models.families.speedups).
"""

from __future__ import annotations

import inspect

import torch


def transformers_model(model):
    """The transformers model inside a DDP / DeepSpeed wrapper (`.module`) and a peft LoRA wrapper:
    the one whose forward signature, position rule and rope deltas these functions read. (Read off
    the peft wrapper, `.model` is the conditional-generation model, which holds no rope deltas: the
    deltas went unrepeated, generate failed and the grouped forward took wrong positions.)"""
    base = getattr(model, "module", model)
    return base.get_base_model() if hasattr(base, "get_base_model") else base


def cache_kwarg(model) -> str:
    """The keyword the model's forward takes a KV cache under (transformers 5.x renamed past_key_values)."""
    forward = transformers_model(model).forward
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def rope_deltas(model) -> torch.Tensor | None:
    """The (rows, 1) rope deltas Qwen-VL keeps for positions after a cached prefix, or None."""
    return getattr(getattr(transformers_model(model), "model", None), "rope_deltas", None)


def prefill_repeated(model, inputs: dict, n: int, *, upto: int | None = None):
    """Forward `inputs` (B left-padded prompts, visual tensors included) with use_cache — only the
    first `upto` tokens when given — and copy the cache (and rope deltas) to n rows per prompt.

    `model` may be a DDP / DeepSpeed / LoRA wrapper: the forward goes through it (gradient hooks,
    adapters), positions and rope deltas use the model inside (transformers_model). Returns (logits
    of the last forwarded position (B, 1, V), the repeated cache, generate's positions for ALL of
    `inputs`' tokens ((B, L) or (4, B, L)))."""
    base = transformers_model(model)
    ids = inputs["input_ids"]
    positions = base._prepare_position_ids_for_generation(ids, dict(inputs))
    head, pos = inputs, positions
    if upto is not None:
        head = {k: v[:, :upto] if torch.is_tensor(v) and v.shape[:2] == ids.shape else v for k, v in inputs.items()}
        pos = positions[..., :upto]
    out = model(**head, position_ids=pos, use_cache=True, logits_to_keep=1)
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    cache.batch_repeat_interleave(n)
    deltas = rope_deltas(base)
    if deltas is not None:
        base.model.rope_deltas = deltas.repeat_interleave(n, dim=0)
    return out.logits, cache, positions
