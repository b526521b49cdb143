"""A tiny, randomly initialised VLM checkpoint built entirely offline: Qwen2.5-VL (default), Qwen2-VL,
Qwen3-VL, InternVL3.5 (transformers-native, Qwen3 text model) or LLaVA-OneVision (`family`;
r1rm.models.families says what r1rm supports of each, docs/models.md what each replica keeps).
The Qwen2.5-VL one is described below; the others share its tokenizer (plus their own image tokens),
widths and ChatML turns, with their family's processor classes, chat markers and vision tower.

Tests, smoke runs and CI need a model that has the real architecture, the real
processor and the real chat format of the reward models r1rm trains
(Qwen2.5-VL-7B for R1-Reward), but that builds in a second, weighs a few MB and
generates on a CPU. `build_tiny_model` writes such a checkpoint into a folder:

* ``config.json`` + ``model.safetensors``: a Qwen2.5-VL (``arch="qwen2_5_vl"``) or
  Qwen2-VL (``arch="qwen2_vl"``) with, by default (``size=TINY``), a 4-layer, 128-wide
  text decoder and a 2-block, 64-wide vision tower (patch 14, temporal patch 2, spatial
  merge 2), about 1.1M parameters, random weights drawn from ``seed``. ``size=MID`` (or any
  ``ModelSize``) changes only the widths and depths: ``MID`` is a ~0.39B-parameter model
  (Qwen2.5-0.5B's text decoder, an 8-block vision tower) for GPU benchmarks
  (``bench/gpu_check.py``); everything else below stays the same;
* a byte-level BPE tokenizer trained here with the `tokenizers` library, with the
  Qwen2 pre-tokenizer (digits split one by one, so "1" and "2" are always single
  tokens), Qwen2.5-VL's special tokens (``<|im_start|>``, ``<|im_end|>``,
  ``<|vision_start|>``, ``<|image_pad|>``, ...) and the R1-Reward tags
  (``<think>``, ``</think>``, ``<answer>``, ...) as single, non-special tokens;
* an image processor and a video processor with small pixel bounds (a 112x112
  image becomes 8x8 patches, i.e. 16 ``<|image_pad|>`` tokens);
* a Qwen2.5-VL-style chat template (``chat_template.jinja``) without a default
  system prompt, and ``generation_config.json`` with eos = ``<|im_end|>``.

The folder loads with ``AutoModelForImageTextToText.from_pretrained`` and
``AutoProcessor.from_pretrained`` without network access. The same ``seed`` (and
corpus) gives byte-identical files. Nothing here is downloaded.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

__all__ = ["build_tiny_model", "model_config", "ModelSize", "TINY", "MID", "SIZES", "ARCHS", "FAMILIES", "SPECIAL_TOKENS",
           "EXTRA_TOKENS", "CHAT_TEMPLATE", "default_corpus"]

# the families r1rm builds tiny replicas of (r1rm.models.families says what each supports)
FAMILIES = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl", "internvl3_5", "llava_onevision")
ARCHS = FAMILIES  # the name before --family existed

# Qwen2.5-VL's special tokens, in the order (and so with the relative ids) Qwen gives them.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Added but NOT special: single tokens that survive `decode(..., skip_special_tokens=True)`.
EXTRA_TOKENS = ("<think>", "</think>", "<answer>", "</answer>", "<type>", "</type>", "<caption>", "</caption>")

# The Qwen2 pre-tokenizer regex (as in transformers' Qwen2Tokenizer): `\p{N}` splits every digit alone.
PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

# Qwen2.5-VL's chat format without its default system prompt: prompts stay byte-clean.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}"
    "{{- message['content'] }}"
    "{%- elif message['content'] is not none %}"
    "{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'video' or 'video' in part %}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in part %}"
    "{{- part['text'] }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

# Pixel bounds: multiples of 28 (patch 14 x merge 2). 112x112 -> 8x8 patches -> 16 merged tokens.
MIN_PIXELS = 28 * 28 * 4  # 3136
MAX_PIXELS = 112 * 112  # 12544
VIDEO_MIN_PIXELS = 28 * 28 * 2  # 1568
VIDEO_MAX_PIXELS = 56 * 56  # 3136 per frame


@dataclass(frozen=True)
class ModelSize:
    """Widths and depths of the checkpoint `build_tiny_model` writes; the defaults are the tiny model.

    Text decoder: `hidden_size`, `intermediate_size` (SwiGLU), `num_hidden_layers`, query / KV heads,
    `mrope_section` (temporal, height, width; sums to head_dim / 2). Vision tower: `vision_depth`
    blocks of width `vision_hidden_size` (MLP `vision_intermediate_size`, `vision_heads` heads),
    full attention in `vision_fullatt_blocks` and window attention (`vision_window_size` pixels)
    in the others (Qwen2-VL has no windows and ignores both).
    """

    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    mrope_section: tuple[int, int, int] = (4, 6, 6)
    vision_depth: int = 2
    vision_hidden_size: int = 64
    vision_intermediate_size: int = 128
    vision_heads: int = 4  # vision head_dim 16: the 2D axial rope needs head_dim % 4 == 0
    vision_fullatt_blocks: tuple[int, ...] = (1,)  # block 0: window attention, block 1: full attention
    vision_window_size: int = 56  # 4x4 patches = 2x2 merged tokens per window

    def __post_init__(self) -> None:
        problems = []
        if self.hidden_size % self.num_attention_heads:
            problems.append("hidden_size must be a multiple of num_attention_heads")
        elif 2 * sum(self.mrope_section) != self.hidden_size // self.num_attention_heads:
            problems.append(f"mrope_section must sum to head_dim / 2 = {self.hidden_size // self.num_attention_heads // 2}")
        if self.num_attention_heads % self.num_key_value_heads:
            problems.append("num_attention_heads must be a multiple of num_key_value_heads")
        if self.vision_hidden_size % self.vision_heads or (self.vision_hidden_size // self.vision_heads) % 4:
            problems.append("vision_hidden_size / vision_heads must be a multiple of 4 (2D rope)")
        if self.vision_intermediate_size % self.vision_hidden_size:
            problems.append("vision_intermediate_size must be a multiple of vision_hidden_size (Qwen2-VL's mlp_ratio)")
        if any(not 0 <= b < self.vision_depth for b in self.vision_fullatt_blocks):
            problems.append("vision_fullatt_blocks must index blocks below vision_depth")
        if problems:
            raise ValueError(f"invalid ModelSize: {'; '.join(problems)}")


TINY = ModelSize()
# Qwen2.5-0.5B's text decoder (896 wide, 24 layers, 14 heads of 64, 2 KV heads, MLP 4864; Qwen2.5-VL's
# mrope split scaled to head_dim 64) with the tiny tokenizer's vocabulary, and an 8-block, 512-wide vision
# tower (Qwen2.5-VL's pattern: window attention, full attention every 4th block): about 0.39B parameters.
MID = ModelSize(
    hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
    mrope_section=(8, 12, 12), vision_depth=8, vision_hidden_size=512, vision_intermediate_size=1536, vision_heads=8,
    vision_fullatt_blocks=(3, 7), vision_window_size=112,
)
SIZES = {"tiny": TINY, "mid": MID}


def with_heads(size: ModelSize, heads: int, width: int | None = None) -> ModelSize:
    """`size` with `heads` text attention heads: half as many KV heads (at least 1) and Qwen2.5-VL's
    mrope split (1/4 temporal, 3/8 height, 3/8 width of head_dim / 2) rescaled to the new head_dim;
    `width` sets the text hidden size too (the MLP twice as wide).
    Raises ValueError when the width does not split that way (say, 128 wide with 3 or 32 heads)."""
    from dataclasses import replace

    hidden = size.hidden_size if width is None else width
    if heads < 1 or hidden % heads:
        raise ValueError(f"{heads} heads do not divide hidden_size {hidden}")
    half = hidden // heads // 2
    if half < 4:
        raise ValueError(f"{heads} heads leave head_dim {2 * half}: the mrope split needs 8 or more")
    t = half // 4
    hw = (half - t) // 2
    widths = {} if width is None else {"hidden_size": width, "intermediate_size": 2 * width}
    return replace(size, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                   mrope_section=(half - 2 * hw, hw, hw), **widths)


def default_corpus() -> list[str]:
    """English text about colours, shapes, counts, positions and judging, plus the R1-Reward prompt."""
    colours = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple", "grey", "brown"]
    shapes = ["circle", "square", "triangle", "star", "rectangle", "line", "dot", "box"]
    positions = ["left", "right", "top", "bottom", "centre", "middle", "corner", "above", "below", "next to"]
    numbers = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    lines: list[str] = []
    for i, (c, s) in enumerate(itertools.product(colours, shapes)):
        p = positions[i % len(positions)]
        n = i % 10
        lines.append(f"There is a {c} {s} in the {p} of the image.")
        lines.append(f"What colour is the shape? The {s} is {c}.")
        lines.append(f"How many {s}s are there? There are {n} {s}s, {numbers[n]} in total.")
        lines.append(f"The {c} {s} is {p} the {colours[(i + 3) % len(colours)]} {shapes[(i + 1) % len(shapes)]}.")
    lines += [
        "Response 1 is better because it names the correct colour and the right number of shapes.",
        "Response 2 is better because it is accurate, complete and describes the position correctly.",
        "Response 1 is wrong about the count; Response 2 counts every object in the picture.",
        "Response 2 makes up an object that is not in the image, so Response 1 is better.",
        "Both responses describe the scene, but only one answers the question that was asked.",
        "<think>Response 1 says the square is red. The image shows a blue square. Response 2 is correct.</think>"
        "<answer>2</answer>",
        "<think>Response 1 counts three circles, which matches the image; Response 2 counts five.</think>"
        "<answer>1</answer>",
        "<type>image understanding</type><caption>A red circle above a green square on a white background.</caption>",
        "You are a helpful assistant. Look at the image and answer the question in one short sentence.",
        "The video shows a ball moving from the left to the right, then it stops in the middle.",
        "Which response is more helpful, more honest and less harmful? Explain step by step, then answer.",
        "Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 24 100 2025, scores 1/2, 3.5 out of 10, 90% of the time.",
        "system\nYou are a careful judge.\nuser\nCompare the two answers.\nassistant\nThe first answer is better.",
        "The user asks a question about the picture and the assistant answers it; the judge compares two answers.",
        "Question: what is in the video? Answer: a small white dot moves up, then down, then out of the frame.",
        "Question: is the triangle larger than the circle? Answer: yes, the triangle is larger and darker.",
        "The first image is brighter than the second image; the second frame is darker than the first frame.",
        "A good answer is correct, short and clear. A bad answer is wrong, long, vague or off topic.",
    ]
    prompt = (Path(__file__).resolve().parent.parent / "resources" / "r1reward_prompt.txt").read_text(encoding="utf-8")
    return lines * 3 + [prompt] * 20


def _train_tokenizer(corpus: Iterable[str], vocab_size: int, *, family_tokens: tuple[str, ...] = (),
                     named: Mapping[str, str] | None = None):
    """Train a byte-level BPE with Qwen2's normalizer/pre-tokenizer; wrap it as a `Qwen2Tokenizer`.
    `family_tokens`: the family's own special tokens, added after Qwen's (InternVL's `<img>`, LLaVA's
    `<image>`); `named`: attributes the family's processor reads off the tokenizer
    (InternVL: start_image_token = "<img>", ...), saved as the tokenizer's named extra special tokens."""
    from transformers import Qwen2Tokenizer

    n_added = len(SPECIAL_TOKENS) + len(family_tokens) + len(EXTRA_TOKENS)
    bpe_size = vocab_size - n_added
    if bpe_size < 300:
        raise ValueError(f"vocab_size={vocab_size} is too small: need at least {300 + n_added}")

    tok = Tokenizer(models.BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    # The corpus may contain the R1-Reward tags as text: at encode time the added tokens take precedence.
    texts = list(corpus)
    tok.train_from_iterator(texts, trainer=trainer)

    model = json.loads(tok.to_str())["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    # Special tokens follow the BPE vocab, as in Qwen (<|endoftext|> = first id after the merges).
    for t in SPECIAL_TOKENS + family_tokens:
        vocab[t] = len(vocab)

    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
        errors="replace",
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        # Qwen's `additional_special_tokens` (named `extra_special_tokens` in transformers 5).
        extra_special_tokens=dict(named) if named else [t for t in SPECIAL_TOKENS if t != "<|endoftext|>"],
    )
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS + family_tokens],
                         special_tokens=True)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in EXTRA_TOKENS])
    return tokenizer


