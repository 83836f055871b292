"""Tests for nanorlhf/ppo.py: vectorised PPO math against slow per-row loops and the reference
numbers of the published implementations: openai/lm-human-preferences as documented in "The N
Implementation Details of RLHF with PPO" (Huang et al. 2023, "N"), Ziegler et al. 2019, Schulman's
"Approximating KL Divergence" and "The 37 Implementation Details of PPO" (Huang et al. 2022)."""

import math

import pytest
import torch

from nanorlhf.ppo import (
    AdaptiveKLController,
    FixedKLController,
    explained_variance,
    gae,
    kl_estimators,
    kl_penalty_rewards,
    masked_var,
    masked_whiten,
    policy_loss,
    value_loss,
)


def ragged_mask(lengths, T, start=None, dtype=torch.float64):
    """(B, T) mask with row b valid on [start_b, start_b + lengths_b)."""
    start = start or [0] * len(lengths)
    mask = torch.zeros(len(lengths), T, dtype=dtype)
    for b, (s, n) in enumerate(zip(start, lengths)):
        mask[b, s:s + n] = 1
    return mask

# -----------------------------------------------------------------------------
# GAE (Schulman et al. 2016; gamma 1, lambda 0.95 as in Stiennon et al. 2020)

def ref_gae_row(rewards, values, gamma, lam):
    """One episode (lists of floats): reverse loop with V after the last token = 0."""
    n = len(rewards)
    adv, last = [0.0] * n, 0.0
    for t in reversed(range(n)):
        next_v = values[t + 1] if t + 1 < n else 0.0
        delta = rewards[t] + gamma * next_v - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_per_row_loop_with_ragged_masks(gamma, lam):
    g = torch.Generator().manual_seed(0)
    B, T = 4, 8
    starts, lengths = [0, 0, 2, 0], [8, 5, 3, 0]  # full, right-padded, offset, empty
    mask = ragged_mask(lengths, T, starts)
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    # garbage at masked positions must not leak in
    rewards_g = torch.where(mask.bool(), rewards, torch.full_like(rewards, float("nan")))
    values_g = torch.where(mask.bool(), values, torch.full_like(values, 1e6))
    adv, ret = gae(rewards_g, values_g, mask, gamma=gamma, lam=lam)
    for b in range(B):
        s, n = starts[b], lengths[b]
        expected = ref_gae_row(rewards[b, s:s + n].tolist(), values[b, s:s + n].tolist(), gamma, lam)
        assert torch.allclose(adv[b, s:s + n], torch.tensor(expected, dtype=torch.float64), atol=1e-12)
        assert torch.allclose(ret[b, s:s + n], adv[b, s:s + n] + values[b, s:s + n], atol=1e-12)
        # masked positions: advantage 0, return 0
        assert torch.all(adv[b][~mask[b].bool()] == 0) and torch.all(ret[b][~mask[b].bool()] == 0)


def test_gae_equals_discounted_sum_of_deltas():
    gamma, lam, n = 0.97, 0.9, 6
    r, v = torch.randn(n, dtype=torch.float64), torch.randn(n, dtype=torch.float64)
    v_next = torch.cat([v[1:], torch.zeros(1, dtype=torch.float64)])
    delta = r + gamma * v_next - v
    expected = [sum((gamma * lam) ** k * delta[t + k].item() for k in range(n - t)) for t in range(n)]
    adv, _ = gae(r[None], v[None], torch.ones(1, n), gamma, lam)
    assert torch.allclose(adv[0], torch.tensor(expected, dtype=torch.float64), atol=1e-12)


def test_gae_lambda1_gamma1_returns_are_reward_to_go():
    g = torch.Generator().manual_seed(1)
    mask = ragged_mask([6, 3, 1], 6)
    rewards = torch.randn(3, 6, generator=g, dtype=torch.float64) * mask
    values = torch.randn(3, 6, generator=g, dtype=torch.float64)
    _, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    reward_to_go = rewards.flip(1).cumsum(1).flip(1) * mask
    assert torch.allclose(ret, reward_to_go, atol=1e-12)


