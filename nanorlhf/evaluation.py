"""How well a reward model orders responses: held-out pairwise accuracy against the labeler's noisy ranking
and against the noise-free gold order, beside a second labeler's agreement on the same pairs (the ceiling).
train_rm.py measures it on its held-out groups; eval.py on fresh samples of SFT and of each round's policy,
where iterated RLHF shows the reward model falling behind the policy it trains, and catching up."""

from __future__ import annotations

import random

import torch

from nanorlhf.data import ranked_sequences, to_device
from nanorlhf.losses import ranking_accuracy, ranking_loss
from nanorlhf.precision import autocast
from nanorlhf.labeler import tied_pairs


@torch.no_grad()
def ranking_eval(rm, groups: list[dict], tok, device, batch_size: int, dtype: str) -> tuple[float, float]:
    """(mean ranking loss, pairwise accuracy over the pairs that are not ties) of `rm` on ranked groups."""
    was_training = rm.training
    rm.eval()
    loss_sum, correct, pairs = 0.0, 0.0, 0.0
    for i in range(0, len(groups), batch_size):
        batch = ranked_sequences(groups[i : i + batch_size], tok, rm.config.block_size)
        tokens, mask, valid, tied = (to_device(t, device) for t in batch)
        with autocast(device, dtype):
            scores = rm(tokens, mask).float().view(valid.shape)
        loss_sum += ranking_loss(scores, valid, tied).item() * valid.shape[0]
        c, p = ranking_accuracy(scores, valid, tied)
        correct, pairs = correct + c.item(), pairs + p.item()
    rm.train(was_training)
    return loss_sum / max(1, len(groups)), correct / max(1.0, pairs)


def labeler_agreement(labeler, groups: list[dict], rng: random.Random) -> float:
    """How often a fresh, independent ranking by the labeler agrees with the recorded one, pair by pair
    over the pairs the accuracy counts (not ties): how well a second labeler would score on these labels."""
    agree = total = 0
    for g in groups:
        if g.get("human"):
            continue  # a person's ranking: the simulated labeler is no second opinion on it
        a, n = labeler.agreement_counts(g["prompt"], g["responses"], g["ranking"], rng, g.get("finished"),
                                        g.get("ties", []))
        agree, total = agree + a, total + n
    return agree / max(1, total)


def gold_order(labeler, g: dict) -> dict:
    """The same group ranked by the noise-free gold utility, with gold ties (within TIE_EPS, as in the
    win-rates) left out: does the reward model order responses the way the gold labeler does?"""
    fin = g.get("finished") or [True] * len(g["responses"])
    util = [labeler.judge(g["prompt"], r, finished=f).utility for r, f in zip(g["responses"], fin)]
    return {**g, "ranking": sorted(range(len(util)), key=lambda i: -util[i]), "ties": tied_pairs(util)}


def ranked_groups(labeler, prompts: list[str], outs: list[tuple[str, bool]], k: int, rng: random.Random) -> list[dict]:
    """Groups of k sampled (response, finished) per prompt (outs: k per prompt, in order), ranked by the
    labeler with its noise, ties marked: what a labeling round would collect, for measuring only."""
    groups = []
    for j, p in enumerate(prompts):
        texts, fin = [r for r, _ in outs[j * k : (j + 1) * k]], [f for _, f in outs[j * k : (j + 1) * k]]
        groups.append({"prompt": p, "responses": texts, "finished": fin,
                       "ranking": labeler.rank(p, texts, rng, finished=fin), "ties": labeler.ties(p, texts, fin)})
    return groups


def rm_accuracy(rm, labeler, groups: list[dict], tok, device, batch_size: int, dtype: str, rng) -> dict:
    """The reward model's pairwise accuracy on `groups` against the labeler's ranking and against the gold
    order, and a second labeler's agreement with the first on the same pairs."""
    return {"acc": ranking_eval(rm, groups, tok, device, batch_size, dtype)[1],
            "gold_order_acc": ranking_eval(rm, [gold_order(labeler, g) for g in groups], tok, device, batch_size,
                                           dtype)[1],
            "labeler_agreement": labeler_agreement(labeler, groups, rng), "n_groups": len(groups)}