def model_config(arch: str, token_ids: Mapping[str, int], vocab_size: int, size: ModelSize = TINY):
    """The transformers config of the checkpoint (no weights allocated): `token_ids` maps each of
    `SPECIAL_TOKENS` to its id; `vocab_size` is the embedding rows (the tokenizer's length)."""
    ids = token_ids
    text = dict(
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_hidden_layers,
        num_attention_heads=size.num_attention_heads,
        num_key_value_heads=size.num_key_value_heads,
        vocab_size=vocab_size,
        hidden_act="silu",
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        use_sliding_window=False,
        sliding_window=None,
        max_window_layers=size.num_hidden_layers,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": list(size.mrope_section)},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
        dtype="float32",
    )
    common = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    if arch == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        vision = dict(
            depth=size.vision_depth,
            hidden_size=size.vision_hidden_size,
            intermediate_size=size.vision_intermediate_size,
            num_heads=size.vision_heads,
            hidden_act="silu",
            in_channels=3,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            tokens_per_second=2,
            window_size=size.vision_window_size,
            out_hidden_size=size.hidden_size,
            fullatt_block_indexes=list(size.vision_fullatt_blocks),
        )
        cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
    elif arch == "qwen2_vl":
        from transformers import Qwen2VLConfig

        vision = dict(
            depth=size.vision_depth,
            embed_dim=size.vision_hidden_size,
            hidden_size=size.hidden_size,  # Qwen2-VL: the merger's output width
            hidden_act="quick_gelu",
            mlp_ratio=size.vision_intermediate_size // size.vision_hidden_size,
            num_heads=size.vision_heads,
            in_channels=3,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        )
        cfg = Qwen2VLConfig(text_config=text, vision_config=vision, **common)
    else:
        raise ValueError(f"model_config builds qwen2_5_vl / qwen2_vl, not {arch!r} (build_tiny_model builds every family)")
    return cfg