def test_gae_extra_pad_columns_change_nothing():
    g = torch.Generator().manual_seed(2)
    mask = ragged_mask([5, 2], 5)
    rewards, values = torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g)
    adv, ret = gae(rewards, values, mask)
    pad = lambda x, v: torch.cat([x, torch.full((2, 3), v, dtype=x.dtype)], dim=1)
    adv2, ret2 = gae(pad(rewards, 7.0), pad(values, -3.0), pad(mask, 0.0))
    assert torch.equal(adv2[:, :5], adv) and torch.equal(ret2[:, :5], ret)
    assert torch.all(adv2[:, 5:] == 0)


def test_gae_outputs_are_detached():
    values = torch.randn(2, 4, requires_grad=True)
    adv, ret = gae(torch.randn(2, 4), values, torch.ones(2, 4))
    assert not adv.requires_grad and not ret.requires_grad

# -----------------------------------------------------------------------------
# whitening (N §9: biased variance over the valid tokens)

N_EXAMPLE = torch.tensor([[1.2, 1.3, 1.4], [1.5, 1.6, 1.7], [1.8, 1.9, 2.0]], dtype=torch.float64)


def test_whiten_n_3x3_example_biased_variance():
    mask = torch.ones(3, 3)
    assert masked_var(N_EXAMPLE, mask).item() == pytest.approx(0.0666667, abs=1e-6)  # not 0.075
    assert masked_var(N_EXAMPLE, mask, unbiased=True).item() == pytest.approx(0.075, abs=1e-9)
    w = masked_whiten(N_EXAMPLE, mask)
    expected = torch.tensor([[-1.54919274, -1.16189455, -0.77459637],
                             [-0.38729818, 0.0, 0.38729818],
                             [0.77459637, 1.16189455, 1.54919274]], dtype=torch.float64)
    assert torch.allclose(w, expected, atol=1e-6)
    assert torch.allclose(masked_whiten(N_EXAMPLE, mask, shift_mean=False), expected + 1.6, atol=1e-6)


def test_whiten_ignores_masked_values():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 6, generator=g, dtype=torch.float64)
    mask = ragged_mask([6, 4, 1], 6)
    vals = x[mask.bool()]
    mean, var = vals.mean(), ((vals - vals.mean()) ** 2).mean()
    assert masked_var(x, mask).item() == pytest.approx(var.item(), rel=1e-12)
    w = masked_whiten(x, mask)
    assert torch.allclose(w[mask.bool()], (vals - mean) / torch.sqrt(var + 1e-8), atol=1e-12)
    assert torch.all(w[~mask.bool()] == 0)
    x2 = torch.where(mask.bool(), x, torch.full_like(x, 1e4))
    assert torch.equal(masked_whiten(x2, mask.bool()), w)
    assert torch.equal(masked_whiten(x2, mask, shift_mean=False), masked_whiten(x, mask, shift_mean=False))


def test_whiten_shift_mean_false_preserves_mean_and_sets_unit_variance():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64) * 3 + 2
    mask = ragged_mask([5, 3, 4, 2], 5)
    w = masked_whiten(x, mask, shift_mean=False)
    m = mask.bool()
    assert w[m].mean().item() == pytest.approx(x[m].mean().item(), rel=1e-10)
    assert masked_var(w, mask).item() == pytest.approx(1.0, rel=1e-6)
    w0 = masked_whiten(x, mask)
    assert w0[m].mean().item() == pytest.approx(0.0, abs=1e-12)

# -----------------------------------------------------------------------------
# KL-shaped rewards (InstructGPT §3.5, N §8) and KL estimators (Schulman's k1, k2, k3)

