"""The pipeline's CPU fast paths, each timed against the plain way on the same machine, alternating.

    python bench/fast_paths.py       # after `python -m nanorlhf`: every pair below, fp32, medians of 5
    python bench/fast_paths.py --only=sft,rm --repeats=7 --out_dir=out --data_dir=data

  compact   generate.COMPACT: finished rows leave the decoding batch (0.75) vs every row decoded to the end
            of the longest (0); 512 training prompts sampled from the SFT model, 48 new tokens
  order     generate.sample_responses, which batches prompts of similar length, vs batches in the list's
            order (what it did before); 1,500 training prompts, the same row seeds
  sft       train_sft.batch_loss in chunks of 16 rows of similar length (training.chunk_rows) vs the batch
            padded to its longest row; SFT steps (forward, backward, AdamW) of 32 demonstrations from the
            pretrained model
  rm        train_rm.rm_step the same way; reward-model steps of 16 ranked groups from the SFT model
  dpo       train_dpo.dpo_step the same way; DPO steps of 16 ranked groups (every pair) from the SFT model
  eval      evaluation.kl_to_reference and score_texts, as eval runs them on one model's samples (PPO's,
            400 test prompts): batches of 256 in chunks of 16 rows vs batches of 64 in one piece (before)
  ppo       train_ppo.rollout's scoring (RM, reference, critic, then rewards and GAE: steps 2-4; the
            sampling done beforehand) in chunks of 16 rows of similar length vs one piece; rollouts of 64
            training prompts from the PPO policy, with the SFT reference, the RM and a critic from it

Each line gives the median and every time, and what the two ways produced: the same texts, or the largest
difference of the losses (fp32 rounding: a chunk's matmuls have other shapes). Times are of this machine,
now: run it with nothing else on the cores, and compare lines of one run only.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import train_dpo
import train_rm
import train_sft
from nanorlhf import evaluation
from nanorlhf import generate as gen_module
from nanorlhf.checkpoint import load_model, load_policy
from nanorlhf.data import read_jsonl, read_prompts, sft_batch
from nanorlhf.generate import generate, row_seed, sample_responses
from nanorlhf.tokenizer import load_tokenizer
from nanorlhf.training import make_optimizer

BENCHES = ("compact", "order", "sft", "rm", "dpo", "eval", "ppo")


def alternate(ways: dict, repeats: int) -> dict[str, list[float]]:
    """{name: [seconds, ...]}: each way run once per round, in turn, so that the machine's drift hits all."""
    times = {k: [] for k in ways}
    for _ in range(repeats):
        for k, fn in ways.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def report(title: str, times: dict[str, list[float]], same: str, unit: float = 1.0, what: str = "s") -> None:
    med = {k: statistics.median(v) * unit for k, v in times.items()}
    (old, new) = med
    parts = [f"{k} median {m:.3g} {what} ({' '.join(f'{t * unit:.3g}' for t in times[k])})"
             for k, m in med.items()]
    print(f"{title}: " + " | ".join(parts) + f" | new/old {med[new] / med[old]:.2f} | {same}")


def prompt_ids(model, tok, prompts, new):
    """The prompts' ids as sample_responses cuts them (a prompt too long keeps its end)."""
    budget = model.config.block_size - new
    return [tok.prompt_ids(p)[-budget:] for p in prompts]


def bench_compact(model, tok, prompts, repeats, new):
    ids = prompt_ids(model, tok, prompts[:512], new)
    seeds = [row_seed(1, i) for i in range(len(ids))]
    outs = {}

    def run(compact):
        def fn():
            gen_module.COMPACT = compact
            outs[compact] = [generate(model, ids[i : i + 256], new, tok.eos_id, tok.pad_id, 1.0,
                                      row_seeds=seeds[i : i + 256]).response for i in range(0, len(ids), 256)]
        return fn

    keep = gen_module.COMPACT
    times = alternate({"every row to the end": run(0), "finished rows leave": run(0.75)}, repeats)
    gen_module.COMPACT = keep
    same = all(torch.equal(a, b) for a, b in zip(outs[0], outs[0.75]))
    report(f"compact ({len(ids)} prompts, {new} tokens)", times, f"same tokens: {same}")


