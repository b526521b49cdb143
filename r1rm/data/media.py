"""Images and video frames on disk: resolving a record's media paths under its image root (by
default the data file's folder), checking files and frames folders, recognising image bytes,
sampling frames, and fitting the visuals of chat messages to a pixel budget.

`prepare_visuals` is the one preprocessing every engine (hf, vllm, openai) applies to a request
before its processor or its wire format, so one benchmark item is one prompt whatever the engine:

- every image is decoded once (`open_rgb`: EXIF orientation applied, then RGB, as transformers'
  `load_image` does) and resized to the run's budget with the Qwen2-VL / 2.5-VL processor's own
  rule and operation (`smart_resize` to multiples of 28 within [min_pixels, max_pixels], then
  torchvision's antialiased bicubic resize of the uint8 image, as the processor's torchvision
  backend does). A processor bounded by the same pixels then leaves the image as it is
  (`smart_resize` returns its size; the same-size resize is the identity), so the hf engine sees
  the pixels it saw before and vLLM / an endpoint receive exactly those pixels;
- a video (a list of frames or a folder of them) is sampled to `video_max_frames` frames once
  (`sample_frames`) and each frame is fitted like an image: every engine gets the same frames,
  as one video (VIDEO_FPS frames per second, the rate transformers assumes for a list of frames);
- a part carrying its own "max_pixels" share (`record_messages` splits a sample's budget over
  several visuals) is first fitted to that share, exactly as `fit_visuals` (the trainer's path)
  does, then to the budget.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1rm.data.files import RowError, atomic_path
from r1rm.errors import InputFileError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
# magic bytes -> (file suffix, MIME type) of the image formats recognised in raw bytes
_IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", ".png", "image/png"),
    (b"\xff\xd8\xff", ".jpg", "image/jpeg"),
    (b"GIF8", ".gif", "image/gif"),
    (b"BM", ".bmp", "image/bmp"),
)


def resolve_path(path: str, root: str | os.PathLike) -> Path:
    """Resolve `path` against `root`; raise RowError('path_escapes_root') if it lands outside root."""
    root_real = os.path.realpath(root)
    full = os.path.realpath(os.path.join(root_real, path))
    if os.path.commonpath([root_real, full]) != root_real:
        raise RowError(
            "path_escapes_root",
            f"path '{path}' resolves outside the image root '{root_real}'; keep media under the root or point the root "
            "elsewhere (eval: eval.image_root; sft / rl: data.image_root; build-data: build.sources[].image_root; "
            "check-data: --image-root)",
        )
    return Path(full)


def default_image_root(data_file: str | os.PathLike, image_root: str | None) -> Path:
    """The configured image root, or the data file's folder (a data folder — a build-data output — itself)."""
    if image_root:
        return Path(image_root)
    p = Path(data_file).resolve()
    return p if p.is_dir() else p.parent


def sniff_image(data: bytes) -> tuple[str, str] | None:
    """(file suffix, MIME type) of image bytes from their magic number; None for an unknown format."""
    for magic, suffix, mime in _IMAGE_MAGIC:
        if data.startswith(magic):
            return suffix, mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp", "image/webp"
    return None


def check_image(path: Path, *, max_pixels: int | None = None) -> tuple[int, int]:
    """Open and fully decode an image; return (width, height) or raise RowError with a reason.

    Reasons: missing_image, empty_image (zero bytes), corrupt_image (unreadable or truncated),
    image_too_large (more than `max_pixels` * 64, a decompression-bomb guard).
    """
    from PIL import Image

    if not path.is_file():
        raise RowError("missing_image", f"image not found: '{path}'")
    if path.stat().st_size == 0:
        raise RowError("empty_image", f"image file is empty (0 bytes): '{path}'")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if max_pixels is not None and w * h > max_pixels * 64:
                raise RowError("image_too_large", f"image '{path}' is {w}x{h}, far above max_pixels={max_pixels}")
            im.load()
    except RowError:
        raise
    except Image.DecompressionBombError as e:  # PIL's own guard fires in open() for the largest claims
        raise RowError("image_too_large", f"image '{path}' is far too large to decode ({e})") from None
    except Exception as e:  # PIL raises many types for broken files
        raise RowError("corrupt_image", f"image '{path}' cannot be decoded ({type(e).__name__}: {e})") from None
    if w == 0 or h == 0:
        raise RowError("empty_image", f"image '{path}' has zero size {w}x{h}")
    return w, h


def list_frames(folder: Path) -> list[Path]:
    """Image files in a frames folder, in natural (numeric-aware) order."""
    import re

    def natural(p: Path) -> list:
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]

    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=natural)


def sample_frames(frames: list, k: int) -> list:
    """k frames spread uniformly over the list (all of them when there are ≤ k)."""
    if len(frames) <= k:
        return list(frames)
    return [frames[int((i + 0.5) * len(frames) / k)] for i in range(k)]


