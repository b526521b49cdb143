"""RL algorithm pieces: hand-worked values, a loop reference against the vectorised code,
and batch normalisation that is identical on 1 and 2 processes."""

import math

import pytest
import torch

from r1rm.core.advantages import (
    ESTIMATORS,
    baseline_advantages,
    filter_official,
    filter_paper,
    finish_advantages,
    grpo_advantages,
    masked_moments,
    moments_to_mean_std,
    needs_batch_moments,
    raw_advantages,
    returns_to_go,
    rloo_advantages,
    token_rewards,
)
from r1rm.core.algorithms import ALGORITHMS
from r1rm.core.policy_loss import aggregate, clipped_policy_loss, kl_estimate
from r1rm.core.stress import engine_logprob_gaps, with_reward_outliers


def test_token_rewards_and_returns_hand_worked():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.float32)
    kl = torch.tensor([[0.1, 0.2, 0.3, 9.0], [0.5, 0.5, 9.0, 9.0]])
    r = token_rewards(torch.tensor([2.0, 1.0]), mask, kl=kl, kl_coef=0.1)
    assert torch.allclose(r, torch.tensor([[-0.01, -0.02, 2 - 0.03, 0.0], [-0.05, 1 - 0.05, 0.0, 0.0]]))
    g = returns_to_go(r, mask)
    assert torch.allclose(g, torch.tensor([[1.94, 1.95, 1.97, 0.0], [0.9, 0.95, 0.0, 0.0]]))
    # discounted, G_t = r_t + γ·G_{t+1}: with γ = 0.5, row 1: 1.97; −0.02 + 0.985 = 0.965;
    # −0.01 + 0.4825 = 0.4725. Row 2: 0.95; −0.05 + 0.475 = 0.425
    half = returns_to_go(r, mask, gamma=0.5)
    assert torch.allclose(half, torch.tensor([[0.4725, 0.965, 1.97, 0.0], [0.425, 0.95, 0.0, 0.0]]))
    # γ = 0.999: −0.02 + 0.999·1.97 = 1.94803; −0.01 + 0.999·1.94803 = 1.93608197; −0.05 + 0.999·0.95 = 0.89905
    near = returns_to_go(r, mask, gamma=0.999)
    assert torch.allclose(near, torch.tensor([[1.93608197, 1.94803, 1.97, 0.0], [0.89905, 0.95, 0.0, 0.0]]))


def loop_returns(token_r, mask, gamma=1.0):
    out = torch.zeros_like(token_r)
    for b in range(token_r.shape[0]):
        run = 0.0
        for t in reversed(range(token_r.shape[1])):
            if mask[b, t]:
                run = float(token_r[b, t]) + gamma * run
                out[b, t] = run
    return out


def test_vectorised_returns_match_the_loop_reference():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        B, T = 5, 9
        lengths = torch.randint(0, T + 1, (B,), generator=g)
        mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
        tr = token_rewards(torch.randn(B, generator=g), mask, kl=torch.randn(B, T, generator=g), kl_coef=0.05)
        assert torch.allclose(returns_to_go(tr, mask), loop_returns(tr, mask), atol=1e-6)
        assert torch.allclose(returns_to_go(tr, mask, gamma=0.999), loop_returns(tr, mask, gamma=0.999), atol=1e-6)


def test_normalisation_identical_on_one_and_two_processes():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 6, generator=g)
    mask = (torch.rand(8, 6, generator=g) > 0.3).float()
    one = moments_to_mean_std(masked_moments(x, mask))
    two = moments_to_mean_std(masked_moments(x[:4], mask[:4]) + masked_moments(x[4:], mask[4:]))  # all-reduce(sum)
    assert one == pytest.approx(two, rel=1e-12)
    vals = x[mask.bool()]
    assert one[0] == pytest.approx(float(vals.mean()), abs=1e-6)
    assert one[1] == pytest.approx(float(vals.std(unbiased=False)), abs=1e-6)


