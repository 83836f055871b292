"""The math of one PPO-RLHF iteration, as small tensor functions (torch only: no model, no data, no I/O).

Recipe: Ziegler et al. 2019 §2.2 (KL-shaped reward, adaptive KL), Stiennon et al. 2020 App. B.1, InstructGPT
(Ouyang et al. 2022) §3.5, and openai/lm-human-preferences' choices as documented in "The N Implementation
Details of RLHF with PPO" (Huang et al. 2023, "N" below). In the order of the algorithm box:
    3. kl_penalty_rewards   per-token reward -beta*KL, plus the RM score at the last response token
    4. gae                  advantages and returns (gamma=1, lambda=0.95), then masked_whiten(adv)
    5. policy_loss          clipped surrogate;  value_loss  clipped value loss
    6. kl_estimators, explained_variance, clip fractions: logged diagnostics; Adaptive/FixedKLController: beta
Shapes: B sequences of T response tokens; each (B, T) tensor comes with a response mask (float or bool, 1 =
counts): masked positions never reach a mean; garbage there (even inf, e.g. an INVALID_LOGPROB filler) is
selected away with torch.where.
"""

import torch

from nanorlhf.losses import masked_mean

# -----------------------------------------------------------------------------
# masked statistics

def masked_var(x, mask, unbiased=False):
    """Variance of x over the positions where mask is 1 (one scalar for the whole tensor).

    Biased (divide by n) by default, as tf.nn.moments in openai/lm-human-preferences (N §9, N+):
    torch.var's default unbiased estimator would differ by n/(n-1). unbiased=True needs n >= 2.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.to(x.dtype).sum()
        if n < 2:
            raise ValueError(f"unbiased variance needs at least 2 valid values, got {n.item():g}")
        var = var * n / (n - 1)
    return var


def masked_whiten(x, mask, shift_mean=True, eps=1e-8, moments=None):
    """(x - mean) / sqrt(var + eps), with mean and biased var over valid positions only (N §9).

    x (B, T) and mask (B, T), 1 = counts. shift_mean=True: the result has mean 0 and variance 1 over the
    valid positions (use it for advantages). shift_mean=False: the mean is added back, so only the scale
    changes and the mean is preserved (OAI's reward whitening). Masked positions of the output are set to 0.
    eps keeps the division finite when every valid value is equal. moments: None, or (mean, var) taken
    elsewhere (distributed.masked_moments: over every rank's batch), used instead of x's own.
    Statistics are over the whole tensor given (per batch as in N+; OAI whitened per minibatch:
    the caller chooses by what it passes in).
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    # (mean, var) taken elsewhere: over every rank's batch (distributed.masked_moments)
    if moments is not None:
        mean, var = moments
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))

# -----------------------------------------------------------------------------
# 3. KL-shaped per-token reward

def kl_penalty_rewards(logprobs, ref_logprobs, scores, mask, beta):
    """Per-token reward of InstructGPT §3.5 / Stiennon eq. (2) / Ziegler §2.2, in N's per-token form:

        r_t = -beta * (log pi(y_t) - log pi_ref(y_t))          at every valid token
        r_T += score                                            at the last valid token (EOS) only

    logprobs, ref_logprobs (B, T) of the sampled tokens; scores (B,) from the RM; mask (B, T).
    The KL term is the per-token k1 estimator (its sum over a sequence is unbiased for the sequence
    KL; see kl_estimators). Returns (rewards, kl), both (B, T) and 0 at masked positions. A row with
    no valid token gets no score. Call it on rollout tensors under torch.no_grad().
    """
    valid = mask.bool()  # (B, T)
    B, T = valid.shape
    kl = torch.where(valid, logprobs - ref_logprobs, torch.zeros_like(logprobs))  # (B, T)
    rewards = -beta * kl  # (B, T)
    # index of the last valid token of each row (-1 if none); works for any mask, not just prefixes
    t_idx = torch.arange(T, device=valid.device).expand(B, T)  # (B, T)
    last = torch.where(valid, t_idx, torch.full_like(t_idx, -1)).max(dim=1).values  # (B,)
    has_token = last >= 0  # (B,)
    score_added = torch.where(has_token, scores.to(rewards.dtype), torch.zeros_like(rewards[:, 0]))
    rewards = rewards.scatter_add(1, last.clamp(min=0)[:, None], score_added[:, None])
    return rewards, kl


