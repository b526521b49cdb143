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


def collate(samples: list[Encoded], *, pad_id: int) -> dict:
    """Right-pad token tensors to the longest sample; concatenate visual tensors (pixel_values,
    image_grid_thw, ...) along their first dimension, as Qwen-style models take them."""
    width = max(s.n_tokens for s in samples)
    batch: dict = {}
    seq_keys = {k for k, v in samples[0].inputs.items() if v.dim() == 2 and v.shape[1] == samples[0].n_tokens}
    for key in samples[0].inputs:
        values = [s.inputs[key] for s in samples]
        if key in seq_keys:
            fill = pad_id if key == "input_ids" else 0
            batch[key] = torch.cat([torch.nn.functional.pad(v, (0, width - v.shape[1]), value=fill) for v in values])
        else:
            batch[key] = torch.cat(values)
    batch["labels"] = torch.cat([torch.nn.functional.pad(s.labels, (0, width - s.n_tokens), value=IGNORE) for s in samples])
    return batch