def test_kl_penalty_reference_numbers():
    diffs = torch.tensor([[-0.3315, -0.0426, 0.6351]], dtype=torch.float64)
    ref = torch.tensor([[-1.0, -2.0, -0.5]], dtype=torch.float64)
    rewards, kl = kl_penalty_rewards(ref + diffs, ref, torch.tensor([0.4], dtype=torch.float64),
                                     torch.ones(1, 3), beta=0.05)
    assert torch.allclose(kl, diffs, atol=1e-12)
    assert torch.allclose(rewards, torch.tensor([[0.01658, 0.00213, 0.36825]],
                                                dtype=torch.float64), atol=1e-5)


def test_kl_penalty_score_at_last_valid_token_and_zero_kl_when_equal():
    g = torch.Generator().manual_seed(5)
    mask = ragged_mask([4, 2, 0, 3], 4, start=[0, 0, 0, 1])  # incl. an empty row (no crash, no score)
    logprobs = -torch.rand(4, 4, generator=g, dtype=torch.float64)
    scores = torch.tensor([1.0, -2.0, 5.0, 0.5], dtype=torch.float64)
    rewards, kl = kl_penalty_rewards(logprobs, logprobs.clone(), scores, mask, beta=0.1)
    assert torch.all(kl == 0)
    expected = torch.zeros(4, 4, dtype=torch.float64)
    expected[0, 3], expected[1, 1], expected[3, 3] = 1.0, -2.0, 0.5
    assert torch.equal(rewards, expected)
    # with a KL term: per-token -beta*kl at valid tokens, 0 at padding (even with garbage there)
    ref = logprobs + torch.randn(4, 4, generator=g, dtype=torch.float64) * 0.1
    ref_g = torch.where(mask.bool(), ref, torch.full_like(ref, -float("inf")))
    rewards, kl = kl_penalty_rewards(logprobs, ref_g, scores, mask, beta=0.1)
    for b in range(4):
        for t in range(4):
            want = -0.1 * (logprobs[b, t] - ref[b, t]).item() if mask[b, t] else 0.0
            want += scores[b].item() if (b, t) in {(0, 3), (1, 1), (3, 3)} else 0.0
            assert rewards[b, t].item() == pytest.approx(want, abs=1e-12)


def test_kl_estimators_zero_when_equal_and_k3_nonnegative():
    g = torch.Generator().manual_seed(6)
    mask = ragged_mask([5, 3], 5)
    logprobs = -torch.rand(2, 5, generator=g, dtype=torch.float64) * 3
    est = kl_estimators(logprobs, logprobs.clone(), mask)
    assert est["k1"].item() == 0 and est["k3"].item() == 0
    ref = logprobs + torch.randn(2, 5, generator=g, dtype=torch.float64)
    est = kl_estimators(logprobs, ref, mask)
    # slow reference: per-sequence sums, mean over the batch
    k1 = k3 = 0.0
    for b in range(2):
        for t in range(5):
            if mask[b, t]:
                log_r = (ref[b, t] - logprobs[b, t]).item()
                assert math.exp(log_r) - 1 - log_r >= 0
                k1 += -log_r / 2
                k3 += (math.exp(log_r) - 1 - log_r) / 2
    assert est["k1"].item() == pytest.approx(k1, rel=1e-12)
    assert est["k3"].item() == pytest.approx(k3, rel=1e-12) and est["k3"].item() > 0


def test_kl_estimators_k2_is_half_squared_log_ratio_summed_per_sequence():
    g = torch.Generator().manual_seed(14)
    mask = ragged_mask([4, 1, 2], 4, start=[0, 2, 0])
    logprobs = -torch.rand(3, 4, generator=g, dtype=torch.float64) * 2
    ref = logprobs + torch.randn(3, 4, generator=g, dtype=torch.float64)
    est = kl_estimators(logprobs, ref, mask)
    k2 = sum(0.5 * (ref[b, t] - logprobs[b, t]).item() ** 2 for b in range(3) for t in range(4)
             if mask[b, t]) / 3
    assert est["k2"].item() == pytest.approx(k2, rel=1e-12)