# InternVL3.5 (transformers-native, as OpenGVLab/InternVL3_5-*-HF): a Qwen3 text model; the processor
# reads these named tokens off the tokenizer and expands <IMG_CONTEXT> to <img> + N x <IMG_CONTEXT> + </img>.
INTERNVL_TOKENS = ("<img>", "</img>", "<IMG_CONTEXT>", "<video>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>",
                   "</box>")
INTERNVL_NAMED = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                  "video_token": "<video>"}
# LLaVA-OneVision (llava-hf/llava-onevision-qwen2-*-ov-hf): a Qwen2 text model with <image> / <video>.
LLAVA_TOKENS = ("<image>", "<video>")
FAMILY_TOKENS = {"internvl3_5": INTERNVL_TOKENS, "llava_onevision": LLAVA_TOKENS}


def _qwen_style_template(image: str, video: str) -> str:
    """Qwen's ChatML turns (as CHAT_TEMPLATE) with the family's own image / video markers."""
    return (CHAT_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", image)
            .replace("<|vision_start|><|video_pad|><|vision_end|>", video))


# InternVL-HF: an image part is "<IMG_CONTEXT>\n", a video part "<video>\n" (the processor expands them).
INTERNVL_CHAT_TEMPLATE = _qwen_style_template("<IMG_CONTEXT>\\n", "<video>\\n")
# LLaVA-OneVision-HF: each turn's images first ("<image>\n" each), then videos, then its text.
LLAVA_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}"
    "{{- message['content'] }}"
    "{%- elif message['content'] is not none %}"
    "{%- for part in message['content'] if part['type'] == 'image' %}{{- '<image>\\n' }}{%- endfor %}"
    "{%- for part in message['content'] if part['type'] == 'video' %}{{- '<video>\\n' }}{%- endfor %}"
    "{%- for part in message['content'] if part['type'] == 'text' %}{{- part['text'] }}{%- endfor %}"
    "{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)
