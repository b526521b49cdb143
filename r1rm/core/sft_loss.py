"""Supervised fine-tuning loss: summed token cross-entropy over the supervised positions.

Summing (not averaging) per micro-batch lets the caller divide by the number of supervised
tokens in the whole global batch, across micro-batches and processes, so gradient
accumulation and data parallelism give exactly the loss of one big batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def logits_window(labels: torch.Tensor) -> int:
    """How many trailing positions need logits (`logits_to_keep`): from the one before the
    earliest supervised label to the end. Prompt logits (image tokens included: thousands of
    positions × a 152k vocabulary for Qwen) are never materialised. Labels are right-padded, so
    the window is the same for every row; `labels[:, -k:]` aligns with the returned logits."""
    width = labels.shape[1]
    supervised = (labels != IGNORE).any(dim=0).nonzero()
    if len(supervised) == 0:
        return width
    return width - max(int(supervised[0]) - 1, 0)


def token_ce_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropy and the count of supervised tokens.

    logits: (B, T, V); labels: (B, T) with IGNORE where not supervised (labels[t] is the
    token at position t; the logit at t-1 predicts it).
    """
    shift_logits = logits[:, :-1, :]
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE
    n = int(mask.sum())
    if n == 0:
        return logits.sum() * 0.0, 0
    loss = F.cross_entropy(shift_logits[mask].float(), shift_labels[mask], reduction="sum")
    return loss, n
