"""The exercise table: what a student writes, where, and which checks grade it.

Each entry blanks the body of one or more functions (after the docstring, which stays: it is the contract).
Checks come in three layers, run by `grade` in this order, then the micro pipeline (`pipeline` in __main__.py)
over all exercises at once; partial credit is the comment above `Exercise.parts`:
    unit      pytest functions of the project's own test suite (a function counts as passed when all its
              parametrised cases pass); the student can run these in the handout
    diff      nanorlhf/assignments/checks*.py: the student's function against the reference on fixed edge
              cases and seeded random cases (ragged masks, garbage at padding, float64, tight tolerances);
              hidden
    learning  pytest learning tests (a planted preference / reward must be learned)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Exercise:
    name: str
    file: str  # path from the repository root
    functions: tuple[str, ...]  # qualified names in `file` ("AdaptiveKLController.update")
    equation: str
    points: int
    unit: tuple[str, ...]  # pytest node ids of test functions
    learning: tuple[str, ...] = ()
    prerequisites: tuple[str, ...] = ()  # exercises whose functions this one's checks call
    stage: str = ""  # the stage script to run once the checks pass
    diff: bool = True  # checks.CHECKS has a differential check named after the exercise
    # Partial credit: `parts` splits an exercise's points between its main quantity (first) and each logged
    # statistic. The diff layer scores each part apart. A failing unit test costs the parts it checks
    # (`unit_parts`, default the main one) that the diff layer also found wrong, or all of them when the diff
    # layer found none of them wrong; a failing learning test costs the main part.
    parts: tuple[tuple[str, int], ...] = ()  # (part, points): main quantity first; () = one part, "output"
    unit_parts: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (unit test, the parts it checks); default main
    hints: tuple[tuple[str, str], ...] = ()  # (unit test, what to look at when it fails)

    @property
    def message(self) -> str:
        return f"exercise {self.name}: see ASSIGNMENTS.md#{self.name}"

    @property
    def points_of(self) -> dict[str, int]:
        return dict(self.parts) if self.parts else {"output": self.points}

    @property
    def part_names(self) -> tuple[str, ...]:
        return tuple(self.points_of)

    def parts_checked_by(self, node: str) -> tuple[str, ...]:
        return dict(self.unit_parts).get(node, self.part_names[:1])


LOSSES, PPO, GEN, LOGP = "tests/test_losses.py::", "tests/test_ppo_math.py::", "tests/test_generate.py::", \
    "tests/test_logprobs.py::"
DPO = "tests/test_dpo.py::"
PPO_LOOP, RM_LEARN = "tests/test_ppo_loop.py::", "tests/test_rm_learning.py::"
PLANTED_REWARD = PPO_LOOP + "test_ppo_raises_planted_reward"
KL_HOLDS = PPO_LOOP + "test_kl_penalty_holds_policy_near_reference"
PL_PARTS = ("loss", "clipfrac", "approx_kl", "ratio_mean", "ratio_max")

EXERCISES: tuple[Exercise, ...] = (
    Exercise("masked_mean", "nanorlhf/losses.py", ("masked_mean",),
             "sum_i m_i x_i / max(1, sum_i m_i), padding selected away (never multiplied)", 5,
             (LOSSES + "test_masked_mean_ignores_padding_even_inf",
              LOSSES + "test_masked_mean_empty_mask_is_zero_not_nan",
              LOSSES + "test_masked_mean_is_sum_over_valid_over_count"),
             stage="every stage (train_sft.py first)"),
    Exercise("sft_loss", "nanorlhf/losses.py", ("sft_loss",),
             "L = -1/N sum_{valid (b,t)} log softmax(logits_bt)[y_bt]  (a token mean)", 5,
             (LOSSES + "test_sft_loss_equals_manual_token_mean",
              LOSSES + "test_sft_loss_ignores_masked_positions",
              LOSSES + "test_sft_loss_is_a_token_mean_not_a_mean_of_sequence_means"),
             prerequisites=("masked_mean",), stage="train_sft.py --stage=pretrain, then train_sft.py"),
    Exercise("ranking_loss", "nanorlhf/losses.py", ("ranking_loss",),
             "InstructGPT eq. (1): loss = -1/C(K,2) E_x sum_{i<j} log sigmoid(r(x,y_i) - r(x,y_j))", 10,
             tuple(LOSSES + t for t in (
                 "test_ranking_loss_equals_mean_of_explicit_pairs", "test_ranking_loss_variable_k_groups",
                 "test_ranking_loss_and_accuracy_leave_tied_pairs_out",
                 "test_ranking_loss_equal_scores_is_ln2",
                 "test_ranking_loss_invariant_to_constant_shift",
                 "test_ranking_loss_gradient_raises_best_lowers_worst",
                 "test_ranking_loss_k2_is_chosen_rejected_formula")),
             learning=(RM_LEARN + "test_rm_learns_marker_preference_to_90_percent",),
             prerequisites=("masked_mean",), stage="train_rm.py"),
    Exercise("kl_penalty_rewards", "nanorlhf/ppo.py", ("kl_penalty_rewards",),
             "InstructGPT eq. (2) per token: r_t = -beta (log pi - log pi_ref)_t, plus the RM score at the "
             "last valid token", 10,
             (PPO + "test_kl_penalty_reference_numbers",
              PPO + "test_kl_penalty_score_at_last_valid_token_and_zero_kl_when_equal"),
             learning=(KL_HOLDS,), stage="train_ppo.py", parts=(("rewards", 8), ("kl", 2)),
             unit_parts=tuple((PPO + t, ("rewards", "kl")) for t in (
                 "test_kl_penalty_reference_numbers",
                 "test_kl_penalty_score_at_last_valid_token_and_zero_kl_when_equal"))),
    Exercise("gae", "nanorlhf/ppo.py", ("gae",),
             "GAE (Schulman 2016 eq. 16): delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lambda "
             "A_{t+1}, V after EOS = 0; returns = A + V", 15,
             tuple(PPO + t for t in (
                 "test_gae_matches_per_row_loop_with_ragged_masks",
                 "test_gae_equals_discounted_sum_of_deltas",
                 "test_gae_lambda1_gamma1_returns_are_reward_to_go",
                 "test_gae_extra_pad_columns_change_nothing",
                 "test_gae_outputs_are_detached")),
             learning=(PLANTED_REWARD,), stage="train_ppo.py"),
    Exercise("masked_whiten", "nanorlhf/ppo.py", ("masked_var", "masked_whiten"),
             "(x - mean) / sqrt(var + eps) over valid tokens, biased var (N §9); shift_mean=False adds the "
             "mean back", 5,
             tuple(PPO + t for t in (
                 "test_whiten_n_3x3_example_biased_variance", "test_whiten_ignores_masked_values",
                 "test_whiten_shift_mean_false_preserves_mean_and_sets_unit_variance",
                 "test_explained_variance")),
             prerequisites=("masked_mean",), stage="train_ppo.py"),
    Exercise("policy_loss", "nanorlhf/ppo.py", ("policy_loss",),
             "PPO clipped surrogate (Schulman 2017 eq. 7): masked_mean(max(-A r, -A clip(r, 1-eps, 1+eps))), "
             "r = exp(log pi - log pi_old)", 15,
             tuple(PPO + t for t in (
                 "test_policy_loss_gradient_zero_exactly_in_clipped_regions",
                 "test_policy_loss_masked_tokens_do_not_count",
                 "test_policy_loss_ratio_one_at_start",
                 "test_policy_loss_ragged_mask_is_sum_over_valid_over_count",
                 "test_policy_loss_overflowing_garbage_at_padding_gives_zero_gradient_there")),
             learning=(PLANTED_REWARD,), prerequisites=("masked_mean",), stage="train_ppo.py",
             parts=(("loss", 11), ("clipfrac", 1), ("approx_kl", 1), ("ratio_mean", 1), ("ratio_max", 1)),
             unit_parts=((PPO + "test_policy_loss_gradient_zero_exactly_in_clipped_regions", PL_PARTS),
                         (PPO + "test_policy_loss_masked_tokens_do_not_count", ("loss", "ratio_max")),
                         (PPO + "test_policy_loss_ratio_one_at_start", PL_PARTS[1:]))),
    Exercise("value_loss", "nanorlhf/ppo.py", ("value_loss",),
             "0.5 masked_mean(max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2))  (N §10)", 10,
             tuple(PPO + t for t in (
                 "test_value_loss_is_half_mse_inside_the_clip_range",
                 "test_value_loss_uses_clipped_branch_outside_the_range",
                 "test_value_loss_masked_tokens_do_not_count",
                 "test_value_loss_ragged_mask_is_sum_over_valid_over_count")),
             prerequisites=("masked_mean",), stage="train_ppo.py", parts=(("loss", 9), ("vf_clipfrac", 1)),
             unit_parts=((PPO + "test_value_loss_is_half_mse_inside_the_clip_range", ("loss", "vf_clipfrac")),
                         (PPO + "test_value_loss_uses_clipped_branch_outside_the_range",
                          ("loss", "vf_clipfrac")))),
    Exercise("kl_estimators", "nanorlhf/ppo.py", ("kl_estimators",),
             "Schulman's k1 = -log r, k2 = (log r)^2 / 2, k3 = (r - 1) - log r, r = pi_ref / pi; summed per "
             "sequence, mean over the batch", 5,
             (PPO + "test_kl_estimators_zero_when_equal_and_k3_nonnegative",
              PPO + "test_kl_estimators_unbiased_monte_carlo",
              PPO + "test_kl_estimators_k2_is_half_squared_log_ratio_summed_per_sequence"),
             stage="train_ppo.py", parts=(("k1", 2), ("k2", 1), ("k3", 2)),
             unit_parts=((PPO + "test_kl_estimators_zero_when_equal_and_k3_nonnegative", ("k1", "k3")),
                         (PPO + "test_kl_estimators_unbiased_monte_carlo", ("k1", "k3")),
                         (PPO + "test_kl_estimators_k2_is_half_squared_log_ratio_summed_per_sequence",
                          ("k2",)))),
    Exercise("adaptive_kl", "nanorlhf/ppo.py", ("AdaptiveKLController.update",),
             "Ziegler 2019 §2.2: e = clip(KL / target - 1, -0.2, 0.2); beta <- beta "
             "(1 + e n_steps / horizon)", 5,
             (PPO + "test_adaptive_kl_reference_numbers", PPO + "test_adaptive_kl_direction_and_fixed"),
             stage="train_ppo.py"),
    Exercise("response_mask", "nanorlhf/generate.py", ("response_mask_from",),
             "mask_t = 1 for t <= index of the first EOS (the EOS counts), 0 after; position decides, not "
             "token id", 5,
             (GEN + "test_response_mask_stops_after_first_eos", GEN + "test_finished_rows_get_pad_and_stop"),
             learning=(PLANTED_REWARD,), stage="train_ppo.py"),
    Exercise("response_logprobs", "nanorlhf/generate.py", ("response_logprobs",),
             "logp_t = log softmax(logits_{P-1+t} / T)[tokens_{P+t}]: the hidden state at column t predicts "
             "token t+1", 10,
             (GEN + "test_sampled_logprobs_equal_recomputed_at_temperature",
              "tests/test_fast_paths.py::test_response_logprobs_fast_equals_plain_gradients_of_the_model",
              LOGP + "test_response_logprobs_are_a_shifted_loop_and_zero_after_eos",
              PPO_LOOP + "test_rollout_logprobs_equal_recomputed_ratio_is_one_before_update"),
             learning=(PLANTED_REWARD,), stage="train_ppo.py", parts=(("logp", 8), ("entropy", 2)),
             unit_parts=(("tests/test_fast_paths.py::"
                          "test_response_logprobs_fast_equals_plain_gradients_of_the_model",
                          ("logp", "entropy")),)),
    Exercise("token_logprobs", "nanorlhf/logprobs.py", ("_token_logprobs_torch",),
             "logp_i = log softmax(x_i / T)[y_i], H_i = -sum_j p_ij log p_ij (0 log 0 = 0), in fp32", 10,
             tuple(LOGP + t for t in (
                 "test_matches_reference", "test_mask_zeroes_outputs_and_grads", "test_all_masked",
                 "test_low_precision_inputs", "test_large_logits", "test_minus_inf_logits",
                 "test_uniform_logits",
                 "test_non_contiguous_and_batched", "test_logp_only_and_entropy_only_grads")),
             stage="train_ppo.py", parts=(("logp", 7), ("entropy", 3)),
             unit_parts=tuple((LOGP + t, ("logp", "entropy")) for t in (
                 "test_matches_reference", "test_mask_zeroes_outputs_and_grads", "test_all_masked",
                 "test_low_precision_inputs", "test_large_logits", "test_minus_inf_logits",
                 "test_uniform_logits",
                 "test_logp_only_and_entropy_only_grads"))),
    # the data side of DPO: its unit tests read the pairs back through pair_records and preference_sequences
    # (the pair file, the batch's chosen/rejected rows), which call nothing else of the table
    Exercise("preference_pairs", "nanorlhf/data.py", ("preference_pairs",),
             "a ranking y_r1 > y_r2 > ... > y_rK gives the C(K,2) pairs (y_ra, y_rc), a < c: the better one "
             "first, once each, less ties, identical answers and (off_prompt=False) off-prompt answers", 5,
             tuple(DPO + t for t in (
                 "test_pairs_are_the_ordered_pairs_of_the_ranking_less_ties", "test_pair_file_round_trips",
                 "test_each_response_is_one_row_and_the_mask_covers_exactly_its_response")),
             stage="train_dpo.py",
             hints=((DPO + "test_pairs_are_the_ordered_pairs_of_the_ranking_less_ties",
                     ("walk down the ranking: (ranking[a], ranking[c]) for a < c, each pair once, the better "
                      "first; a tie [i, j] counts either way round; the same text with another 'finished' is "
                      "another answer")),)),
    Exercise("dpo_loss", "nanorlhf/losses.py", ("dpo_loss",),
             "DPO (Rafailov 2023 eq. 7): -log sigmoid(beta [(log pi(y_w) - log ref(y_w)) "
             "- (log pi(y_l) - log ref(y_l))])",
             5, (LOSSES + "test_dpo_loss_is_ln2_when_policy_equals_ref",
                 LOSSES + "test_dpo_loss_matches_paper_formula",
                 LOSSES + "test_dpo_loss_gradient_raises_chosen_lowers_rejected"),
             stage="train_dpo.py", parts=(("loss", 4), ("rewards", 1)),
             unit_parts=tuple((LOSSES + t, ("loss", "rewards")) for t in (
                 "test_dpo_loss_is_ln2_when_policy_equals_ref", "test_dpo_loss_matches_paper_formula",
                 "test_dpo_loss_gradient_raises_chosen_lowers_rejected"))),
    Exercise("ppo_ptx", "train_ppo.py", ("ptx_loss",),
             "InstructGPT eq. (2), last term: the next-token loss on a corpus batch "
             "(ppo_update adds gamma times it)",
             5, (PPO + "test_ppo_ptx_gradient_is_ppo_plus_gamma_lm",),
             prerequisites=("sft_loss",), stage="train_ppo.py --ptx_coef=1.0",
             parts=(("update", 4), ("ptx_loss", 1)),
             unit_parts=((PPO + "test_ppo_ptx_gradient_is_ppo_plus_gamma_lm", ("update", "ptx_loss")),)),
)

BY_NAME = {e.name: e for e in EXERCISES}
PIPELINE_POINTS = 10  # the micro pipeline with every exercise of the handout at once
