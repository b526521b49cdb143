"""Images and video frames on disk: resolving a record's media paths under its image root (by
default the data file's folder), checking files and frames folders, recognising image bytes,
sampling frames, and fitting the visuals of chat messages to a pixel budget.

`admit_image` is the media gate: every image and video frame r1rm reads passes it — the readers at load
time (check-data, eval, build-data, sft, rl: a refusal is a record-level error, file:line and reason, or a
skipped and counted item under eval.skip_missing_media) and every engine and encoder at use time (hf,
vllm, openai, the trainers, judge, the server). It reads the header first and refuses a decompression bomb
(`image_too_large`: more than 64 x max_pixels decoded pixels) before decoding, refuses an aspect ratio no
Qwen-VL processor takes (`aspect_ratio`) and anything that is not a PNG / JPEG / WebP / GIF / BMP / TIFF
image or does not decode (`corrupt_image`), and converts what it accepts (BMP, TIFF, CMYK, palette,
16-bit, the first frame of an animation) to 8-bit RGB, which every engine can process.

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
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1rm.data.files import RowError, atomic_path
from r1rm.errors import InputFileError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# magic bytes -> (file suffix, MIME type) of the image formats recognised in raw bytes
_IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", ".png", "image/png"),
    (b"\xff\xd8\xff", ".jpg", "image/jpeg"),
    (b"GIF8", ".gif", "image/gif"),
    (b"BM", ".bmp", "image/bmp"),
    (b"II*\x00", ".tif", "image/tiff"),
    (b"MM\x00*", ".tif", "image/tiff"),
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


# ---------------------------------------------------------------- the media gate
# Every image and video frame r1rm reads passes `admit_image` (readers at load time, every engine and the
# trainers' encoders at use time): one bound, one format list, one conversion, one set of reasons.
# Decoded pixels allowed per image: 64 x the run's max_pixels (a decompression-bomb guard: r1rm resizes to
# max_pixels, so an image 64 times larger is not a photo worth decoding), and never more than PIL's own
# default bound (MAX_DECODED_PIXELS, ~89.5 MP: 12000x12000 is refused even without a budget).
BOMB_FACTOR = 64
MAX_DECODED_PIXELS = 89_478_485
# the Qwen2-VL / 2.5-VL / 3-VL processors refuse a longer side more than 200 times the shorter one
MAX_ASPECT_RATIO = 200
# the image formats r1rm decodes (PIL plugin names; the JPEG plugin also opens MPO). Any other is refused
# before a plugin runs: exotic decoders (EPS runs Ghostscript, PSD, ICO, ...) never see user data.
GATE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "DIB", "TIFF")
_FORMAT_NAMES = "PNG, JPEG, WebP, GIF, BMP or TIFF"


def pixel_bound(max_pixels: int | None) -> int:
    """Most decoded pixels an image may have under a run's `max_pixels` (None: no budget of the run's own)."""
    if max_pixels is None:
        return MAX_DECODED_PIXELS
    return min(max_pixels * BOMB_FACTOR, MAX_DECODED_PIXELS)


def _label(source: Any, what: str) -> str:
    if what:
        return what
    if isinstance(source, bytes | bytearray):
        return f"<{len(source)} image bytes>"
    if isinstance(source, str) and source.startswith("data:"):
        return source[:40] + "..."
    return str(source)


def _source_bytes(source: Any, label: str):
    """A file path or a BytesIO to hand PIL; RowError missing_image / empty_image / corrupt_image (data URL)."""
    import base64
    import binascii
    import io

    if isinstance(source, bytes | bytearray):
        if not source:
            raise RowError("empty_image", f"image {label} is empty (0 bytes)")
        return io.BytesIO(bytes(source))
    if isinstance(source, str) and source.startswith("data:"):
        head, _, payload = source.partition(",")
        try:
            data = base64.b64decode(payload, validate=True) if ";base64" in head else b""
        except (binascii.Error, ValueError):
            data = b""
        if not data:
            raise RowError("corrupt_image", f"data URL {label} does not hold base64 image bytes")
        return io.BytesIO(data)
    path = Path(source)
    if not path.is_file():
        raise RowError("missing_image", f"image not found: '{path}'")
    if path.stat().st_size == 0:
        raise RowError("empty_image", f"image file is empty (0 bytes): '{path}'")
    return path


def _check_size(w: int, h: int, *, max_pixels: int | None, label: str) -> None:
    """The header checks: zero size, the pixel bound, the aspect ratio (RowError with its reason)."""
    if w <= 0 or h <= 0:
        raise RowError("empty_image", f"image '{label}' has zero size {w}x{h}")
    bound = pixel_bound(max_pixels)
    if w * h > bound:
        budget = f"64 x max_pixels={max_pixels}" if max_pixels is not None and bound < MAX_DECODED_PIXELS else "r1rm's limit"
        raise RowError("image_too_large", f"image '{label}' is {w}x{h} = {w * h} pixels, more than {bound} "
                       f"({budget}); it is refused before decoding (decompression-bomb guard): downscale it")
    if max(w, h) / min(w, h) > MAX_ASPECT_RATIO:
        raise RowError("aspect_ratio", f"image '{label}' is {w}x{h}: aspect ratio {max(w, h) / min(w, h):.0f} exceeds "
                       f"{MAX_ASPECT_RATIO}, which the Qwen-VL processors refuse; crop or pad it")


def _opened(source: Any, *, max_pixels: int | None, label: str):
    """The image opened lazily (header read, pixels not decoded) and its size checked."""
    from PIL import Image, ImageFile

    # guard PIL's own settings too: a library that disabled the bound (None) or let truncated files load
    # would do so for every later open
    Image.MAX_IMAGE_PIXELS = MAX_DECODED_PIXELS
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    src = _source_bytes(source, label)
    try:
        with warnings.catch_warnings():  # the size is judged below, in r1rm's own words
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(src, formats=GATE_FORMATS)
    except Image.DecompressionBombError as e:  # PIL's own guard fires in open() for the largest claims
        raise RowError("image_too_large", f"image '{label}' is far too large to decode ({e}); downscale it") from None
    except Exception as e:  # UnidentifiedImageError, and the many types PIL raises for a broken header
        raise RowError("corrupt_image", f"image '{label}' cannot be decoded: not a {_FORMAT_NAMES} image "
                       f"({type(e).__name__}: {e})") from None
    try:
        _check_size(*im.size, max_pixels=max_pixels, label=label)
    except RowError:
        im.close()
        raise
    return im


def image_header(source: Any, *, max_pixels: int | None, what: str = "") -> tuple[str, str, tuple[int, int]]:
    """(format, mode, (width, height)) of an image from its header alone, after the gate's header checks
    (`admit_image` without decoding: cheap enough for every image of a training set at load time)."""
    label = _label(source, what)
    with _opened(source, max_pixels=max_pixels, label=label) as im:
        return im.format or "", im.mode, im.size


def _to_rgb(im):
    """An 8-bit RGB image every processor and endpoint takes: 16/32-bit grey scaled to 8 bits (a plain
    convert would clip it to white), palette and alpha through RGBA, CMYK / YCbCr / LAB converted."""
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I") or im.mode == "F":
        import numpy as np
        from PIL import Image

        a = np.asarray(im).astype(np.float64)
        if im.mode.startswith("I;16") or a.max(initial=0) > 255:
            a = a / 257.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode in ("P", "PA") and ("transparency" in im.info or im.mode == "PA"):
        im = im.convert("RGBA")
    return im.convert("RGB")


def admit_image(source: Any, *, max_pixels: int | None, what: str = ""):
    """The media gate: a decoded 8-bit RGB PIL image from a path, image bytes, a data URL or a PIL image.

    The header is read first and, before any pixel is decoded, an image larger than `pixel_bound(max_pixels)`
    is refused (`image_too_large`), as is an aspect ratio above 200 (`aspect_ratio`); a file that is missing
    (`missing_image`), empty (`empty_image`), not a PNG / JPEG / WebP / GIF / BMP / TIFF image or cut short
    (`corrupt_image`) is refused too — each a RowError whose message names the image (`what`, default its
    path). Then it is decoded (an animated image: its first frame), EXIF orientation applied, and converted
    to RGB (`_to_rgb`), which every engine can process: the hf processors, vLLM, and an endpoint (sent as PNG).
    """
    from PIL import Image, ImageOps

    label = _label(source, what)
    if isinstance(source, Image.Image):
        _check_size(*source.size, max_pixels=max_pixels, label=label)
        return _to_rgb(source)
    im = _opened(source, max_pixels=max_pixels, label=label)
    try:
        with im:
            im.load()
            out = _to_rgb(ImageOps.exif_transpose(im))
            if out is im:
                out = im.copy()
            out.load()
            return out
    except RowError:
        raise
    except Exception as e:  # a truncated file (OSError), a broken stream: PIL raises many types
        raise RowError("corrupt_image", f"image '{label}' cannot be decoded ({type(e).__name__}: {e}); "
                       "the file may be truncated") from None


def check_image(path: Path, *, max_pixels: int | None = None) -> tuple[int, int]:
    """`admit_image` for a reader that only checks a file: its (width, height) as stored (before EXIF
    orientation), or RowError with the gate's reason."""
    size = image_header(path, max_pixels=max_pixels)[2]
    admit_image(path, max_pixels=max_pixels)
    return size


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
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise RowError("aspect_ratio", f"image aspect ratio {max(height, width) / min(height, width):.0f} exceeds "
                       f"{MAX_ASPECT_RATIO}")
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


