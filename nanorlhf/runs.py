"""The pipeline's runs in one table: which folder under out/ each model lives in and how the evaluation and
the report name it. Iterated RLHF adds a reward model and a PPO run per round: the last round's are `rm` and
`ppo` (what every later stage reads), round r before it `rm_r<r>` and `ppo_r<r>`."""

from __future__ import annotations

ROUNDS = {"micro": 2, "tiny": 2, "small": 2}  # each preset's number of iterated-RLHF rounds (--rounds=0)
OTHER_POLICIES = {"PPO-ptx": "ppo_ptx", "PPO β=0": "ppo_beta0", "PPO, gold reward": "ppo_gold", "DPO": "dpo"}


def round_runs(r: int, rounds: int) -> tuple[str, str]:
    """(reward model, PPO run) folders of round r of `rounds`."""
    return ("rm", "ppo") if r == rounds else (f"rm_r{r}", f"ppo_r{r}")


def ppo_label(r: int, rounds: int) -> str:
    """The evaluation's name of round r's PPO policy: "PPO" for the last round (the headline)."""
    return "PPO" if r == rounds else f"PPO, round {r}"


def policy_rows(rounds: int) -> dict[str, str]:
    """{evaluation row: folder} of every policy the pipeline trains after SFT, in the report's order."""
    return {**{ppo_label(r, rounds): round_runs(r, rounds)[1] for r in range(1, rounds + 1)}, **OTHER_POLICIES}