TEMPLATES = {"internvl3_5": INTERNVL_CHAT_TEMPLATE, "llava_onevision": LLAVA_CHAT_TEMPLATE}

# Tile sides (pixels) of the tiled families' tiny vision towers: InternVL 56 (4x4 patches of 14, pixel
# shuffle 0.5 -> 4 tokens per tile), LLaVA-OneVision 28 (2x2 patches -> 4 tokens per tile).
INTERNVL_TILE = 56
LLAVA_TILE = 28


def _text_config(size: ModelSize, vocab_size: int, ids: Mapping[str, int], **extra) -> dict:
    return dict(
        hidden_size=size.hidden_size, intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_hidden_layers, num_attention_heads=size.num_attention_heads,
        num_key_value_heads=size.num_key_value_heads, vocab_size=vocab_size, hidden_act="silu",
        max_position_embeddings=4096, rms_norm_eps=1e-6, bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=False,
        dtype="float32", **extra,
    )


def family_config(family: str, tokenizer, size: ModelSize = TINY):
    """The transformers config of a tiny `family` checkpoint whose vocabulary is `tokenizer`'s."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS + FAMILY_TOKENS.get(family, ())}
    vocab = len(tokenizer)
    head_dim = size.hidden_size // size.num_attention_heads
    vision = dict(hidden_size=size.vision_hidden_size, intermediate_size=size.vision_intermediate_size)
    if family in ("qwen2_5_vl", "qwen2_vl"):
        return model_config(family, ids, vocab, size)
    if family == "qwen3_vl":
        from transformers import Qwen3VLConfig

        # Qwen3-VL: interleaved mrope, patch 16, learned position grid, deepstack features from block 0
        text = _text_config(size, vocab, ids, head_dim=head_dim, rope_parameters={
            "rope_type": "default", "rope_theta": 5000000.0, "mrope_section": list(size.mrope_section),
            "mrope_interleaved": True})
        vis = dict(vision, depth=size.vision_depth, num_heads=size.vision_heads, hidden_act="gelu_pytorch_tanh",
                   patch_size=16, spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=size.hidden_size,
                   num_position_embeddings=64, deepstack_visual_indexes=[0])
        return Qwen3VLConfig(text_config=text, vision_config=vis, image_token_id=ids["<|image_pad|>"],
                             video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                             vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)
    if family == "internvl3_5":
        from transformers import InternVLConfig

        text = _text_config(size, vocab, ids, model_type="qwen3", head_dim=head_dim,
                            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
        vis = dict(vision, num_hidden_layers=size.vision_depth, num_attention_heads=size.vision_heads,
                   image_size=[INTERNVL_TILE, INTERNVL_TILE], patch_size=[14, 14], use_mean_pooling=True,
                   layer_scale_init_value=0.1, norm_type="layer_norm", use_qk_norm=False)
        return InternVLConfig(text_config=text, vision_config=vis, image_token_id=ids["<IMG_CONTEXT>"],
                              image_seq_length=(INTERNVL_TILE // 14) ** 2 // 4, downsample_ratio=0.5,
                              projector_hidden_act="gelu", vision_feature_layer=-1,
                              vision_feature_select_strategy="default", tie_word_embeddings=False)
    if family == "llava_onevision":
        from transformers import LlavaOnevisionConfig

        text = _text_config(size, vocab, ids, model_type="qwen2",
                            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
        vis = dict(vision, model_type="siglip_vision_model", num_hidden_layers=size.vision_depth,
                   num_attention_heads=size.vision_heads, image_size=LLAVA_TILE, patch_size=14,
                   hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
        return LlavaOnevisionConfig(text_config=text, vision_config=vis, image_token_index=ids["<image>"],
                                    video_token_index=ids["<video>"], vision_feature_select_strategy="full",
                                    vision_feature_layer=-1, vision_aspect_ratio="anyres_max_9",
                                    image_grid_pinpoints=_llava_pinpoints(), tie_word_embeddings=False)
    raise ValueError(f"unknown family {family!r}: choose one of {', '.join(FAMILIES)}")


def _llava_pinpoints() -> list[list[int]]:
    """LLaVA-OneVision's anyres grid (1x1 ... 6x6 tiles) at the tiny tile side, up to 3x3 tiles."""
    return [[LLAVA_TILE * h, LLAVA_TILE * w] for h in range(1, 4) for w in range(1, 4)]


