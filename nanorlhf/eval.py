"""The eval stage: every model of the pipeline against SFT on the test prompts, judged by the gold labeler
(win-rates with 95% CIs, ratings, counts), best-of-n, the headroom probe and each round's reward-model check,
written to out/eval.json. The measures themselves are in evaluation.py."""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

from nanorlhf import distributed
from nanorlhf.checkpoint import (check_run_name, checkpoint_tokenizer, load_checkpoint, load_model,
                                 load_policy, maker,
                                 stage_path, trained_dtype)
from nanorlhf.config import (AT_LEAST_1, NON_NEGATIVE, POSITIVE, ConfigError, check_config, check_context,
                             parse_config,
                             run_main)
from nanorlhf.data import corpus_tokens, load_world, read_prompts
from nanorlhf.evaluation import (by_kind, gold_eval, headroom_probe, judged, kl_to_reference, lm_loss,
                                 preferences, ranked_groups, rm_accuracy, score_texts, summarise)
from nanorlhf.files import atomic_write, lock_folder, with_locks
from nanorlhf.generate import sample_responses
from nanorlhf.runs import ROUNDS, policy_rows, round_runs
from nanorlhf.training import autocast, phase, phase_summary, resolve_dtype


@dataclass
class EvalConfig:
    preset: str = "tiny"  # micro (seconds, tests) | tiny (2-core CPU) | small (one GPU); default: by device
    data_dir: str = "data"  # where data/prepare.py wrote the test prompts, corpus and world
    out_dir: str = "out"  # reads every stage's checkpoint under it; writes out_dir/eval.json
    n_prompts: int = 400  # test prompts
    max_new_tokens: int = 48  # longest sampled response, in tokens
    temperature: float = 0.7  # sampling temperature of every model's responses
    few_shot: int = 2  # demonstrations in the base model's few-shot prompt
    bon_n: int = 16  # best-of-n: largest n (SFT samples per prompt, picked by the RM)
    bon_prompts: int = 200  # prompts for best-of-n and the headroom probe
    bon_pick: int = 4  # the "RM best-of-n" row: the RM's pick of this many SFT samples per prompt (0: none)
    rounds: int = 0  # iterated-RLHF rounds the pipeline ran (0: the preset's): a PPO row and RM check each
    shift_prompts: int = 200  # val prompts of the RM check: K samples of SFT and of each round's policy
    shift_k: int = 4  # samples per prompt of the RM check
    device: str = ""  # cpu | cuda | cuda:N (default: cuda if available)
    dtype: str = "auto"  # auto | fp32 | bf16 (nanorlhf/precision.py): the pipeline passes the stages' dtype
    skip: str = ""  # rows left out: the pipeline's --skip (folders of runs.py), comma-separated
    runs: str = ""  # more runs to compare with SFT: comma-separated folders under out_dir (--run_name)
    seed: int = 1234  # SFT's reference samples; every model's: seed + 1, best-of-n + 2, RM check + 3


EVAL_PRESETS = {"micro": dict(n_prompts=16, max_new_tokens=12, bon_n=4, bon_prompts=8,
                              shift_prompts=8, bon_pick=2),
                "tiny": dict(shift_prompts=100),
                "small": dict(n_prompts=1000, bon_n=64, bon_prompts=200)}
def rows(rounds: int, skip: str = "") -> dict[str, str]:
    """The table's rows: {row name: the stage (folder under out_dir) whose checkpoint it samples}, less the
    folders in `skip`; --runs adds more."""
    table = {"base": "base", "base few-shot": "base", "SFT": "sft", **policy_rows(rounds)}
    return {name: run for name, run in table.items() if run not in skip.split(",")}


