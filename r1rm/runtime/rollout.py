"""Rollout sequences for RL: prompt + sampled response as training inputs, and their log-probs.

A sequence is the processor's encoding of the prompt (image tokens expanded, never cut)
followed by the response's token ids (plus the end-of-turn token when the response ended
there, so the policy learns to stop). Labels mark the response tokens; `token_logprobs`
returns (B, T−1) log-probs aligned with the shifted labels, the layout every RL function uses.
"""

from __future__ import annotations

import torch

from r1rm.core.sft_loss import IGNORE, logits_window
from r1rm.models.prefill import cache_kwarg, prefill_repeated, rope_deltas, transformers_model
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


def grouped_token_logprobs(model, groups: list[list[Encoded]], *, pad_id: int, device, with_entropy: bool = False
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """`token_logprobs` for groups of sequences that share their prompt (an RL prompt's n samples),
    with each prompt forwarded ONCE: the prompts (left-padded, images included) run with
    use_cache, their KV cache is copied to the group's rows, and the responses (right-padded) run
    on it. Gradients reach the prompt positions through the cache exactly as in the full
    forward, so log-probs, entropies and gradients equal `token_logprobs` on the concatenated
    groups (to float rounding) — at a fraction of the prompt compute (a group of 4 forwards its
    prompt once instead of 4 times). Returns the same (rows, T−1) layout, rows in group order.

    Positions come from generate's own rule (r1rm.models.prefill: left padding, Qwen's 3-D mrope
    positions and rope deltas); responses continue them. Every group must hold
    the same number of sequences, each with the same prompt."""
    n = len(groups[0])
    if any(len(g) != n for g in groups):
        raise ValueError(f"groups of different sizes: {[len(g) for g in groups]}")
    heads = [g[0] for g in groups]
    if any(e.n_prompt != g[0].n_prompt for g in groups for e in g):
        raise ValueError("a group mixes prompts of different lengths")
    prompts = [Encoded(inputs={k: v[:, :h.n_prompt] if v.dim() == 2 and v.shape[1] == h.n_tokens else v
                               for k, v in h.inputs.items()},
                       labels=torch.full((1, h.n_prompt), IGNORE), n_prompt=h.n_prompt, n_target=0) for h in heads]
    prompt = collate(prompts, pad_id=pad_id, left=True)
    prompt.pop("labels")
    prompt = {k: v.to(device) for k, v in prompt.items()}
    rows = [e for g in groups for e in g]
    lr_max = max(max(e.n_target for e in rows), 1)
    resp_ids = torch.full((len(rows), lr_max), pad_id, dtype=torch.long)
    resp_mask = torch.zeros((len(rows), lr_max), dtype=torch.long)
    for r, e in enumerate(rows):
        resp_ids[r, :e.n_target] = e.labels[0, e.n_prompt:e.n_prompt + e.n_target]
        resp_mask[r, :e.n_target] = 1
    resp_ids, resp_mask = resp_ids.to(device), resp_mask.to(device)

    base = transformers_model(model)  # positions and rope deltas live on the unwrapped model
    last, cache, positions = prefill_repeated(model, prompt, n)
    first = last[:, -1:, :].repeat_interleave(n, dim=0)  # predicts each response's first token
    text = positions[0] if positions.dim() == 3 else positions  # (B, Lp) text positions
    step = torch.arange(1, lr_max + 1, device=text.device)
    resp_text = (text[:, -1:] + step).repeat_interleave(n, dim=0)  # (rows, Lr)
    if positions.dim() == 3:  # [text; t; h; w] rows: responses continue at text position + rope delta
        deltas = rope_deltas(base)  # already one per row (repeated with the cache)
        delta = deltas.to(text.device) if deltas is not None else 0
        resp_pos = torch.stack([resp_text] + [resp_text + delta] * (positions.shape[0] - 1))
    else:
        resp_pos = resp_text
    full_mask = torch.cat([prompt["attention_mask"].repeat_interleave(n, dim=0), resp_mask], dim=1)
    logits = model(input_ids=resp_ids, attention_mask=full_mask, position_ids=resp_pos, use_cache=True,
                   **{cache_kwarg(base): cache}).logits
    logits = torch.cat([first, logits[:, :-1, :]], dim=1)  # (rows, Lr, V): position j predicts token j
    valid = resp_mask.bool()
    logsm = torch.log_softmax(logits[valid].float(), dim=-1)
    tok_lp = logsm.gather(-1, resp_ids[valid].unsqueeze(-1)).squeeze(-1)
    ent = -(logsm.exp() * logsm).sum(-1) if with_entropy else None
    # back to token_logprobs' layout: (rows, T−1), response token j of row r at n_prompt − 1 + j
    width = max(e.n_tokens for e in rows) - 1
    offsets = torch.tensor([e.n_prompt - 1 for e in rows], device=resp_ids.device)
    cols = (offsets[:, None] + torch.arange(lr_max, device=resp_ids.device))[valid]
    rix = torch.arange(len(rows), device=resp_ids.device)[:, None].expand(-1, lr_max)[valid]
    logp = torch.zeros((len(rows), width), device=resp_ids.device, dtype=torch.float32)
    logp = logp.index_put((rix, cols), tok_lp)
    mask = torch.zeros((len(rows), width), device=resp_ids.device, dtype=torch.float32)
    mask[rix, cols] = 1.0
    entropy = None
    if ent is not None:
        entropy = torch.zeros((len(rows), width), device=resp_ids.device, dtype=torch.float32).index_put((rix, cols), ent)
    return logp, mask, entropy
