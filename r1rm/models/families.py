"""The VLM families r1rm knows by name: how each names its vision parts, which of r1rm's
Qwen-specific speed-ups hold for it, and how a pixel budget maps onto its processor.

Any checkpoint that `AutoModelForImageTextToText` + `AutoProcessor` load runs; a family
listed here is one whose tiny replica (`r1rm tiny-model --family F`) is built and run through
eval, SFT and RL (with freeze flags and LoRA) by tests/integration/test_families.py. A model
of an unlisted `model_type` runs with every speed-up off (nothing is assumed of it) and the
generic parameter-name markers.

Speed-ups (r1rm.models.prefill): `shared_prefill` (the hf engine prefills a prompt once for
its n samples) and `grouped_forward` (rl's update forwards a prompt once for its n samples)
both drive the model with positions from generate's own rule and a KV cache copied n times.
They are on for a family only where a test shows the log-probs equal to the plain forward
(tests/integration/test_families.py::test_speedups_match_plain_forward); off elsewhere, and
the run's summary.json says why (`speedups`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Family", "FAMILIES", "family_of", "speedups"]


@dataclass(frozen=True)
class Family:
    name: str  # r1rm's name (tiny-model --family)
    model_type: str  # transformers' config.model_type
    hub_example: str  # a released checkpoint of the family (HF format)
    vision: tuple[str, ...]  # parameter-name markers of the vision encoder
    projector: tuple[str, ...]  # ... of the vision-language projector / merger
    shared_prefill: bool  # prompt prefilled once for n samples (hf engine), tested equal
    grouped_forward: bool  # rl's grouped prompt forward, tested equal
    media: str  # how model.min_pixels / max_pixels / video frames reach its processor (docs)


_QWEN_MEDIA = ("images: size = {shortest_edge: min_pixels, longest_edge: max_pixels} (area, multiples of 28); "
               "video frames: the same bounds per frame")
FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("qwen2_vl", "qwen2_vl", "Qwen/Qwen2-VL-7B-Instruct", ("visual.",), ("visual.merger.",), True, True,
           _QWEN_MEDIA),
    Family("qwen2_5_vl", "qwen2_5_vl", "Qwen/Qwen2.5-VL-7B-Instruct", ("visual.",), ("visual.merger.",), True, True,
           _QWEN_MEDIA),
    Family("qwen3_vl", "qwen3_vl", "Qwen/Qwen3-VL-8B-Instruct", ("visual.",),
           ("visual.merger.", "visual.deepstack_merger_list."), True, True,
           "images: size = {shortest_edge: min_pixels, longest_edge: max_pixels} (area, multiples of 32); "
           "video: size.longest_edge bounds ALL frames together, so r1rm sets it to max_pixels x (frames + 1)"),
    Family("internvl3_5", "internvl", "OpenGVLab/InternVL3_5-8B-HF", ("vision_tower.",), ("multi_modal_projector.",),
           True, True,
           "images are cut into square tiles of the vision tower's size (448 in the released models) plus a "
           "thumbnail: max_patches = max_pixels // tile area (at least 1); min_pixels only gates r1rm's resize; "
           "video frames: one tile each"),
    Family("llava_onevision", "llava_onevision", "llava-hf/llava-onevision-qwen2-7b-ov-hf", ("vision_tower.",),
           ("multi_modal_projector.",), True, True,
           "anyres: the image is fitted to the best of image_grid_pinpoints and cut into tiles of the vision "
           "tower's size plus a base tile; max_pixels bounds the image r1rm hands over, the grid is the "
           "checkpoint's; video frames: one tile each, pooled"),
)}

# parameter-name markers of families not listed (LLaVA-style, Idefics, InternVL remote code)
GENERIC_VISION = ("visual.", "vision_tower.", "vision_model.")
GENERIC_PROJECTOR = ("merger.", "merger_list.", "multi_modal_projector.", "mlp1.", "connector.")


def family_of(model_or_config) -> Family | None:
    """The Family of a transformers model (any wrapper) or config, by its model_type; None if unlisted."""
    cfg = getattr(model_or_config, "config", model_or_config)
    base = getattr(model_or_config, "module", None)
    if base is not None:
        cfg = getattr(base, "config", cfg)
    model_type = getattr(cfg, "model_type", None)
    return next((f for f in FAMILIES.values() if f.model_type == model_type), None)


def speedups(model_or_config) -> dict[str, str]:
    """{"shared_prefill": "on" | "off (...)", "grouped_forward": ...} for the run's summary and log."""
    fam = family_of(model_or_config)
    if fam is None:
        cfg = getattr(model_or_config, "config", model_or_config)
        why = f"off (family {getattr(cfg, 'model_type', '?')} not tested equal to the plain forward)"
        return {"shared_prefill": why, "grouped_forward": why}
    return {k: "on" if getattr(fam, k) else f"off (family {fam.name})" for k in ("shared_prefill", "grouped_forward")}