def check_eval_config(cfg: EvalConfig) -> list[str]:
    """Every flag before any work (check_config), and the runs of --runs, which are returned: each a PPO
    run's folder under out_dir with a finished policy checkpoint of that name, none a row the table has
    already (it would replace that row) or named twice. A run asked for by name that is missing is an
    error, not a row left out."""
    check_config(cfg, n_prompts=AT_LEAST_1, max_new_tokens=AT_LEAST_1, temperature=POSITIVE,
                 few_shot=NON_NEGATIVE, bon_n=AT_LEAST_1, bon_prompts=AT_LEAST_1, bon_pick=NON_NEGATIVE,
                 rounds=AT_LEAST_1,
                 shift_prompts=AT_LEAST_1,
                 shift_k=(lambda k: k >= 2, "at least 2 (a ranking compares responses)"))
    runs, table = (cfg.runs.split(",") if cfg.runs else []), rows(cfg.rounds)
    for i, run in enumerate(runs):
        check_run_name("runs", run)
        if run in table or run in table.values() or run in runs[:i]:
            raise ConfigError(f"--runs={cfg.runs}: {run!r} is a row of the table already; expected other "
                              "runs (folders under --out_dir made by: python train_ppo.py "
                              "--run_name=<name>)")
        path = Path(cfg.out_dir) / run / "ckpt.pt"
        if not path.exists():
            raise ConfigError(f"--runs={cfg.runs}: no checkpoint at {path} (make it with: {maker(run)})")
        load_checkpoint(path, run)  # a finished policy of that run
    return runs


def compare_with_sft(cfg: EvalConfig, models: dict, sft, rm, tok, labeler, prompts: list[dict],
                     sft_ref: list[tuple[str, bool]], corpus, device: str) -> tuple[dict, dict]:
    """Each model whose checkpoint exists, judged against SFT's samples `sft_ref` on the same prompts:
    win-rate, gold rating, RM score, KL to SFT, corpus loss. Returns (results, a few samples) by name."""
    out = Path(cfg.out_dir)
    texts = [p["prompt"] for p in prompts]
    results, samples = {}, {}
    for name, (stage, prefix) in models.items():
        path = out / stage / "ckpt.pt"
        if not path.exists():
            print(f"eval: {name}: no checkpoint at {path}, skipped")
            continue
        model, ck = load_model(path, stage, device=device)
        ev = gold_eval(model, tok, labeler, prompts, cfg.max_new_tokens, cfg.temperature, cfg.seed + 1,
                       prefix_ids=prefix)
        outs = [(s["response"], s["finished"]) for s in ev["samples"]]
        results[name], samples[name] = model_row(name, ev, outs, labeler, texts, sft_ref,
                                                 score_texts(rm, tok, texts, outs),
                                                 kl_to_reference(model, sft, tok, texts, outs) if not prefix
                                                 else None,
                                                 lm_loss(model, corpus, model.config.block_size))
        results[name].update(run=stage, sampled_tokens=training_samples(ck))
    return results, samples


def training_samples(ckpt: dict) -> int:
    """Tokens a run sampled while it trained (a PPO run's rollouts; 0 for the supervised stages and DPO)."""
    hist = ckpt["metrics"].get("history")
    if not (isinstance(hist, list) and hist and "resp_len" in hist[0]):
        return 0
    return round(sum(h["resp_len"] for h in hist) * ckpt["config"]["rollout_batch"])


def model_row(name: str, ev: dict, outs, labeler, texts: list[str], sft_ref, rm_scores: list[float],
              kl, corpus_loss):
    """One row of the table (printed as it is made) and its few samples for the report."""
    wins = preferences(labeler, texts, outs, sft_ref)
    r = {**summarise(wins), "by_kind": by_kind(texts, wins), "rating": ev["rating"], "correct": ev["correct"],
         "eos_rate": ev["eos_rate"], "per_category": ev["per_category"], "breakdown": ev["breakdown"],
         "rm_score": sum(rm_scores) / len(rm_scores), "kl_to_sft": kl, "corpus_loss": corpus_loss}
    print(f"eval: {name:>13}: win-rate vs SFT {r['win_rate']:.1%} [{r['ci_low']:.1%}, {r['ci_high']:.1%}] | "
          f"rating {r['rating']:.2f} | correct {r['correct']:.0%} | RM {r['rm_score']:+.2f} | KL "
          f"{kl if kl is not None else float('nan'):.2f} | corpus loss {corpus_loss:.3f}", flush=True)
    return r, ev["samples"][:8] + [s for s in ev["samples"][8:] if s["writes_instructions"]][:1]