def kl_estimators(logprobs, ref_logprobs, mask):
    """Estimates of KL(pi || pi_ref) per sequence, from tokens sampled from pi (Schulman 2020,
    "Approximating KL Divergence"). With r = pi_ref / pi at each sampled token:

        k1 = -log r = log pi - log pi_ref     unbiased, high variance, negative ~half the time per token
        k2 = 0.5 * (log r)^2                  biased, low variance (OAI's "approxkl" form)
        k3 = (r - 1) - log r                  unbiased, always >= 0

    logprobs, ref_logprobs (B, T): log pi and log pi_ref of the sampled tokens; mask (B, T), 1 = counts.
    Each is summed over the valid tokens of a sequence (sum of per-token KL = sequence KL) and then
    averaged over the batch. Returns {"k1", "k2", "k3"} as 0-dim tensors (not detached). A negative
    mean k1 signals a sampling/logprob bug (e.g. top-k sampling); a negative per-token k1 does not.
    """
    valid = mask.bool()
    log_r = torch.where(valid, ref_logprobs - logprobs, torch.zeros_like(logprobs))  # (B, T), 0 at pad
    k1 = -log_r
    k2 = 0.5 * log_r ** 2
    k3 = torch.expm1(log_r) - log_r  # expm1 keeps k3 accurate (and >= 0) when r ~ 1
    return {name: k.sum(dim=1).mean() for name, k in (("k1", k1), ("k2", k2), ("k3", k3))}

# -----------------------------------------------------------------------------
# 4. generalized advantage estimation

def gae(rewards, values, mask, gamma=1.0, lam=0.95):
    """Generalized Advantage Estimation, Schulman et al. 2016 eq. (16), as in Stiennon / N+:

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}     (= sum_k (gamma*lam)^k delta_{t+k})
        returns = A + V                                (the value targets)

    rewards, values, mask: (B, T). Only valid tokens take part: the value and advantage after the
    last valid token are 0 (the episode ends at EOS; no bootstrap), and masked positions get
    advantage 0 and return 0. Valid tokens must be one contiguous run per row (right padding after
    EOS, or the response inside a longer prompt+response tensor); a hole in the mask would be read
    as an episode end. Returns (advantages, returns), (B, T), detached: they are constants in the
    PPO losses. The loop is over time, vectorised over the batch.
    """
    valid = mask.bool()  # (B, T)
    zero = torch.zeros_like(rewards[:, 0])  # (B,)
    rewards = torch.where(valid, rewards, torch.zeros_like(rewards)).detach()
    values = torch.where(valid, values, torch.zeros_like(values)).detach()
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)  # (B, T)
    next_value, next_adv = zero, zero  # (B,): V_{t+1} and A_{t+1}, 0 beyond the last valid token
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = torch.where(valid[:, t], delta + gamma * lam * next_adv, zero)
        advantages[:, t] = adv
        next_value, next_adv = values[:, t], adv  # both are 0 at a masked t
    returns = torch.where(valid, advantages + values, torch.zeros_like(values))
    return advantages, returns

# -----------------------------------------------------------------------------
# 5. PPO losses