def open_rgb(image: Any, *, max_pixels: int | None = None):
    """`admit_image` for an engine or encoder (a request has no file:line): a PIL RGB image from a path or
    PIL image, EXIF orientation applied; what the gate refuses is an InputFileError naming the image."""
    try:
        return admit_image(image, max_pixels=max_pixels)
    except RowError as e:
        if e.reason == "missing_image":
            raise InputFileError(f"media file not found: '{image}'", fix="check the image/video paths of the request") from None
        if e.reason in ("corrupt_image", "empty_image"):
            raise InputFileError(f"cannot decode image: {e} [{e.reason}]",
                                 fix="check the file, or drop it with `r1rm check-data`") from None
        raise InputFileError(f"{e} [{e.reason}]", fix="drop or fix the image (`r1rm check-data` finds every such file)") from None


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
    """`image` through the gate (`open_rgb`, bounded by 64 x `max_pixels`) and resized as the processor would
    with these bounds (None: no bound), sides multiples of `factor`."""
    img = open_rgb(image, max_pixels=max_pixels)
    if min_pixels is None and max_pixels is None:
        return img
    try:
        h, w = smart_resize(img.height, img.width, factor=factor, min_pixels=min_pixels or 1,
                            max_pixels=max_pixels or 10**12)
    except RowError as e:
        raise InputFileError(f"image {img.width}x{img.height}: {e}", fix="crop or drop the image") from None
    return resize_like_processor(img, h, w)


