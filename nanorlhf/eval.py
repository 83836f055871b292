"""Evaluation with the gold labeler (the simulated human): ratings, accuracy, win-rates with 95% CIs."""

from __future__ import annotations

import collections
import math

import torch

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


def win_rate(labeler, prompts: list[str], a: list[tuple[str, bool]], b: list[tuple[str, bool]]) -> dict:
    """How often the gold labeler prefers response a to b for the same prompt (ties count half), with
    a 95% Wilson interval: InstructGPT Figure 1's y-axis, with b the SFT model's responses."""
    wins = [labeler.prefer(p, ra, rb, finished=(fa, fb)) for p, (ra, fa), (rb, fb) in zip(prompts, a, b)]
    lo, hi = wilson_interval(sum(wins), len(wins))
    return {"win_rate": sum(wins) / len(wins), "ci_low": lo, "ci_high": hi, "n": len(wins)}


@torch.no_grad()
def score_texts(rm, tok, prompts: list[str], outs: list[tuple[str, bool]], batch_size: int = 64) -> list[float]:
    """Reward-model scores of (prompt, response) texts, read at the EOS (no EOS for unfinished ones)."""
    from nanorlhf.data import text_batches

    device = rm.wte.weight.device
    scores = []
    for _, tokens, mask in text_batches(tok, prompts, outs, rm.config.block_size, batch_size):
        scores += rm.eval()(tokens.to(device), mask.to(device)).float().tolist()
    return scores


@torch.no_grad()
def kl_to_reference(model, ref, tok, prompts: list[str], outs: list[tuple[str, bool]], batch_size: int = 64) -> float:
    """Monte-Carlo KL(π || π_SFT) per response: mean over the model's own samples of Σ_t log π − log π_SFT."""
    from nanorlhf.data import text_batches
    from nanorlhf.generate import response_logprobs

    device = model.wte.weight.device
    total = 0.0
    for i, tokens, mask in text_batches(tok, prompts, outs, model.config.block_size, batch_size):
        tokens, mask = tokens.to(device), mask.to(device)
        plen = torch.tensor([len(tok.prompt_ids(p)) for p in prompts[i : i + batch_size]], device=device)
        # the prompt lengths differ per row (right padding): score every position, keep response ones
        pos = torch.arange(tokens.shape[1], device=device)
        resp = (pos.unsqueeze(0) >= plen.unsqueeze(1)) & mask
        lp = response_logprobs(model, tokens, mask, 1)
        lr = response_logprobs(ref, tokens, mask, 1)
        total += ((lp - lr) * resp[:, 1:]).sum().item()
    return total / max(1, len(prompts))


@torch.no_grad()
def lm_loss(model, tokens: torch.Tensor, block_size: int, n_batches: int = 10, batch_size: int = 16) -> float:
    """Next-token loss on fixed windows of a token stream: the alignment-tax measure (corpus val loss)."""
    from nanorlhf.data import lm_batches
    from nanorlhf.losses import sft_loss

    device = model.wte.weight.device
    batches = lm_batches(tokens, batch_size, block_size, torch.Generator().manual_seed(0))
    model.eval()
    losses = []
    for _ in range(n_batches):
        x, y, m = (t.to(device) for t in next(batches))
        losses.append(sft_loss(model(x), y, m).item())
    return sum(losses) / len(losses)


