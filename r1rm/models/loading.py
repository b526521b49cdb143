"""Loading a chat VLM and its processor: device and dtype choice, pixel bounds, clear errors.

Any model loadable by `AutoModelForImageTextToText` + `AutoProcessor` works (Qwen2-VL,
Qwen2.5-VL, Qwen3-VL, InternVL, LLaVA-OneVision, ...; r1rm.models.families). Every from_pretrained
of r1rm is here, and passes model.revision and model.trust_remote_code (`hub_kwargs`); commands load
through `load_model_for` / `load_processor_for`. A path that does not load is a user error
(ModelLoadError, exit code 2) that names the path and says what to check. `check_model` is the
pre-flight every command runs before it loads weights: config.json's values, every safetensors
header against its file's size, and (`check_context`) lengths against the model's positions.
"""

from __future__ import annotations

import difflib
import json
import re
import struct
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
    # a hub id is "name" or "namespace/name": a path with two slashes or more can only be a folder
    local = p.is_absolute() or path.startswith(".") or p.exists() or path.strip("/").count("/") >= 2
    if local and not (p / "config.json").is_file():
        raise ModelLoadError(f"no model checkpoint at '{path}' ({_what_is_there(p)})",
                             fix="point model.path to a Hugging Face-format folder, or run `r1rm tiny-model PATH` first")


def _what_is_there(p: Path) -> str:
    """Why `p` is no checkpoint folder: config.json missing, or the folder absent, with the nearest
    folder above it that exists (and whether that one is a checkpoint)."""
    if p.is_dir():
        return "config.json missing"
    if p.exists():
        return "a file, not a folder"
    parent = next((q for q in p.parents if q.is_dir()), None)
    if parent is None or str(parent) == ".":
        return "no such folder"
    held = ", which holds a checkpoint (config.json)" if (parent / "config.json").is_file() else ""
    return f"no such folder; the nearest that exists is '{parent}'{held}"


def check_model(path: str, **hub):
    """Fail before a run writes anything when `path` is no loadable checkpoint: its config is read (a
    local folder, or a hub id in the cache; `hub`: revision, trust_remote_code) and, for a local folder,
    config.json's sizes and every safetensors file's header are checked (no weights are read).
    Returns the transformers config."""
    _check_path(path)
    folder = Path(path)
    if (folder / "config.json").is_file():
        _check_config_json(folder / "config.json")
        _check_weight_files(folder)
        _check_model_type(folder / "config.json")  # last: it imports transformers (and torch)
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, **{k: v for k, v in hub.items() if v is not None})
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load a model config from '{path}': {e}",
                             fix="check model.path (a checkpoint folder, or a hub id already in the cache when offline)") from None


# config.json sizes (top level, text_config, vision_config) that must be positive integers, or lists of
# them (InternVL's vision patch_size / image_size are [h, w])
_SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
          "vocab_size", "max_position_embeddings", "depth", "num_heads", "embed_dim", "patch_size", "out_hidden_size",
          "spatial_merge_size", "temporal_patch_size", "image_size", "head_dim")
_CHECKPOINT_FIX = "copy or download the checkpoint again (the file is truncated or damaged), or point model.path elsewhere"


def _loads(data: bytes, path: Path, name: str, *, what_is: str = "is not valid JSON"):
    """A checkpoint's JSON (config.json, the index, a safetensors header) through r1rm's guarded reader
    (r1rm.data.files.loads_json): a deeply nested, non-UTF-8 or broken one is a ModelLoadError with the
    file (and line), never a RecursionError or a traceback."""
    from r1rm.data.files import LineError, loads_json

    try:
        return loads_json(data, allow_nan=True)
    except LineError as e:
        m = re.search(r"at line (\d+)", e.brief)
        line = m.group(1) if m else ("1" if e.reason == "invalid_json" else None)
        raise ModelLoadError(f"{name} {what_is} ({e.brief})", where=f"{path}:{line}" if line else str(path),
                             fix=_CHECKPOINT_FIX) from None


