"""The measures every stage shares, with the gold labeler (the simulated human) as the judge: a model's
samples judged and compared with SFT's (ratings, counts, win-rates with 95% Wilson intervals), a model's
reward-model score, KL to SFT and corpus loss, and how well a reward model orders ranked responses. The
trainers import it for their evaluations; the eval stage (eval.py) runs it on every model of the pipeline."""

from __future__ import annotations

import collections
import math
import random

import torch

from nanorlhf.data import lm_batches, ranked_sequences, ranking_ties, text_batches, to_device
from nanorlhf.generate import response_logprobs, sample_responses
from nanorlhf.labeler import tied_pairs
from nanorlhf.losses import ranking_accuracy, ranking_loss, sft_loss
from nanorlhf.precision import autocast
from nanorlhf.prompts import parse_task
from nanorlhf.training import by_length, chunk_rows


# ----------------------------------------------------------- a model's samples, judged by the gold labeler
def gold_eval(model, tokenizer, labeler, prompts: list[dict], max_new_tokens: int, temperature: float = 0.7,
              seed: int = 0, batch_size: int = 0, prefix_ids=()) -> dict:
    """Sample one response per held-out prompt and have the gold labeler judge it.

    Returns mean 1–7 rating, the fraction judged correct overall and per category, the EOS rate, and the
    samples themselves (for reports and win-rates).
    """
    texts = [p["prompt"] for p in prompts]
    outs = sample_responses(model, tokenizer, texts, max_new_tokens, temperature, batch_size=batch_size,
                            seed=seed, prefix_ids=prefix_ids)
    return judged(labeler, prompts, outs)


def judged(labeler, prompts: list[dict], outs: list[tuple[str, bool]]) -> dict:
    """gold_eval's numbers for given (response, finished) per prompt: however they were made."""
    texts = [p["prompt"] for p in prompts]
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
        "breakdown": breakdown(texts, judgements),
        "samples": [{"prompt": p, "response": r, "finished": f, "rating": j.rating,
                     "writes_instructions": j.writes_instructions}
                    for p, (r, f), j in zip(texts, outs, judgements)],
    }


# What each model fixed, in counts: (key, what is counted, which prompts count). The prompt filters read
# the labeler's parse of the prompt (prompts.parse_task), so "constraints" counts only prompts that set one.
BREAKDOWN = (
    ("correct", "all required items right", lambda t, j: j.correct is not None, lambda j: bool(j.correct)),
    ("constraint_met", "the prompt's constraint met", lambda t, j: t is not None and t.constraint is not None,
     lambda j: bool(j.constraint_met)),
    ("refused_harm", "requests for harm politely refused", lambda t, j: t is not None and t.refuse is True,
     lambda j: j.refused and not j.moralising),
    ("harmful_advice", "requests for harm answered", lambda t, j: t is not None and t.refuse is True,
     lambda j: j.harmful_advice),
    ("over_refusal", "allowed requests refused", lambda t, j: t is not None and t.refuse is False,
     lambda j: j.over_refusal),
    ("premise_corrected", "false premises corrected", lambda t, j: t is not None and bool(t.false_premise),
     lambda j: j.premise_accepted is False),
    ("writes_instructions", "writes more instructions", lambda t, j: True, lambda j: j.writes_instructions),
    ("rude", "rude", lambda t, j: True, lambda j: j.harmful_or_rude),
    ("too_long", "too long", lambda t, j: True, lambda j: j.too_long),
    ("repetitive", "repetitive", lambda t, j: True, lambda j: j.repetitive),
    ("too_short", "curt", lambda t, j: True, lambda j: j.too_short),
    ("unfinished", "not ended properly", lambda t, j: True, lambda j: not j.ends_properly),
)


def breakdown(prompts: list[str], judgements: list) -> dict:
    """{key: [count, out of]} for each row of BREAKDOWN: what a model gets right and wrong, in counts."""
    out = {}
    for key, _, applies, hit in BREAKDOWN:
        rows = [j for p, j in zip(prompts, judgements) if applies(parse_task(p), j)]
        out[key] = [sum(bool(hit(j)) for j in rows), len(rows)]
    return out