def test_kl_estimators_unbiased_monte_carlo():
    """Item 7: pi=[.4,.35,.25], ref=[.5,.3,.2], true KL 0.0205; k1 and k3 both estimate it."""
    pi = torch.tensor([0.4, 0.35, 0.25], dtype=torch.float64)
    ref = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    true_kl = (pi * (pi / ref).log()).sum().item()
    assert true_kl == pytest.approx(0.0205, abs=1e-4)
    g = torch.Generator().manual_seed(7)
    y = torch.multinomial(pi, 200_000, replacement=True, generator=g)[:, None]  # (N, 1) one-token sequences
    est = kl_estimators(pi.log()[y], ref.log()[y], torch.ones_like(y))
    assert est["k1"].item() == pytest.approx(true_kl, abs=2e-3)
    assert est["k3"].item() == pytest.approx(true_kl, abs=2e-3)

# -----------------------------------------------------------------------------
# policy loss (Schulman et al. 2017 eq. 7; 37 details #8)

def test_policy_loss_gradient_zero_exactly_in_clipped_regions():
    eps = 0.2
    ratios = torch.tensor([1.5, 1.1, 0.9, 0.5, 1.5, 1.1, 0.9, 0.5], dtype=torch.float64)
    adv = torch.tensor([1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0], dtype=torch.float64) * 0.7
    old = torch.full((8,), -1.3, dtype=torch.float64)
    logprobs = (old + ratios.log()).clone().requires_grad_(True)
    loss, stats = policy_loss(logprobs[None], old[None], adv[None], torch.ones(1, 8), clip=eps)
    loss.backward()
    zero = ((adv > 0) & (ratios > 1 + eps)) | ((adv < 0) & (ratios < 1 - eps))
    assert zero.tolist() == [True, False, False, False, False, False, False, True]
    assert torch.all(logprobs.grad[zero] == 0)
    # elsewhere the gradient is the unclipped d(-A r)/dlogp / n = -A r / n (also A>0, r<0.8)
    assert torch.allclose(logprobs.grad[~zero], (-adv * ratios / 8)[~zero], atol=1e-12)
    # loss value against an explicit per-token max
    per_token = [max(-a * r, -a * min(max(r, 1 - eps), 1 + eps))
                 for a, r in zip(adv.tolist(), ratios.tolist())]
    assert loss.item() == pytest.approx(sum(per_token) / 8, rel=1e-12)
    assert stats["clipfrac"].item() == pytest.approx(2 / 8)
    assert stats["ratio_max"].item() == pytest.approx(1.5)
    assert stats["ratio_mean"].item() == pytest.approx(ratios.mean().item())
    assert stats["approx_kl"].item() == pytest.approx((0.5 * ratios.log() ** 2).mean().item())


def test_policy_loss_masked_tokens_do_not_count():
    g = torch.Generator().manual_seed(8)
    old = -torch.rand(2, 5, generator=g, dtype=torch.float64)
    new = old + 0.3 * torch.randn(2, 5, generator=g, dtype=torch.float64)
    adv = torch.randn(2, 5, generator=g, dtype=torch.float64)
    mask = ragged_mask([5, 2], 5)
    logprobs = new.clone().requires_grad_(True)
    loss, _ = policy_loss(logprobs, old, adv, mask)
    loss.backward()
    assert torch.all(logprobs.grad[~mask.bool()] == 0)
    new2 = torch.where(mask.bool(), new, torch.full_like(new, 50.0))  # exp(50) must not overflow the mean
    loss2, stats2 = policy_loss(new2, old, adv, mask)
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-12)
    assert stats2["ratio_max"].item() < 2


