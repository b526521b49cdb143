"""Images and video frames on disk: resolving paths under a root, checking files, sampling frames."""

from __future__ import annotations

import math
import os
from pathlib import Path

from r1rm.data.records import RowError, resolve_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


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


def resolve_video(video: str | list[str] | tuple[str, ...], root: str | os.PathLike, max_frames: int) -> list[Path]:
    """Frame paths of a video given as a folder or a list, resolved under root and sampled to max_frames."""
    if isinstance(video, str):
        folder = resolve_path(video, root)
        if not folder.is_dir():
            raise RowError("missing_video", f"video frames folder not found: '{folder}'")
        frames = list_frames(folder)
        if not frames:
            raise RowError("missing_video", f"video folder '{folder}' holds no image frames ({', '.join(IMAGE_SUFFIXES)})")
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
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp.{os.getpid()}")
    out.save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    os.replace(tmp, dest)


def _fit_one(image, budget: int):
    """A PIL image no larger than `budget` pixels (Qwen rule: sides multiples of 28, aspect kept)."""
    from PIL import Image

    img = image if isinstance(image, Image.Image) else Image.open(image)
    img = img.convert("RGB")
    h, w = smart_resize(img.height, img.width, min_pixels=min(56 * 56, budget), max_pixels=budget)
    if (h, w) != (img.height, img.width) and h * w < img.height * img.width:
        img = img.resize((w, h), Image.Resampling.BICUBIC)
    return img


def fit_visuals(messages: list[dict]) -> list[dict]:
    """Messages with every image / video part that carries a "max_pixels" share (set by
    `record_messages` for samples with several visuals, e.g. two generated outputs) replaced by
    PIL images resized to that share, so one sample never exceeds the recipe's pixel budget.
    Parts without a share, and messages without any, are returned unchanged (same objects)."""
    if not any(isinstance(p, dict) and "max_pixels" in p for m in messages for p in (m.get("content") or [])
               if isinstance(m.get("content"), list)):
        return messages
    out = []
    for m in messages:
        content = m.get("content")
        if not isinstance(content, list):
            out.append(m)
            continue
        parts = []
        for p in content:
            if isinstance(p, dict) and "max_pixels" in p:
                budget = int(p["max_pixels"])
                q = {k: v for k, v in p.items() if k != "max_pixels"}
                if p["type"] == "image":
                    q["image"] = _fit_one(p["image"], budget)
                elif p["type"] == "video" and isinstance(p["video"], list | tuple):
                    q["video"] = [_fit_one(f, budget) for f in p["video"]]
                parts.append(q)
            else:
                parts.append(p)
        out.append({**m, "content": parts})
    return out