def folder_frames(folder: Path, *, name_suffixes: bool = False) -> list[Path]:
    """The frames of a video frames folder, in natural order; RowError 'missing_video' when the
    folder is missing or holds no image (`name_suffixes`: the message lists the suffixes looked for)."""
    if not folder.is_dir():
        raise RowError("missing_video", f"video frames folder not found: '{folder}'")
    frames = list_frames(folder)
    if not frames:
        looked_for = f" ({', '.join(IMAGE_SUFFIXES)})" if name_suffixes else ""
        raise RowError("missing_video", f"video folder '{folder}' holds no image frames{looked_for}")
    return frames


def resolve_video(video: str | list[str] | tuple[str, ...], root: str | os.PathLike, max_frames: int) -> list[Path]:
    """Frame paths of a video given as a folder or a list, resolved under root and sampled to max_frames."""
    if isinstance(video, str):
        frames = folder_frames(resolve_path(video, root), name_suffixes=True)
    else:
        frames = [resolve_path(f, root) for f in video]
    return sample_frames(frames, max_frames)


def smart_resize(height: int, width: int, *, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 14 * 14 * 4 * 1280) -> tuple[int, int]:
    """(height, width) the Qwen2-VL / Qwen2.5-VL image processor resizes an image to.

    Both sides become multiples of `factor` (patch 14 x spatial merge 2 = 28) and the area
    lands in [min_pixels, max_pixels] with the aspect ratio kept as closely as possible
    (transformers' `qwen2_vl.image_processing_qwen2_vl.smart_resize`, the same rule).
    """
    if max(height, width) / min(height, width) > 200:
        raise RowError("bad_aspect_ratio", f"image aspect ratio {max(height, width) / min(height, width):.0f} exceeds 200")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def resize_image(src: Path, dest: Path, size: tuple[int, int]) -> None:
    """Write `src` resized to size=(width, height) at `dest` (bicubic, as the Qwen processor),
    keeping JPEG as JPEG (quality 95) and writing anything else as PNG; atomic."""
    from PIL import Image

    with Image.open(src) as im:
        fmt = "JPEG" if im.format == "JPEG" else "PNG"
        if fmt == "JPEG" and im.mode not in ("RGB", "L"):
            im = im.convert("RGB")
        out = im.resize(size, Image.Resampling.BICUBIC)
    with atomic_path(dest) as tmp:
        out.save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


# The frame rate of a video given as a list of frames, for every engine: transformers assumes 24 when a
# video comes without metadata (VideoMetadata.sampled_fps), and Qwen2.5-VL's temporal positions depend
# on it (second_per_grid_ts = temporal_patch_size / fps), so vLLM is told the same rate.
VIDEO_FPS = 24.0
PATCH_FACTOR = 28  # Qwen2-VL / 2.5-VL: patch 14 x spatial merge 2


@dataclass(frozen=True)
class MediaBudget:
    """What a run allows per visual: pixel bounds of an image or video frame (model.min_pixels,
    model.max_pixels; None = no bound of r1rm's own) and frames per video (model.video_max_frames)."""

    min_pixels: int | None = None
    max_pixels: int | None = None
    video_max_frames: int | None = None
    # sides are rounded to multiples of this: the processor's patch x merge (Qwen2/2.5-VL 28, Qwen3-VL 32;
    # 1 for tiling processors, InternVL / LLaVA-OneVision, which cut their own tiles; `budget_factor`)
    factor: int = PATCH_FACTOR


def open_rgb(image: Any):
    """A PIL RGB image from a path or PIL image: EXIF orientation applied, then converted to RGB (what
    transformers' `load_image` does with a path); InputFileError for a missing or unreadable file."""
    from PIL import Image, ImageOps

    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    path = Path(image)
    if not path.is_file():
        raise InputFileError(f"media file not found: '{path}'", fix="check the image/video paths of the request")
    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im).convert("RGB")
    except Exception as e:  # PIL raises many types for broken files
        raise InputFileError(f"cannot decode image '{path}' ({type(e).__name__}: {e})",
                             fix="check the file, or drop it with `r1rm check-data`") from None


