"""One preprocessing shared by every engine (issue 23, test 4): the openai engine sends the same image pixels
(after the pixel budget) and the same video frames as the hf engine's processor receives, and the vllm engine's
messages hold them too. What each engine receives is captured: the hf processor's own inputs (its image and
video `preprocess`, hooked), the request bodies a stub chat-completions server on 127.0.0.1 gets, and the
messages `to_vllm_messages` builds for `LLM.chat`."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image
from scripted import ScriptedEndpoint

from r1rm.config import load_config
from r1rm.data.media import VIDEO_FPS, smart_resize
from r1rm.engines import make_engine, media_budget
from r1rm.engines.base import Request, SamplingParams
from r1rm.engines.vllm import to_vllm_messages

ANSWER = "<think>x</think><answer>1</answer>"
BUDGET = ["model.min_pixels=784", "model.max_pixels=3136", "model.video_max_frames=4"]


@pytest.fixture
def server():
    """Answers every chat completion with ANSWER and keeps the request bodies."""
    with ScriptedEndpoint([ANSWER]) as s:
        yield s


def _arrays(x) -> list[np.ndarray]:
    """Every image / frame under nested lists as an (H, W, 3) uint8 array."""
    if isinstance(x, list | tuple):
        return [a for item in x for a in _arrays(item)]
    if isinstance(x, Image.Image):
        return [np.asarray(x.convert("RGB"))]
    t = torch.as_tensor(x)
    if t.dim() == 4:  # (frames, C, H, W)
        return [f.permute(1, 2, 0).numpy() for f in t]
    return [t.permute(1, 2, 0).numpy() if t.shape[0] == 3 else t.numpy()]


def _decoded(url: str) -> list[np.ndarray]:
    """The images of an image data URL, or the frames of a vLLM frame-sequence video data URL."""
    head, data = url.split(",", 1)
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(d))).convert("RGB")) for d in data.split(",")]


@pytest.fixture
def request_with_media(tmp_path):
    """Images above the budget (JPEG, 224 x 168), below min_pixels (20 x 20) and RGBA; a 10-frame video folder."""
    rng = np.random.default_rng(0)
    big = tmp_path / "big.jpg"
    Image.fromarray(rng.integers(0, 256, (168, 224, 3), dtype=np.uint8)).save(big, format="JPEG", quality=90)
    small = tmp_path / "small.png"
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(small)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(rng.integers(0, 256, (60, 90, 4), dtype=np.uint8), mode="RGBA").save(rgba)
    video = tmp_path / "clip"
    video.mkdir()
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(video / f"frame_{i}.png")
    content = [{"type": "image", "image": str(p)} for p in (big, small, rgba)]
    content += [{"type": "video", "video": str(video)}, {"type": "text", "text": "Which response is better?"}]
    sizes = [smart_resize(h, w, factor=28, min_pixels=784, max_pixels=3136) for h, w in ((168, 224), (20, 20), (60, 90))]
    return Request([{"role": "user", "content": content}]), sizes


def _hf_inputs(tiny, req, monkeypatch) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
    """(images, video frames) the hf engine's processor receives, and the grids it makes of them."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    seen: dict = {"images": [], "videos": [], "grids": {}}
    for cls, key, grid in ((Qwen2VLImageProcessor, "images", "image_grid_thw"),
                            (Qwen2VLVideoProcessor, "videos", "video_grid_thw")):
        original = cls.preprocess

        def hooked(self, inputs, *args, _original=original, _key=key, _grid=grid, **kwargs):
            seen[_key] += _arrays(inputs)
            out = _original(self, inputs, *args, **kwargs)
            seen["grids"][_grid] = out[_grid].tolist()
            return out

        monkeypatch.setattr(cls, "preprocess", hooked)
    cfg = load_config("recipes/tiny/base.yaml", [f"model.path={tiny}", "engine.kind=hf", *BUDGET])
    engine = make_engine(cfg)
    (samples,) = engine.generate([req], SamplingParams(max_new_tokens=2))
    assert samples[0].error is None and samples[0].prompt_token_ids
    engine.close()
    return seen["images"], seen["videos"], seen["grids"]


def test_openai_and_vllm_engines_get_the_pixels_and_frames_the_hf_processor_sees(tiny, server, request_with_media,
                                                                                   monkeypatch):
    req, sizes = request_with_media
    hf_images, hf_frames, grids = _hf_inputs(tiny, req, monkeypatch)
    # the budget was applied once, before the processor: sizes are smart_resize's, and the processor's grids are
    # those sizes in 14-pixel patches (it resized nothing more)
    assert [a.shape[:2] for a in hf_images] == sizes
    assert grids["image_grid_thw"] == [[1, h // 14, w // 14] for h, w in sizes]
    assert len(hf_frames) == 4 and all(f.shape == (56, 56, 3) for f in hf_frames)
    assert grids["video_grid_thw"] == [[2, 4, 4]]

    cfg = load_config("recipes/tiny/base.yaml", [f"model.path={tiny}", "engine.kind=openai", f"engine.base_url={server.url}",
                                                 "engine.model_name=stub", *BUDGET])
    engine = make_engine(cfg)
    (samples,) = engine.generate([req], SamplingParams(max_new_tokens=2))
    assert samples[0].text == ANSWER
    (body,) = server.bodies
    parts = body["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["image_url"] * 3 + ["video_url", "text"]
    sent_images = [_decoded(p["image_url"]["url"])[0] for p in parts[:3]]
    sent_frames = _decoded(parts[3]["video_url"]["url"])
    assert all(np.array_equal(a, b) for a, b in zip(sent_images, hf_images, strict=True))
    assert len(sent_frames) == len(hf_frames) == 4
    assert all(np.array_equal(a, b) for a, b in zip(sent_frames, hf_frames, strict=True))
    # vLLM's server reads every frame sent, at the rate the hf processor assumes for a list of frames
    assert body["media_io_kwargs"] == {"video": {"num_frames": -1, "fps": VIDEO_FPS}}
    engine.close()

    # the vllm engine's LLM.chat messages: the same images (as PIL) and frames
    vparts = to_vllm_messages(req.messages, media_budget(cfg))[0]["content"]
    assert [p["type"] for p in vparts] == ["image_pil"] * 3 + ["video_url", "text"]
    assert all(np.array_equal(np.asarray(p["image_pil"]), b) for p, b in zip(vparts[:3], hf_images, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(_decoded(vparts[3]["video_url"]["url"]), hf_frames, strict=True))


def test_frames_mode_sends_the_same_frames_as_images(tiny, server, request_with_media, monkeypatch):
    req, _ = request_with_media
    _, hf_frames, _ = _hf_inputs(tiny, req, monkeypatch)
    cfg = load_config("recipes/tiny/base.yaml", [f"model.path={tiny}", "engine.kind=openai", f"engine.base_url={server.url}",
                                                 "engine.model_name=stub", "engine.video_as=frames", *BUDGET])
    engine = make_engine(cfg)
    engine.generate([req], SamplingParams(max_new_tokens=2))
    engine.close()
    (body,) = server.bodies
    parts = body["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["image_url"] * 7 + ["text"] and "media_io_kwargs" not in body
    frames = [_decoded(p["image_url"]["url"])[0] for p in parts[3:7]]
    assert all(np.array_equal(a, b) for a, b in zip(frames, hf_frames, strict=True))
