"""Figures and the markdown report: Figure-1-style win-rates, PPO curves, over-optimisation."""

from __future__ import annotations

import math

from nanorlhf.plots import line_plots


def ppo_curves(path, run_name: str, history: list[dict], evals: list[dict]) -> None:
    """RM reward, gold rating, KL and entropy over a PPO run."""
    its = [h["iteration"] for h in history]
    ev_its = [e["iteration"] for e in evals]
    line_plots(path, f"PPO run '{run_name}'", "PPO iteration", [
        ("reward (RM score, normalised)", [(its, [h["rm_score"] for h in history], "RM reward (rollouts)")]),
        ("gold labeler rating (1-7)", [(ev_its, [e["gold_rating"] for e in evals], "gold rating (held-out prompts)")]),
        ("KL to SFT (nats / response)", [(its, [h["kl"] for h in history], "k1"), (its, [h["kl_k3"] for h in history], "k3")]),
        ("entropy (nats / token)", [(its, [h["entropy"] for h in history], "policy entropy")]),
    ])


def sqrt_kl(kl: float) -> float:
    return math.sqrt(max(0.0, kl))
