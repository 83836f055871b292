"""Tests for nanorlhf/losses.py: each loss against a slow explicit reference, plus its invariants."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from nanorlhf.losses import dpo_loss, masked_mean, ranking_accuracy, ranking_loss, sft_loss

# -----------------------------------------------------------------------------
# references written the slow way

def ref_ranking_loss(rewards, valid=None):
    """InstructGPT eq. (1), one pair at a time: per group the mean of -log sigmoid(r_i - r_j) over
    the C(k,2) pairs i < j of valid responses, then the mean over groups that have a pair."""
    group_losses = []
    for b in range(rewards.shape[0]):
        idx = [i for i in range(rewards.shape[1]) if valid is None or bool(valid[b, i])]
        terms = [-math.log(1.0 / (1.0 + math.exp(-(float(rewards[b, i]) - float(rewards[b, j])))))
                 for i, j in itertools.combinations(idx, 2)]
        assert len(terms) == math.comb(len(idx), 2)
        if terms:
            group_losses.append(sum(terms) / len(terms))
    return sum(group_losses) / len(group_losses)

# -----------------------------------------------------------------------------
# masked_mean

def test_masked_mean_ignores_padding_even_inf():
    x = torch.tensor([[1.0, 2.0, float("inf")], [3.0, float("nan"), -float("inf")]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(x, mask).item() == pytest.approx(2.0)
    assert torch.allclose(masked_mean(x, mask.bool(), dim=1), torch.tensor([1.5, 3.0]))
    # empty column -> 0
    assert torch.allclose(masked_mean(x, mask.float(), dim=0), torch.tensor([2.0, 2.0, 0.0]))


def test_masked_mean_empty_mask_is_zero_not_nan():
    x = torch.randn(2, 3)
    assert masked_mean(x, torch.zeros(2, 3)).item() == 0.0


def test_masked_mean_is_sum_over_valid_over_count():
    """Over everything and per row, against a loop; the gradient is 1/count at valid positions, 0
    elsewhere."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(3, 5, generator=g, dtype=torch.float64).requires_grad_(True)
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.float64)
    valid = [(b, t) for b in range(3) for t in range(5) if mask[b, t]]
    total = masked_mean(x, mask)
    assert total.item() == pytest.approx(sum(x[b, t].item() for b, t in valid) / len(valid), rel=1e-12)
    rows = masked_mean(x, mask, dim=1)
    assert rows.tolist() == pytest.approx([x[0].mean().item(), x[1, 1:3].mean().item(), 0.0], rel=1e-12)
    total.backward()
    assert torch.equal(x.grad, mask / len(valid))

# -----------------------------------------------------------------------------
# ranking loss (InstructGPT eq. 1)

@pytest.mark.parametrize("K", [4, 5])
def test_ranking_loss_equals_mean_of_explicit_pairs(K):
    g = torch.Generator().manual_seed(K)
    rewards = torch.randn(3, K, generator=g, dtype=torch.float64) * 2
    assert ranking_loss(rewards).item() == pytest.approx(ref_ranking_loss(rewards), rel=1e-12)


def test_ranking_loss_variable_k_groups():
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(4, 5, generator=g, dtype=torch.float64)
    valid = torch.tensor([[1, 1, 1, 1, 1],   # K=5: 10 pairs
                          [1, 1, 1, 0, 0],   # K=3: 3 pairs
                          [1, 1, 0, 0, 0],   # K=2: 1 pair
                          [1, 0, 0, 0, 0]],  # K=1: no pair, left out of the mean
                         dtype=torch.bool)
    got = ranking_loss(rewards, valid).item()
    assert got == pytest.approx(ref_ranking_loss(rewards, valid), rel=1e-12)
    # garbage in the padded slots changes nothing
    rewards2 = torch.where(valid, rewards, torch.full_like(rewards, 1e3))
    assert ranking_loss(rewards2, valid).item() == pytest.approx(got, rel=1e-12)
    # and normalizing per group is not the same as a flat mean over all 14 pairs
    flat = sum(-math.log(torch.sigmoid(rewards[b, i] - rewards[b, j]).item())
               for b, n in ((0, 5), (1, 3), (2, 2)) for i, j in itertools.combinations(range(n), 2)) / 14
    assert abs(got - flat) > 1e-3


