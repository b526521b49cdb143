"""Advantage estimators for critic-free RL on a generative reward model (METHOD §3, §6).

Every algorithm of `rl.algorithm` (`r1rm.core.algorithms.ALGORITHMS`) has one `Estimator` in
the registry `ESTIMATORS`: pure functions of tensors, none calling a collective. Batch-level
statistics (mean / std over all valid tokens of the rollout batch, across processes) are
computed by the caller from `masked_moments` and passed in (`needs_batch_moments` says when).

Shapes: B sequences, T response tokens. `mask` (B, T) is 1 on valid response tokens;
`rewards` (B,) is the scalar reward of each sequence; `kl` (B, T) a per-token KL estimate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from r1rm.core.algorithms import ALGORITHMS


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of each row's last valid token (0 for an empty row)."""
    t = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), t, torch.zeros_like(t)).max(dim=1).values


def token_rewards(rewards: torch.Tensor, mask: torch.Tensor, *, kl: torch.Tensor | None = None,
                  kl_coef: float = 0.0) -> torch.Tensor:
    """REINFORCE++ per-token reward (METHOD §3): −β·KL_t on every valid token, plus the sequence
    reward on its last valid token. Returns (B, T), zero outside the mask."""
    r = torch.zeros_like(mask, dtype=torch.float32)
    if kl is not None and kl_coef:
        r = r - kl_coef * kl.float()
    r = r * mask
    idx = last_token_index(mask)
    has = mask.sum(dim=1) > 0
    r[torch.arange(len(r), device=r.device)[has], idx[has]] += rewards.float()[has]
    return r


def returns_to_go(token_r: torch.Tensor, mask: torch.Tensor, *, gamma: float = 1.0) -> torch.Tensor:
    """G_t = Σ_{s≥t} γ^{s−t} r_s over valid tokens (the REINFORCE++ advantage before normalisation)."""
    if gamma == 1.0:
        r = token_r * mask
        return torch.flip(torch.cumsum(torch.flip(r, [1]), dim=1), [1]) * mask
    out = torch.zeros_like(token_r)
    running = torch.zeros(token_r.shape[0], device=token_r.device, dtype=token_r.dtype)
    for t in reversed(range(token_r.shape[1])):
        running = token_r[:, t] * mask[:, t] + gamma * running * mask[:, t]
        out[:, t] = running
    return out * mask


