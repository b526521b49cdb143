"""The tiny offline Qwen2.5-VL / Qwen2-VL checkpoint: it loads, tokenizes, processes images and generates."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
Image = pytest.importorskip("PIL.Image")

from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402

from r1rm.models.tiny import build_tiny_model  # noqa: E402

QUESTION = "What colour is the shape?"


def _image(size: int = 112):
    img = Image.new("RGB", (size, size), (255, 255, 255))
    for x in range(28, 84):
        for y in range(28, 84):
            img.putpixel((x, y), (220, 30, 30))
    return img


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _load(model_dir: Path):
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    model.eval()
    return processor, model


def _generate(processor, model, messages, max_new_tokens: int = 8):
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :]
    return inputs, new, processor.decode(new, skip_special_tokens=True)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen2_5_vl", seed=0)


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    return _load(tiny_dir)


def test_files_and_size(tiny_dir):
    names = {p.name for p in tiny_dir.iterdir()}
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "chat_template.jinja"):
        assert name in names, f"{name} missing from {sorted(names)}"
    assert _dir_size(tiny_dir) < 20 * 1024 * 1024


def test_loads_offline_with_auto_classes(loaded):
    processor, model = loaded
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    n_params = sum(p.numel() for p in model.parameters())
    assert 100_000 < n_params < 3_000_000
    tok = processor.tokenizer
    assert model.generation_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert model.generation_config.pad_token_id == tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert model.config.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert len(tok) <= model.config.text_config.vocab_size


def test_tokenizer_single_tokens(loaded):
    tok = loaded[0].tokenizer
    for text in ("1", "2", "<think>", "</think>", "<answer>", "</answer>", "<|image_pad|>", "<|im_end|>"):
        ids = tok.encode(text, add_special_tokens=False)
        assert len(ids) == 1, f"{text!r} -> {ids}"
    # digits stay single tokens inside text too
    assert tok.encode("12", add_special_tokens=False) == tok.encode("1", add_special_tokens=False) + tok.encode(
        "2", add_special_tokens=False
    )
    # the R1-Reward tags are not special: they survive skip_special_tokens; chat tokens do not
    ids = tok.encode("<think>x</think><answer>2</answer><|im_end|>", add_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=True) == "<think>x</think><answer>2</answer>"


def test_chat_template_is_qwen_style(loaded):
    processor = loaded[0]
    messages = [
        {"role": "system", "content": "Judge."},
        {"role": "user", "content": [{"type": "image"}, {"type": "video"}, {"type": "text", "text": QUESTION}]},
        {"role": "assistant", "content": "<answer>1</answer>"},
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nJudge.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        f"<|vision_start|><|video_pad|><|vision_end|>{QUESTION}<|im_end|>\n"
        "<|im_start|>assistant\n<answer>1</answer><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # no default system prompt
    plain = processor.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert plain == "<|im_start|>user\nhi<|im_end|>\n"


def test_image_chat_generates(loaded):
    processor, model = loaded
    messages = [{"role": "user", "content": [{"type": "image", "image": _image()}, {"type": "text", "text": QUESTION}]}]
    inputs, new, text = _generate(processor, model, messages)
    grid = inputs["image_grid_thw"]
    assert grid.tolist() == [[1, 8, 8]]
    n_pad = int((inputs["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
    assert n_pad == int(grid.prod()) // 4 == 16
    assert 0 < len(new) <= 8
    assert isinstance(text, str)


def test_text_only_chat_generates(loaded):
    processor, model = loaded
    _, new, text = _generate(processor, model, [{"role": "user", "content": "Which is better, 1 or 2?"}])
    assert 0 < len(new) <= 8
    assert isinstance(text, str)


def test_same_seed_same_files(tiny_dir, tmp_path):
    again = build_tiny_model(tmp_path / "again", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json", "chat_template.jinja"):
        assert (again / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    other = build_tiny_model(tmp_path / "other", seed=1)
    assert (other / "model.safetensors").read_bytes() != (tiny_dir / "model.safetensors").read_bytes()
    assert (other / "tokenizer.json").read_bytes() == (tiny_dir / "tokenizer.json").read_bytes()


def test_qwen2_vl_arch_loads_and_generates(tmp_path):
    model_dir = build_tiny_model(tmp_path / "qwen2_vl", arch="qwen2_vl", seed=0)
    processor, model = _load(model_dir)
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    messages = [{"role": "user", "content": [{"type": "image", "image": _image()}, {"type": "text", "text": QUESTION}]}]
    inputs, new, text = _generate(processor, model, messages)
    n_pad = int((inputs["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
    assert n_pad == int(inputs["image_grid_thw"].prod()) // 4
    assert 0 < len(new) <= 8 and isinstance(text, str)


def test_unknown_arch_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown family"):
        build_tiny_model(tmp_path / "x", arch="llava")


def test_head_count_option_builds_a_working_model(cli, tmp_path):
    """`r1rm tiny-model --heads 8`: 8 query / 4 KV heads of 16, mrope rescaled, loads back and generates
    (its --check); 4 heads is the default model byte for byte; a head count that cannot split the
    width is exit 2 naming the option."""
    import json

    from r1rm.models.tiny import TINY, with_heads

    assert with_heads(TINY, 4) == TINY
    proc = cli("tiny-model", tmp_path / "h8", "--heads", "8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loaded back offline" in proc.stdout
    cfg = json.loads((tmp_path / "h8" / "config.json").read_text())
    text = cfg.get("text_config", cfg)
    assert (text["num_attention_heads"], text["num_key_value_heads"]) == (8, 4)
    rope = text.get("rope_parameters") or text.get("rope_scaling")  # transformers 5 / 4 key
    assert rope["mrope_section"] == [2, 3, 3]
    for bad in ("3", "32"):
        proc = cli("tiny-model", tmp_path / f"h{bad}", "--heads", bad, "--no-check")
        assert proc.returncode == 2 and f"--heads {bad}" in proc.stderr and "Traceback" not in proc.stderr


def test_width_option_sets_the_text_width_and_refuses_what_cannot_split(cli, tmp_path):
    """`r1rm tiny-model --width 256 --heads 8`: a 256-wide text decoder (MLP 512) with 8 heads of 32
    and the mrope split rescaled to head_dim 32; widths that are no multiple of 16, or that the head
    count cannot split, are exit 2 naming the options."""
    import json

    from r1rm.models.tiny import TINY, with_heads

    assert with_heads(TINY, 4, 128) == TINY
    proc = cli("tiny-model", tmp_path / "w256", "--width", "256", "--heads", "8", "--no-check")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = json.loads((tmp_path / "w256" / "config.json").read_text())
    text = cfg.get("text_config", cfg)
    assert (text["hidden_size"], text["intermediate_size"], text["num_attention_heads"]) == (256, 512, 8)
    rope = text.get("rope_parameters") or text.get("rope_scaling")
    assert sum(rope["mrope_section"]) == 16  # head_dim 32 / 2
    proc = cli("tiny-model", tmp_path / "w100", "--width", "100", "--no-check")
    assert proc.returncode == 2 and "--width 100" in proc.stderr and "multiple of 16" in proc.stderr
    proc = cli("tiny-model", tmp_path / "w3", "--width", "256", "--heads", "3", "--no-check")
    assert proc.returncode == 2 and "--heads 3 --width 256" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "w100").exists() and not (tmp_path / "w3").exists()