def policy_loss(logprobs, old_logprobs, advantages, mask, clip=0.2):
    """PPO clipped surrogate (Schulman et al. 2017 eq. (7), written as a loss as in "37 details" #8):

        ratio = exp(log pi - log pi_old)
        loss  = masked_mean( max(-A * ratio, -A * clip(ratio, 1 - clip, 1 + clip)) )

    logprobs (B, T) carries the gradient; old_logprobs, advantages (B, T) are rollout constants; mask (B, T),
    1 = the token counts; clip is epsilon. The gradient is exactly 0 at tokens with (A > 0, ratio > 1 + clip)
    or (A < 0, ratio < 1 - clip); elsewhere it is the unclipped -A * ratio (also for A > 0 with
    ratio < 1 - clip).
    Mean over all valid tokens of the batch (token-level mean, as TRL/N+).
    Returns (loss, stats), stats as detached 0-dim tensors:
        clipfrac    fraction of valid tokens where the clipped branch is the max (gradient zeroed; N+)
        approx_kl   0.5 * mean((log ratio)^2), the k2 form of OAI's "approxkl" (N), for comparison
                    with the reference health numbers (~3.7e-4 early in training)
        ratio_mean, ratio_max   over valid tokens
    """
    valid = mask.bool()
    log_ratio = torch.where(valid, logprobs - old_logprobs, torch.zeros_like(logprobs))  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T)
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(pg_loss1, pg_loss2), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((pg_loss2 > pg_loss1).to(ratio.dtype), mask),
            "approx_kl": masked_mean(0.5 * log_ratio ** 2, mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_max": torch.where(valid, ratio, torch.zeros_like(ratio)).max(),
        }
    return loss, {k: v.detach() for k, v in stats.items()}


def value_loss(values, old_values, returns, mask, clip=0.2):
    """Clipped value loss of openai/lm-human-preferences (N §10, N+; "37 details" #9):

        V_clip = V_old + clip(V - V_old, -clip, +clip)
        loss   = 0.5 * masked_mean( max((V - R)^2, (V_clip - R)^2) )

    values (B, T) carries the gradient; old_values (rollout values) and returns (GAE targets) are
    constants; mask (B, T), 1 = the token counts; clip is epsilon, in value units. When |V - V_old| < clip
    this is 0.5 * MSE. (37 details reports value clipping does not help and may hurt; set
    clip=float('inf') to turn it off.) The caller scales it by vf_coef.
    Returns (loss, stats) with stats["vf_clipfrac"]: fraction of valid tokens where the clipped
    branch is the larger one (detached 0-dim tensor).
    """
    v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)  # (B, T)
    vf_loss1 = (values - returns) ** 2
    vf_loss2 = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(vf_loss1, vf_loss2), mask)
    vf_clipfrac = masked_mean((vf_loss2 > vf_loss1).to(values.dtype), mask).detach()
    return loss, {"vf_clipfrac": vf_clipfrac}

# -----------------------------------------------------------------------------
# 6. diagnostics

@torch.no_grad()
def explained_variance(values, returns, mask):
    """1 - Var[R - V] / Var[R] over valid tokens (biased variances), as a python float.
    1 = perfect value function, 0 = no better than a constant, < 0 = worse; NaN if Var[R] = 0."""
    var_returns = masked_var(returns, mask)
    if var_returns == 0:
        return float("nan")
    return (1.0 - masked_var(returns - values, mask) / var_returns).item()

# -----------------------------------------------------------------------------
# KL coefficient schedules

class AdaptiveKLController:
    """Adaptive KL coefficient, Ziegler et al. 2019 §2.2 as coded in openai/lm-human-preferences:

        e    = clip(KL / target - 1, -0.2, 0.2)
        beta = beta * (1 + e * n_steps / horizon)

    KL is the mean per-sequence KL (nats) of the last batch, n_steps the episodes in it. The paper
    writes K_beta = 0.1; the code uses K_beta = n_steps / horizon (512 / 10000 = 0.0512 per update).
    """

    def __init__(self, init_beta, target, horizon):
        self.value = float(init_beta)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl, n_steps):
        """One step of the rule above. current_kl: the KL of the last batch, a float or a 0-dim tensor;
        n_steps: the episodes in that batch. Sets self.value to the new beta and returns it (a float)."""
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


class FixedKLController:
    """Constant KL coefficient, same interface as AdaptiveKLController."""

    def __init__(self, beta):
        self.value = float(beta)

    def update(self, current_kl, n_steps):
        return self.value