def family_processor(family: str, tokenizer):
    """The processor of a tiny `family` checkpoint: the family's processor classes, its chat template,
    pixel bounds small enough for a CPU (Qwen: 112x112 -> 16 image tokens; tiled families: few tiles)."""
    import transformers as tf

    if family in ("qwen2_5_vl", "qwen2_vl", "qwen3_vl"):
        patch = 16 if family == "qwen3_vl" else 14
        factor = 2 * patch
        video_cls = tf.Qwen3VLVideoProcessor if family == "qwen3_vl" else tf.Qwen2VLVideoProcessor
        image = tf.Qwen2VLImageProcessor(
            size={"shortest_edge": MIN_PIXELS if patch == 14 else factor * factor * 4,
                  "longest_edge": MAX_PIXELS if patch == 14 else 128 * 128},
            patch_size=patch, temporal_patch_size=2, merge_size=2)
        video_kw = dict(patch_size=patch, temporal_patch_size=2, merge_size=2, min_frames=2, max_frames=16)
        if family == "qwen3_vl":
            # Qwen3-VL bounds the whole clip: longest_edge is the pixels of ALL frames together
            video = video_cls(size={"shortest_edge": factor * factor * 2, "longest_edge": 64 * 64 * 16}, **video_kw)
        else:
            video = video_cls(size={"shortest_edge": VIDEO_MIN_PIXELS, "longest_edge": VIDEO_MAX_PIXELS},
                              cap_pixels_per_frame=True, max_video_tokens=1024, **video_kw)
        cls = {"qwen2_5_vl": tf.Qwen2_5_VLProcessor, "qwen2_vl": tf.Qwen2VLProcessor,
               "qwen3_vl": tf.Qwen3VLProcessor}[family]
        return cls(image_processor=image, tokenizer=tokenizer, video_processor=video, chat_template=CHAT_TEMPLATE)
    if family == "internvl3_5":
        mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
        image = tf.GotOcr2ImageProcessor(size={"height": INTERNVL_TILE, "width": INTERNVL_TILE},
                                             crop_to_patches=True, min_patches=1, max_patches=4,
                                             image_mean=mean, image_std=std)
        video = tf.InternVLVideoProcessor(size={"height": INTERNVL_TILE, "width": INTERNVL_TILE},
                                          image_mean=mean, image_std=std)
        return tf.InternVLProcessor(image_processor=image, tokenizer=tokenizer, video_processor=video,
                                    image_seq_length=(INTERNVL_TILE // 14) ** 2 // 4,
                                    chat_template=INTERNVL_CHAT_TEMPLATE)
    if family == "llava_onevision":
        mean, std = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
        image = tf.LlavaOnevisionImageProcessor(size={"height": LLAVA_TILE, "width": LLAVA_TILE},
                                                    image_grid_pinpoints=_llava_pinpoints(), do_pad=True,
                                                    image_mean=mean, image_std=std)
        video = tf.LlavaOnevisionVideoProcessor(size={"height": LLAVA_TILE, "width": LLAVA_TILE},
                                                image_mean=mean, image_std=std)
        return tf.LlavaOnevisionProcessor(image_processor=image, tokenizer=tokenizer, video_processor=video,
                                          num_image_tokens=(LLAVA_TILE // 14) ** 2,
                                          vision_feature_select_strategy="full", chat_template=LLAVA_CHAT_TEMPLATE)
    raise ValueError(f"unknown family {family!r}: choose one of {', '.join(FAMILIES)}")


def build_tiny_model(
    out_dir: str | Path,
    *,
    seed: int = 0,
    arch: str | None = None,
    family: str | None = None,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 1024,
    size: ModelSize = TINY,
) -> Path:
    """Write a tiny random checkpoint of `family` (one of FAMILIES; `arch` is its old name; default
    qwen2_5_vl) — model, processor, chat template — into `out_dir`.

    `size` sets the widths and depths (`TINY`, `MID` or any `ModelSize`); nothing else depends on it.
    Deterministic: the same `seed`, `family`, `corpus`, `vocab_size` and `size` give byte-identical files.
    The global torch RNG state is left as it was. Returns `out_dir` as a `Path`.
    """
    from transformers import AutoModelForImageTextToText, GenerationConfig

    family = family or arch or "qwen2_5_vl"
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}: choose one of {', '.join(FAMILIES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = _train_tokenizer(default_corpus() if corpus is None else corpus, vocab_size,
                                 family_tokens=FAMILY_TOKENS.get(family, ()),
                                 named=INTERNVL_NAMED if family == "internvl3_5" else None)
    if len(tokenizer) > vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens > vocab_size {vocab_size}")
    template = TEMPLATES.get(family, CHAT_TEMPLATE)
    tokenizer.chat_template = template
    processor = family_processor(family, tokenizer)

    # the model's vocabulary is exactly the tokenizer's: an id beyond it would decode to nothing,
    # and a random model would then produce "empty" answers
    config = family_config(family, tokenizer, size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.eval()
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    model.generation_config = GenerationConfig(
        bos_token_id=pad, eos_token_id=im_end, pad_token_id=pad, do_sample=False, max_new_tokens=64
    )

    model.save_pretrained(out)
    processor.save_pretrained(out)
    # Some loaders read the template from the tokenizer, some from the processor: both use the one file.
    (out / "chat_template.jinja").write_text(template, encoding="utf-8")
    return out
