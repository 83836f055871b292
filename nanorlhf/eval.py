"""Evaluation with the gold labeler (the simulated human): ratings, accuracy, win-rates with 95% CIs."""

from __future__ import annotations

import collections
import math

from nanorlhf.generate import sample_responses


def gold_eval(model, tokenizer, labeler, prompts: list[dict], max_new_tokens: int, temperature: float = 0.7,
              generator=None, batch_size: int = 64, prefix_ids=()) -> dict:
    """Sample one response per held-out prompt and have the gold labeler judge it.

    Returns mean 1–7 rating, the fraction judged correct overall and per category, the EOS rate, and the
    samples themselves (for reports and win-rates).
    """
    texts = [p["prompt"] for p in prompts]
    outs = sample_responses(model, tokenizer, texts, max_new_tokens, temperature, batch_size=batch_size,
                            generator=generator, prefix_ids=prefix_ids)
    judgements = [labeler.judge(p, r, finished=f) for p, (r, f) in zip(texts, outs)]
    by_cat = collections.defaultdict(list)
    for p, j in zip(prompts, judgements):
        by_cat[p["category"]].append(j)
    n = len(judgements)
    return {
        "rating": sum(j.rating for j in judgements) / n,
        "correct": sum(bool(j.correct) for j in judgements) / n,
        "eos_rate": sum(f for _, f in outs) / n,
        "per_category": {c: {"rating": sum(j.rating for j in js) / len(js),
                             "correct": sum(bool(j.correct) for j in js) / len(js), "n": len(js)}
                         for c, js in sorted(by_cat.items())},
        "samples": [{"prompt": p, "response": r, "finished": f, "rating": j.rating}
                    for p, (r, f), j in zip(texts, outs, judgements)],
    }


def format_eval(name: str, ev: dict) -> str:
    cats = " ".join(f"{c}={v['rating']:.1f}" for c, v in ev["per_category"].items())
    return (f"{name}: gold rating {ev['rating']:.2f}/7 | correct {ev['correct']:.0%} | EOS {ev['eos_rate']:.0%} "
            f"| per category: {cats}")


def wilson_interval(wins: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (ties counted as half a win)."""
    if n == 0:
        return (0.0, 1.0)
    p = wins / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))
