"""Stress tests for RL (`rl.stress.*`): faults injected on purpose to show what StableReinforce's
two changes are for — none of this is the paper's method, and every knob is off by default.

- `label_noise`: a share of the RL items carry the wrong label (noisy preference data).
- `rollout_lag`: rollouts sampled by the policy as it was some steps earlier (a stale engine).
- `logprob_mismatch` / `logprob_gap`: old log-probs off by rare large gaps (an inference engine
  that disagrees with the trainer) — the ratio overflow Pre-CLIP bounds.
- `reward_outliers` / `outlier_reward`: a share of the samples trained on a far-off reward — the
  outlying advantages the advantage filter drops.

Every draw is seeded by the run's seed, the step and the process, so a resumed run draws the same.
"""

from __future__ import annotations

import hashlib

import torch


def noisy_labels(labels: list[int | None], uids: list[str], *, share: float) -> tuple[list[int | None], int]:
    """`rl.stress.label_noise`: the labels with about `share` of them flipped (1 <-> 2) — those whose
    uid hashes below `share`, so the same items whatever the run's seed — and how many were
    flipped. Unlabelled items (None) stay as they are."""
    if share <= 0:  # the default: no hashing at every start
        return list(labels), 0
    out, flipped = [], 0
    for label, uid in zip(labels, uids, strict=True):
        h = int.from_bytes(hashlib.sha256(f"label-noise:{uid}".encode()).digest()[:8], "big") / 2**64
        if label is not None and h < share:
            label = 3 - label
            flipped += 1
        out.append(label)
    return out, flipped


def lag_window(history: list, current, *, lag: int) -> list:
    """`rl.stress.rollout_lag`: the weights kept after a step — `history` (oldest first) with this
    step's end-of-step `current` appended, the last lag + 1 of them. The oldest samples the next
    rollout and gives its old log-probs."""
    return [*history, current][-(lag + 1):]


def lag_window_complete(history: list, *, step: int, lag: int) -> bool:
    """Whether a resumed run's saved window holds the weights of steps max(0, step − lag)..step."""
    return len(history) == min(step, lag) + 1


def logprob_gap_generator(*, seed: int, step: int, rank: int) -> torch.Generator:
    """The generator of `engine_logprob_gaps` for a rollout step of one process."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 7_919 + rank)


def engine_logprob_gaps(mask: torch.Tensor, *, share: float, gap: float, generator: torch.Generator) -> torch.Tensor:
    """A (B, T) tensor of log-prob gaps between a rollout engine and the trainer, for the stress
    `rl.stress.logprob_mismatch`: about `share` of the valid tokens get a gap of ±`gap` nats (the
    sign at random), every other token 0. Subtracted from the old log-probs, +gap is a token the
    engine scored e^gap times less likely than the trainer does (ratio e^gap before any update),
    −gap the reverse — the rare, large trainer/engine disagreements that old log-probs taken from
    an inference engine carry into the ratio, and that Pre-CLIP bounds."""
    hit = (torch.rand(mask.shape, generator=generator) < share) & mask.bool().cpu()
    sign = torch.where(torch.rand(mask.shape, generator=generator) < 0.5, -1.0, 1.0)
    return (sign * gap * hit).to(mask.device, torch.float32)


def outlier_generator(*, seed: int, step: int, rank: int) -> torch.Generator:
    """The generator of `with_reward_outliers` for a rollout step of one process."""
    return torch.Generator().manual_seed(seed * 1_000_033 + step * 7_907 + rank)


def with_reward_outliers(rewards: list[float], valid: list[float], *, share: float, value: float,
                         generator: torch.Generator) -> tuple[list[float], int]:
    """The stress `rl.stress.reward_outliers`: about `share` of the valid samples get the reward
    `value` instead of theirs (a reward far outside the others: a judge or penalty glitch, or the
    one wrong answer of an almost-all-right batch), so their batch-normalised advantages lie far
    outside 3σ — what the advantage filter drops. Returns the rewards and how many were replaced."""
    hit = (torch.rand(len(rewards), generator=generator) < share).tolist()
    out = [value if h and v else r for r, h, v in zip(rewards, hit, valid, strict=True)]
    return out, sum(1 for h, v in zip(hit, valid, strict=True) if h and v)