def rm_pick_row(cfg: EvalConfig, sft, rm, tok, labeler, prompts: list[dict], sft_ref, sft_corpus_loss: float):
    """Best-of-n with the reward model as a model of its own: for each test prompt, the RM's pick of n SFT
    samples, judged against an SFT sample like every other row -- the cheapest way to spend a reward model
    (no training), and the baseline PPO must beat. KL to SFT: the bound log n − (n − 1)/n."""
    n, texts = cfg.bon_pick, [p["prompt"] for p in prompts]
    many = sample_responses(sft, tok, [t for t in texts for _ in range(n)], cfg.max_new_tokens,
                            cfg.temperature,
                            seed=cfg.seed + 4)
    scores = score_texts(rm, tok, [t for t in texts for _ in range(n)], many)
    picks = [max(range(j * n, (j + 1) * n), key=scores.__getitem__) for j in range(len(texts))]
    outs = [many[i] for i in picks]
    row, few = model_row(f"RM best-of-{n}", judged(labeler, prompts, outs), outs, labeler, texts, sft_ref,
                         [scores[i] for i in picks], math.log(n) - (n - 1) / n, sft_corpus_loss)
    # no training; its cost is at test time: n samples for every prompt
    row.update(run=None, sampled_tokens=0,
               test_time_tokens=sum(len(tok.enc.encode_ordinary(r)) + f for r, f in many))
    return row, few


def rm_best_of_n(cfg: EvalConfig, sft, rm, tok, labeler,
                 texts: list[str], device: str) -> tuple[list[dict], list]:
    """Best-of-n against the RM (Gao et al. 2022): the gold rating of the RM's pick among n SFT samples,
    n = 1, 2, 4, ... bon_n, at KL_bon = log n − (n − 1)/n. Returns the curve and the samples (bon_n per
    prompt, in order)."""
    many = sample_responses(sft, tok, [p for p in texts for _ in range(cfg.bon_n)], cfg.max_new_tokens,
                            cfg.temperature, seed=cfg.seed + 2)
    scores = score_texts(rm, tok, [p for p in texts for _ in range(cfg.bon_n)], many)
    bon, n = [], 1
    while n <= cfg.bon_n:
        picks = [max(range(j * cfg.bon_n, j * cfg.bon_n + n), key=lambda i: scores[i])
                 for j in range(len(texts))]
        gold = [labeler.judge(texts[j], many[i][0], many[i][1]).rating for j, i in enumerate(picks)]
        bon.append({"n": n, "kl": math.log(n) - (n - 1) / n, "gold_rating": sum(gold) / len(gold),
                    "rm_score": sum(scores[i] for i in picks) / len(picks)})
        n *= 2
    return bon, many


def reward_model_shift(cfg: EvalConfig, sft, tok, labeler, device: str) -> list[dict]:
    """Does each round's reward model order the samples of the policy it trained as well as SFT's? For round
    r: RM_r's pairwise accuracy (against the labeler's noisy ranking and against the gold order) on K fresh
    samples per val prompt (never trained on) of SFT and of PPO_r, beside a second labeler's agreement on the
    same pairs. The gap is the distribution shift iterated RLHF closes (Gao et al. 2022; Stiennon et al.
    2020)."""
    prompts = [p["prompt"] for p in read_prompts(cfg.data_dir, "val")][: cfg.shift_prompts]
    texts = [p for p in prompts for _ in range(cfg.shift_k)]

    def groups_of(model, name):
        outs = sample_responses(model, tok, texts, cfg.max_new_tokens, cfg.temperature, seed=cfg.seed + 3)
        return ranked_groups(labeler, prompts, outs, cfg.shift_k, random.Random(f"{cfg.seed}:{name}"))

    sft_groups, rows = groups_of(sft, "sft"), []
    for r in range(1, cfg.rounds + 1):
        rm_name, ppo_name = round_runs(r, cfg.rounds)
        if not (stage_path(cfg.out_dir, rm_name).exists() and stage_path(cfg.out_dir, ppo_name).exists()):
            print(f"eval: reward model check of round {r}: no {rm_name} or {ppo_name} checkpoint, skipped")
            continue
        rm = load_model(stage_path(cfg.out_dir, rm_name), "rm", device=device)[0]
        policy_groups = groups_of(load_policy(stage_path(cfg.out_dir, ppo_name), device)[0], ppo_name)
        row = {"round": r, "rm": rm_name, "ppo": ppo_name}
        for name, gs in (("sft", sft_groups), ("policy", policy_groups)):
            row[name] = rm_accuracy(rm, labeler, gs, tok, device, 64, cfg.dtype, random.Random(cfg.seed + r))
        rows.append(row)
        print(f"eval: round {r}: {rm_name} orders SFT's samples {row['sft']['gold_order_acc']:.1%} like the "
              f"gold labeler ({row['sft']['acc']:.1%} like the noisy one, which a second labeler matches on "
              f"{row['sft']['labeler_agreement']:.1%}); {ppo_name}'s samples "
              f"{row['policy']['gold_order_acc']:.1%} ({row['policy']['acc']:.1%}, second labeler "
              f"{row['policy']['labeler_agreement']:.1%})", flush=True)
    return rows