def _fit_one(image, budget: int, *, gate_pixels: int | None = None):
    """A PIL image (through the gate, bounded by 64 x `gate_pixels`) no larger than `budget` pixels (Qwen rule:
    sides multiples of 28, aspect kept); never enlarged."""
    img = open_rgb(image, max_pixels=gate_pixels)
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
    """Messages whose image / video-frame parts have passed the media gate (`open_rgb`: PIL RGB images, so a
    BMP, TIFF, CMYK or 16-bit file reaches the processor as pixels it can take, and a bomb is refused before
    it is decoded); a part carrying a "max_pixels" share (set by `record_messages` for samples with several
    visuals, e.g. two generated outputs) is also resized to that share, so one sample never exceeds the
    recipe's pixel budget. The trainers' path (sft / rl encoders); messages without a visual are returned
    unchanged (same objects)."""
    if not any(isinstance(p, dict) and _visual_kind(p) for m in messages for p in (m.get("content") or [])
               if isinstance(m.get("content"), list)):
        return messages
    return map_parts(messages, _fit_part)


def _visual_kind(p: dict) -> str | None:
    """"image" / "video" for a part whose image or frames r1rm decodes (paths, PIL images), else None."""
    kind = p.get("type")
    if (kind == "video" or (kind is None and "video" in p)) and isinstance(p.get("video"), list | tuple):
        return "video"
    if kind in ("image", None) and any(k in p for k in ("image", "path")):
        value = p["image"] if "image" in p else p["path"]
        return None if _is_url(value) else "image"
    return None


def _fit_part(p: Any) -> Any:
    if not isinstance(p, dict):
        return p
    kind = _visual_kind(p)
    if kind is None:
        return p
    budget = int(p["max_pixels"]) if "max_pixels" in p else None
    q = {k: v for k, v in p.items() if k not in ("max_pixels", "path")}

    def one(value):
        return open_rgb(value) if budget is None else _fit_one(value, budget)

    if kind == "image":
        q["image"] = one(p["image"] if "image" in p else p["path"])
    else:
        q["video"] = [one(f) for f in p["video"]]
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
            value = _fit_one(value, share, gate_pixels=budget.max_pixels)
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