def test_ranking_loss_and_accuracy_leave_tied_pairs_out():
    g = torch.Generator().manual_seed(3)
    rewards = torch.randn(2, 4, generator=g, dtype=torch.float64)
    tied = torch.zeros(2, 4, 4, dtype=torch.bool)
    tied[0, 1, 2] = tied[0, 0, 3] = True  # group 0: 6 pairs, 2 of them ties -> 4 compared pairs
    pairs = {0: [p for p in itertools.combinations(range(4), 2) if p not in ((1, 2), (0, 3))],
             1: list(itertools.combinations(range(4), 2))}
    nll = lambda b, i, j: -F.logsigmoid(rewards[b, i] - rewards[b, j]).item()
    expected = sum(sum(nll(b, i, j) for i, j in ps) / len(ps) for b, ps in pairs.items()) / 2
    assert ranking_loss(rewards, tied=tied).item() == pytest.approx(expected, rel=1e-12)
    assert abs(ranking_loss(rewards).item() - expected) > 1e-3  # the ties did change something
    # tie every pair but (0, 1): only responses 0 and 1 get a gradient
    r = rewards[:1].clone().requires_grad_(True)
    all_but_01 = torch.ones(1, 4, 4, dtype=torch.bool).triu(1)
    all_but_01[0, 0, 1] = False
    ranking_loss(r, tied=all_but_01).backward()
    assert r.grad[0, 0] < 0 < r.grad[0, 1] and (r.grad[0, 2:] == 0).all()
    n_correct, n_pairs = ranking_accuracy(rewards, tied=tied)
    assert float(n_pairs) == 10.0
    assert float(n_correct) == sum(float(rewards[b, i] > rewards[b, j]) for b, ps in pairs.items()
                                   for i, j in ps)


def test_ranking_loss_equal_scores_is_ln2():
    rewards = torch.full((2, 5), 0.37)
    assert ranking_loss(rewards).item() == pytest.approx(math.log(2), abs=1e-6)


def test_ranking_loss_invariant_to_constant_shift():
    rewards = torch.randn(3, 4, dtype=torch.float64)
    assert ranking_loss(rewards + 3.5).item() == pytest.approx(ranking_loss(rewards).item(), rel=1e-12)


def test_ranking_loss_gradient_raises_best_lowers_worst():
    rewards = torch.zeros(2, 4, requires_grad=True)
    ranking_loss(rewards).backward()
    step = -rewards.grad  # direction of gradient descent
    assert (step[:, 0] > 0).all() and (step[:, -1] < 0).all()
    assert torch.all(step[:, :-1] > step[:, 1:])  # strictly decreasing with rank at equal scores


def test_ranking_loss_k2_is_chosen_rejected_formula():
    chosen, rejected = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    expected = -F.logsigmoid(chosen - rejected).mean()
    got = ranking_loss(torch.stack([chosen, rejected], dim=1))
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)


def test_ranking_accuracy_hand_case():
    rewards = torch.tensor([[3.0, 2.0, 1.0],   # 3/3 pairs right
                            [1.0, 2.0, 0.0],   # (0,1) wrong, (0,2) right, (1,2) right
                            [1.0, 1.0, 5.0]])  # tie 0.5, wrong, wrong
    n_correct, n_pairs = ranking_accuracy(rewards)
    assert float(n_pairs) == 9.0
    assert float(n_correct) == pytest.approx(3 + 2 + 0.5)
    valid = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 0]], dtype=torch.bool)
    n_correct, n_pairs = ranking_accuracy(rewards, valid)
    assert (float(n_correct), float(n_pairs)) == (3 + 0 + 0.5, 5.0)

# -----------------------------------------------------------------------------
# SFT

def _sft_case(seed=0, B=3, T=5, V=7):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64)
    targets = torch.randint(0, V, (B, T), generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 1, 1, 1, 0]], dtype=torch.float64)
    return logits, targets, mask