def _check_config_json(path: Path) -> None:
    """config.json is a JSON object whose sizes are positive integers (file:line of the first bad one)."""
    data = path.read_bytes()
    raw = _loads(data, path, "config.json")
    text = data.decode("utf-8")
    if not isinstance(raw, dict):
        raise ModelLoadError(f"config.json must be a JSON object, got {type(raw).__name__}", where=str(path),
                             fix=_CHECKPOINT_FIX)
    for prefix, section in (("", raw), ("text_config.", raw.get("text_config")), ("vision_config.", raw.get("vision_config"))):
        if not isinstance(section, dict):
            continue
        for key in _SIZES:
            value = section.get(key)
            items = value if isinstance(value, list) and value else [value]
            if value is None or all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items):
                continue
            m = re.search(rf'"{key}"\s*:\s*{re.escape(json.dumps(value))}', text)
            line = text.count("\n", 0, m.start()) + 1 if m else None
            raise ModelLoadError(f"config.json: {prefix}{key} = {json.dumps(value)} is not a positive integer (or a list of them)",
                                 where=f"{path}:{line}" if line else str(path),
                                 fix=f"set {prefix}{key} to the model's real size (config.json from the checkpoint's source)")


def _check_model_type(path: Path) -> None:
    """A model_type this transformers knows, unless the checkpoint brings its own code (auto_map)."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    data = path.read_bytes()
    raw, text = _loads(data, path, "config.json"), data.decode("utf-8")
    kind = raw.get("model_type")
    if kind is None or "auto_map" in raw or (isinstance(kind, str) and kind in CONFIG_MAPPING_NAMES):
        return
    m = re.search(r'"model_type"\s*:', text)
    line = text.count("\n", 0, m.start()) + 1 if m else None
    close = difflib.get_close_matches(str(kind), list(CONFIG_MAPPING_NAMES), n=3, cutoff=0.6)
    raise ModelLoadError(f"config.json: model_type {json.dumps(kind)} is not a model type transformers "
                         f"{transformers.__version__} knows" + (f" (close: {', '.join(close)})" if close else ""),
                         where=f"{path}:{line}" if line else str(path),
                         fix="fix model_type in config.json, or upgrade transformers for a newer family "
                         "(a checkpoint with its own code needs auto_map and model.trust_remote_code=true)")


def _check_weight_files(folder: Path) -> None:
    """Every *.safetensors file has a whole header and the size its header says; an index names only
    shards that exist; and there are weights at all."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(_loads(index.read_bytes(), index, "the safetensors index")["weight_map"].values())
        except (KeyError, TypeError, AttributeError) as e:
            raise ModelLoadError(f"the safetensors index is not valid ({type(e).__name__}: {e})", where=str(index),
                                 fix=_CHECKPOINT_FIX) from None
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise ModelLoadError(f"the safetensors index names {len(missing)} missing shard(s): {', '.join(missing[:3])}",
                                 where=str(index), fix=_CHECKPOINT_FIX)
    files = sorted(folder.glob("*.safetensors"))
    if not files and not any(folder.glob("*.bin")) and not any(folder.glob("*.pt")):
        raise ModelLoadError(f"no weights in '{folder}' (config.json but no *.safetensors or *.bin file)",
                             fix=_CHECKPOINT_FIX)
    for f in files:
        _check_safetensors(f)


