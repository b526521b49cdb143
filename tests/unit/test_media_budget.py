"""The one preprocessing every engine applies (r1rm.data.media.prepare_visuals): images fitted to the run's
pixel budget exactly as the Qwen-VL processor would, so the processor then leaves them as they are; video
frames sampled once; per-visual shares; inputs untouched."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from r1rm.data.media import MediaBudget, fit_image, prepare_visuals, smart_resize
from r1rm.errors import InputFileError

BUDGET = MediaBudget(min_pixels=784, max_pixels=3136, video_max_frames=4)


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def image_processor():
    from transformers import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor(size={"shortest_edge": BUDGET.min_pixels, "longest_edge": BUDGET.max_pixels},
                                 patch_size=14, temporal_patch_size=2, merge_size=2)


@pytest.mark.parametrize("size", [(224, 224), (300, 90), (20, 20), (56, 56), (97, 131)])
def test_fitted_image_is_what_the_processor_makes_of_the_original(image_processor, size):
    """Down, up (below min_pixels), unchanged and odd sizes: the processor's pixel values for the fitted image
    equal those for the original, bit for bit — the processor had nothing left to do."""
    img = _noise(*size)
    fitted = fit_image(img, min_pixels=BUDGET.min_pixels, max_pixels=BUDGET.max_pixels)
    h, w = smart_resize(size[1], size[0], factor=28, min_pixels=784, max_pixels=3136)
    assert (fitted.height, fitted.width) == (h, w) and fitted.mode == "RGB"
    a = image_processor(images=[img], return_tensors="pt")
    b = image_processor(images=[fitted], return_tensors="pt")
    assert a["image_grid_thw"].tolist() == b["image_grid_thw"].tolist()
    assert np.array_equal(a["pixel_values"].numpy(), b["pixel_values"].numpy())


def test_prepare_visuals_fits_images_samples_frames_and_keeps_the_input(tmp_path):
    big = tmp_path / "big.jpg"
    _noise(224, 168).save(big, format="JPEG")
    frames = []
    for i in range(10):
        frames.append(tmp_path / f"f{i}.png")
        Image.new("RGB", (112, 112), (i * 20, 0, 0)).save(frames[-1])
    messages = [{"role": "user", "content": [
        {"type": "image", "image": str(big)},
        {"type": "video", "video": [str(f) for f in frames]},
        {"type": "image", "image": "https://example.org/x.png"},
        {"type": "text", "text": "which?"},
    ]}]
    before = repr(messages)
    out = prepare_visuals(messages, BUDGET)
    assert repr(messages) == before
    image, video, url, text = out[0]["content"]
    assert image["image"].size == (56, 28)  # smart_resize(168, 224) at 3136 pixels: 28 x 56 (multiples of 28)
    assert len(video["video"]) == 4 and all(f.size == (56, 56) for f in video["video"])
    # frames spread over the ten: indices 1, 3, 6, 8 (sample_frames)
    assert [f.getpixel((0, 0))[0] for f in video["video"]] == [20, 60, 120, 160]
    assert url == messages[0]["content"][2] and text == {"type": "text", "text": "which?"}


def test_a_share_is_applied_before_the_budget_and_never_enlarges(tmp_path):
    img = _noise(224, 224)
    (part,) = prepare_visuals([{"role": "user", "content": [{"type": "image", "image": img, "max_pixels": 1568}]}],
                              MediaBudget(min_pixels=784, max_pixels=12544))[0]["content"]
    assert "max_pixels" not in part and part["image"].width * part["image"].height <= 1568
    small = _noise(30, 30)
    (part,) = prepare_visuals([{"role": "user", "content": [{"type": "image", "image": small, "max_pixels": 12544}]}],
                              MediaBudget())[0]["content"]
    assert part["image"].size == (30, 30)


def test_no_budget_only_decodes_and_missing_files_are_user_errors(tmp_path):
    rgba = tmp_path / "a.png"
    Image.new("RGBA", (33, 17), (9, 8, 7, 255)).save(rgba)
    (part,) = prepare_visuals([{"role": "user", "content": [{"type": "image", "image": str(rgba)}]}],
                              MediaBudget())[0]["content"]
    assert part["image"].mode == "RGB" and part["image"].size == (33, 17)
    with pytest.raises(InputFileError, match="media file not found"):
        prepare_visuals([{"role": "user", "content": [{"type": "image", "image": str(tmp_path / "nope.png")}]}], BUDGET)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(InputFileError, match="cannot decode"):
        prepare_visuals([{"role": "user", "content": [{"type": "image", "image": str(tmp_path / "bad.png")}]}], BUDGET)
