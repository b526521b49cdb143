"""Preparing a loaded VLM for training (freezing, LoRA, gradient checkpointing) and saving it
back in Hugging Face format that `from_pretrained`, `r1rm eval` and `r1rm rl` load directly."""

from __future__ import annotations

import os
from pathlib import Path

from r1rm.errors import ConfigError
from r1rm.models.families import GENERIC_PROJECTOR, GENERIC_VISION, family_of

# parameter-name markers across transformers' chat VLMs (Qwen2/2.5/3-VL, InternVL, LLaVA-style); a
# family of r1rm.models.families uses its own (Qwen3-VL's deepstack mergers are projector too)
VISION_MARKERS = GENERIC_VISION
PROJECTOR_MARKERS = GENERIC_PROJECTOR


def markers(model) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(vision-tower markers, projector markers) of the model's family, else the generic ones."""
    fam = family_of(model)
    return (fam.vision, fam.projector) if fam else (VISION_MARKERS, PROJECTOR_MARKERS)


def freeze(model, *, vision_tower: bool, projector: bool) -> dict[str, int]:
    """Freeze the vision encoder and/or the projector; return counts of frozen / trainable params."""
    frozen = 0
    matched_vision = matched_proj = False
    vision_markers, projector_markers = markers(model)
    for name, p in model.named_parameters():
        is_proj = any(m in name for m in projector_markers)
        is_vision = any(m in name for m in vision_markers) and not is_proj
        matched_vision |= is_vision
        matched_proj |= is_proj
        if (vision_tower and is_vision) or (projector and is_proj):
            p.requires_grad_(False)
            frozen += p.numel()
    if vision_tower and not matched_vision:
        raise ConfigError("model.freeze_vision_tower=true but no vision-tower parameters were found",
                          fix=f"this architecture names them differently from {vision_markers}; set model.freeze_vision_tower=false")
    if projector and not matched_proj:
        raise ConfigError("model.freeze_projector=true but no projector parameters were found",
                          fix=f"this architecture names them differently from {projector_markers}; set model.freeze_projector=false")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"frozen": frozen, "trainable": trainable}


def prepare_for_training(model, mcfg):
    """Apply model.freeze_*, model.lora and model.gradient_checkpointing; return the model to train."""
    freeze(model, vision_tower=mcfg.freeze_vision_tower, projector=mcfg.freeze_projector)
    if mcfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if mcfg.lora.r > 0:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            from r1rm.errors import MissingDependencyError

            raise MissingDependencyError("LoRA needs peft", fix="pip install peft") from None
        target = lora_target(model, mcfg.lora.target_modules)
        lcfg = LoraConfig(r=mcfg.lora.r, lora_alpha=mcfg.lora.alpha, lora_dropout=mcfg.lora.dropout,
                          target_modules=target, task_type="CAUSAL_LM")
        model = get_peft_model(model, lcfg)
    model.train()
    return model


def lora_target(model, names: list[str]) -> str:
    """peft's target_modules regex: modules named `names` in the language model only (never the vision
    tower's or the projector's). ConfigError when no module of the model matches (names differ per family)."""
    import re

    vision, projector = markers(model)
    skip = "|".join(re.escape(m.rstrip(".")) for m in vision + projector)
    target = rf"^(?!.*(?:{skip})).*\.({'|'.join(map(re.escape, names))})$"
    if not any(re.fullmatch(target, name) for name, _ in model.named_modules()):
        fam = family_of(model)
        raise ConfigError(f"model.lora.target_modules={names} match no language-model module of this "
                          f"{fam.name if fam else type(model).__name__} model",
                          fix="set model.lora.target_modules to its linear layers' names (print the model's modules)")
    return target


def is_lora(model) -> bool:
    return hasattr(model, "peft_config")


def save_hf(model, processor, out_dir: str | os.PathLike, *, state_dict: dict | None = None) -> Path:
    """Write `model` (full weights, LoRA merged) and `processor` as a Hugging Face checkpoint.
    `state_dict`: the model's whole weights where the module holds shards of them (ZeRO-3:
    accelerate's get_state_dict gathers them); a LoRA model is merged from it (merged_lora) and its
    adapter saved from it, so the live model is never read or changed."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if is_lora(model):
        sd = state_dict if state_dict is not None else model.state_dict()
        model.get_base_model().save_pretrained(out, state_dict=merged_lora(model, sd), safe_serialization=True)
        model.save_pretrained(out / "adapter", state_dict=sd)
    else:
        model.save_pretrained(out, state_dict=state_dict, safe_serialization=True)
    processor.save_pretrained(out)
    return out


def merged_lora(model, state_dict: dict) -> dict:
    """A peft LoRA model's weights `state_dict` (peft's names) as the base model's, each adapted
    layer merged as peft merges it (W + scaling · B·A). Computed from `state_dict` alone: under
    ZeRO-3 the live layers hold shards, and merging in place and back also moves W by rounding."""
    adapter = model.active_adapter
    merged = {}
    for key, value in state_dict.items():
        if "lora_" in key:
            continue
        w = value.detach()
        if key.endswith(".base_layer.weight"):
            stem = key.removesuffix(".base_layer.weight")
            layer = model.get_submodule(stem)
            delta = state_dict[f"{stem}.lora_B.{adapter}.weight"].float() @ state_dict[f"{stem}.lora_A.{adapter}.weight"].float()
            if getattr(layer, "fan_in_fan_out", False):
                delta = delta.T
            w = (w.float() + layer.scaling[adapter] * delta).to(w.dtype)
        merged[key.removeprefix("base_model.model.").replace(".base_layer", "")] = w.cpu()
    return merged