def test_paper_filter_zeroes_beyond_three_sigma():
    adv = torch.tensor([[0.5, -3.5, 3.0, 4.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    out, drop = filter_paper(adv, mask)
    assert out.tolist() == [[0.5, 0.0, 3.0, 4.0]]  # outside the mask nothing is touched
    assert drop.tolist() == [[False, True, False, False]]


def test_official_filter_uses_the_shifted_window():
    adv = torch.tensor([[-2.5, -0.5, 1.0, 3.5, float("nan"), 11.0]])
    mask = torch.ones(1, 6)
    # μ = 1.0 (the un-normalised token mean): keep [-2, 4]
    out, drop = filter_official(adv, mask, raw_mean=1.0)
    assert out.tolist() == [[0.0, -0.5, 1.0, 3.5, 0.0, 0.0]]
    assert drop.sum() == 3
    # with μ = 3.5 every negative advantage is dropped: the defect METHOD §3 describes
    out, _ = filter_official(torch.tensor([[-1.0, -0.2, 2.0]]), torch.ones(1, 3), raw_mean=3.5)
    assert out.tolist() == [[0.0, 0.0, 2.0]]


def test_official_filter_centres_on_the_token_mean_of_the_returns():
    """The released code's μ is the mean of the returns over all valid tokens (KL terms included),
    so a long sequence weighs more than a short one; the mean sequence reward would be 3 here."""
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]], dtype=torch.float32)
    kl = torch.tensor([[0.0, 7.0, 7.0], [1.0, 1.0, 1.0]])
    raw = raw_advantages("stable_reinforce", torch.tensor([6.0, 0.0]), mask, kl=kl, kl_coef=0.5)
    # token rewards: [6], [−0.5, −0.5, −0.5] → returns [6], [−1.5, −1, −0.5]
    assert raw.tolist() == [[6.0, 0.0, 0.0], [-1.5, -1.0, -0.5]]
    assert needs_batch_moments("stable_reinforce", adv_filter="official")
    mean, std = moments_to_mean_std(masked_moments(raw, mask))
    # μ = (6 − 1.5 − 1 − 0.5) / 4 = 0.75; σ² = (5.25² + 2.25² + 1.75² + 1.25²) / 4 = 9.3125
    assert mean == 0.75 and std == pytest.approx(math.sqrt(9.3125))
    adv, drop = finish_advantages("stable_reinforce", raw, mask, mean=mean, std=std, adv_filter="official")
    # Â = [1.720], [−0.737, −0.573, −0.410]: all inside [μ − 3, μ + 3] = [−2.25, 3.75]; a window
    # around the mean sequence reward, [0, 6], would drop the three negative ones
    want = torch.tensor([[5.25, 0.0, 0.0], [-2.25, -1.75, -1.25]]) / (math.sqrt(9.3125) + 1e-8)
    assert torch.allclose(adv, want) and not drop.any()
    # the long sequence now earns 6: μ = 4.5, σ² = (3·1.5² + 4.5²) / 4 = 6.75, Â = [0.577 ×3], [−1.732]:
    # every Â is below μ − 3 = 1.5, so the shifted window drops every token (the defect METHOD §3 names)
    mask2 = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.float32)
    raw2 = raw_advantages("stable_reinforce", torch.tensor([6.0, 0.0]), mask2)
    mean2, std2 = moments_to_mean_std(masked_moments(raw2, mask2))
    assert mean2 == 4.5 and std2 == pytest.approx(math.sqrt(6.75))
    adv2, drop2 = finish_advantages("stable_reinforce", raw2, mask2, mean=mean2, std=std2, adv_filter="official")
    assert drop2.tolist() == [[True, True, True], [True, False, False]] and not adv2.any()
    # grpo is not normalised, but the official filter still needs the batch's token mean of its advantages
    assert needs_batch_moments("grpo", adv_filter="official") and not needs_batch_moments("grpo", adv_filter="paper")
    g = raw_advantages("grpo", torch.tensor([1.0, 0.0]), mask, group_size=2, scale_std=False)
    g_mean, g_std = moments_to_mean_std(masked_moments(g, mask))
    assert g_mean == -0.25  # (0.5 − 3·0.5) / 4
    # window [−3.25, 2.75]: an advantage of 2.9 survives the paper's |Â| ≤ 3 but not this one
    big = torch.tensor([[2.9, 0.0, 0.0], [-0.5, -0.5, -0.5]])
    out, drop = finish_advantages("grpo", big, mask, mean=g_mean, std=g_std, adv_filter="official")
    assert drop.tolist() == [[True, False, False], [False, False, False]]
    assert out.tolist() == [[0.0, 0.0, 0.0], [-0.5, -0.5, -0.5]]


def test_one_registry_holds_every_algorithm():
    from typing import get_args

    from r1rm.config import RLConfig

    assert tuple(ESTIMATORS) == ALGORITHMS
    assert get_args(RLConfig.model_fields["algorithm"].annotation) == ALGORITHMS
    assert [a for a in ALGORITHMS if ESTIMATORS[a].batch_normalised] == ["stable_reinforce", "reinforce_pp",
                                                                          "reinforce_baseline"]
    mask = torch.ones(2, 2)
    with pytest.raises(ValueError, match="unknown algorithm 'ppo'"):
        raw_advantages("ppo", torch.zeros(2), mask)
    with pytest.raises(ValueError, match="unknown algorithm 'ppo'"):
        finish_advantages("ppo", mask, mask)


