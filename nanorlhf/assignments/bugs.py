"""The catalogue of wrong answers, and of right answers written another way (not in the student copy).

BUGS: plausible mistakes, each a small edit of one reference body, most of them what the project's tests
cannot see (a statistic logged over padding, a form exact in algebra that overflows at extreme inputs, an
ignored argument of the contract); only="diff" marks one that passes every unit test of its exercise: selftest
fails if a unit test catches it, as it would no longer prove the diff layer. `selftest` proves on pristine
copies that `grade` fails every entry (naming the layers that caught it) and accepts every one of the
ALTERNATIVES, right answers written another way (a loop, logsumexp for log_softmax, softplus for -logsigmoid).
`make --bug NAME` hands out a copy with one wrong answer (a bug hunt).

An edit is a list of (old, new) replacements in the dedented body, each `old` found exactly once there (an
entry that no longer matches the reference fails loudly instead of testing nothing), or `body`, a new body.
"""

from __future__ import annotations

from dataclasses import dataclass

from nanorlhf.assignments import source
from nanorlhf.assignments.exercises import BY_NAME


@dataclass(frozen=True)
class Bug:
    name: str
    exercise: str
    function: str
    what: str
    edits: tuple[tuple[str, str], ...]
    body: str = ""  # the whole new body (instead of edits)
    only: str = ""  # "diff": no unit test catches it, the comparison with the reference does


def _bug(name, exercise, what, *edits, function=None, body="", only=""):
    return Bug(name, exercise, function or BY_NAME[exercise].functions[0], what, tuple(edits), body, only)