def main(argv=None) -> dict:
    """Evaluate every model of the pipeline against SFT on the test prompts; write out/eval.json."""
    import json
    import time
    from dataclasses import dataclass
    from pathlib import Path

    from nanorlhf.checkpoint import load_model, stage_path
    from nanorlhf.config import parse_config
    from nanorlhf.data import corpus_tokens, load_world, read_prompts
    from nanorlhf.tokenizer import load_tokenizer
    from nanorlhf.training import autocast, resolve_dtype, setup_device

    @dataclass
    class EvalConfig:
        preset: str = "tiny"
        data_dir: str = "data"
        out_dir: str = "out"
        n_prompts: int = 400  # test prompts
        max_new_tokens: int = 48
        temperature: float = 0.7
        few_shot: int = 2  # demonstrations in the base model's few-shot prompt
        bon_n: int = 16  # best-of-n: largest n (SFT samples per prompt, picked by the RM)
        bon_prompts: int = 100
        device: str = ""
        dtype: str = "auto"  # auto | fp32 | bf16 (nanorlhf/precision.py): the pipeline passes the stages' dtype
        seed: int = 1234

    presets = {"micro": dict(n_prompts=16, max_new_tokens=12, bon_n=4, bon_prompts=8), "tiny": {},
               "small": dict(n_prompts=1000, bon_n=64, bon_prompts=200)}
    cfg = parse_config(EvalConfig, argv, presets)
    device = setup_device(cfg.device)
    cfg.dtype = resolve_dtype(cfg.dtype, device)  # sampling and scoring in the regime the models trained in
    t0 = time.time()
    out = Path(cfg.out_dir)
    world = load_world(cfg.data_dir)
    labeler = world.labeler
    prompts = [p for p in read_prompts(cfg.data_dir, "test")][: cfg.n_prompts]
    texts = [p["prompt"] for p in prompts]
    sft, ck = load_model(stage_path(out, "sft"), "sft", device=device)
    tok = load_tokenizer(ck["tokenizer"])
    rm, _ = load_model(stage_path(out, "rm"), "rm", device=device)
    corpus = corpus_tokens(cfg.data_dir, tok, tail_frac=0.05)  # the held-out end, as in train_sft.py

    def gen(seed):
        return torch.Generator(device).manual_seed(seed)

    few_shot = [t for p, r in world.few_shot_examples(cfg.few_shot) for t in tok.pair_ids(p, r)[0]]
    models = {"base": ("base", ()), "base few-shot": ("base", few_shot), "SFT": ("sft", ()),
              "PPO": ("ppo", ()), "PPO-ptx": ("ppo_ptx", ()), "PPO β=0": ("ppo_beta0", ()),
              "PPO, gold reward": ("ppo_gold", ())}
    with autocast(device, cfg.dtype):
        sft_ref = sample_responses(sft, tok, texts, cfg.max_new_tokens, cfg.temperature, generator=gen(cfg.seed))
        results, samples = {}, {}
        for name, (stage, prefix) in models.items():
            path = out / stage / "ckpt.pt"
            if not path.exists():
                print(f"eval: {name}: no checkpoint at {path}, skipped")
                continue
            model, _ = load_model(path, stage, device=device)
            ev = gold_eval(model, tok, labeler, prompts, cfg.max_new_tokens, cfg.temperature, gen(cfg.seed + 1),
                           prefix_ids=prefix)
            outs = [(s["response"], s["finished"]) for s in ev["samples"]]
            wr = win_rate(labeler, texts, outs, sft_ref)
            rm_scores = score_texts(rm, tok, texts, outs)
            results[name] = {**wr, "rating": ev["rating"], "correct": ev["correct"], "eos_rate": ev["eos_rate"],
                             "per_category": ev["per_category"], "rm_score": sum(rm_scores) / len(rm_scores),
                             "kl_to_sft": kl_to_reference(model, sft, tok, texts, outs) if not prefix else None,
                             "corpus_loss": lm_loss(model, corpus, model.config.block_size)}
            samples[name] = ev["samples"][:8]
            r = results[name]
            print(f"eval: {name:>13}: win-rate vs SFT {r['win_rate']:.1%} [{r['ci_low']:.1%}, {r['ci_high']:.1%}] | "
                  f"rating {r['rating']:.2f} | correct {r['correct']:.0%} | RM {r['rm_score']:+.2f} | "
                  f"KL {r['kl_to_sft'] if r['kl_to_sft'] is not None else float('nan'):.2f} | "
                  f"corpus loss {r['corpus_loss']:.3f}", flush=True)

        # best-of-n against the RM (Gao et al. 2022): KL_bon = log n − (n − 1)/n
        bon_texts = texts[: cfg.bon_prompts]
        many = sample_responses(sft, tok, [p for p in bon_texts for _ in range(cfg.bon_n)], cfg.max_new_tokens,
                                cfg.temperature, generator=gen(cfg.seed + 2))
        scores = score_texts(rm, tok, [p for p in bon_texts for _ in range(cfg.bon_n)], many)
        bon, n = [], 1
        while n <= cfg.bon_n:
            picks = [max(range(j * cfg.bon_n, j * cfg.bon_n + n), key=lambda i: scores[i])
                     for j in range(len(bon_texts))]
            gold = [labeler.judge(bon_texts[j], many[i][0], many[i][1]).rating for j, i in enumerate(picks)]
            bon.append({"n": n, "kl": math.log(n) - (n - 1) / n, "gold_rating": sum(gold) / len(gold),
                        "rm_score": sum(scores[i] for i in picks) / len(picks)})
            n *= 2
    report = {"config": cfg.__dict__, "models": results, "samples": samples, "best_of_n": bon,
              "eval_time_s": time.time() - t0}
    tmp = out / "eval.json.tmp"
    tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False))
    tmp.replace(out / "eval.json")
    print(f"eval: done in {time.time() - t0:.0f}s -> {out / 'eval.json'}")
    return report


if __name__ == "__main__":
    from nanorlhf.config import run_main

    run_main(main)
