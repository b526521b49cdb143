"""Rollout sequences for RL: prompt + sampled response as training inputs, and their log-probs.

A sequence is the processor's encoding of the prompt (image tokens expanded, never cut)
followed by the response's token ids (plus the end-of-turn token when the response ended
there, so the policy learns to stop). Labels mark the response tokens; `token_logprobs`
returns (B, T−1) log-probs aligned with the shifted labels, the layout every RL function uses.
"""

from __future__ import annotations

import torch

from r1rm.core.sft_loss import IGNORE, logits_window
from r1rm.runtime.batches import Encoded, collate


def encode_prompt(processor, messages: list[dict]) -> dict:
    """Processor inputs for a chat prompt ending with the assistant turn's opening."""
    from r1rm.data.media import fit_visuals

    return dict(processor.apply_chat_template(fit_visuals(messages), add_generation_prompt=True, tokenize=True,
                                              return_dict=True, return_tensors="pt"))


def build_sequence(prompt: dict, response_ids: list[int], *, forbidden: frozenset = frozenset()) -> Encoded:
    """Prompt inputs + response tokens → Encoded with labels on the response tokens only.

    A response holding a `forbidden` id (a vision placeholder an engine let through) would be
    read back as an image slot without an image: it is refused (ValueError), never fed."""
    bad = forbidden.intersection(response_ids)
    if bad:
        raise ValueError(f"response contains vision placeholder token ids {sorted(bad)}")
    n_prompt = prompt["input_ids"].shape[1]
    resp = torch.tensor([response_ids], dtype=prompt["input_ids"].dtype)
    inputs = {}
    for k, v in prompt.items():
        if v.dim() == 2 and v.shape[1] == n_prompt:
            fill = resp if k == "input_ids" else torch.ones_like(resp) if k == "attention_mask" else torch.zeros_like(resp)
            inputs[k] = torch.cat([v, fill.to(v.dtype)], dim=1)
        else:
            inputs[k] = v
    labels = torch.full_like(inputs["input_ids"], IGNORE)
    labels[0, n_prompt:] = resp[0]
    return Encoded(inputs=inputs, labels=labels, n_prompt=n_prompt, n_target=len(response_ids))


def response_mask(encoded: list[Encoded]) -> torch.Tensor:
    """(B, T−1) float mask of the label tokens, right-padded as `token_logprobs` lays them out,
    without a forward pass."""
    width = max(e.n_tokens for e in encoded) - 1
    return torch.stack([torch.nn.functional.pad(e.labels[0, 1:] != IGNORE, (0, width - (e.n_tokens - 1)))
                        for e in encoded]).float()


def token_logprobs(model, encoded: list[Encoded], *, pad_id: int, device, with_entropy: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Forward a batch; return logp (B, T−1) of each label token, its mask, and (optionally) the
    per-token entropy of the policy — computed on response positions only, never on the full
    vocabulary × sequence at once."""
    batch = {k: v.to(device) for k, v in collate(encoded, pad_id=pad_id).items()}
    labels = batch.pop("labels")
    # logits only from the position before the first response token on (never the prompt's)
    keep = logits_window(labels)
    logits = model(**batch, logits_to_keep=keep).logits[:, :-1, :]
    target = labels[:, 1:]
    mask = target != IGNORE
    win = mask[:, -(keep - 1):] if keep > 1 else mask[:, :0]
    sel = logits[win].float()
    logsm = torch.log_softmax(sel, dim=-1)
    logp = torch.zeros(target.shape, device=logits.device, dtype=torch.float32)
    logp[mask] = logsm.gather(-1, target[mask].unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        entropy = torch.zeros(target.shape, device=logits.device, dtype=torch.float32)
        entropy[mask] = -(logsm.exp() * logsm).sum(-1)
    return logp, mask.float(), entropy