def resize_like_processor(img, height: int, width: int):
    """`img` (PIL RGB) resized to (height, width) with the operation of the Qwen-VL processor's
    torchvision backend: antialiased bicubic on the uint8 image; the same image when the size is equal."""
    if (img.height, img.width) == (height, width):
        return img
    import torchvision.transforms.v2.functional as tvF
    from torchvision.transforms import InterpolationMode

    t = tvF.pil_to_tensor(img)
    out = tvF.resize(t, [height, width], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return tvF.to_pil_image(out)


def budget_factor(processor) -> int:
    """The side multiple a processor resizes images to: patch x merge for Qwen-style processors (28, or 32
    for Qwen3-VL), 1 for any other (tiling processors cut their own tiles: r1rm only bounds the area)."""
    sub = getattr(processor, "image_processor", None)
    patch, merge = getattr(sub, "patch_size", None), getattr(sub, "merge_size", None)
    return int(patch) * int(merge) if isinstance(patch, int) and isinstance(merge, int) else 1


def fit_image(image: Any, *, min_pixels: int | None, max_pixels: int | None, factor: int = PATCH_FACTOR):
    """`image` decoded (`open_rgb`) and resized as the processor would with these bounds (None: no bound),
    sides multiples of `factor`."""
    img = open_rgb(image)
    if min_pixels is None and max_pixels is None:
        return img
    try:
        h, w = smart_resize(img.height, img.width, factor=factor, min_pixels=min_pixels or 1,
                            max_pixels=max_pixels or 10**12)
    except RowError as e:
        raise InputFileError(f"image {img.width}x{img.height}: {e}", fix="crop or drop the image") from None
    return resize_like_processor(img, h, w)


def _fit_one(image, budget: int):
    """A PIL image no larger than `budget` pixels (Qwen rule: sides multiples of 28, aspect kept); never enlarged."""
    img = open_rgb(image)
    h, w = smart_resize(img.height, img.width, min_pixels=min(56 * 56, budget), max_pixels=budget)
    if (h, w) != (img.height, img.width) and h * w < img.height * img.width:
        img = resize_like_processor(img, h, w)
    return img


def map_parts(messages: list[dict], fn: Callable[[Any], Any]) -> list[dict]:
    """The messages with `fn` applied to every part of a list content (those messages are new dicts;
    a message whose content is not a list is returned as it is)."""
    out = []
    for m in messages:
        content = m.get("content")
        out.append({**m, "content": [fn(p) for p in content]} if isinstance(content, list) else m)
    return out


def fit_visuals(messages: list[dict]) -> list[dict]:
    """Messages with every image / video part that carries a "max_pixels" share (set by
    `record_messages` for samples with several visuals, e.g. two generated outputs) replaced by
    PIL images resized to that share, so one sample never exceeds the recipe's pixel budget.
    Parts without a share, and messages without any, are returned unchanged (same objects)."""
    if not any(isinstance(p, dict) and "max_pixels" in p for m in messages for p in (m.get("content") or [])
               if isinstance(m.get("content"), list)):
        return messages
    return map_parts(messages, _fit_part)


def _fit_part(p: Any) -> Any:
    if not (isinstance(p, dict) and "max_pixels" in p):
        return p
    budget = int(p["max_pixels"])
    q = {k: v for k, v in p.items() if k != "max_pixels"}
    if p["type"] == "image":
        q["image"] = _fit_one(p["image"], budget)
    elif p["type"] == "video" and isinstance(p["video"], list | tuple):
        q["video"] = [_fit_one(f, budget) for f in p["video"]]
    return q


def video_frame_list(video: Any, max_frames: int | None = None) -> list:
    """The frames of a video part: its list of frames, the image files of a frames folder in natural
    order, or a video file's frames decoded with PyAV (r1rm.data.video; `max_frames` spread uniformly,
    else all); InputFileError for anything else."""
    if isinstance(video, list | tuple):
        return list(video)
    folder = Path(video)
    if folder.is_dir():
        frames = list_frames(folder)
        if frames:
            return frames
    from r1rm.data.video import decode_frames, is_video_file

    if is_video_file(video) and folder.is_file():
        try:
            return decode_frames(folder, max_frames)
        except RowError as e:
            raise InputFileError(str(e), fix="check the video file (PyAV / FFmpeg must be able to decode it)") from None
    raise InputFileError(
        f"video '{video}' is not a list of frames, a folder of frame images or a video file",
        fix="give the frames (a list or a folder) or a video file (.mp4, .webm, .mov, ...)",
    )


def _is_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://", "data:"))


def prepare_visuals(messages: list[dict], budget: MediaBudget) -> list[dict]:
    """The one preprocessing of every engine (module docstring): new messages whose image parts hold
    {"type": "image", "image": PIL RGB image} and whose video parts hold {"type": "video", "video":
    [PIL RGB frames]}, sampled and fitted to `budget`. URLs (http, data) pass through untouched; the
    input messages are not modified."""

    def fit(value: Any, share: int | None):
        if share is not None:
            value = _fit_one(value, share)
        return fit_image(value, min_pixels=budget.min_pixels, max_pixels=budget.max_pixels, factor=budget.factor)

    def part_fn(p: Any) -> Any:
        if not isinstance(p, dict):
            return p
        kind = p.get("type")
        share = int(p["max_pixels"]) if "max_pixels" in p else None
        if kind == "video" or (kind is None and "video" in p):
            frames = video_frame_list(p["video"])
            if budget.video_max_frames is not None:
                frames = sample_frames(frames, budget.video_max_frames)
            return {"type": "video", "video": [fit(f, share) for f in frames]}
        if kind in ("image", None) and any(k in p for k in ("image", "path")):
            value = p["image"] if "image" in p else p["path"]
            return p if _is_url(value) else {"type": "image", "image": fit(value, share)}
        return p

    return map_parts(messages, part_fn)