def test_policy_loss_ragged_mask_is_sum_over_valid_over_count():
    """The token mean of the batch: the sum over valid tokens over their count. Advantages are nonzero at
    padding, so a mean over all B*T positions differs, and the rows have different lengths, so a mean of
    per-sequence means differs too (both by a margin checked here)."""
    g = torch.Generator().manual_seed(12)
    mask = ragged_mask([6, 1, 3, 0], 6, start=[0, 0, 2, 0])
    old = -torch.rand(4, 6, generator=g, dtype=torch.float64)
    new = old + 0.4 * torch.randn(4, 6, generator=g, dtype=torch.float64)
    adv = torch.randn(4, 6, generator=g, dtype=torch.float64)
    adv[1, 0] = 3.0  # the one-token row weighs 1/10 in the token mean, 1/3 in a mean of row means
    eps = 0.2
    per_token = torch.maximum(-adv * (new - old).exp(), -adv * (new - old).exp().clamp(1 - eps, 1 + eps))
    rows = [[per_token[b, t].item() for t in range(6) if mask[b, t]] for b in range(4)]
    token_mean = sum(map(sum, rows)) / sum(map(len, rows))
    loss, _ = policy_loss(new, old, adv, mask, clip=eps)
    assert loss.item() == pytest.approx(token_mean, rel=1e-12)
    assert abs(token_mean - per_token.mean().item()) > 0.05
    assert abs(token_mean - sum(sum(r) / len(r) for r in rows if r) / 3) > 0.05


def test_policy_loss_overflowing_garbage_at_padding_gives_zero_gradient_there():
    """A log-prob of +inf (or 1e4) at padding: exp() overflows there, yet the loss is that of the clean input
    and the gradient at padding is exactly 0 (not 0 * inf = NaN), because the log-ratio is selected away
    first."""
    g = torch.Generator().manual_seed(15)
    mask = ragged_mask([4, 2], 4)
    old = -torch.rand(2, 4, generator=g, dtype=torch.float64)
    new = old + 0.1 * torch.randn(2, 4, generator=g, dtype=torch.float64)
    adv = torch.randn(2, 4, generator=g, dtype=torch.float64)
    clean, _ = policy_loss(new, old, adv, mask)
    for filler in (1e4, float("inf")):
        logprobs = torch.where(mask.bool(), new, torch.full_like(new, filler)).requires_grad_(True)
        loss, _ = policy_loss(logprobs, old, adv, mask)
        loss.backward()
        assert loss.item() == pytest.approx(clean.item(), rel=1e-12)
        assert torch.all(logprobs.grad[~mask.bool()] == 0) and torch.isfinite(logprobs.grad).all()


def test_policy_loss_ratio_one_at_start():
    logp = -torch.rand(3, 4)
    loss, stats = policy_loss(logp, logp.clone(), torch.randn(3, 4), torch.ones(3, 4))
    assert stats["clipfrac"].item() == 0 and stats["approx_kl"].item() == 0
    assert stats["ratio_mean"].item() == 1 and stats["ratio_max"].item() == 1

# -----------------------------------------------------------------------------
# value loss (N §10: lm-human-preferences' clipped value loss)

def test_value_loss_is_half_mse_inside_the_clip_range():
    g = torch.Generator().manual_seed(9)
    old = torch.randn(3, 4, generator=g, dtype=torch.float64)
    values = old + (torch.rand(3, 4, generator=g, dtype=torch.float64) - 0.5) * 0.3  # |dV| < 0.15
    returns = torch.randn(3, 4, generator=g, dtype=torch.float64)
    mask = ragged_mask([4, 3, 2], 4)
    loss, stats = value_loss(values, old, returns, mask, clip=0.2)
    m = mask.bool()
    assert loss.item() == pytest.approx(0.5 * ((values - returns)[m] ** 2).mean().item(), rel=1e-12)
    assert stats["vf_clipfrac"].item() == 0