def bench_order(model, tok, prompts, repeats, new):
    prompts = prompts[:1500]
    outs = {}

    def given_order():  # sample_responses before it sorted the prompts by length (no prefix, one process)
        ids, texts = prompt_ids(model, tok, prompts, new), []
        for i in range(0, len(ids), 256):
            g = generate(model, ids[i : i + 256], new, tok.eos_id, tok.pad_id, 1.0,
                         row_seeds=[row_seed(1, j) for j in range(i, min(i + 256, len(ids)))])
            texts += [tok.response_text(row) for row in g.response.tolist()]
        outs["old"] = texts

    def by_length():
        outs["new"] = sample_responses(model, tok, prompts, new, temperature=1.0, seed=1, batch_size=256)

    times = alternate({"in the list's order": given_order, "by length": by_length}, repeats)
    differ = sum(a != b for a, b in zip(outs["old"], outs["new"]))
    report(f"order ({len(prompts)} prompts, {new} tokens)", times,
           f"{differ} of {len(prompts)} texts differ (fp32 rounding of another batch shape)")


def bench_steps(name, module, load, backward, batches, repeats):
    """Training steps (backward, clipping, AdamW) in one piece (module.chunk_rows 0) against chunks of 16.
    load() -> a fresh model; backward(model, batch) -> the batch's loss, its backward pass done. Each way
    trains its own copy from the same start, seeded alike: the same losses."""

    def make_step(rows):
        model = load()
        opt = make_optimizer(model, 1e-4, 0.1)

        def step(batch):
            module.chunk_rows = lambda device: rows
            loss = backward(model, batch)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.item()
        return step

    steps, losses = {}, {}
    for rows in (0, 16):
        torch.manual_seed(0)
        steps[rows] = make_step(rows)
        losses[rows] = [steps[rows](b) for b in batches[:2]]  # warm-up, and the outputs compared
    per = max(1, (len(batches) - 2) // repeats)
    it = {rows: iter(batches[2:] * 2) for rows in steps}

    def run(rows):
        return lambda: [steps[rows](next(it[rows])) for _ in range(per)]

    times = alternate({"one piece": run(0), "chunks of 16": run(16)}, repeats)
    times = {k: [t / per for t in v] for k, v in times.items()}
    diff = max(abs(a - b) for a, b in zip(losses[0], losses[16]))
    report(f"{name} step", times, f"losses {losses[0][0]:.6f} vs {losses[16][0]:.6f}, max diff {diff:.1e}",
           unit=1000, what="ms")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out_dir", default="out")
    ap.add_argument("--data_dir", default="data")
    ap.add_argument("--only", default=",".join(BENCHES), help=f"comma-separated of {', '.join(BENCHES)}")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    only = args.only.split(",")
    if bad := [b for b in only if b not in BENCHES]:
        ap.error(f"--only={args.only}: expected a comma-separated list of {', '.join(BENCHES)}, got {bad}")
    out, data = Path(args.out_dir), Path(args.data_dir)
    needed = [out / "base/ckpt.pt", out / "sft/ckpt.pt", out / "rm/ckpt.pt", out / "rm/comparisons.jsonl",
              out / "ppo/ckpt.pt", data / "sft.jsonl"]
    if missing := [str(p) for p in needed if not p.exists()]:
        print(f"bench/fast_paths.py: {', '.join(missing)} missing (run python -m nanorlhf first)",
              file=sys.stderr)
        sys.exit(2)
    torch.set_grad_enabled(True)
    tok = load_tokenizer(data / "tokenizer.tiktoken")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, repeats {args.repeats}")
    sft, _ = load_model(out / "sft/ckpt.pt", "sft")
    sft.eval()
    prompts = [r["prompt"] for r in read_prompts(data, "train")]
    new = min(48, sft.config.block_size // 2)  # the tiny preset's 48 (the micro preset's context is 64)
    with torch.no_grad():
        if "compact" in only:
            bench_compact(sft, tok, prompts, args.repeats, new)
        if "order" in only:
            bench_order(sft, tok, prompts, args.repeats, new)

    if "sft" in only:
        demos = read_jsonl(data / "sft.jsonl", {"prompt": str, "response": str})
        pairs = [tok.pair_ids(d["prompt"], d["response"]) for d in demos]
        random.Random(0).shuffle(pairs)
        batches = [sft_batch(pairs[i : i + 32], tok.pad_id, sft.config.block_size)
                   for i in range(0, min(len(pairs) - 31, 32 * 32), 32)]

        bench_steps("sft (32 demonstrations)", train_sft, lambda: load_model(out / "base/ckpt.pt", "base")[0],
                    lambda model, batch: train_sft.batch_loss(model, *batch, "fp32", weight=1.0), batches,
                    args.repeats)

    if "rm" in only or "dpo" in only:
        with open(out / "rm/comparisons.jsonl") as f:
            groups = [json.loads(line) for line in f]
        groups = [g for g in groups if "ranking" in g][: 16 * 32]
        batches = [groups[i : i + 16] for i in range(0, len(groups), 16)]

    if "rm" in only:
        def rm_backward(rm, batch):
            loss, _ = train_rm.rm_step(rm, batch, tok, rm.config.block_size, "cpu", "fp32")
            loss.backward()
            return loss
        bench_steps("rm (16 groups)", train_rm,
                    lambda: load_model(out / "sft/ckpt.pt", "sft", head="scalar")[0], rm_backward, batches,
                    args.repeats)

    if "dpo" in only:
        def dpo_backward(policy, batch):
            # the reference's log-probs do not change the step's work: zeros stand in for them
            batch = [{**g, "ref_logps": [0.0] * len(g["responses"])} for g in batch]
            loss, _ = train_dpo.dpo_step(policy, batch, tok, policy.config.block_size, 0.3, True, "cpu",
                                         "fp32")
            loss.backward()
            return loss
        bench_steps("dpo (16 groups)", train_dpo, lambda: load_model(out / "sft/ckpt.pt", "sft")[0],
                    dpo_backward, batches, args.repeats)

    if "eval" in only:
        bench_eval(sft, tok, out, data, args.repeats)
    if "ppo" in only:
        bench_ppo(out, data, args.repeats, new)


def bench_eval(sft, tok, out, data, repeats):
    policy = load_policy(out / "ppo/ckpt.pt", "cpu")[0].eval()
    rm = load_model(out / "rm/ckpt.pt", "rm")[0].eval()
    prompts = [r["prompt"] for r in read_prompts(data, "test")][:400]
    with torch.no_grad():
        outs = sample_responses(policy, tok, prompts, min(48, sft.config.block_size // 2), temperature=1.0,
                                seed=0)
    results = {}

    def run(rows, batch):
        def fn():
            evaluation.chunk_rows = lambda device: rows
            results[rows] = (evaluation.kl_to_reference(policy, sft, tok, prompts, outs, batch),
                             evaluation.score_texts(rm, tok, prompts, outs, batch))
        return fn

    times = alternate({"64 in one piece": run(0, 64), "256 in chunks of 16": run(16, 256)}, repeats)
    (kl0, s0), (kl1, s1) = results[0], results[16]
    report("eval KL + RM scores (400 samples)", times,
           f"KL {kl0:.6f} vs {kl1:.6f}, scores max diff {max(abs(a - b) for a, b in zip(s0, s1)):.1e}")


def bench_ppo(out, data, repeats, new):
    import train_ppo

    cfg = train_ppo.get_config([f"--out_dir={out}", f"--data_dir={data}", "--dtype=fp32", "--preset=tiny",
                                f"--max_new_tokens={new}"])
    policy, ref, rm, critic, _, tok = train_ppo.load_models(str(out / "sft/ckpt.pt"), str(out / "rm/ckpt.pt"),
                                                            str(data), "cpu")
    policy.load_state_dict(load_policy(out / "ppo/ckpt.pt", "cpu")[0].state_dict())  # its samples' lengths
    rng = random.Random(0)
    prompts = [r["prompt"] for r in read_prompts(data, "train")]
    budget = policy.config.block_size - cfg.max_new_tokens
    batches = [[tok.prompt_ids(rng.choice(prompts))[-budget:] for _ in range(cfg.rollout_batch)]
               for _ in range(repeats + 1)]
    keep_generate, keep_rows = train_ppo.generate, train_ppo.chunk_rows
    with torch.no_grad():
        gens = [generate(policy, b, cfg.max_new_tokens, tok.eos_id, tok.pad_id, 1.0,
                         generator=torch.Generator().manual_seed(i)) for i, b in enumerate(batches)]
    exps = {}

    def scoring(rows):
        order = itertools.cycle(range(len(gens)))  # each way scores the same rollouts in the same order

        def fn():
            i = next(order)
            train_ppo.generate = lambda *a, **kw: gens[i]
            train_ppo.chunk_rows = lambda device: rows
            exps.setdefault(rows, {})[i] = train_ppo.rollout(policy, ref, critic, train_ppo.model_reward(rm),
                                                             batches[i], tok, cfg, cfg.init_kl_coef, None)
        return fn

    times = alternate({"one piece": scoring(0), "chunks of 16": scoring(16)}, repeats * 2)
    train_ppo.generate, train_ppo.chunk_rows = keep_generate, keep_rows
    a, b = exps[0][0], exps[16][0]
    diff = max(float((getattr(a, k) - getattr(b, k))[a.mask.bool()].abs().max())
               for k in ("ref_logprobs", "values", "advantages"))
    report(f"ppo rollout scoring ({cfg.rollout_batch} episodes, mean response {a.mask.sum(1).mean():.1f} "
           "tokens)", times, f"log-probs, values and advantages max diff {diff:.1e}; scores max diff "
           f"{float((a.scores - b.scores).abs().max()):.1e}", unit=1000, what="ms")


if __name__ == "__main__":
    main()
