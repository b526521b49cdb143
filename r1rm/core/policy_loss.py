"""Policy-gradient losses: PPO clipped surrogate with StableReinforce's Pre-CLIP, KL
estimators and loss aggregation (METHOD §3). Pure functions of tensors.

Shapes: B sequences, T response tokens; `logp`, `old_logp`, `ref_logp`, `adv`, `mask` are (B, T).
"""

from __future__ import annotations

import math

import torch


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, *, kind: str = "k1") -> torch.Tensor:
    """Per-token KL(π‖π_ref) estimate: k1 = logπ − logπ_ref; k3 = exp(ref − logπ) − (ref − logπ) − 1 (≥ 0)."""
    d = logp - ref_logp
    if kind == "k1":
        return d
    if kind == "k3":
        return torch.exp(-d) + d - 1.0
    raise ValueError(f"unknown KL estimator {kind!r}")


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, *, mode: str = "seq_mean_token_mean") -> torch.Tensor:
    """Reduce a (B, T) loss: token mean within each sequence then mean over sequences (paper),
    or token mean over the whole batch."""
    m = mask.to(per_token.dtype)
    if mode == "seq_mean_token_mean":
        per_seq = (per_token * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
        has = (m.sum(dim=1) > 0).to(per_token.dtype)
        return (per_seq * has).sum() / has.sum().clamp(min=1.0)
    if mode == "token_mean":
        return (per_token * m).sum() / m.sum().clamp(min=1.0)
    raise ValueError(f"unknown loss aggregation {mode!r}")


def clipped_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: float | None = None,
    pre_clip_ratio: float | None = None,
    agg: str = "seq_mean_token_mean",
) -> tuple[torch.Tensor, dict]:
    """PPO clipped surrogate −min(ρÂ, clip(ρ, 1−ε_low, 1+ε_high)Â), aggregated.

    Pre-CLIP (StableReinforce, `pre_clip_ratio`=10³ in the paper): the log-ratio is clamped to
    [−ln x, ln x] *before* exp, so a huge log-ratio cannot overflow. Without it, ρ = exp(logπ −
    logπ_old) as in plain PPO / REINFORCE++.
    Stats: clip_frac (share of valid tokens where the clip binds), ratio_max / ratio_min (unclamped),
    preclip_high_frac / preclip_low_frac (share of valid tokens whose log-ratio is past the Pre-CLIP
    bound above / below: where it binds; 0 without Pre-CLIP), approx_kl, loss_token_max (largest
    |per-token loss|).
    """
    eps_high = clip_eps_low if clip_eps_high is None else clip_eps_high
    log_ratio = logp - old_logp
    raw_log_ratio = log_ratio.detach()
    if pre_clip_ratio is not None:
        bound = math.log(pre_clip_ratio)
        log_ratio = log_ratio.clamp(-bound, bound)
    ratio = torch.exp(log_ratio)
    surr1 = ratio * adv
    surr2 = ratio.clamp(1.0 - clip_eps_low, 1.0 + eps_high) * adv
    per_token = -torch.min(surr1, surr2)
    loss = aggregate(per_token, mask, mode=agg)
    m = mask.bool()
    with torch.no_grad():
        n = m.sum().clamp(min=1)
        clipped = (surr2 < surr1) & m
        stats = {
            "clip_frac": float(clipped.sum() / n),
            "ratio_max": float(torch.exp(raw_log_ratio[m].max())) if m.any() else 1.0,
            "ratio_min": float(torch.exp(raw_log_ratio[m].min())) if m.any() else 1.0,
            "preclip_high_frac": float(((raw_log_ratio > bound) & m).sum() / n) if pre_clip_ratio is not None else 0.0,
            "preclip_low_frac": float(((raw_log_ratio < -bound) & m).sum() / n) if pre_clip_ratio is not None else 0.0,
            "approx_kl": float(((-raw_log_ratio)[m]).mean()) if m.any() else 0.0,
            # the largest single loss term: the paper shows one of 19,930 without Pre-CLIP
            "loss_token_max": float(per_token.detach()[m].abs().max()) if m.any() else 0.0,
        }
    return loss, stats
