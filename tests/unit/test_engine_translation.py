"""Engine translation functions (pure, no vllm, no network) and make_engine's dispatch errors."""

import base64
import importlib.util
import io
import math
from types import SimpleNamespace

import pytest
from PIL import Image

from r1rm.config import Config
from r1rm.data.media import MediaBudget
from r1rm.engines import make_engine, sampling_from_config
from r1rm.engines.base import SamplingParams
from r1rm.engines.openai_client import (
    choice_probs_from_openai_logprobs,
    image_data_url,
    samples_from_completion,
    to_openai_messages,
)
from r1rm.engines.vllm import VLLMEngine, from_vllm_output, to_vllm_messages, to_vllm_sampling
from r1rm.errors import ConfigError, InputFileError, MissingDependencyError

HAS_VLLM = importlib.util.find_spec("vllm") is not None


# ---------------------------------------------------------------- vllm
def test_to_vllm_sampling():
    kw = to_vllm_sampling(SamplingParams(max_new_tokens=32, temperature=0.7, top_p=0.9, top_k=0, n=4, seed=3))
    assert kw == dict(n=4, temperature=0.7, top_p=0.9, top_k=-1, max_tokens=32, seed=3, logprobs=20)
    assert to_vllm_sampling(SamplingParams(top_k=8))["top_k"] == 8
    # greedy: one sample, copied later
    assert to_vllm_sampling(SamplingParams(n=3))["n"] == 1