def test_sft_loss_equals_manual_token_mean():
    logits, targets, mask = _sft_case()
    total, count = 0.0, 0
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            if mask[b, t]:
                logz = math.log(sum(math.exp(v) for v in logits[b, t].tolist()))
                total += logz - logits[b, t, targets[b, t]].item()
                count += 1
    assert sft_loss(logits, targets, mask).item() == pytest.approx(total / count, rel=1e-12)


def test_sft_loss_ignores_masked_positions():
    logits, targets, mask = _sft_case()
    base = sft_loss(logits, targets, mask)
    logits2, targets2 = logits.clone(), targets.clone()
    pad = mask == 0
    logits2[pad] = torch.randn(int(pad.sum()), logits.shape[-1], dtype=logits.dtype) * 10
    targets2[pad] = -1  # an invalid id (e.g. a PAD filler) must not crash the gather
    assert sft_loss(logits2, targets2, mask.bool()).item() == pytest.approx(base.item(), rel=1e-12)
    # sanity: changing a valid position does change it
    logits2[0, 0] += torch.arange(logits.shape[-1], dtype=logits.dtype)
    assert sft_loss(logits2, targets2, mask).item() != pytest.approx(base.item(), rel=1e-6)

def test_sft_loss_is_a_token_mean_not_a_mean_of_sequence_means():
    # row 0 has one counted token with a large loss, row 1 four with small ones: the two means differ a lot
    logits = torch.zeros(2, 4, 3, dtype=torch.float64)
    logits[0, 0] = torch.tensor([0.0, 5.0, 5.0])  # target 0: nll ~ 5.7
    logits[1] = torch.tensor([5.0, 0.0, 0.0])  # target 0: nll ~ 0.013 at each of 4 tokens
    targets = torch.zeros(2, 4, dtype=torch.long)
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.float64)
    nll = -torch.log_softmax(logits, -1)[..., 0]
    token_mean = (nll[0, 0] + nll[1].sum()).item() / 5
    sequence_means = (nll[0, 0] + nll[1].mean()).item() / 2
    assert abs(token_mean - sequence_means) > 1.0
    assert sft_loss(logits, targets, mask).item() == pytest.approx(token_mean, rel=1e-12)

# -----------------------------------------------------------------------------
# DPO

def test_dpo_loss_is_ln2_when_policy_equals_ref():
    chosen, rejected = torch.randn(5) * 10, torch.randn(5) * 10
    loss, rc, rr = dpo_loss(chosen, rejected, chosen.clone(), rejected.clone(), beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert torch.all(rc == 0) and torch.all(rr == 0)


def test_dpo_loss_matches_paper_formula():
    g = torch.Generator().manual_seed(1)
    pc, pr, rc, rr = (torch.randn(4, generator=g, dtype=torch.float64) * 5 for _ in range(4))
    beta = 0.5
    loss, chosen_r, rejected_r = dpo_loss(pc, pr, rc, rr, beta)
    expected = sum(-math.log(1 / (1 + math.exp(-beta * ((pc[i] - rc[i]) - (pr[i] - rr[i])).item())))
                   for i in range(4)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert torch.allclose(chosen_r, beta * (pc - rc)) and torch.allclose(rejected_r, beta * (pr - rr))


def test_dpo_loss_gradient_raises_chosen_lowers_rejected():
    """d loss / d log pi(y_w) = -beta (1 - sigmoid(m)) / B, the opposite for y_l; the rewards are detached."""
    g = torch.Generator().manual_seed(2)
    pc, pr = (torch.randn(3, generator=g, dtype=torch.float64).requires_grad_(True) for _ in range(2))
    rc, rr = (torch.randn(3, generator=g, dtype=torch.float64) for _ in range(2))
    beta = 0.3
    loss, chosen_r, rejected_r = dpo_loss(pc, pr, rc, rr, beta)
    assert not chosen_r.requires_grad and not rejected_r.requires_grad
    loss.backward()
    margin = beta * ((pc - rc) - (pr - rr)).detach()
    expected = -beta * (1 - torch.sigmoid(margin)) / 3
    assert torch.allclose(pc.grad, expected, rtol=1e-12) and torch.allclose(pr.grad, -expected, rtol=1e-12)