def masked_moments(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(3,) float64 [Σx, Σx², n] over valid entries: all-reduce (sum) it across processes,
    then `moments_to_mean_std`."""
    m = mask.bool()
    v = x[m].double()
    return torch.stack([v.sum(), (v * v).sum(), torch.tensor(float(v.numel()), dtype=torch.float64, device=x.device)])


def moments_to_mean_std(moments: torch.Tensor) -> tuple[float, float]:
    """Mean and (population) std from summed moments."""
    s, ss, n = (float(v) for v in moments)
    if n == 0:
        return 0.0, 1.0
    mean = s / n
    var = max(ss / n - mean * mean, 0.0)
    return mean, math.sqrt(var)


def normalise(x: torch.Tensor, mask: torch.Tensor, *, mean: float, std: float, eps: float = 1e-8) -> torch.Tensor:
    """(x − mean) / (std + eps) on valid tokens, 0 elsewhere."""
    return ((x - mean) / (std + eps)) * mask


def filter_paper(adv: torch.Tensor, mask: torch.Tensor, *, sigma: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """StableReinforce advantage filter (paper): zero every normalised advantage with |Â| > sigma.
    Returns (filtered, dropped mask)."""
    drop = (adv.abs() > sigma) & mask.bool()
    return torch.where(drop, torch.zeros_like(adv), adv), drop


def filter_official(adv: torch.Tensor, mask: torch.Tensor, *, raw_mean: float, sigma: float = 3.0,
                    hard_limit: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The released R1-Reward code's filter (METHOD §3): keep the normalised Â inside
    [μ−sigma, μ+sigma] where μ = `raw_mean` is the *un-normalised* mean (a shifted window), and
    zero NaN, ±inf and |Â| > hard_limit. The released code's μ is the token-weighted mean of the
    returns (KL terms included) over all valid tokens of the rollout batch: the `mean` of
    `masked_moments(raw, mask)`, not the mean sequence reward. Returns (filtered, dropped mask)."""
    bad = ~torch.isfinite(adv) | (adv.abs() > hard_limit) | (adv < raw_mean - sigma) | (adv > raw_mean + sigma)
    drop = bad & mask.bool()
    return torch.where(drop, torch.zeros_like(adv), torch.nan_to_num(adv, 0.0, 0.0, 0.0)), drop


def group_view(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B,) → (B / G, G): consecutive samples of one prompt form a group."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    return rewards.float().view(-1, group_size)


def grpo_advantages(rewards: torch.Tensor, *, group_size: int, scale_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: (r − group mean) / (group std + eps) per sequence (B,); without `scale_std` only centred.
    The std is the sample std (n − 1), as in DeepSeekMath."""
    g = group_view(rewards, group_size)
    centred = g - g.mean(dim=1, keepdim=True)
    if scale_std:
        centred = centred / (g.std(dim=1, keepdim=True, unbiased=True).nan_to_num(0.0) + eps)
    return centred.reshape(-1)


def rloo_advantages(rewards: torch.Tensor, *, group_size: int) -> torch.Tensor:
    """RLOO: r_i − mean of the other samples of the same prompt (B,)."""
    if group_size < 2:
        raise ValueError("rloo needs at least 2 samples per prompt")
    g = group_view(rewards, group_size)
    loo = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
    return (g - loo).reshape(-1)


def baseline_advantages(rewards: torch.Tensor, *, group_size: int) -> torch.Tensor:
    """REINFORCE with baseline: r − mean reward of the same prompt's samples (B,)
    (with one sample per prompt the baseline is the batch mean)."""
    if group_size == 1:
        r = rewards.float()
        return r - r.mean()
    g = group_view(rewards, group_size)
    return (g - g.mean(dim=1, keepdim=True)).reshape(-1)


def broadcast(seq_adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A per-sequence advantage (B,) on every valid token (B, T)."""
    return seq_adv.float()[:, None] * mask


def _returns(rewards: torch.Tensor, mask: torch.Tensor, *, kl: torch.Tensor | None, kl_coef: float,
             group_size: int, scale_std: bool) -> torch.Tensor:
    """stable_reinforce / reinforce_pp: returns-to-go of the REINFORCE++ token rewards (KL in the
    reward when `kl` is given)."""
    return returns_to_go(token_rewards(rewards, mask, kl=kl, kl_coef=kl_coef), mask)


def _grpo(rewards: torch.Tensor, mask: torch.Tensor, *, kl: torch.Tensor | None, kl_coef: float,
          group_size: int, scale_std: bool) -> torch.Tensor:
    """grpo: the group-normalised reward on every valid token (its KL, if any, goes in the loss)."""
    return broadcast(grpo_advantages(rewards, group_size=group_size, scale_std=scale_std), mask)


def _rloo(rewards: torch.Tensor, mask: torch.Tensor, *, kl: torch.Tensor | None, kl_coef: float,
          group_size: int, scale_std: bool) -> torch.Tensor:
    """rloo: the leave-one-out advantage on every valid token."""
    return broadcast(rloo_advantages(rewards, group_size=group_size), mask)


def _baseline(rewards: torch.Tensor, mask: torch.Tensor, *, kl: torch.Tensor | None, kl_coef: float,
              group_size: int, scale_std: bool) -> torch.Tensor:
    """reinforce_baseline: reward minus the prompt's mean reward on every valid token."""
    return broadcast(baseline_advantages(rewards, group_size=group_size), mask)


def _whiten(raw: torch.Tensor, mask: torch.Tensor, *, mean: float, std: float) -> torch.Tensor:
    return normalise(raw, mask, mean=mean, std=std)


def _by_std(raw: torch.Tensor, mask: torch.Tensor, *, mean: float, std: float) -> torch.Tensor:
    return raw / (std + 1e-8) * mask


def _as_is(raw: torch.Tensor, mask: torch.Tensor, *, mean: float, std: float) -> torch.Tensor:
    return raw * mask


@dataclass(frozen=True)
class Estimator:
    """One `rl.algorithm`. `raw`: (rewards (B,), mask (B, T), *, kl, kl_coef, group_size,
    scale_std) → unnormalised token advantages (B, T). `scale`: (raw, mask, *, mean, std) → the
    advantages before the filter, given the rollout batch's token mean / std of `raw`, which
    the caller reduces only when `batch_normalised`."""

    raw: Callable[..., torch.Tensor]
    scale: Callable[..., torch.Tensor]
    batch_normalised: bool


ESTIMATORS: dict[str, Estimator] = {
    "stable_reinforce": Estimator(_returns, _whiten, batch_normalised=True),
    "reinforce_pp": Estimator(_returns, _whiten, batch_normalised=True),
    "grpo": Estimator(_grpo, _as_is, batch_normalised=False),
    "rloo": Estimator(_rloo, _as_is, batch_normalised=False),
    "reinforce_baseline": Estimator(_baseline, _by_std, batch_normalised=True),
}


def estimator(algorithm: str) -> Estimator:
    """The registry entry of `algorithm`; a ValueError naming the choices for another name."""
    if algorithm not in ESTIMATORS:
        raise ValueError(f"unknown algorithm {algorithm!r}; one of {ALGORITHMS}")
    return ESTIMATORS[algorithm]


def raw_advantages(algorithm: str, rewards: torch.Tensor, mask: torch.Tensor, *, kl: torch.Tensor | None = None,
                   kl_coef: float = 0.0, group_size: int = 1, scale_std: bool = True) -> torch.Tensor:
    """Step 1 of 2: unnormalised token advantages (B, T) for `algorithm` (see `ESTIMATORS`)."""
    return estimator(algorithm).raw(rewards, mask, kl=kl, kl_coef=kl_coef, group_size=group_size, scale_std=scale_std)


def needs_batch_moments(algorithm: str, *, adv_filter: str) -> bool:
    """Whether step 2 needs the rollout batch's mean / std of the raw advantages (all valid
    tokens, all processes): to normalise, or as the `official` filter's μ."""
    return estimator(algorithm).batch_normalised or adv_filter == "official"


def finish_advantages(algorithm: str, raw: torch.Tensor, mask: torch.Tensor, *, mean: float = 0.0, std: float = 1.0,
                      adv_filter: str = "none", sigma: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 2 of 2: scale with the batch statistics of `raw` the caller reduced (token-level
    estimators: whiten; reinforce_baseline: divide by std; grpo / rloo: as they are), then apply
    the advantage filter (`paper`: |Â| > sigma → 0; `official`: the released code's window
    around μ = `mean`). Returns (advantages, dropped mask)."""
    adv = estimator(algorithm).scale(raw, mask, mean=mean, std=std)
    if adv_filter == "paper":
        return filter_paper(adv, mask, sigma=sigma)
    if adv_filter == "official":
        return filter_official(adv, mask, raw_mean=mean, sigma=sigma)
    if adv_filter != "none":
        raise ValueError(f"unknown advantage filter {adv_filter!r}")
    return adv, torch.zeros_like(mask, dtype=torch.bool)