def _check_safetensors(f: Path) -> None:
    """The header (8-byte length + JSON) is whole and the file is exactly as long as its tensors' offsets say."""
    size = f.stat().st_size
    if size < 8:
        raise ModelLoadError(f"weights file is {'empty (0 bytes)' if size == 0 else f'truncated ({size} bytes)'}",
                             where=str(f), fix=_CHECKPOINT_FIX)
    with open(f, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > size - 8 or n > 100 * 1024 * 1024:
            raise ModelLoadError(f"weights file is truncated: its header says {n} header bytes, the file has {size - 8}",
                                 where=str(f), fix=_CHECKPOINT_FIX)
        header = _loads(fh.read(n), f, "weights file", what_is="has no valid safetensors header")
        try:
            ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"]
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            raise ModelLoadError(f"weights file has no valid safetensors header ({type(e).__name__})", where=str(f),
                                 fix=_CHECKPOINT_FIX) from None
    expected = 8 + n + max(ends, default=0)
    if size != expected:
        raise ModelLoadError(f"weights file is {size} bytes but its header describes {expected} bytes "
                             f"({'truncated' if size < expected else 'trailing bytes'})", where=str(f), fix=_CHECKPOINT_FIX)


def max_positions(config) -> int | None:
    """The model's context length in tokens: max_position_embeddings of its text config (VLMs) or of itself."""
    for c in (getattr(config, "text_config", None), config):
        n = getattr(c, "max_position_embeddings", None) if c is not None else None
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            return n
    return None


def check_context(config, path: str, *, new_tokens: int, key: str, prompt_tokens: int = 1,
                  prompt_key: str | None = None) -> None:
    """Refuse lengths the model's positions cannot hold: `prompt_tokens` (`prompt_key`; by default the
    shortest prompt, 1 token) plus `new_tokens` (the setting `key`) must fit max_position_embeddings."""
    positions = max_positions(config)
    if positions is None or prompt_tokens + new_tokens <= positions:
        return
    prompt = f"{prompt_key} ({prompt_tokens})" if prompt_key else "a prompt of at least 1 token"
    fix = (f"lower {key} to at most {positions - prompt_tokens}" + (f", or lower {prompt_key}" if prompt_key else "")
           if positions > prompt_tokens else f"lower {prompt_key} below {positions}")
    raise ConfigError(f"{key} ({new_tokens}) + {prompt} exceed the model's {positions} positions "
                      f"(max_position_embeddings of '{path}')", fix=fix)


def model_config(mcfg):
    """The transformers config of model.path (config.json only, no weights); None when it does not load
    (the model load then says why)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(mcfg.path, **hub_kwargs(mcfg))
    except (OSError, ValueError):
        return None


def hub_kwargs(mcfg=None, *, revision: str | None = None, trust_remote_code: bool = False) -> dict:
    """The keywords every from_pretrained of r1rm passes: model.revision and model.trust_remote_code
    (from the config's model section `mcfg`, or given one by one)."""
    if mcfg is not None:
        revision, trust_remote_code = mcfg.revision, mcfg.trust_remote_code
    kw: dict = {"trust_remote_code": bool(trust_remote_code)}
    if revision:
        kw["revision"] = revision
    return kw


def load_processor(path: str, *, min_pixels: int | None = None, max_pixels: int | None = None,
                   video_max_frames: int | None = None, revision: str | None = None, trust_remote_code: bool = False):
    """AutoProcessor with the recipe's pixel bounds mapped onto the family's processor (`apply_budget`).
    (A video frame is bounded like an image: r1rm.data.media.prepare_visuals, every engine's preprocessing.)"""
    from transformers import AutoProcessor

    _check_path(path)
    try:
        processor = AutoProcessor.from_pretrained(path, **hub_kwargs(revision=revision,
                                                                     trust_remote_code=trust_remote_code))
        apply_budget(processor, min_pixels=min_pixels, max_pixels=max_pixels, video_max_frames=video_max_frames)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load the processor from '{path}': {e}", fix="check model.path") from None
    tok = getattr(processor, "tokenizer", processor)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return processor


def apply_budget(processor, *, min_pixels: int | None, max_pixels: int | None, video_max_frames: int | None = None):
    """Map model.min_pixels / max_pixels onto the processor's own knobs, per family:

    - Qwen2-VL / Qwen2.5-VL (size = {shortest_edge, longest_edge} as pixel areas): images and each video
      frame get [min_pixels, max_pixels];
    - Qwen3-VL: the image processor as above; its video processor's longest_edge bounds ALL frames of a
      clip together (t x h x w), so it gets max_pixels x (video_max_frames + 1) (the +1: frames are
      padded to an even count) — max_pixels alone squeezed an 8-frame clip to an eighth of the budget —
      and it takes the frames as given (do_sample_frames off: r1rm sampled them already);
    - tiled processors (InternVL's GotOcr2, crop_to_patches): max_patches = max_pixels // tile area
      (at least 1), the tiles the image may be cut into besides the thumbnail;
    - anything else (LLaVA-OneVision's anyres grid, fixed-size towers): the processor's own sizes; the
      image it receives is already within [min_pixels, max_pixels] (r1rm.data.media.prepare_visuals)."""
    video = getattr(processor, "video_processor", None)
    if type(video).__name__.startswith("Qwen3VL"):
        # r1rm hands over the frames it sampled (model.video_max_frames); Qwen3-VL's processor would
        # sample them again at 2 fps of an assumed 24 fps clip (8 frames -> 2). The per-frame cap is
        # qwen-vl-utils' behaviour, set so transformers stops warning about it.
        video.do_sample_frames = False
        if video.cap_pixels_per_frame is None:
            video.cap_pixels_per_frame = True
    if not (min_pixels or max_pixels):
        return
    for name in ("image_processor", "video_processor"):
        sub = getattr(processor, name, None)
        size = getattr(sub, "size", None)
        if size is not None and getattr(size, "longest_edge", None):
            # Qwen-style processors bound the pixel area by size = {shortest_edge, longest_edge}
            lo, hi = min_pixels or size.shortest_edge, max_pixels or size.longest_edge
            if name == "video_processor" and type(sub).__name__.startswith("Qwen3VL") and max_pixels:
                hi = max_pixels * ((video_max_frames or sub.max_frames or 1) + 1)
            sub.size = type(size)(**{**dict(size), "shortest_edge": lo, "longest_edge": hi})
        elif name == "image_processor" and getattr(sub, "crop_to_patches", False) and max_pixels:
            tile = int(size.height) * int(size.width)
            sub.max_patches = max(1, max_pixels // tile)
            sub.min_patches = min(getattr(sub, "min_patches", 1), sub.max_patches)


def load_model(path: str, *, dtype: str = "auto", device: str = "auto", attn_implementation: str | None = None,
               revision: str | None = None, trust_remote_code: bool = False):
    """AutoModelForImageTextToText on the resolved device and dtype, in eval mode."""
    from transformers import AutoModelForImageTextToText

    from r1rm.runtime.progress import hf_bars_off

    _check_path(path)
    hf_bars_off()  # "Loading weights" (and later "Writing model shards") would print into r1rm's bars
    dev = resolve_device(device)
    kwargs = {"dtype": resolve_dtype(dtype, dev), **hub_kwargs(revision=revision, trust_remote_code=trust_remote_code)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load a vision-language model from '{path}': {e}",
                             fix="check model.path (and model.revision; a family transformers lacks natively "
                                 "needs model.trust_remote_code=true)") from None
    _keep_used_conversions(model)
    return model.to(dev).eval()


def load_processor_for(mcfg):
    """load_processor with the config's model section: pixel bounds, video frames, revision, remote code."""
    return load_processor(mcfg.path, min_pixels=mcfg.min_pixels, max_pixels=mcfg.max_pixels,
                          video_max_frames=mcfg.video_max_frames, revision=mcfg.revision,
                          trust_remote_code=mcfg.trust_remote_code)


def load_model_for(mcfg, *, device: str = "auto", dtype: str | None = None):
    """load_model with the config's model section: dtype, attention kernel, revision, remote code."""
    return load_model(mcfg.path, dtype=dtype or mcfg.dtype, device=device,
                      attn_implementation=mcfg.attn_implementation, revision=mcfg.revision,
                      trust_remote_code=mcfg.trust_remote_code)


def _keep_used_conversions(model) -> None:
    """Keep only the key renamings that matched a checkpoint weight, as transformers' ordinary load
    does. Its ZeRO-3 load keeps all of the architecture's, and save_pretrained reverses every one:
    an unused legacy renaming then writes `model.model.*` keys — a checkpoint that no longer has
    the layout it was loaded from (vLLM's loader and a DDP run's weights name them `model.*`)."""
    conversions = getattr(model, "_weight_conversions", None)
    if conversions:
        model._weight_conversions = [c for c in conversions if not hasattr(c, "was_used") or c.was_used()]