def test_grpo_rloo_baseline_hand_worked():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0])
    grpo = grpo_advantages(r, group_size=2, scale_std=False)
    assert grpo.tolist() == [0.5, -0.5, -0.5, 0.5, 0.0, 0.0]
    scaled = grpo_advantages(r, group_size=2)
    assert scaled[0] == pytest.approx(0.5 / (math.sqrt(0.5) + 1e-6))
    assert scaled[4] == 0.0  # equal rewards: no signal, no NaN
    assert rloo_advantages(r, group_size=2).tolist() == [1.0, -1.0, -1.0, 1.0, 0.0, 0.0]
    assert rloo_advantages(torch.tensor([3.0, 0.0, 0.0]), group_size=3).tolist() == [3.0, -1.5, -1.5]
    assert baseline_advantages(r, group_size=2).tolist() == grpo.tolist()
    assert baseline_advantages(torch.tensor([1.0, 3.0]), group_size=1).tolist() == [-1.0, 1.0]
    with pytest.raises(ValueError):
        grpo_advantages(r, group_size=4)


def test_stable_reinforce_pipeline_end_to_end():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]], dtype=torch.float32)
    rewards = torch.tensor([2.0, 0.0, 1.5, 0.5])
    raw = raw_advantages("stable_reinforce", rewards, mask)
    assert raw.tolist() == [[2, 2, 0], [0, 0, 0], [1.5, 0, 0], [0.5, 0.5, 0.5]]
    mean, std = moments_to_mean_std(masked_moments(raw, mask))
    adv, drop = finish_advantages("stable_reinforce", raw, mask, mean=mean, std=std, adv_filter="paper")
    vals = adv[mask.bool()]
    assert float(vals.mean()) == pytest.approx(0.0, abs=1e-6) and float(vals.std(unbiased=False)) == pytest.approx(1.0, abs=1e-5)
    assert not drop.any()
    grpo = raw_advantages("grpo", torch.tensor([1.0, 0.0, 0.0, 1.0]), mask, group_size=2, scale_std=False)
    assert grpo.tolist() == [[0.5, 0.5, 0], [-0.5, -0.5, -0.5], [-0.5, 0, 0], [0.5, 0.5, 0.5]]


def test_kl_estimators():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -2.0])
    assert kl_estimate(logp, ref, kind="k1").tolist() == pytest.approx([0.5, 0.0])
    k3 = kl_estimate(logp, ref, kind="k3")
    assert k3.tolist() == pytest.approx([math.exp(-0.5) + 0.5 - 1, 0.0]) and (k3 >= 0).all()


def test_aggregation_modes():
    per = torch.tensor([[1.0, 3.0, 0.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert aggregate(per, mask, mode="seq_mean_token_mean").item() == pytest.approx((2.0 + 4.0) / 2)
    assert aggregate(per, mask, mode="token_mean").item() == pytest.approx(8.0 / 3)


def test_clipped_loss_hand_worked_and_pre_clip():
    mask = torch.ones(1, 3)
    adv = torch.tensor([[1.0, -1.0, 1.0]])
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 1.5, 0.9]]))
    loss, stats = clipped_policy_loss(logp, old, adv, mask, clip_eps_low=0.2)
    # token 1: min(1.5, 1.2)·1 = 1.2; token 2: min(−1.5, −1.2) = −1.5; token 3: min(0.9, 0.9) = 0.9
    assert loss.item() == pytest.approx(-(1.2 - 1.5 + 0.9) / 3)
    assert stats["clip_frac"] == pytest.approx(1 / 3) and stats["ratio_max"] == pytest.approx(1.5)
    # asymmetric clip: ε_high 0.28 lets token 1 reach 1.28
    loss_hi, _ = clipped_policy_loss(logp, old, adv, mask, clip_eps_low=0.2, clip_eps_high=0.28)
    assert loss_hi.item() == pytest.approx(-(1.28 - 1.5 + 0.9) / 3)
    # a huge log-ratio: without Pre-CLIP the loss overflows, with it the loss stays finite
    huge = torch.tensor([[200.0, 0.0, 0.0]])
    neg = torch.tensor([[-1.0, 0.0, 0.0]])
    plain, st = clipped_policy_loss(huge, old, neg, mask)
    assert not torch.isfinite(plain) and math.isinf(st["ratio_max"])
    safe, _ = clipped_policy_loss(huge, old, neg, mask, pre_clip_ratio=1e3)
    assert torch.isfinite(safe) and safe.item() == pytest.approx(1e3 / 3, rel=1e-4)
    # where Pre-CLIP binds, either side: token 1 above 10^3, token 2 below 10^-3 (its term held constant)
    both = torch.tensor([[200.0, -8.0, 0.0]])
    adv2 = torch.tensor([[-1.0, 1.0, 1.0]])
    lp2 = both.clone().requires_grad_(True)
    loss2, st2 = clipped_policy_loss(lp2, old, adv2, mask, pre_clip_ratio=1e3)
    assert st2["preclip_high_frac"] == pytest.approx(1 / 3) and st2["preclip_low_frac"] == pytest.approx(1 / 3)
    assert st2["ratio_min"] == pytest.approx(math.exp(-8.0), rel=1e-4)
    loss2.backward()
    assert lp2.grad[0, 0] == 0 and lp2.grad[0, 1] == 0  # both clamped: no gradient
    lp3 = both.clone().requires_grad_(True)
    plain3, st3 = clipped_policy_loss(lp3, old, torch.tensor([[0.0, 1.0, 1.0]]), mask)
    plain3.backward()
    assert 0 < -lp3.grad[0, 1] < 1e-3  # without Pre-CLIP the fallen token keeps a tiny r·Â gradient
    assert st3["preclip_high_frac"] == 0.0 and st3["preclip_low_frac"] == 0.0  # no Pre-CLIP: never binds
    # gradients flow only where the surrogate is not clipped
    lp = logp.clone().requires_grad_(True)
    clipped_policy_loss(lp, old, adv, mask)[0].backward()
    assert lp.grad[0, 0] == 0 and lp.grad[0, 1] != 0 and lp.grad[0, 2] != 0



