"""Differential checks: a student's function against the reference, on the same cases every time.

Run inside a graded copy (a pristine tree with the student's bodies put in), so `import nanorlhf.ppo` gives
the student's code; the reference, the same file of the instructor's repository, is loaded under another
module name. Each exercise's check, a function named after it, runs its fixed edge cases every time
(everything masked, one valid value, NaN and ±inf behind the mask, extreme logits and margins, every optional
argument of the contract off its default: the check's docstring lists them), then RANDOM_CASES random cases
for each seed of the seed list (SEEDS unless --seeds): the same tree and the same seeds give the same result.

Parts (Exercise.parts: the main quantity and each logged statistic) are compared apart. A part fails on its
first differing case, with a message naming the case, what came back and what was expected (first line), then
the call, the inputs, the tolerance (Tol) and, for a numerically off form, the form the contract wants.
"""

from __future__ import annotations

from pathlib import Path

import torch

# The machinery is checks_core.py, each exercise's check is in checks_losses.py, checks_ppo.py or
# checks_logprobs.py; they import checks_core, never this module, so no import runs in a circle (the
# registry below needs them). checks.SEEDS, checks.load_reference, ... keep working: re-exported here.
from nanorlhf.assignments.checks_core import (  # noqa: F401  re-exported
    BF16_GRAD, Checker, compare, edge_masks, EDGE_SEED, F64, fill, FILLS, fp32, _garbage, _kind,
    load_reference, load_student, MASK_DTYPES, MASK_ROWS, MODEL_GRAD, module_from_source, _num, ragged_mask,
    _randn, _random_case, RANDOM_CASES, run_both, SEEDS, _show, Tol, U32,
)
from nanorlhf.assignments.checks_logprobs import (  # noqa: F401  re-exported
    _pairs_difference, dpo_loss, preference_pairs, response_logprobs, token_logprobs,
)
from nanorlhf.assignments.checks_losses import (
    masked_mean, masked_whiten, ranking_loss, response_mask, sft_loss,
)
from nanorlhf.assignments.checks_ppo import (  # noqa: F401  re-exported
    POLICY_STATS, adaptive_kl, gae, kl_estimators, kl_penalty_rewards, policy_loss, ppo_ptx, value_loss,
)


CHECKS = {f.__name__: f for f in (masked_mean, sft_loss, ranking_loss, kl_penalty_rewards, gae, masked_whiten,
                                   policy_loss, value_loss, kl_estimators, adaptive_kl, response_mask,
                                   response_logprobs, token_logprobs, preference_pairs, dpo_loss, ppo_ptx)}


def check(name: str, student, reference, seeds=SEEDS) -> dict:
    """Run one exercise's check: {"passed", "parts": {part: {"passed", "message", "detail"}}, "cases",
    "seeds", "message" (the first failing part's first line), "detail" (every failing part's whole
    story)}."""
    from nanorlhf.assignments.exercises import BY_NAME

    ck = Checker(BY_NAME[name].part_names, seeds)
    with torch.random.fork_rng():  # the model checks seed torch's global RNG; the caller's is left alone
        CHECKS[name](ck, student, reference)
    return ck.result()


def run(names: list[str], ref_root: Path, seeds=SEEDS) -> dict[str, dict]:
    """{exercise: check(...)} for each named exercise, the graded copy's module against the reference's."""
    from nanorlhf.assignments.exercises import BY_NAME

    results = {}
    for name in names:
        ex = BY_NAME[name]
        try:
            results[name] = check(name, load_student(ex.file), load_reference(ref_root, ex.file), seeds)
        except Exception as e:  # the student's module does not even import
            msg = f"the check could not run: {type(e).__name__}: {e}"
            results[name] = {"passed": False, "parts": {p: {"passed": False, "message": msg, "detail": msg}
                                                        for p in ex.part_names},
                             "cases": 0, "seeds": list(seeds), "message": msg, "detail": msg}
    return results