BUGS: tuple[Bug, ...] = (
    # masked_mean
    _bug("mm_multiplies_padding", "masked_mean",
         "padding multiplied by 0 instead of selected away: NaN * 0 = NaN",
         ("x = torch.where(m != 0, x, torch.zeros((), dtype=x.dtype, device=x.device))\n", "")),
    _bug("mm_counts_padding", "masked_mean", "divides by every position, padding included",
         ("return (x * m).sum() / m.sum().clamp(min=1)", "return (x * m).sum() / m.numel()")),
    _bug("mm_empty_is_nan", "masked_mean", "no clamp of the count: an empty mask gives 0/0 = NaN",
         ("return (x * m).sum() / m.sum().clamp(min=1)", "return (x * m).sum() / m.sum()")),
    # sft_loss
    _bug("sft_sequence_means", "sft_loss", "mean of per-sequence means instead of a token mean",
         ("return masked_mean(nll.view(B, T), mask)",
          "return masked_mean(nll.view(B, T), mask, dim=1).mean()")),
    _bug("sft_counts_padding", "sft_loss", "averages over padding too",
         ("return masked_mean(nll.view(B, T), mask)",
                                                                          "return nll.view(B, T).mean()")),
    _bug("sft_raw_targets", "sft_loss", "gathers the raw targets: a PAD filler (-100) is out of range",
         ("safe_targets.reshape(B * T)", "targets.reshape(B * T)")),
    # ranking_loss
    _bug("rank_over_K", "ranking_loss", "normalised by K instead of C(K,2)",
         ("/ n_pairs.clamp(min=1)", "/ rewards.shape[1]")),
    _bug("rank_flat_pairs", "ranking_loss",
         "one flat mean over all pairs of the batch (groups weighted by C(K,2))",
         ("group_loss = -logp.sum(dim=(1, 2)) / n_pairs.clamp(min=1)  # (B,)\n"
          "return masked_mean(group_loss, n_pairs > 0)",
          "return -logp.sum() / n_pairs.sum().clamp(min=1)")),
    _bug("rank_sign", "ranking_loss", "sign flipped: the worse response is pushed up",
         ("F.logsigmoid(diff)", "F.logsigmoid(-diff)")),
    _bug("rank_ties_counted", "ranking_loss", "tied pairs counted as ordered",
         ("_pair_matrix(rewards, valid, tied)", "_pair_matrix(rewards, valid)")),
    _bug("rank_pairless_groups", "ranking_loss", "groups with fewer than 2 responses count as loss 0",
         ("return masked_mean(group_loss, n_pairs > 0)", "return group_loss.mean()")),
    _bug("rank_adjacent_only", "ranking_loss", "only adjacent ranks compared (K-1 pairs, not C(K,2))",
         ("diff, pairs = _pair_matrix(rewards, valid, tied)  # (B, K, K)\n",
          "diff, pairs = _pair_matrix(rewards, valid, tied)  # (B, K, K)\n"
          "pairs = pairs & torch.ones_like(pairs[0]).triu(1).tril(1)\n")),
    # kl_penalty_rewards
    _bug("kl_sign", "kl_penalty_rewards", "KL sign flipped: the policy is paid to drift",
         ("rewards = -beta * kl", "rewards = beta * kl")),
    _bug("kl_score_last_column", "kl_penalty_rewards",
         "score added at the last column, not the last valid token (EOS)",
         ("rewards.scatter_add(1, last.clamp(min=0)[:, None]",
          "rewards.scatter_add(1, torch.full_like(last, T - 1)[:, None]")),
    _bug("kl_score_every_token", "kl_penalty_rewards", "score added at every valid token",
         ("rewards = rewards.scatter_add(1, last.clamp(min=0)[:, None], score_added[:, None])",
          "rewards = rewards + torch.where(valid, score_added[:, None], torch.zeros_like(rewards))")),
    _bug("kl_unmasked", "kl_penalty_rewards", "KL not masked: garbage at padding leaks into the rewards",
         ("kl = torch.where(valid, logprobs - ref_logprobs, torch.zeros_like(logprobs))",
          "kl = logprobs - ref_logprobs")),
    _bug("kl_empty_row_scored", "kl_penalty_rewards",
         "a row with no valid token still gets its score (at index 0)",
         ("score_added = torch.where(has_token, scores.to(rewards.dtype), torch.zeros_like(rewards[:, 0]))",
          "score_added = scores.to(rewards.dtype)")),
    # gae
    _bug("gae_bootstraps_after_eos", "gae",
         "V after EOS not zeroed: bootstraps the critic's value at the PAD after EOS",
         ("values = torch.where(valid, values, torch.zeros_like(values)).detach()",
          "values = values.detach()")),
    _bug("gae_trace_without_gamma", "gae", "A_t = delta_t + lambda A_{t+1} (gamma missing from the trace)",
         ("delta + gamma * lam * next_adv", "delta + lam * next_adv")),
    _bug("gae_returns_are_advantages", "gae", "returns = A instead of A + V",
         ("torch.where(valid, advantages + values, torch.zeros_like(values))",
          "torch.where(valid, advantages, torch.zeros_like(values))")),
    _bug("gae_forward_loop", "gae", "loops forward in time",
         ("for t in reversed(range(T)):", "for t in range(T):")),
    _bug("gae_not_detached", "gae", "advantages keep the critic's graph",
         ("values = torch.where(valid, values, torch.zeros_like(values)).detach()",
          "values = torch.where(valid, values, torch.zeros_like(values))")),
    _bug("gae_advantage_at_padding", "gae", "the episode does not end at the mask: padding gets advantages",
         ("adv = torch.where(valid[:, t], delta + gamma * lam * next_adv, zero)",
          "adv = delta + gamma * lam * next_adv")),
    # masked_whiten / masked_var
    _bug("whiten_unbiased", "masked_whiten", "unbiased variance (n-1) in the whitening",
         ("masked_var(x, mask)", "masked_var(x, mask, unbiased=True)"), function="masked_whiten"),
    _bug("whiten_ignores_shift_mean", "masked_whiten", "shift_mean=False still re-centres",
         ("whitened = whitened + mean", "whitened = whitened + 0 * mean"), function="masked_whiten"),
    _bug("whiten_unmasked_stats", "masked_whiten", "mean and variance over every position, padding included",
         ("mean, var = masked_mean(x, mask), masked_var(x, mask)",
          "mean, var = x.mean(), x.var(unbiased=False)"),
         function="masked_whiten"),
    _bug("whiten_padding_kept", "masked_whiten", "padding not set to 0 in the output",
         ("return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))", "return whitened"),
         function="masked_whiten"),
    _bug("var_mean_unmasked", "masked_whiten", "masked_var centres on the unmasked mean",
         ("mean = masked_mean(x, mask)", "mean = torch.where(mask.bool(), x, torch.zeros_like(x)).mean()"),
         function="masked_var"),
    # policy_loss
    _bug("pl_mean_all_positions", "policy_loss", "mean over all B*T positions, padding included",
         ("loss = masked_mean(torch.maximum(pg_loss1, pg_loss2), mask)",
          "loss = torch.maximum(pg_loss1, pg_loss2).mean()")),
    _bug("pl_sequence_means", "policy_loss", "mean of per-sequence means instead of a token mean",
         ("loss = masked_mean(torch.maximum(pg_loss1, pg_loss2), mask)",
          "loss = masked_mean(torch.maximum(pg_loss1, pg_loss2), mask, dim=1).mean()")),
    _bug("pl_min", "policy_loss", "min instead of max: the pessimistic bound becomes optimistic",
         ("torch.maximum(pg_loss1, pg_loss2), mask)", "torch.minimum(pg_loss1, pg_loss2), mask)")),
    _bug("pl_ratio_inverted", "policy_loss", "ratio pi_old / pi",
         ("logprobs - old_logprobs", "old_logprobs - logprobs")),
    _bug("pl_clip_log_ratio", "policy_loss",
         "clips the log-ratio to +-eps (ratio in [e^-eps, e^eps], not [1-eps, 1+eps])",
         ("torch.clamp(ratio, 1.0 - clip, 1.0 + clip)", "torch.exp(torch.clamp(log_ratio, -clip, clip))")),
    _bug("pl_unmasked_ratio", "policy_loss", "log-ratio not masked: exp(garbage) at padding",
         ("log_ratio = torch.where(valid, logprobs - old_logprobs, torch.zeros_like(logprobs))",
          "log_ratio = logprobs - old_logprobs")),
    # value_loss
    _bug("vl_clip_on_returns", "value_loss", "clips V around the returns instead of around V_old",
         ("v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)",
          "v_clipped = returns + torch.clamp(values - returns, -clip, clip)")),
    _bug("vl_min", "value_loss", "min instead of max of the two squared errors",
         ("torch.maximum(vf_loss1, vf_loss2)", "torch.minimum(vf_loss1, vf_loss2)")),
    _bug("vl_no_half", "value_loss", "the 0.5 is missing",
         ("loss = 0.5 * masked_mean(", "loss = masked_mean(")),
    _bug("vl_sequence_means", "value_loss", "mean of per-sequence means",
         ("masked_mean(torch.maximum(vf_loss1, vf_loss2), mask)",
          "masked_mean(torch.maximum(vf_loss1, vf_loss2), mask, dim=1).mean()")),
    # kl_estimators
    _bug("kle_token_mean", "kl_estimators", "mean over tokens instead of the sum over each sequence",
         ("k.sum(dim=1).mean()", "masked_mean(k, mask)")),
    _bug("kle_k1_sign", "kl_estimators", "k1 = log r (sign flipped)", ("k1 = -log_r", "k1 = log_r")),
    _bug("kle_k2_no_half", "kl_estimators", "k2 = (log r)^2 without the 1/2",
         ("k2 = 0.5 * log_r ** 2", "k2 = log_r ** 2")),
    _bug("kle_k3_reversed", "kl_estimators", "k3 with r = pi / pi_ref (estimates KL(ref || pi), also >= 0)",
         ("k3 = torch.expm1(log_r) - log_r", "k3 = torch.expm1(-log_r) + log_r")),
    # adaptive_kl
    _bug("akl_unclipped", "adaptive_kl", "the proportional error is not clipped to +-0.2",
         ("error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)",
          "error = float(current_kl) / self.target - 1.0")),
    _bug("akl_sign", "adaptive_kl", "beta shrinks when the KL is too high",
         ("self.value *= 1.0 + error", "self.value *= 1.0 - error")),
    _bug("akl_paper_k", "adaptive_kl", "K_beta = 0.1 from the paper instead of n_steps / horizon",
         ("error * n_steps / self.horizon", "error * 0.1")),
    # response_mask
    _bug("rmask_drops_eos", "response_mask", "the EOS itself is masked out (the reward is read there)",
         ("after_eos = (is_eos.cumsum(1) - is_eos) > 0", "after_eos = is_eos.cumsum(1) > 0")),
    _bug("rmask_last_eos", "response_mask", "the mask runs to the last EOS, not the first",
         ("after_eos = (is_eos.cumsum(1) - is_eos) > 0",
          "after_eos = (is_eos.flip(1).cumsum(1).flip(1) == 0) & (is_eos.sum(1, keepdim=True) > 0)")),
    # response_logprobs
    _bug("rlp_off_by_one", "response_logprobs",
         "the hidden state at each response token scores that same token",
         ("first=prompt_len - 1)[:, :-1]", "first=prompt_len - 1)[:, 1:]"),
         ("model.hidden_states(tokens, attention_mask)[:, prompt_len - 1 : -1]",
          "model.hidden_states(tokens, attention_mask)[:, prompt_len:]")),
    _bug("rlp_no_temperature", "response_logprobs",
         "log-probs at temperature 1 whatever the sampling temperature",
         ("temperature=temperature, mask=mask", "temperature=1.0, mask=mask")),
    _bug("rlp_unmasked", "response_logprobs", "the PAD tokens after EOS are scored too",
         ("mask=mask,", "mask=None,")),
    # token_logprobs
    _bug("tlp_no_temperature", "token_logprobs", "temperature ignored",
         ("F.log_softmax(logits.float() / temperature, dim=-1)", "F.log_softmax(logits.float(), dim=-1)")),
    _bug("tlp_log_of_softmax", "token_logprobs", "log(softmax(x)): -inf once a probability underflows",
         ("F.log_softmax(logits.float() / temperature, dim=-1)",
          "torch.log(torch.softmax(logits.float() / temperature, dim=-1))")),
    _bug("tlp_entropy_nan", "token_logprobs", "0 * log 0 = NaN in the entropy of -inf logits",
         ("logp_all.masked_fill(p == 0, 0.0)", "logp_all")),
    _bug("tlp_input_dtype", "token_logprobs", "computes in the logits' dtype (bf16), not fp32",
         ("F.log_softmax(logits.float() / temperature", "F.log_softmax(logits / temperature")),
    _bug("tlp_entropy_unmasked", "token_logprobs", "entropy not zeroed at masked positions",
         ("entropy = torch.where(mask != 0, entropy, 0.0)", "entropy = entropy")),
    # dpo_loss
    _bug("dpo_swapped", "dpo_loss", "chosen and rejected swapped",
         ("beta * (chosen_logratio - rejected_logratio)", "beta * (rejected_logratio - chosen_logratio)")),
    _bug("dpo_no_reference", "dpo_loss", "the reference log-probs are left out",
         ("chosen_logratio = policy_chosen_logp - ref_chosen_logp", "chosen_logratio = policy_chosen_logp"),
         ("rejected_logratio = policy_rejected_logp - ref_rejected_logp",
          "rejected_logratio = policy_rejected_logp")),
    _bug("dpo_beta_outside", "dpo_loss", "beta multiplies the loss instead of the margin",
         ("-F.logsigmoid(beta * (chosen_logratio - rejected_logratio)).mean()",
          "-beta * F.logsigmoid(chosen_logratio - rejected_logratio).mean()")),
    _bug("dpo_rewards_with_graph", "dpo_loss", "the implicit rewards are returned with their graph",
         ("(beta * chosen_logratio).detach(), (beta * rejected_logratio).detach()",
          "beta * chosen_logratio, beta * rejected_logratio")),
    # preference_pairs
    _bug("pairs_tie_kept", "preference_pairs",
         "ties kept: the labeler's coin flip between two equals is learned as a preference",
         ("frozenset((i, j)) not in tied and ", "")),
    _bug("pairs_tie_one_way", "preference_pairs",
         "a tie matched only as written: the tie [1, 0] misses the pair (0, 1)",
         ('tied = {frozenset(t) for t in g.get("ties", ())}', 'tied = {tuple(t) for t in g.get("ties", ())}'),
         ("frozenset((i, j)) not in tied", "(i, j) not in tied")),
    _bug("pairs_reversed", "preference_pairs", "chosen and rejected swapped: the worse response comes first",
         ("return [(i, j) for", "return [(j, i) for")),
    _bug("pairs_both_orders", "preference_pairs",
         "every pair in both orders (i != j, not a < c): K(K-1) pairs whose DPO gradients cancel",
         ("for a, i in enumerate(rank) for j in rank[a + 1 :]", "for i in rank for j in rank if i != j")),
    _bug("pairs_twice", "preference_pairs", "each response's pairs taken from both sides (those it beats, "
         "those that beat it): every pair of the prompt listed twice", body="""\
fin = g.get("finished") or [True] * len(g["responses"])
tied = {frozenset(t) for t in g.get("ties", ())}
off = set() if off_prompt else set(g.get("off_prompt", ()))
rank = g["ranking"]
pairs = []
for a, i in enumerate(rank):
    pairs += [(i, j) for j in rank[a + 1 :]] + [(k, i) for k in rank[:a]]
return [(i, j) for i, j in pairs if frozenset((i, j)) not in tied and not ({i, j} & off)
        and (g["responses"][i], fin[i]) != (g["responses"][j], fin[j])]
"""),
    _bug("pairs_adjacent_only", "preference_pairs", "only neighbours in the ranking: K-1 pairs, not C(K,2)",
         ("rank[a + 1 :]", "rank[a + 1 : a + 2]")),
    _bug("pairs_positions_as_indices", "preference_pairs",
         "ranking positions taken for response indices: (i, j) for i < j, as if listed best first",
         ("for a, i in enumerate(rank) for j in rank[a + 1 :]",
          "for i in range(len(rank)) for j in range(i + 1, len(rank))")),
    _bug("pairs_identical_kept", "preference_pairs",
         "pairs of two identical answers kept (no preference to learn)",
         ('\n        and (g["responses"][i], fin[i]) != (g["responses"][j], fin[j])]', "]")),
    _bug("pairs_identical_by_text", "preference_pairs",
         "identical by text alone: a cut-off copy (no EOS) of a finished answer is dropped",
         ('(g["responses"][i], fin[i]) != (g["responses"][j], fin[j])',
          'g["responses"][i] != g["responses"][j]')),
    _bug("pairs_off_prompt_ignored", "preference_pairs",
         "off_prompt=False ignored: pairs with an off-prompt answer stay in",
         (" and not ({i, j} & off)", "")),
    _bug("pairs_off_prompt_chosen_kept", "preference_pairs",
         "only the rejected side checked for an off-prompt answer (one ranked above another stays)",
         ("not ({i, j} & off)", "j not in off")),
    # ppo_ptx
    _bug("ptx_sign", "ppo_ptx", "the pretraining loss is negated: the update lowers the corpus likelihood",
         ("return sft_loss(policy(x), y, m)", "return -sft_loss(policy(x), y, m)")),
    _bug("ptx_inputs_as_targets", "ppo_ptx",
         "the inputs as targets: each position learns to copy its own token",
         ("sft_loss(policy(x), y, m)", "sft_loss(policy(x), x, m)")),
    _bug("ptx_detached", "ppo_ptx", "the pretraining loss is detached: it reaches the log, not the gradient",
         ("sft_loss(policy(x), y, m)", "sft_loss(policy(x), y, m).detach()")),

    # caught by the comparison with the reference only (they pass every unit test of their exercise)
    _bug("pl_ratio_max_over_padding", "policy_loss",
         "ratio_max over every position: padding's ratio of 1 counts",
         ('"ratio_max": torch.where(valid, ratio, torch.zeros_like(ratio)).max()',
          '"ratio_max": ratio.max()'),
         only="diff"),
    _bug("pl_clipfrac_over_padding", "policy_loss", "clipfrac averaged over every position, padding included",
         ('"clipfrac": masked_mean((pg_loss2 > pg_loss1).to(ratio.dtype), mask)',
          '"clipfrac": (pg_loss2 > pg_loss1).to(ratio.dtype).mean()'), only="diff"),
    _bug("pl_ratio_of_exps", "policy_loss",
         "ratio = exp(log pi) / exp(log pi_old): 0/0 at log-probs of -1000",
         ("ratio = torch.exp(log_ratio)  # (B, T)",
          "ratio = torch.exp(torch.where(valid, logprobs, 0.0)) / "
          "torch.exp(torch.where(valid, old_logprobs, 0.0))"),
         only="diff"),
    _bug("vl_clipfrac_over_padding", "value_loss",
         "vf_clipfrac averaged over every position, padding included",
         ("masked_mean((vf_loss2 > vf_loss1).to(values.dtype), mask)",
          "(vf_loss2 > vf_loss1).to(values.dtype).mean()"),
         only="diff"),
    _bug("kl_logged_unmasked", "kl_penalty_rewards", "the returned (logged) KL keeps the garbage at padding",
         ("return rewards, kl", "return rewards, logprobs - ref_logprobs"), only="diff"),
    _bug("gae_values_times_mask", "gae",
         "values multiplied by the mask: a NaN value at padding poisons the row",
         ("values = torch.where(valid, values, torch.zeros_like(values)).detach()",
          "values = (values * mask.to(values.dtype)).detach()"), only="diff"),
    _bug("var_one_pass", "masked_whiten", "var = E[x^2] - E[x]^2: every digit lost at a mean of 1e6",
         ("var = masked_mean((x - mean) ** 2, mask)", "var = masked_mean(x ** 2, mask) - mean ** 2"),
         function="masked_var", only="diff"),
    _bug("var_unbiased_no_raise", "masked_whiten",
         "unbiased=True with fewer than 2 values divides by n - 1 <= 0",
         ("    if n < 2:\n        raise ValueError(", "    if False:\n        raise ValueError("),
         function="masked_var", only="diff"),
    _bug("whiten_ignores_moments", "masked_whiten",
         "moments=(mean, var) ignored: each rank whitens by its own",
         ("    mean, var = moments\n", "    pass\n"), function="masked_whiten", only="diff"),
    _bug("dpo_log_of_sigmoid", "dpo_loss", "log(sigmoid(x)): -inf once beta * margin < -745",
         ("-F.logsigmoid(beta * (chosen_logratio - rejected_logratio)).mean()",
          "-torch.log(torch.sigmoid(beta * (chosen_logratio - rejected_logratio))).mean()"), only="diff"),
    _bug("rank_log_of_sigmoid", "ranking_loss", "log(sigmoid(d)): -inf once a reward gap exceeds 745",
         ("F.logsigmoid(diff)", "torch.log(torch.sigmoid(diff))"), only="diff"),
    _bug("kle_ratio_of_exps", "kl_estimators", "r = exp(log pi_ref) / exp(log pi): 0/0 at log-probs of -1000",
         ("k3 = torch.expm1(log_r) - log_r",
          "k3 = torch.where(valid, torch.exp(ref_logprobs) / torch.exp(logprobs), 1.0) - 1 - log_r"),
         only="diff"),
    _bug("sft_ignore_index_mean", "sft_loss",
         "cross_entropy's own mean with ignore_index: NaN when all is masked",
         ("return masked_mean(nll.view(B, T), mask)",
          "return F.cross_entropy(logits.reshape(B * T, V), "
          "torch.where(mask.bool(), targets, -100).reshape(B * T))"),
         only="diff"),
    _bug("ptx_ignores_mask", "ppo_ptx", "the corpus batch's mask is ignored: padded targets are trained on",
         ("sft_loss(policy(x), y, m)", "sft_loss(policy(x), y, torch.ones_like(m))"), only="diff"),
    _bug("rlp_entropy_grad_ignored", "response_logprobs",
         "entropy_grad not passed on: an entropy bonus gets no gradient",
         ("entropy_grad=entropy_grad", "entropy_grad=False"), only="diff"),
    _bug("pairs_off_prompt_key", "preference_pairs",
         'g["off_prompt"]: KeyError at off_prompt=False on a group without one (every pair file\'s group)',
         ('set(g.get("off_prompt", ()))', 'set(g["off_prompt"])'), only="diff"),
    _bug("tlp_mask_multiplied", "token_logprobs",
         "logp multiplied by the mask: NaN logits at padding give NaN",
         ("logp = torch.where(mask != 0, logp, 0.0)", "logp = logp * (mask != 0)"), only="diff"),
)

