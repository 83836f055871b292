"""
Supervised and preference losses: SFT cross-entropy, the InstructGPT K-way ranking loss, DPO.

Pure tensor math (torch only): no model, no data, no I/O. The PPO losses live in ppo.py.

Mask convention everywhere: `mask` is a float or bool tensor with 1 = "this token counts". Values
at masked positions never reach a mean (they may even be inf/NaN: they are selected away with
torch.where, not multiplied by 0).
"""

import torch
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# masked statistics (the one definition; ppo.py imports it from here)

def masked_mean(x, mask, dim=None):
    """Mean of x over the positions where mask is 1.

    x and mask have the same shape. dim=None averages over everything and returns a 0-dim tensor;
    an int (or tuple) averages over those dims only. A row/batch with no valid position gives 0,
    not NaN (the count is clamped to 1), so a fully padded minibatch cannot poison a run.
    """
    m = mask.to(x.dtype)
    x = torch.where(m != 0, x, torch.zeros((), dtype=x.dtype, device=x.device))
    if dim is None:
        return (x * m).sum() / m.sum().clamp(min=1)
    return (x * m).sum(dim) / m.sum(dim).clamp(min=1)

# -----------------------------------------------------------------------------
# SFT

def sft_loss(logits, targets, mask):
    """Next-token cross-entropy, averaged over the tokens where mask is 1.

    logits (B, T, V), targets (B, T) long, mask (B, T). Targets are already shifted by the caller
    (targets[:, t] is the token that logits[:, t] should predict). Each counted token weighs the
    same (a token mean over the batch, not a mean of per-sequence means). Targets at masked
    positions may hold anything (PAD, -100, ...): they are replaced by 0 before the gather.
    """
    B, T, V = logits.shape
    safe_targets = torch.where(mask.bool(), targets, torch.zeros_like(targets))  # (B, T)
    nll = F.cross_entropy(logits.reshape(B * T, V), safe_targets.reshape(B * T), reduction="none")
    return masked_mean(nll.view(B, T), mask)

# -----------------------------------------------------------------------------
# reward model: InstructGPT eq. (1)

def _pair_matrix(rewards, valid, tied=None):
    """diff[b, i, j] = r_i - r_j and the mask of the compared pairs: i < j, both valid, not tied. (B, K, K)"""
    B, K = rewards.shape
    if valid is None:
        valid = torch.ones(B, K, dtype=torch.bool, device=rewards.device)
    valid = valid.bool()
    diff = rewards[:, :, None] - rewards[:, None, :]  # (B, K, K)
    upper = torch.ones(K, K, dtype=torch.bool, device=rewards.device).triu(diagonal=1)  # i < j
    pairs = upper & valid[:, :, None] & valid[:, None, :]  # (B, K, K)
    if tied is not None:
        pairs = pairs & ~tied.bool()
    return diff, pairs


def ranking_loss(rewards, valid=None, tied=None):
    """InstructGPT eq. (1), Ouyang et al. 2022 §3.5:

        loss = -1/C(K,2) * E_x [ sum_{i<j} log sigmoid(r(x, y_i) - r(x, y_j)) ]

    rewards (B, K): the RM scores of K responses to one prompt, ordered best-first along K, so
    every pair i < j is a comparison "y_i preferred to y_j". All C(K,2) pairs of a prompt form ONE
    batch element (normalized by its own pair count), then the loss is averaged over prompts; this
    needs one RM forward per response, not per pair.
    valid (B, K) bool or None: which responses exist, for groups with fewer than K responses; a
    group with k_b valid responses is normalized by C(k_b, 2). Groups with k_b < 2 have no pairs and
    are left out of the mean over groups.
    tied (B, K, K) bool or None: pairs (by position, i < j) the labeler marked as equally good. A tie
    says nothing about which is better, so it is left out, and the group is normalized by the number
    of pairs it does order (C(k_b, 2) minus its ties) instead of C(k_b, 2).
    A chosen/rejected pair dataset is K=2: the loss is then -log sigmoid(r_chosen - r_rejected).
    (Ziegler et al. 2019 used a softmax "best of 4" loss instead; not implemented here.)
    """
    diff, pairs = _pair_matrix(rewards, valid, tied)  # (B, K, K)
    logp = torch.where(pairs, F.logsigmoid(diff), torch.zeros_like(diff))  # (B, K, K)
    n_pairs = pairs.sum(dim=(1, 2))  # (B,) = C(k_b, 2) minus ties
    group_loss = -logp.sum(dim=(1, 2)) / n_pairs.clamp(min=1)  # (B,)
    return masked_mean(group_loss, n_pairs > 0)


@torch.no_grad()
def ranking_accuracy(rewards, valid=None, tied=None):
    """Pairwise RM accuracy: among the ordered pairs i < j (i ranked better, not tied), count r_i > r_j
    as correct and equal scores as half correct. Returns (n_correct, n_pairs) as 0-dim float tensors,
    summed over all pairs in the batch (pair-weighted, so sums over batches combine exactly); the
    accuracy is n_correct / n_pairs. For K=2 this is the usual chosen-beats-rejected accuracy."""
    diff, pairs = _pair_matrix(rewards, valid, tied)  # (B, K, K)
    score = (diff > 0).to(rewards.dtype) + 0.5 * (diff == 0).to(rewards.dtype)
    n_correct = torch.where(pairs, score, torch.zeros_like(score)).sum()
    return n_correct, pairs.sum().to(rewards.dtype)

# -----------------------------------------------------------------------------
# DPO (optional baseline)

def dpo_loss(policy_chosen_logp, policy_rejected_logp, ref_chosen_logp, ref_rejected_logp, beta=0.1):
    """DPO, Rafailov et al. 2023 eq. (7), the sigmoid (Bradley-Terry) form:

        loss = -log sigmoid( beta * [ (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)) ] )

    policy_chosen_logp, policy_rejected_logp (B,): log pi of the chosen (y_w) and rejected (y_l) responses,
    summed over their response tokens only (the caller sums with the response mask); ref_chosen_logp,
    ref_rejected_logp (B,): the same under the frozen reference; beta: the KL strength. Returns (loss,
    chosen_rewards, rejected_rewards): the scalar mean loss and the implicit rewards
    beta * (log pi - log ref), (B,), detached for logging.
    No label smoothing / IPO variants. When the policy equals the reference the loss is ln 2.
    """
    chosen_logratio = policy_chosen_logp - ref_chosen_logp  # (B,)
    rejected_logratio = policy_rejected_logp - ref_rejected_logp  # (B,)
    loss = -F.logsigmoid(beta * (chosen_logratio - rejected_logratio)).mean()
    return loss, (beta * chosen_logratio).detach(), (beta * rejected_logratio).detach()