@with_locks
def main(argv=None) -> dict:
    """Evaluate every model of the pipeline against SFT on the test prompts; write out/eval.json."""
    cfg = parse_config(EvalConfig, argv, EVAL_PRESETS)
    cfg.rounds = cfg.rounds or ROUNDS[cfg.preset]
    runs = check_eval_config(cfg)
    lock_folder(cfg.out_dir)  # one writer: eval.json and the reading of every stage's checkpoint
    device = distributed.init(cfg.device)  # torchrun: sampling is sharded over the ranks (generate.py)
    # sampling and scoring in the regime the models trained in: auto reads it from the SFT checkpoint
    cfg.dtype = resolve_dtype(cfg.dtype, device, trained_in=trained_dtype(stage_path(cfg.out_dir, "sft")))
    t0 = time.time()
    out = Path(cfg.out_dir)
    world = load_world(cfg.data_dir)
    labeler = world.labeler
    prompts = [p for p in read_prompts(cfg.data_dir, "test")][: cfg.n_prompts]
    texts = [p["prompt"] for p in prompts]
    sft, ck = load_model(stage_path(out, "sft"), "sft", device=device)
    check_context(cfg, sft.config.block_size)
    tok = checkpoint_tokenizer(ck)
    rm, _ = load_model(stage_path(out, "rm"), "rm", device=device)
    corpus = corpus_tokens(cfg.data_dir, tok, tail_frac=0.05)  # the held-out end, as in train_sft.py

    few_shot = [t for p, r in world.few_shot_examples(cfg.few_shot) for t in tok.pair_ids(p, r)[0]]
    models = {name: (stage, few_shot if name == "base few-shot" else ())
              for name, stage in rows(cfg.rounds, cfg.skip).items()}
    models.update({run: (run, ()) for run in runs})  # e.g. a PPO variant of yours
    with autocast(device, cfg.dtype):  # samples from the regime the models trained in
        sft_ref = sample_responses(sft, tok, texts, cfg.max_new_tokens, cfg.temperature,
                                   seed=cfg.seed)
        with phase("judging"):  # the labeler, RM scores, KL, corpus loss (their sampling: "sampling")
            results, samples = compare_with_sft(cfg, models, sft, rm, tok, labeler, prompts, sft_ref,
                                                corpus, device)
        if cfg.bon_pick and "SFT" in results:
            name = f"RM best-of-{cfg.bon_pick}"
            with phase("RM best-of-n row"):
                row = rm_pick_row(cfg, sft, rm, tok, labeler, prompts, sft_ref, results["SFT"]["corpus_loss"])
            at = list(results).index("SFT") + 1  # the row after SFT's: the first way to spend a reward model
            results = {**dict(list(results.items())[:at]), name: row[0], **dict(list(results.items())[at:])}
            samples[name] = row[1]
        bon_texts = texts[: cfg.bon_prompts]
        with phase("best-of-n curve"):
            bon, many = rm_best_of_n(cfg, sft, rm, tok, labeler, bon_texts, device)
        with phase("reward-model shift"):
            shift = reward_model_shift(cfg, sft, tok, labeler, device)
    probe = headroom_probe(labeler, bon_texts, many, sft_ref[: len(bon_texts)], cfg.bon_n)
    best = probe["gold_best_of_n"][-1]
    print(f"eval: headroom: SFT vs SFT ties {probe['sft_vs_sft_ties']:.0%}; gold best-of-{best['n']} of SFT "
          f"vs SFT {best['win_rate']:.1%} [{best['ci_low']:.1%}, {best['ci_high']:.1%}] on {len(bon_texts)} "
          "prompts", flush=True)
    report = {"config": cfg.__dict__, "models": results, "samples": samples, "best_of_n": bon,
              "headroom": probe,
              "rm_shift": shift}
    atomic_write(out / "eval.json", json.dumps(report, indent=1, ensure_ascii=False))
    print(f"eval: done in {time.time() - t0:.0f}s -> {out / 'eval.json'}")
    print(phase_summary("eval"))
    return report


if __name__ == "__main__":
    run_main(main)