BUG_BY_NAME = {b.name: b for b in BUGS}

ALTERNATIVES: tuple[Bug, ...] = (
    # log p as z_y - logsumexp(z): 2 fp32 steps lost at logits of 1234.5 (2.4e-4);
    # test_uniform_logits allows 4
    _bug("alt_tlp_logsumexp", "token_logprobs", "log p = z_y - logsumexp(z) instead of gathering log_softmax",
         ("logp = logp_all.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)  # (...)",
          "z = logits.float() / temperature\n"
          "logp = z.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1) "
          "- torch.logsumexp(z, dim=-1)  # (...)")),
    # log p_j = z_j - logsumexp(z) in the entropy too: rounds at ~1241 in test_uniform_logits (2.4e-4 off)
    _bug("alt_tlp_entropy_lse", "token_logprobs",
         "H from log p_j = z_j - logsumexp(z) instead of log_softmax",
         ("entropy = -(p * logp_all.masked_fill(p == 0, 0.0)).sum(-1)",
          "z = logits.float() / temperature\n"
          "log_p = z - torch.logsumexp(z, dim=-1, keepdim=True)\n"
          "entropy = -(p * log_p.masked_fill(p == 0, 0.0)).sum(-1)")),
    _bug("alt_dpo_softplus", "dpo_loss", "softplus(-x) instead of -logsigmoid(x)",
         ("-F.logsigmoid(beta * (chosen_logratio - rejected_logratio)).mean()",
          "F.softplus(-beta * (chosen_logratio - rejected_logratio)).mean()")),
    _bug("alt_rank_softplus", "ranking_loss", "-softplus(-d) instead of logsigmoid(d)",
         ("F.logsigmoid(diff)", "-F.softplus(-diff)")),
    _bug("alt_kl_row_loop", "kl_penalty_rewards", "the score added in a loop over rows", body="""\
valid = mask.bool()
kl = torch.where(valid, logprobs - ref_logprobs, torch.zeros_like(logprobs))
rewards = -beta * kl
for b in range(kl.shape[0]):
    idx = valid[b].nonzero()
    if len(idx) > 0:  # a row with no valid token gets no score
        rewards[b, idx[-1, 0]] += scores[b]
return rewards, kl
"""),
    _bug("alt_gae_python_loop", "gae", "a loop over rows and time on python floats", body="""\
valid = mask.bool()
advantages = torch.zeros_like(rewards)
B, T = rewards.shape
for b in range(B):
    next_value, next_adv = 0.0, 0.0
    for t in reversed(range(T)):
        if not valid[b, t]:
            next_value, next_adv = 0.0, 0.0
            continue
        delta = rewards[b, t].item() + gamma * next_value - values[b, t].item()
        next_adv = delta + gamma * lam * next_adv
        next_value = values[b, t].item()
        advantages[b, t] = next_adv
returns = torch.where(valid, advantages + values.detach(), torch.zeros_like(advantages))
return advantages, returns
"""),
    _bug("alt_rmask_loop", "response_mask", "a loop to the first EOS", body="""\
B, T = response.shape
mask = torch.ones(B, T, device=response.device)
for b in range(B):
    for t in range(T):
        if response[b, t] == eos_id:
            mask[b, t + 1:] = 0
            break
return mask
"""),
    _bug("alt_pl_clipfrac_regions", "policy_loss",
         "clipfrac from the regions (A > 0, r > 1+eps) or (A < 0, r < 1-eps)",
         ('"clipfrac": masked_mean((pg_loss2 > pg_loss1).to(ratio.dtype), mask)',
          '"clipfrac": masked_mean((((advantages > 0) & (ratio > 1.0 + clip)) | '
          '((advantages < 0) & (ratio < 1.0 - clip))).to(ratio.dtype), mask)')),
    _bug("alt_kle_exp_minus_one", "kl_estimators", "k3 with exp(log r) - 1 instead of expm1",
         ("k3 = torch.expm1(log_r) - log_r", "k3 = (torch.exp(log_r) - 1) - log_r")),
    _bug("alt_vl_stack_max", "value_loss", "the max of the two branches through stack().max()",
         ("torch.maximum(vf_loss1, vf_loss2), mask)",
          "torch.stack([vf_loss1, vf_loss2]).max(dim=0).values, mask)")),
    _bug("alt_sft_log_softmax", "sft_loss", "log_softmax, gather, and the sum over the count by hand",
         body="""\
keep = mask.bool()
safe = torch.where(keep, targets, torch.zeros_like(targets))
logp = torch.log_softmax(logits, dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # (B, T)
return -torch.where(keep, logp, torch.zeros_like(logp)).sum() / keep.sum().clamp(min=1)
"""),
    _bug("alt_whiten_divide_sqrt", "masked_whiten", "divides by sqrt instead of multiplying by rsqrt",
         ("whitened = (x - mean) * torch.rsqrt(var + eps)", "whitened = (x - mean) / torch.sqrt(var + eps)"),
         function="masked_whiten"),
    _bug("alt_mm_where_sum", "masked_mean", "select, then sum and count apart", body="""\
keep = mask.bool()
x = torch.where(keep, x, torch.zeros_like(x))
count = keep.to(x.dtype)
if dim is None:
    return x.sum() / count.sum().clamp(min=1)
return x.sum(dim) / count.sum(dim).clamp(min=1)
"""),
    _bug("alt_ptx_cross_entropy", "ppo_ptx", "the masked next-token loss written out with cross_entropy",
         body="""\
x, y, m = (to_device(t, device) for t in batch)
with autocast(device, dtype):
    logits = policy(x)
nll = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none")
keep = m.flatten() != 0
return torch.where(keep, nll, torch.zeros_like(nll)).sum() / keep.sum().clamp(min=1)
"""),
    _bug("alt_pairs_combinations", "preference_pairs",
         "itertools.combinations of the ranking, a loop with continue", body="""\
from itertools import combinations

fin = g.get("finished") or [True] * len(g["responses"])
skip = set() if off_prompt else set(g.get("off_prompt", []))
ties = [set(t) for t in g.get("ties", [])]
pairs = []
for i, j in combinations(g["ranking"], 2):  # in the ranking's order: i is ranked above j
    if {i, j} in ties or i in skip or j in skip:
        continue
    if g["responses"][i] == g["responses"][j] and fin[i] == fin[j]:
        continue
    pairs.append((i, j))
return pairs
"""),
    _bug("alt_pairs_position_loops", "preference_pairs",
         "nested loops over ranking positions, each tie as both of its tuples", body="""\
resp, rank = g["responses"], g["ranking"]
fin = g["finished"] if g.get("finished") is not None else [True] * len(resp)
tied = set()
for a, b in g.get("ties", []):
    tied |= {(a, b), (b, a)}
off = set(g.get("off_prompt", [])) if not off_prompt else set()
out = []
for a in range(len(rank)):
    for c in range(a + 1, len(rank)):
        i, j = rank[a], rank[c]
        same = resp[i] == resp[j] and fin[i] == fin[j]
        if (i, j) not in tied and i not in off and j not in off and not same:
            out.append((i, j))
return out
"""),
)

ALT_BY_NAME = {b.name: b for b in ALTERNATIVES}


def apply(text: str, bug: Bug, path: str = "?") -> str:
    """The file `text` with `bug`'s edits made in its function's body (or its body replaced)."""
    if bug.body:
        return source.replace(text, bug.function, bug.body, path)
    body = source.extract(text, bug.function, path)
    for old, new in bug.edits:
        n = body.count(old)
        if n != 1:
            raise source.SourceError(
                f"bug {bug.name}: {old!r} occurs {n} times in {path}:{bug.function}, expected once")
        body = body.replace(old, new)
    return source.replace(text, bug.function, body, path)
