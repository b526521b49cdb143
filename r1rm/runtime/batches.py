"""Turning records into model inputs: SFT encoding with assistant-only labels, and collation.

A sample is encoded through `processor.apply_chat_template` (images, video frames, caption
or text-only), so the image tokens are expanded exactly as the model expects. A sample
longer than the limit is never cut (cutting through image tokens is the "image features and
image tokens do not match" failure of other toolkits): `encode_sft` raises `TooLong` and the
caller skips and counts it, or stops, as the recipe says.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from r1rm.core.sft_loss import IGNORE


class TooLong(ValueError):
    """The encoded sample exceeds the token limit; `n_tokens` says by how much."""

    def __init__(self, n_tokens: int, limit: int):
        super().__init__(f"sample has {n_tokens} tokens, limit {limit}")
        self.n_tokens = n_tokens
        self.limit = limit


@dataclass
class Encoded:
    """One encoded sample: model inputs (batch dim 1) plus labels and token counts."""

    inputs: dict
    labels: torch.Tensor  # (1, T)
    n_prompt: int
    n_target: int

    @property
    def n_tokens(self) -> int:
        return int(self.labels.shape[1])


def _encode(processor, messages: list[dict], **kw) -> dict:
    from r1rm.data.media import fit_visuals

    return dict(processor.apply_chat_template(fit_visuals(messages), tokenize=True, return_dict=True,
                                              return_tensors="pt", **kw))


def encode_sft(processor, prompt_messages: list[dict], target: str, *, max_len: int) -> Encoded:
    """Prompt + assistant target → inputs whose labels supervise only the assistant's tokens
    (the target and the end-of-turn token; prompt, image and padding tokens are IGNORE)."""
    from r1rm.core.prompts import with_assistant

    prompt = _encode(processor, prompt_messages, add_generation_prompt=True)
    full = _encode(processor, with_assistant(prompt_messages, target))
    ids = full["input_ids"]
    n_prompt = prompt["input_ids"].shape[1]
    if ids.shape[1] > max_len:
        raise TooLong(ids.shape[1], max_len)
    if not torch.equal(ids[0, :n_prompt], prompt["input_ids"][0]):
        raise ValueError("the chat template renders the prompt differently with and without the answer; "
                         "cannot align assistant labels")
    tok = getattr(processor, "tokenizer", processor)
    labels = torch.full_like(ids, IGNORE)
    # supervise up to and including the end-of-turn token that closes the assistant message
    end = ids.shape[1]
    eos = tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tok.get_vocab() else tok.eos_token_id
    tail = (ids[0, n_prompt:] == eos).nonzero()
    if len(tail):
        end = n_prompt + int(tail[0]) + 1
    labels[0, n_prompt:end] = ids[0, n_prompt:end]
    return Encoded(inputs=full, labels=labels, n_prompt=n_prompt, n_target=end - n_prompt)


def collate(samples: list[Encoded], *, pad_id: int, left: bool = False) -> dict:
    """Right-pad (`left`: left-pad) token tensors to the longest sample; concatenate visual
    tensors (pixel_values, image_grid_thw, ...) along their first dimension, as Qwen-style
    models take them. Samples with and without images mix: a visual key is concatenated over
    the samples that have it, a per-token key a sample lacks (mm_token_type_ids) is zeros."""
    width = max(s.n_tokens for s in samples)
    keys = list(dict.fromkeys(k for s in samples for k in s.inputs))
    seq_keys = {k for s in samples for k, v in s.inputs.items() if v.dim() == 2 and v.shape[1] == s.n_tokens}

    def pad(v: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(v, (width - v.shape[1], 0) if left else (0, width - v.shape[1]), value=value)

    batch: dict = {}
    for key in keys:
        if key in seq_keys:
            fill = pad_id if key == "input_ids" else 0
            dtype = next(s.inputs[key].dtype for s in samples if key in s.inputs)
            batch[key] = torch.cat([pad(s.inputs[key], fill) if key in s.inputs
                                    else torch.zeros((1, width), dtype=dtype) for s in samples])
        else:
            batch[key] = torch.cat(_same_tiles([s.inputs[key] for s in samples if key in s.inputs]))
    batch["labels"] = torch.cat([pad(s.labels, IGNORE) for s in samples])
    return batch


def _same_tiles(values: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-image tile stacks (images, tiles, C, H, W: LLaVA-OneVision's anyres pixel_values) zero-padded to
    the most tiles, as its processor pads a batch (the model reads each image's own count from image_sizes)."""
    if len(values) < 2 or any(v.dim() != 5 for v in values) or len({v.shape[1] for v in values}) == 1:
        return values
    most = max(v.shape[1] for v in values)
    return [torch.nn.functional.pad(v, (0, 0, 0, 0, 0, 0, 0, most - v.shape[1])) for v in values]