def test_value_loss_uses_clipped_branch_outside_the_range():
    # V moved 1.0 away from V_old, past the return: the clipped prediction (0.2) is worse -> it wins
    values = torch.tensor([[1.0, 3.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    returns = torch.tensor([[0.9, 3.0]], dtype=torch.float64)
    loss, stats = value_loss(values, old, returns, torch.ones(1, 2), clip=0.2)
    # token 0: max((1-0.9)^2, (0.2-0.9)^2) = 0.49 ; token 1: max(0, (0.2-3)^2) = 7.84
    assert loss.item() == pytest.approx(0.5 * (0.49 + 7.84) / 2, rel=1e-12)
    assert stats["vf_clipfrac"].item() == 1.0
    loss.backward()
    assert torch.all(values.grad == 0)  # the clipped branch does not depend on V


def test_value_loss_masked_tokens_do_not_count():
    values = torch.tensor([[0.1, 0.2, 99.0]], dtype=torch.float64)
    loss, _ = value_loss(values, values.clone(), torch.zeros(1, 3, dtype=torch.float64),
                         torch.tensor([[1, 1, 0]]))
    assert loss.item() == pytest.approx(0.5 * (0.01 + 0.04) / 2, rel=1e-12)

def test_value_loss_ragged_mask_is_sum_over_valid_over_count():
    g = torch.Generator().manual_seed(13)
    mask = ragged_mask([5, 1, 2], 5, start=[0, 3, 1])
    old = torch.randn(3, 5, generator=g, dtype=torch.float64)
    values = old + 0.5 * torch.randn(3, 5, generator=g, dtype=torch.float64)
    returns = old + torch.randn(3, 5, generator=g, dtype=torch.float64)
    returns[1, 3] = values[1, 3] + 4.0  # the one-token row's error is large
    clipped = old + (values - old).clamp(-0.2, 0.2)
    per_token = torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    rows = [[per_token[b, t].item() for t in range(5) if mask[b, t]] for b in range(3)]
    token_mean = 0.5 * sum(map(sum, rows)) / sum(map(len, rows))
    loss, _ = value_loss(values, old, returns, mask, clip=0.2)
    assert loss.item() == pytest.approx(token_mean, rel=1e-12)
    assert abs(token_mean - 0.5 * sum(sum(r) / len(r) for r in rows) / 3) > 0.5

# -----------------------------------------------------------------------------
# explained variance

def test_explained_variance():
    g = torch.Generator().manual_seed(10)
    returns = torch.randn(3, 5, generator=g, dtype=torch.float64)
    mask = ragged_mask([5, 4, 2], 5)
    garbage = torch.where(mask.bool(), returns, torch.full_like(returns, 1e3))
    assert explained_variance(garbage, returns, mask) == pytest.approx(1.0)
    mean = returns[mask.bool()].mean()
    assert explained_variance(torch.full_like(returns, mean.item()),
                              returns, mask) == pytest.approx(0.0, abs=1e-12)
    noisy = returns + torch.randn(3, 5, generator=g, dtype=torch.float64)
    ev = explained_variance(noisy, returns, mask)
    vals, pred = returns[mask.bool()], noisy[mask.bool()]
    assert ev == pytest.approx(1 - (vals - pred).var(unbiased=False).item() / vals.var(unbiased=False).item())
    assert isinstance(ev, float)

# -----------------------------------------------------------------------------
# KL controllers (Ziegler et al. 2019 §2.2)

def test_adaptive_kl_reference_numbers():
    # n_steps/horizon = 512/10^4 as in lm-human-preferences launch.py
    for kl, beta in [(6.0, 0.15), (12.0, 0.151536), (3.0, 0.148464), (100.0, 0.151536), (0.0, 0.148464)]:
        ctl = AdaptiveKLController(0.15, target=6.0, horizon=10_000)
        ctl.update(kl, n_steps=512)
        assert ctl.value == pytest.approx(beta, abs=1e-9)
    # the paper's K_beta = 0.1: error is clipped to +-0.2, so +-2%
    ctl = AdaptiveKLController(0.15, target=6.0, horizon=10)
    assert ctl.update(12.0, n_steps=1) == pytest.approx(0.153)


def test_adaptive_kl_direction_and_fixed():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=1000)
    for _ in range(5):
        prev = ctl.value
        ctl.update(torch.tensor(9.0), n_steps=64)  # KL above target: beta grows
        assert ctl.value > prev
    for _ in range(5):
        prev = ctl.value
        ctl.update(2.0, n_steps=64)  # below target: beta shrinks
        assert ctl.value < prev
    fixed = FixedKLController(0.05)
    fixed.update(100.0, n_steps=512)
    assert fixed.value == 0.05


# -----------------------------------------------------------------------------
# PPO-ptx (InstructGPT eq. 2, App. C.4): the update's gradient is the PPO gradient plus gamma times the
# pretraining one

def test_ppo_ptx_gradient_is_ppo_plus_gamma_lm():
    """One minibatch, plain SGD at lr 1 and no clipping: the parameter step is minus the gradient, so the
    step with ptx_coef=gamma minus the step without it must be -gamma * grad(next-token loss on the batch)."""
    import random as _random
    from types import SimpleNamespace

    from nanorlhf.losses import sft_loss
    from tests.helpers import tiny_gpt
    from train_ppo import Config, ppo_update, rollout

    tok, gamma = SimpleNamespace(eos_id=14, pad_id=15), 2.0
    policy = tiny_gpt("lm", vocab=16, block=32, n_layer=1, n_embd=16, seed=0)
    ref = tiny_gpt("lm", vocab=16, block=32, n_layer=1, n_embd=16, seed=0).requires_grad_(False)
    critic = tiny_gpt("value", vocab=16, block=32, n_layer=1, n_embd=16, seed=1)
    rng = _random.Random(0)
    prompts = [[rng.randrange(13) for _ in range(rng.randrange(2, 5))] for _ in range(8)]
    cfg = Config(rollout_batch=8, max_new_tokens=6, ppo_epochs=1, minibatch_size=8, grad_clip=1e9,
                 device="cpu")
    exp = rollout(policy, ref, critic, lambda gen: (gen.response == 3).float().sum(1), prompts, tok, cfg,
                  0.05,
                  torch.Generator().manual_seed(0))
    x = torch.randint(0, 16, (2, 10), generator=torch.Generator().manual_seed(1))
    batch = (x, x.roll(-1, 1), torch.ones(2, 10))
    steps, ptx_loss = {}, None
    for coef in (0.0, gamma):
        p, c = tiny_gpt("lm", vocab=16, block=32, n_layer=1, n_embd=16, seed=0), tiny_gpt(
            "value", vocab=16, block=32, n_layer=1, n_embd=16, seed=1)
        before = {n: q.detach().clone() for n, q in p.named_parameters()}
        cfg.ptx_coef = coef
        stats = ppo_update(p, c, torch.optim.SGD(p.parameters(), lr=1.0),
                           torch.optim.SGD(c.parameters(), lr=1.0),
                           exp, cfg, iter([batch]))
        steps[coef] = {n: q.detach() - before[n] for n, q in p.named_parameters()}
        ptx_loss = stats["ptx_loss"]
    lm = sft_loss(policy.train()(batch[0]), batch[1], batch[2])
    assert ptx_loss == pytest.approx(lm.item(), rel=1e-5)
    lm_grads = torch.autograd.grad(lm, list(policy.parameters()))
    for (name, _), lm_grad in zip(policy.named_parameters(), lm_grads):
        torch.testing.assert_close(steps[gamma][name] - steps[0.0][name], -gamma * lm_grad, atol=2e-5,
                                   rtol=1e-3,
                                   msg=name)