def headroom_probe(labeler, prompts: list[str], many: list[tuple[str, bool]], ref: list[tuple[str, bool]],
                   n_max: int) -> dict:
    """The ceiling before any RL: how often two SFT samples tie, and the win-rate against one SFT sample
    (`ref`) of the gold labeler's own pick among n of SFT's samples (`many`: n_max per prompt, in order),
    n = 1, 2, 4, ... n_max. If best-of-16 barely beats SFT, no reward model or PPO can: fix the world."""
    util = [labeler.judge(prompts[i // n_max], r, f).utility for i, (r, f) in enumerate(many)]
    rows, n = [], 1
    while n <= n_max:
        picks = [many[max(range(j * n_max, j * n_max + n), key=util.__getitem__)]
                 for j in range(len(prompts))]
        wr = win_rate(labeler, prompts, picks, ref)
        rows.append({**wr, "n": n})  # n: candidates per prompt (win_rate's own "n" counts prompts)
        n *= 2
    ties = [labeler.prefer(p, a, b, finished=(fa, fb)) == 0.5
            for p, (a, fa), (b, fb) in zip(prompts, many[::n_max], ref)]
    return {"sft_vs_sft_ties": sum(ties) / len(ties), "gold_best_of_n": rows, "n_prompts": len(prompts)}


def learned(breakdowns: dict, model: str, base: str = "SFT") -> list[str]:
    """Sentences saying what `model` does differently from `base`, biggest change first."""
    if model not in breakdowns or base not in breakdowns:
        return []
    out = []
    for key, what, _, _ in BREAKDOWN:
        (a, n), (b, _) = breakdowns[model][key], breakdowns[base][key]
        if n:
            out.append((abs(a - b) / n, f"{what}: {a}/{n} ({base} {b}/{n})"))
    return [text for change, text in sorted(out, key=lambda x: -x[0]) if change >= 0.02]


def format_eval(name: str, ev: dict) -> str:
    cats = " ".join(f"{c}={v['rating']:.1f}" for c, v in ev["per_category"].items())
    return (f"{name}: gold rating {ev['rating']:.2f}/7 | correct {ev['correct']:.0%} "
            f"| EOS {ev['eos_rate']:.0%} | per category: {cats}")


def wilson_interval(wins: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (ties counted as half a win)."""
    if n == 0:
        return (0.0, 1.0)
    p = wins / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def preferences(labeler, prompts: list[str], a: list[tuple[str, bool]],
                b: list[tuple[str, bool]]) -> list[float]:
    """For each prompt: 1 if the gold labeler prefers response a to b, 0.5 for a tie, 0 if it prefers b."""
    return [labeler.prefer(p, ra, rb, finished=(fa, fb)) for p, (ra, fa), (rb, fb) in zip(prompts, a, b)]


def win_rate(labeler, prompts: list[str], a: list[tuple[str, bool]], b: list[tuple[str, bool]]) -> dict:
    """How often the gold labeler prefers response a to b for the same prompt (ties count half), with
    a 95% Wilson interval: InstructGPT Figure 1's y-axis, with b the SFT model's responses."""
    return summarise(preferences(labeler, prompts, a, b))


def summarise(wins: list[float]) -> dict:
    lo, hi = wilson_interval(sum(wins), len(wins))
    return {"win_rate": sum(wins) / len(wins), "ci_low": lo, "ci_high": hi, "n": len(wins)}


# The kinds of prompt a policy can win on without new skills (the world's axes, see world.py), in the order
# a prompt is assigned to one: the report's "where the win comes from" table.
KINDS = (("request for harm", lambda t: t is not None and t.refuse is True),
         ("allowed, sounds edgy", lambda t: t is not None and t.refuse is False),
         ("false premise", lambda t: t is not None and bool(t.false_premise)),
         ("with a constraint", lambda t: t is not None and t.constraint is not None),
         ("plain", lambda t: True))


def prompt_kind(prompt: str) -> str:
    task = parse_task(prompt)
    return next(name for name, test in KINDS if test(task))


def by_kind(prompts: list[str], wins: list[float]) -> dict:
    """{kind: [won, tied, lost]} of one model's preferences against SFT, by the kind of prompt."""
    out = {name: [0, 0, 0] for name, _ in KINDS}
    for p, w in zip(prompts, wins):
        out[prompt_kind(p)][0 if w == 1 else 1 if w == 0.5 else 2] += 1
    return out


# ---------------------------------------------------------------- scores, KL and loss of a model's samples
@torch.no_grad()
def score_texts(rm, tok, prompts: list[str], outs: list[tuple[str, bool]],
                batch_size: int = 256) -> list[float]:
    """Reward-model scores of (prompt, response) texts, read at the EOS (no EOS for unfinished ones). Each
    batch runs in chunks of rows of similar length (training.by_length; the larger the batch, the less
    padding a chunk keeps)."""
    device = rm.wte.weight.device
    scores = []
    for _, tokens, mask in text_batches(tok, prompts, outs, rm.config.block_size, batch_size):
        tokens, mask = to_device(tokens, device), to_device(mask, device)
        scores += by_length(rm.eval(), mask, chunk_rows(device), tokens, mask).float().tolist()
    return scores


@torch.no_grad()
def kl_to_reference(model, ref, tok, prompts: list[str], outs: list[tuple[str, bool]],
                    batch_size: int = 256) -> float:
    """Monte-Carlo KL(π || π_SFT) per response: the mean over the model's own samples of
    Σ_t log π − log π_SFT (each batch in chunks of rows of similar length, as in score_texts)."""
    device = model.wte.weight.device

    def row_kl(tokens, mask, resp):
        lp = response_logprobs(model, tokens, mask, 1)
        lr = response_logprobs(ref, tokens, mask, 1)
        return ((lp - lr) * resp[:, 1:]).sum(1)

    total = 0.0
    for i, tokens, mask in text_batches(tok, prompts, outs, model.config.block_size, batch_size):
        tokens, mask = to_device(tokens, device), to_device(mask, device)
        plen = torch.tensor([len(tok.prompt_ids(p)) for p in prompts[i : i + batch_size]], device=device)
        # the prompt lengths differ per row (right padding): score every position, keep response ones
        pos = torch.arange(tokens.shape[1], device=device)
        resp = (pos.unsqueeze(0) >= plen.unsqueeze(1)) & mask
        total += by_length(row_kl, mask, chunk_rows(device), tokens, mask, resp).sum().item()
    return total / max(1, len(prompts))


@torch.no_grad()
def lm_loss(model, tokens: torch.Tensor, block_size: int, n_batches: int = 10, batch_size: int = 16) -> float:
    """Next-token loss on fixed windows of a token stream: the alignment-tax measure (corpus val loss)."""
    device = model.wte.weight.device
    batches = lm_batches(tokens, batch_size, block_size, torch.Generator().manual_seed(0))
    model.eval()
    losses = []
    for _ in range(n_batches):
        x, y, m = (to_device(t, device) for t in next(batches))
        losses.append(sft_loss(model(x), y, m).item())
    return sum(losses) / len(losses)


# --------------------------------------------------------- how well a reward model orders ranked responses
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
            scores = by_length(rm, mask, chunk_rows(device), tokens, mask).float().view(valid.shape)
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


def ranked_groups(labeler, prompts: list[str], outs: list[tuple[str, bool]], k: int,
                  rng: random.Random) -> list[dict]:
    """Groups of k sampled (response, finished) per prompt (outs: k per prompt, in order), ranked by the
    labeler with its noise, ties marked: what a labeling round would collect, for measuring only."""
    groups = []
    for j, p in enumerate(prompts):
        texts, fin = [r for r, _ in outs[j * k : (j + 1) * k]], [f for _, f in outs[j * k : (j + 1) * k]]
        groups.append({"prompt": p, "responses": texts, "finished": fin,
                       "ranking": labeler.rank(p, texts, rng, finished=fin),
                       "ties": labeler.ties(p, texts, fin)})
    return groups


@torch.no_grad()
def response_scores(rm, groups: list[dict], tok, device, batch_size: int, dtype: str) -> list[list[float]]:
    """The reward model's score of every response of every group, in the group's own response order. A
    response's score does not depend on how it was ranked: one forward each, and the accuracy against any
    ranking of the same responses (the labeler's, the gold order, a subset's) is read off them
    (scored_accuracy) instead of scoring the same texts again for each."""
    was_training = rm.training
    rm.eval()
    as_is = [{**g, "ranking": list(range(len(g["responses"]))), "ties": []} for g in groups]
    scores = []
    for i in range(0, len(as_is), batch_size):
        chunk = as_is[i : i + batch_size]
        tokens, mask, valid, _ = (to_device(t, device)
                                  for t in ranked_sequences(chunk, tok, rm.config.block_size))
        with autocast(device, dtype):
            s = by_length(rm, mask, chunk_rows(device), tokens, mask).float().view(valid.shape)
        scores += [row[: len(g["responses"])].tolist() for row, g in zip(s.cpu(), chunk)]
    rm.train(was_training)
    return scores


def scored_accuracy(scores: list[list[float]], groups: list[dict]) -> float:
    """Pairwise accuracy of given scores (response_scores) against each group's ranking, over the pairs that
    are not ties, equal scores half right: ranking_eval's accuracy without a forward."""
    correct = pairs = 0.0
    for s, g in zip(scores, groups):
        order = torch.tensor([[s[i] for i in g["ranking"]]])  # (1, K), best first
        c, p = ranking_accuracy(order, None, ranking_ties(g, order.shape[1]).unsqueeze(0))
        correct, pairs = correct + c.item(), pairs + p.item()
    return correct / max(1.0, pairs)


def rm_accuracy(rm, labeler, groups: list[dict], tok, device, batch_size: int, dtype: str, rng,
                scores: list[list[float]] | None = None) -> dict:
    """The reward model's pairwise accuracy on `groups` against the labeler's ranking and against the gold
    order, and a second labeler's agreement with the first on the same pairs. `scores`: the groups'
    response_scores, if already computed."""
    scores = response_scores(rm, groups, tok, device, batch_size, dtype) if scores is None else scores
    return {"acc": scored_accuracy(scores, groups),
            "gold_order_acc": scored_accuracy(scores, [gold_order(labeler, g) for g in groups]),
            "labeler_agreement": labeler_agreement(labeler, groups, rng), "n_groups": len(groups)}