def test_engine_logprob_gaps_share_sign_mask_and_seed():
    """rl.stress.logprob_mismatch: about `share` of the valid tokens get a gap of ±gap (both signs),
    padding none; the same seed draws the same gaps (a resumed run), another seed others."""
    mask = torch.ones(64, 200)
    mask[:, 150:] = 0  # padding

    def draw(seed: int) -> torch.Tensor:
        return engine_logprob_gaps(mask, share=0.05, gap=12.0, generator=torch.Generator().manual_seed(seed))

    g = draw(3)
    hit = g != 0
    assert not hit[:, 150:].any()
    assert 0.04 < hit.sum().item() / mask.sum().item() < 0.06
    assert set(g[hit].tolist()) == {12.0, -12.0} and 0.4 < (g > 0).sum().item() / hit.sum().item() < 0.6
    assert torch.equal(g, draw(3)) and not torch.equal(g, draw(4))
    # through the loss: a gap past ln 10^3 on a negative-advantage token is a term of e^gap·|Â|
    # without Pre-CLIP and no gradient with it
    lp = torch.zeros(1, 2, requires_grad=True)
    old = torch.zeros(1, 2) - torch.tensor([[10.0, 0.0]])
    adv, m = torch.tensor([[-1.0, -1.0]]), torch.ones(1, 2)
    _, st = clipped_policy_loss(lp, old, adv, m)
    assert st["loss_token_max"] == pytest.approx(math.exp(10.0), rel=1e-4)
    clipped_policy_loss(lp, old, adv, m, pre_clip_ratio=1e3)[0].backward()
    assert lp.grad[0, 0] == 0 and lp.grad[0, 1] != 0


def test_reward_outliers_replace_a_share_of_valid_samples_and_the_filter_drops_them():
    """rl.stress.reward_outliers: about `share` of the valid samples get `value`; invalid ones
    never; seeded. Their normalised advantages lie beyond 3σ, so the paper's filter zeroes them."""
    n = 4000
    rewards, valid = [2.0 if k % 5 else 0.5 for k in range(n)], [0.0 if k % 50 == 0 else 1.0 for k in range(n)]

    def draw(seed: int):
        return with_reward_outliers(rewards, valid, share=0.01, value=-10.0,
                                    generator=torch.Generator().manual_seed(seed))

    out, k = draw(1)
    hit = [i for i in range(n) if out[i] != rewards[i]]
    assert k == len(hit) and 20 < k < 60 and all(out[i] == -10.0 and valid[i] for i in hit)
    assert draw(1) == (out, k) and draw(2)[0] != out
    mask = torch.ones(n, 1)
    raw = raw_advantages("stable_reinforce", torch.tensor(out), mask)
    mean, std = moments_to_mean_std(masked_moments(raw, mask))
    adv, dropped = finish_advantages("stable_reinforce", raw, mask, mean=mean, std=std, adv_filter="paper", sigma=3.0)
    assert all(adv[i, 0] == 0 for i in hit) and int(dropped.sum()) == k
