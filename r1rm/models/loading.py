"""Loading a chat VLM and its processor: device and dtype choice, pixel bounds, clear errors.

Any model loadable by `AutoModelForImageTextToText` + `AutoProcessor` works (Qwen2-VL,
Qwen2.5-VL, Qwen3-VL, InternVL, ...). A path that does not load is a user error
(ModelLoadError, exit code 2) that names the path and says what to check.
"""

from __future__ import annotations

from pathlib import Path

from r1rm.errors import ConfigError, ModelLoadError


def resolve_device(device: str = "auto") -> str:
    """'auto' → CUDA when a GPU is visible, else 'cpu'; 'cuda' without a GPU is a user error.

    Under torchrun / accelerate launch (LOCAL_RANK set) each process takes its own GPU."""
    import os

    import torch

    if device.startswith("cuda:") or device == "cpu":
        return device
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("runtime.device=cuda but no CUDA GPU is visible", fix="set runtime.device=cpu or auto")
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def resolve_dtype(dtype: str, device: str):
    """'auto' → bfloat16 on CUDA, float32 on CPU; otherwise the named torch dtype."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def _check_path(path: str) -> None:
    if not path:
        raise ConfigError("model.path is empty", fix="set model.path to a checkpoint folder (r1rm tiny-model OUT makes one)")
    p = Path(path)
    if (p.is_absolute() or path.startswith(".") or p.exists()) and not (p / "config.json").is_file():
        raise ModelLoadError(
            f"no model checkpoint at '{path}' (config.json missing)",
            fix="point model.path to a Hugging Face-format folder, or run `r1rm tiny-model PATH` first",
        )


def load_processor(path: str, *, min_pixels: int | None = None, max_pixels: int | None = None):
    """AutoProcessor with the recipe's pixel bounds applied to Qwen-style image and video processors
    (a video frame is bounded like an image: r1rm.data.media.prepare_visuals, every engine's preprocessing)."""
    from transformers import AutoProcessor

    _check_path(path)
    try:
        processor = AutoProcessor.from_pretrained(path)
        for name in ("image_processor", "video_processor"):
            sub = getattr(processor, name, None)
            size = getattr(sub, "size", None)
            if size is not None and hasattr(size, "longest_edge") and (min_pixels or max_pixels):
                # Qwen-style processors bound the pixel area by size = {shortest_edge, longest_edge}
                bounds = {**dict(size), "shortest_edge": min_pixels or size.shortest_edge,
                          "longest_edge": max_pixels or size.longest_edge}
                sub.size = type(size)(**bounds)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load the processor from '{path}': {e}", fix="check model.path") from None
    tok = getattr(processor, "tokenizer", processor)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return processor


def load_model(path: str, *, dtype: str = "auto", device: str = "auto", attn_implementation: str | None = None):
    """AutoModelForImageTextToText on the resolved device and dtype, in eval mode."""
    from transformers import AutoModelForImageTextToText

    _check_path(path)
    dev = resolve_device(device)
    kwargs = {"dtype": resolve_dtype(dtype, dev)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load a vision-language model from '{path}': {e}", fix="check model.path") from None
    _keep_used_conversions(model)
    return model.to(dev).eval()


def _keep_used_conversions(model) -> None:
    """Keep only the key renamings that matched a checkpoint weight, as transformers' ordinary load
    does. Its ZeRO-3 load keeps all of the architecture's, and save_pretrained reverses every one:
    an unused legacy renaming then writes `model.model.*` keys — a checkpoint that no longer has
    the layout it was loaded from (vLLM's loader and a DDP run's weights name them `model.*`)."""
    conversions = getattr(model, "_weight_conversions", None)
    if conversions:
        model._weight_conversions = [c for c in conversions if not hasattr(c, "was_used") or c.was_used()]