def _decode(url: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def test_to_vllm_messages_images_as_pil_and_a_video_as_one_video_part(tmp_path):
    path = tmp_path / "x.png"
    Image.new("RGB", (4, 4), (1, 2, 3)).save(path)
    messages = [
        {"role": "system", "content": "be fair"},
        {"role": "user", "content": [
            {"type": "image", "image": str(path)},
            {"type": "image", "image": Image.new("L", (5, 5), 7)},
            {"type": "video", "video": [path, path]},
            {"type": "text", "text": "which?"},
        ]},
    ]
    out = to_vllm_messages(messages)
    assert out[0] == {"role": "system", "content": "be fair"}
    parts = out[1]["content"]
    assert [p["type"] for p in parts] == ["image_pil", "image_pil", "video_url", "text"]
    assert parts[0]["image_pil"].mode == "RGB" and parts[0]["image_pil"].getpixel((0, 0)) == (1, 2, 3)
    assert parts[1]["image_pil"].getpixel((0, 0)) == (7, 7, 7)  # decoded to RGB once, here
    # vLLM's frame sequence: "data:video/jpeg;base64," + frames joined by commas (PNG inside: lossless)
    url = parts[2]["video_url"]["url"]
    assert url.startswith("data:video/jpeg;base64,")
    frames = url.split(",", 1)[1].split(",")
    assert len(frames) == 2 and all(_decode("x," + f).getpixel((0, 0)) == (1, 2, 3) for f in frames)
    assert _decode("x," + frames[0]).format == "PNG"
    assert parts[-1] == {"type": "text", "text": "which?"}
    assert messages[1]["content"][0] == {"type": "image", "image": str(path)}  # input untouched


def test_vllm_media_kwargs_bound_the_processor_and_read_every_frame():
    from r1rm.data.media import VIDEO_FPS, MediaBudget
    from r1rm.engines.vllm import vllm_media_kwargs

    kw = vllm_media_kwargs(MediaBudget(min_pixels=784, max_pixels=3136, video_max_frames=4))
    assert kw == {"mm_processor_kwargs": {"min_pixels": 784, "max_pixels": 3136},
                  "media_io_kwargs": {"video": {"num_frames": -1, "fps": VIDEO_FPS}}}
    assert "mm_processor_kwargs" not in vllm_media_kwargs(None)


def _lp(logprob, text):
    return SimpleNamespace(logprob=logprob, rank=1, decoded_token=text)


def test_from_vllm_output_with_answer_logprobs():
    # tokens: <answer> 2 </answer> EOS (vLLM's token ids end with the EOS that stopped them; r1rm's do not)
    ids = [10, 12, 13]
    logprobs = [
        {10: _lp(-0.01, "<answer>")},
        {12: _lp(math.log(0.6), "2"), 11: _lp(math.log(0.2), "1"), 99: _lp(math.log(0.1), "x")},
        {13: _lp(-0.02, "</answer>")},
        {2: _lp(-0.03, "")},
    ]
    done = SimpleNamespace(text="<answer>2</answer>", token_ids=ids + [2], logprobs=logprobs, finish_reason="stop",
                           stop_reason=None)
    cut = SimpleNamespace(text="<think>", token_ids=[5], logprobs=[{5: _lp(-0.1, "<think>")}], finish_reason="length")
    samples = from_vllm_output(SimpleNamespace(outputs=[done, cut]))
    assert [s.finished for s in samples] == [True, False]
    assert samples[0].token_ids == ids and samples[0].text == "<answer>2</answer>"
    assert samples[0].choice_probs[2] == pytest.approx(0.75) and samples[0].choice_probs[1] == pytest.approx(0.25)
    assert samples[1].choice_probs is None


def test_from_vllm_output_gives_token_logprobs_and_the_prompt_ids():
    cut = SimpleNamespace(text="ab", token_ids=[5, 6], logprobs=[{5: _lp(-0.5, "a")}, {6: _lp(-1.5, "b"), 7: _lp(-0.1, "c")}],
                          finish_reason="length", stop_reason=None)
    samples = from_vllm_output(SimpleNamespace(outputs=[cut], prompt_token_ids=(1, 2, 3)), n=2)
    assert [s.token_logprobs for s in samples] == [[-0.5, -1.5]] * 2 and samples[0].mean_logprob == -1.0
    assert [s.prompt_token_ids for s in samples] == [[1, 2, 3]] * 2


def test_from_vllm_output_copies_greedy_and_tolerates_missing_logprobs():
    one = SimpleNamespace(text="a", token_ids=(1, 2, 0), logprobs=None, finish_reason="stop", stop_reason=None)
    samples = from_vllm_output(SimpleNamespace(outputs=[one]), n=3)
    assert len(samples) == 3 and samples[0] is not samples[1]
    assert all(s.text == "a" and s.token_ids == [1, 2] and s.choice_probs is None for s in samples)


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here")
def test_vllm_engine_without_vllm_says_how_to_install():
    with pytest.raises(MissingDependencyError, match="pip install"):
        VLLMEngine("/some/model")


# ---------------------------------------------------------------- openai
def test_image_data_url_keeps_jpeg_and_converts_bmp(tmp_path):
    img = Image.new("RGB", (6, 6), (10, 200, 10))
    img.save(tmp_path / "a.jpg", format="JPEG")
    img.save(tmp_path / "a.bmp", format="BMP")
    jpeg = (tmp_path / "a.jpg").read_bytes()
    assert image_data_url(tmp_path / "a.jpg") == "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
    assert image_data_url(str(tmp_path / "a.bmp")).startswith("data:image/png;base64,")
    assert image_data_url("https://example.org/x.png") == "https://example.org/x.png"
    with pytest.raises(InputFileError, match="cannot read image"):
        image_data_url(tmp_path / "missing.png")


def test_to_openai_messages_string_content_and_video_folder(tmp_path):
    # frames of a folder in natural order (f2 before f10), sampled to the budget's frame count
    for i in (1, 2, 10):
        Image.new("RGB", (4, 4), (i, 0, 0)).save(tmp_path / f"f{i}.png")
    msgs = [{"role": "user", "content": [{"type": "video", "video": str(tmp_path)}]}]
    (part,) = to_openai_messages(msgs)[0]["content"]
    frames = part["video_url"]["url"].split(",", 1)[1].split(",")
    assert [_decode("x," + f).getpixel((0, 0))[0] for f in frames] == [1, 2, 10]
    (part,) = to_openai_messages(msgs, MediaBudget(video_max_frames=2))[0]["content"]
    assert len(part["video_url"]["url"].split(",", 1)[1].split(",")) == 2
    parts = to_openai_messages(msgs, video_as="frames")[0]["content"]
    assert [_decode(p["image_url"]["url"]).getpixel((0, 0))[0] for p in parts] == [1, 2, 10]
    assert to_openai_messages([{"role": "user", "content": "hi"}]) == [{"role": "user", "content": "hi"}]
    with pytest.raises(InputFileError, match="not a list of frames"):
        to_openai_messages([{"role": "user", "content": [{"type": "video", "video": str(tmp_path / "clip.mp4")}]}])


def test_samples_from_completion_and_logprobs():
    content = [
        {"token": "<answer>", "logprob": -0.1, "top_logprobs": []},
        {"token": "1", "logprob": math.log(0.5), "top_logprobs": [{"token": "2", "logprob": math.log(0.25)}]},
    ]
    p = choice_probs_from_openai_logprobs(content)
    assert p[1] == pytest.approx(2 / 3)
    completion = {"choices": [
        {"index": 1, "message": {"content": "b"}, "finish_reason": "length"},
        {"index": 0, "message": {"content": "a"}, "finish_reason": "stop", "logprobs": {"content": content}},
    ]}
    samples, ok = samples_from_completion(completion, 2)
    assert ok and [s.text for s in samples] == ["a", "b"] and [s.finished for s in samples] == [True, False]
    assert samples[0].choice_probs[1] == pytest.approx(2 / 3)
    assert samples[0].token_logprobs == pytest.approx([-0.1, math.log(0.5)]) and samples[1].token_logprobs is None
    short, ok = samples_from_completion(completion, 3)
    assert not ok and short[2].error.startswith("bad_response") and short[2].text == ""


# ---------------------------------------------------------------- make_engine / sampling_from_config
def test_sampling_from_config():
    cfg = Config.model_validate({"seed": 11, "generation": {"temperature": 1.0, "n": 4, "top_k": 5, "max_new_tokens": 99}})
    assert sampling_from_config(cfg) == SamplingParams(max_new_tokens=99, temperature=1.0, top_p=1.0, top_k=5, n=4, seed=11)


def test_make_engine_openai_needs_base_url():
    cfg = Config.model_validate({"engine": {"kind": "openai"}, "model": {"path": "m"}})
    with pytest.raises(ConfigError, match=r"engine\.base_url"):
        make_engine(cfg)


def test_make_engine_openai_reads_the_key_from_the_env(monkeypatch):
    monkeypatch.setenv("R1RM_TEST_KEY", "sekret")
    cfg = Config.model_validate({"engine": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1",
                                            "api_key_env": "R1RM_TEST_KEY", "model_name": "judge", "max_retries": 1}})
    eng = make_engine(cfg)
    assert (eng.model_name, eng.client.api_key, eng.max_retries) == ("judge", "sekret", 1)
    # the run's budget reaches the endpoint engine as it reaches hf and vllm (make_engine's media_budget)
    m = cfg.model
    assert eng.media == MediaBudget(min_pixels=m.min_pixels, max_pixels=m.max_pixels, video_max_frames=m.video_max_frames)
    assert eng.video_as == "video"
    eng.close()
    monkeypatch.delenv("R1RM_TEST_KEY")
    cfg.model.path = "path/to/model"
    cfg.engine.model_name = None
    eng = make_engine(cfg)
    assert (eng.model_name, eng.client.api_key) == ("path/to/model", "EMPTY")
    eng.close()


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here")
def test_make_engine_vllm_without_vllm_is_an_error_not_a_fallback():
    cfg = Config.model_validate({"engine": {"kind": "vllm"}, "model": {"path": "some/model"}})
    with pytest.raises(MissingDependencyError, match="pip install"):
        make_engine(cfg)
