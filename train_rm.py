"""Step 3 of InstructGPT: sample K responses per prompt, have them ranked, train a reward model.

    python train_rm.py                         # samples from out/sft, the simulated labeler ranks -> out/rm/
    python train_rm.py --resample=true         # sample and rank again instead of reusing comparisons.jsonl
    python train_rm.py --labels=both --human_labels=data/human_labels.jsonl   # add your own rankings
                                               # (made with: python -m nanorlhf.label)
    python train_rm.py --round=2 --sample_from=out/ppo/ckpt.pt --pool=out/rm/comparisons.jsonl \\
        --run_name=rm_r2                       # iterated RLHF: rank the policy's samples, train on both

The SFT GPT with a scalar head read at the EOS; InstructGPT eq. (1) over all pairs of one prompt's group (plus
`off_prompt` answers to other prompts: collect_comparisons) in one batch element (losses.ranking_loss), ties
skipped; a final bias makes SFT demonstrations score 0 on average (§3.5/App. C). Rounds: `comparisons`.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from nanorlhf import distributed
from nanorlhf.checkpoint import (check_run_name, checkpoint_tokenizer, load_checkpoint, load_model,
                                 load_policy,
                                 save_checkpoint, stage_path, trained_dtype, weights_fingerprint)
from nanorlhf.config import (AT_LEAST_1, NON_NEGATIVE, POSITIVE, UNIT, check_config, check_context,
                             one_of, parse_config, run_main)
from nanorlhf.data import (DataError, load_world, ranked_sequences, read_comparisons, read_json, read_jsonl,
                           read_prompts,
                           split_groups,
                           subgroup, to_device, write_jsonl)
from nanorlhf.evaluation import score_texts
from nanorlhf.evaluation import ranking_eval, response_scores, rm_accuracy, scored_accuracy
from nanorlhf.files import atomic_write, fingerprint, lock_folder, with_locks
from nanorlhf.generate import sample_responses
from nanorlhf.losses import ranking_accuracy, ranking_loss
from nanorlhf.plots import line_plots
from nanorlhf.training import (Progress, phase, phase_summary, autocast, by_length, check_finite,
                               check_learnable, chunk_rows, lr_at, make_optimizer, resolve_dtype,
                               seed_everything, set_lr)
from nanorlhf.labeler import tied_pairs


# ---------------------------------------------------------------------------------------------- config
@dataclass
class Config:
    preset: str = "tiny"  # micro (seconds, tests) | tiny (2-core CPU) | small (one GPU); default: by device
    data_dir: str = "data"  # where data/prepare.py wrote the prompts, demonstrations and tokenizer
    out_dir: str = "out"  # reads out_dir/sft; writes out_dir/rm/ (checkpoint, comparisons.jsonl, plot)
    init_from: str = ""  # SFT checkpoint (default out_dir/sft/ckpt.pt)
    run_name: str = "rm"  # output folder under out_dir (the pipeline's later rounds: rm_r2, rm_r3, ...)
    # comparison collection
    sample_from: str = ""  # the policy whose samples are ranked (default: init_from, the SFT model)
    round: int = 1  # the round recorded on the new groups (1: the SFT model's samples)
    pool: str = ""  # an earlier round's comparisons.jsonl: trained on too, and its prompts not sampled again
    n_prompts: int = 1200  # training prompts to sample for
    k: int = 4  # responses per prompt (InstructGPT: 4-9)
    off_prompt: int = 1  # + answers the policy wrote for other prompts, ranked with the K (see below)
    temperature: float = 1.0  # sampling temperature of the K responses
    max_new_tokens: int = 48  # longest sampled response, in tokens
    resample: bool = False  # sample and rank again even if comparisons.jsonl exists
    labels: str = "simulated"  # simulated (the world's labeler) | human (--human_labels) | both
    human_labels: str = "data/human_labels.jsonl"  # written by python -m nanorlhf.label
    # training
    epochs: int = 1  # InstructGPT: more than one overfits
    batch_size: int = 16  # prompts (each with its K responses) per step
    lr: float = 1e-4  # peak learning rate of AdamW, after the warmup
    min_lr_frac: float = 0.1  # cosine decays to this fraction of lr (InstructGPT App. C.2: to 10%)
    warmup_steps: int = 10  # steps of linear warmup from 0 to lr
    weight_decay: float = 0.0  # AdamW's decoupled weight decay, on weight matrices only
    grad_clip: float = 1.0  # the gradient's global norm is clipped to this
    val_frac: float = 0.15  # held-out share of the ranked groups (accuracy, agreement)
    log_interval: int = 10  # print loss and accuracy every N steps
    device: str = ""  # cpu | cuda | cuda:N (default: cuda if available)
    dtype: str = "auto"  # auto | fp32 | bf16: compute precision (precision.py); auto: bf16 where it pays
    seed: int = 1337  # seeds torch, sampling, the labeler's noise and the batch order


PRESETS = {
    "micro": dict(n_prompts=24, k=3, max_new_tokens=12, batch_size=4, log_interval=2, warmup_steps=1,
                  val_frac=0.25),
    # tiny: one epoch at 1e-4 underfits a 1M-parameter RM; at 5e-4 one epoch is within a point of two (75.8
    # against 76.6% held-out) for half the time; 1,500 prompts a round, two rounds (bench/NOTES.md, "Preset
    # choices" and "A pipeline in ten minutes")
    "tiny": dict(lr=5e-4, epochs=1, n_prompts=1500),
    "small": dict(n_prompts=6000, k=6, batch_size=32, lr=3e-5, warmup_steps=20),
}


def get_config(argv=None) -> Config:
    cfg = parse_config(Config, argv, PRESETS)
    check_config(cfg, labels=one_of("simulated", "human", "both"), n_prompts=AT_LEAST_1,
                 k=(lambda k: k >= 2, "at least 2 (a ranking compares responses)"), off_prompt=NON_NEGATIVE,
                 temperature=POSITIVE, max_new_tokens=AT_LEAST_1, epochs=AT_LEAST_1, batch_size=AT_LEAST_1,
                 lr=POSITIVE, min_lr_frac=UNIT, warmup_steps=NON_NEGATIVE, weight_decay=NON_NEGATIVE,
                 grad_clip=POSITIVE, val_frac=(lambda v: 0 < v < 1, "a fraction in (0, 1)"),
                 log_interval=AT_LEAST_1, round=AT_LEAST_1)
    check_run_name("run_name", cfg.run_name, "rm")
    return cfg


# ---------------------------------------------------------------------------- 1. comparison collection
def collect_comparisons(policy, tok, labeler, prompts: list[dict], cfg: Config) -> list[dict]:
    """K samples per prompt from the policy (one batched KV-cache generation), ranked by the labeler,
    who also marks the pairs it finds equally good (ties): the loss and the accuracy skip those.

    Each group also gets `cfg.off_prompt` responses the policy wrote for *other* prompts, of another
    category, listed in the record's "off_prompt". Why: the SFT model almost always answers the question
    it was asked, so K samples of it never show the reward model an answer to the wrong question -- and a
    reward model that never saw one scores "This review is negative." as highly under a chat prompt as
    under a review. Held-out accuracy is reported on the K samples only."""
    seed = cfg.seed + 7919 * (cfg.round - 1)  # each round its own noise (round 1: the seed itself)
    texts = [p["prompt"] for p in prompts for _ in range(cfg.k)]
    outs = sample_responses(policy, tok, texts, cfg.max_new_tokens, cfg.temperature, seed=seed)
    rng = random.Random(seed)
    others_of = {c: [i for i, q in enumerate(prompts) if q["category"] != c]
                 for c in {p["category"] for p in prompts}}
    groups = []
    for j, p in enumerate(prompts):
        resp, others = outs[j * cfg.k : (j + 1) * cfg.k], others_of[p["category"]]
        resp += [outs[i * cfg.k + rng.randrange(cfg.k)]
                 for i in rng.sample(others, min(cfg.off_prompt, len(others)))]
        texts_j, finished = [r for r, _ in resp], [f for _, f in resp]
        with phase("labeler"):
            utilities = labeler.ranking_utilities(p["prompt"], texts_j, finished)  # each response judged once
            ranking = labeler.rank(p["prompt"], texts_j, rng, utilities=utilities)
        groups.append({"prompt": p["prompt"], "category": p["category"], "responses": texts_j,
                       "finished": finished,
                       "ranking": ranking, "ties": tied_pairs(utilities),
                       "off_prompt": list(range(cfg.k, len(resp))), "round": cfg.round})
    return groups


def recipe(cfg: Config, sample_path) -> dict:
    """What comparisons.jsonl is made from (the weights sampled, the earlier rounds' groups, the prompts and
    the flags of sampling): it is reused only while this is unchanged, wherever the files were moved."""
    return {"sample_from": weights_fingerprint(sample_path),
            "pool": fingerprint([cfg.pool]) if cfg.pool else "",
            "prompts": fingerprint([Path(cfg.data_dir) / "prompts.jsonl"]),
            **{k: getattr(cfg, k) for k in ("round", "n_prompts", "k", "off_prompt", "temperature",
                                            "max_new_tokens", "seed")}}


def _recorded(path: Path):
    """The recipe a comparisons file was made with, or None (never recorded, or unreadable: sample again)."""
    try:
        return read_json(path, "python train_rm.py") if path.exists() else None
    except DataError:
        return None


def comparisons(cfg: Config, sample_path, tok, labeler, device: str) -> list[dict]:
    """Step 1's ranked groups: every earlier round's (--pool), the simulated labeler's of this round (reused
    from comparisons.jsonl if made by the same recipe, unless --resample; else sampled from `sample_path`
    and ranked now), and with --labels=human or both, a person's (python -m nanorlhf.label).

    Round r > 1 (iterated RLHF, Stiennon et al. 2020; Bai et al. 2022) ranks the round-(r-1) policy's samples
    on unused training prompts, pools every earlier round's groups (--pool), and main trains a fresh reward
    model from SFT."""
    out = Path(cfg.out_dir) / cfg.run_name
    comp_path, recipe_path = out / "comparisons.jsonl", out / "comparisons.recipe.json"
    groups = []
    if cfg.labels in ("simulated", "both"):
        want, made = recipe(cfg, sample_path), _recorded(recipe_path)
        if comp_path.exists() and not cfg.resample and made == want:
            groups = read_comparisons(comp_path)
            print(f"rm: reusing {len(groups)} ranked groups from {comp_path} (--resample=true to redo)")
        else:
            if comp_path.exists() and not cfg.resample:  # e.g. --k=100 where the file has K = 3: never reused
                changed = sorted(k for k in want if not isinstance(made, dict) or made.get(k) != want[k])
                print(f"rm: {comp_path} was made from other inputs ({', '.join(changed)} differ): sampling "
                      "again")
            pool = read_comparisons(cfg.pool, "the earlier round's python train_rm.py") if cfg.pool else []
            used = {g["prompt"] for g in pool}
            prompts = [p for p in read_prompts(cfg.data_dir, "train")
                       if p["prompt"] not in used][: cfg.n_prompts]
            if len(prompts) < 2:
                raise DataError(f"{Path(cfg.data_dir) / 'prompts.jsonl'}: {len(prompts)} training prompt(s) "
                                f"that no earlier round used (expected --n_prompts={cfg.n_prompts}; prepare "
                                "more with data/prepare.py --n_train_prompts)")
            policy, _ = load_policy(sample_path, device,
                                    tokenizer=str(Path(cfg.data_dir) / "tokenizer.tiktoken"))
            with autocast(device, cfg.dtype):  # sampled in the regime the policy trained in
                new = collect_comparisons(policy, tok, labeler, prompts, cfg)
            groups = pool + new
            write_jsonl(comp_path, groups)
            atomic_write(recipe_path, json.dumps(want, indent=1))
            n_ties = sum(len(g["ties"]) for g in new)
            n_pairs = sum(len(g["responses"]) * (len(g["responses"]) - 1) // 2 for g in new)
            print(f"rm: round {cfg.round}: {len(new)} groups of {cfg.k} samples of {sample_path} + "
                  f"{cfg.off_prompt} off-prompt, ranked ({n_ties / max(1, n_pairs):.0%} of the pairs are "
                  f"ties), with {len(pool)} groups of earlier rounds -> {comp_path}")
    if cfg.labels in ("human", "both"):
        human = [{**g, "human": True} for g in read_comparisons(cfg.human_labels, "python -m nanorlhf.label")]
        print(f"rm: {len(human)} human-ranked groups from {cfg.human_labels}")
        groups += human
    return groups


def sampled_only(g: dict) -> dict:
    """A group without its off-prompt responses: the K samples the accuracy is measured on."""
    return subgroup(g, sampled_indices(g)) if g.get("off_prompt") else g


def sampled_indices(g: dict) -> list[int]:
    """The positions of a group's K samples among its responses (sampled_only keeps these, in order)."""
    off = set(g.get("off_prompt", ()))
    return [i for i in range(len(g["responses"])) if i not in off]


def split(groups: list[dict], cfg: Config, rng: random.Random):
    """(training groups in a shuffled order, held-out groups on their K samples, held-out groups whole)."""
    train_groups, val_groups = split_groups(groups, cfg.val_frac, rng)
    val_groups, val_all = [sampled_only(g) for g in val_groups], val_groups  # accuracy: on the K samples
    files = ((Path(cfg.out_dir) / cfg.run_name / "comparisons.jsonl", cfg.labels != "human"),
             (cfg.human_labels, cfg.labels != "simulated"))
    sources = " and ".join(str(p) for p, used in files if used)
    for part, name in ((train_groups, "training"), (val_groups, "held-out")):
        check_learnable(sum(preferences(g) for g in part),
                        f"{sources}: the {len(part)} {name} group(s) rank no pair of responses apart, every "
                        "pair is a tie (expected rankings that prefer one response to "
                        "another)", Path(cfg.out_dir) / cfg.run_name / "ckpt.pt")
    return train_groups, val_groups, val_all


def preferences(g: dict) -> int:
    """The pairs of a group's responses that are not ties: what the ranking loss and the accuracy count."""
    n = len(g["responses"])
    return n * (n - 1) // 2 - len({tuple(sorted(t)) for t in g.get("ties", [])})


# --------------------------------------------------------------------- 2-3. the ranking loss, training
def rm_step(rm, groups, tok, block, device, dtype):
    tokens, mask, valid, tied = (to_device(t, device) for t in ranked_sequences(groups, tok, block))
    with autocast(device, dtype):
        # best first; in chunks of responses of similar length (training.by_length: less padding)
        scores = by_length(rm, mask, chunk_rows(device), tokens, mask).float().view(valid.shape)  # (B, K)
    correct, pairs = ranking_accuracy(scores.detach(), valid, tied)
    return ranking_loss(scores, valid, tied), (correct / pairs.clamp(min=1)).item()


def train(rm, train_groups: list[dict], val_groups: list[dict], tok, cfg: Config, rng: random.Random,
          device: str,
          ckpt_path: Path) -> dict:
    """`cfg.epochs` passes over the training groups, each seen once per epoch; the held-out loss and
    accuracy after each. Returns the history (the plot's curves)."""
    block = rm.config.block_size
    opt = make_optimizer(rm, cfg.lr, cfg.weight_decay)
    steps_per_epoch = max(1, len(train_groups) // cfg.batch_size)
    max_steps = cfg.epochs * steps_per_epoch
    progress = Progress(max_steps, "rm")
    history = {"step": [], "loss": [], "acc": [], "val_step": [], "val_loss": [], "val_acc": []}
    step = 0
    rm.train()
    for epoch in range(cfg.epochs):
        rng.shuffle(train_groups)  # every group is seen exactly once per epoch
        for i in range(steps_per_epoch):
            # this rank's
            batch = distributed.shard(train_groups[i * cfg.batch_size : (i + 1) * cfg.batch_size])
            set_lr(opt, lr_at(step, max_steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_frac))
            loss, acc = rm_step(rm, batch, tok, block, device, cfg.dtype)
            check_finite("reward-model loss", loss, step, ckpt_path)
            opt.zero_grad(set_to_none=True)
            (loss * distributed.local_share(len(batch))).backward()  # the mean over every rank's groups
            distributed.sync_grads(rm)
            torch.nn.utils.clip_grad_norm_(rm.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            history["step"].append(step), history["loss"].append(loss.item()), history["acc"].append(acc)
            if step % cfg.log_interval == 0 or step == max_steps:
                progress.log(step, loss=loss.item(), acc=acc, lr=opt.param_groups[0]["lr"])
        val_loss, val_acc = ranking_eval(rm, val_groups, tok, device, cfg.batch_size, cfg.dtype)
        check_finite("held-out reward-model loss", val_loss, f"epoch {epoch + 1}", ckpt_path)
        history["val_step"].append(step), history["val_loss"].append(val_loss)
        history["val_acc"].append(val_acc)
        print(f"rm epoch {epoch + 1}: held-out loss {val_loss:.4f} | held-out pairwise accuracy "
              f"{val_acc:.1%}")
    return history


# ---------------------------------------------------------------------------------------- 5. normalise
def normalise(rm, tok, cfg: Config, ckpt_path: Path) -> float:
    """Shift the score's bias so that SFT demonstrations score 0 on average (InstructGPT §3.5); return the
    shift."""
    demos = read_jsonl(Path(cfg.data_dir) / "sft.jsonl", {"prompt": str, "response": str})[-200:]
    with autocast(rm.wte.weight.device, cfg.dtype):  # the regime PPO reads the reward model in
        scores = score_texts(rm, tok, [d["prompt"] for d in demos], [(d["response"], True) for d in demos])
    bias = sum(scores) / len(scores)
    check_finite("mean reward of the demonstrations (the normalisation shift)", bias, "the end", ckpt_path)
    with torch.no_grad():
        rm.score.bias -= bias
    print(f"rm: shifted the reward by {-bias:+.3f} so demonstrations score 0 on average")
    return -bias


def plot_training(path: Path, history: dict, ceiling: float) -> None:
    line_plots(path, "Reward model training", "step (batches of ranked groups)", [
        ("loss (eq. 1)",
         [(history["step"], history["loss"], "train"),
          (history["val_step"], history["val_loss"], "held-out")]),
        ("pairwise accuracy",
         [(history["step"], history["acc"], "train"), (history["val_step"], history["val_acc"], "held-out"),
                               ([0, history["step"][-1]], [ceiling, ceiling], "labeler agreement")]),
    ])


# ------------------------------------------------------------------------------------------------ main
@with_locks
def main(argv=None):
    cfg = get_config(argv)
    # torchrun: join the other ranks; sampling is sharded in generate.py
    device = distributed.init(cfg.device)
    distributed.check_divisible(cfg, "batch_size")
    sft_path = cfg.init_from or stage_path(cfg.out_dir, "sft")
    # auto -> what runs (the SFT model's own dtype if it records one), saved with the config
    cfg.dtype = resolve_dtype(cfg.dtype, device, trained_in=trained_dtype(sft_path))
    seed_everything(cfg.seed)
    out = Path(cfg.out_dir) / cfg.run_name
    ckpt_path = out / "ckpt.pt"
    lock_folder(out)  # one writer: a second run on the same folder is refused
    labeler = load_world(cfg.data_dir).labeler

    # 1. comparison collection: K samples per prompt of the SFT policy (round 1) or of the latest one, ranked
    sft_ckpt = load_checkpoint(sft_path, "sft", tokenizer=str(Path(cfg.data_dir) / "tokenizer.tiktoken"))
    check_context(cfg, sft_ckpt["model_config"]["block_size"])
    tok = checkpoint_tokenizer(sft_ckpt, sft_path)
    groups = comparisons(cfg, cfg.sample_from or sft_path, tok, labeler, device)
    rng = random.Random(cfg.seed)
    train_groups, val_groups, val_all = split(groups, cfg, rng)

    # 2. the model: the SFT trunk with a fresh scalar head; 3. training
    rm, _ = load_model(sft_path, "sft", head="scalar", device=device)
    print(f"rm: {rm.num_params() / 1e6:.2f}M parameters, {len(train_groups)} train / {len(val_groups)} "
          f"held-out groups, {cfg.epochs} epoch(s), {cfg.dtype}")
    t0 = time.time()
    with phase("training"):
        history = train(rm, train_groups, val_groups, tok, cfg, rng, device, ckpt_path)
    val_loss, val_acc = history["val_loss"][-1], history["val_acc"][-1]

    # 4. accuracy vs the labeler's own ceiling
    with phase("held-out accuracy"):
        # every held-out response scored once; each accuracy below reads these scores (val_groups[j] is
        # val_all[j] without its off-prompt answers)
        scores_all = response_scores(rm, val_all, tok, device, cfg.batch_size, cfg.dtype)
        scores = [[s[i] for i in sampled_indices(g)] for s, g in zip(scores_all, val_all)]
        acc = rm_accuracy(rm, labeler, val_groups, tok, device, cfg.batch_size, cfg.dtype,
                          random.Random(cfg.seed + 1), scores)
        off_acc = scored_accuracy(scores_all, val_all)
    ceiling, gold_acc = acc["labeler_agreement"], acc["gold_order_acc"]
    print(f"rm: held-out pairwise accuracy {val_acc:.1%} | a second labeler agrees with the labels on "
          f"{ceiling:.1%} of the same pairs | vs the gold (noise-free) order: {gold_acc:.1%} | with the "
          f"off-prompt answers: {off_acc:.1%}")
    # each round's held-out groups apart: the samples of the SFT model (round 1) and of each later policy
    by_round = {}
    for r in sorted({g.get("round", 1) for g in val_groups}):
        mine = [j for j, g in enumerate(val_groups) if g.get("round", 1) == r]
        gs = [val_groups[j] for j in mine]
        with phase("held-out accuracy"):
            by_round[str(r)] = rm_accuracy(rm, labeler, gs, tok, device, cfg.batch_size, cfg.dtype,
                                           random.Random(r), [scores[j] for j in mine])
        print(f"rm: held-out groups of round {r} ({len(gs)}, {'SFT' if r == 1 else 'policy'} samples): "
              f"pairwise accuracy {by_round[str(r)]['acc']:.1%} | vs the gold order "
              f"{by_round[str(r)]['gold_order_acc']:.1%}")

    # 5. normalise: SFT demonstrations score 0 on average
    shift = normalise(rm, tok, cfg, ckpt_path)

    metrics = {"val_acc": val_acc, "val_loss": val_loss, "labeler_agreement": ceiling,
               "gold_order_acc": gold_acc,
               "val_acc_with_off_prompt": off_acc, "by_round": by_round,
               "n_train_groups": len(train_groups), "n_val_groups": len(val_groups), "norm_shift": shift}
    with phase("saving"):
        # every round: "rm"
        save_checkpoint(ckpt_path, rm, asdict(cfg), sft_ckpt, "rm", history["step"][-1], metrics)
        plot_training(out / "rm_training.png", history, ceiling)
    print(f"rm: done in {time.time() - t0:.0f}s, saved {ckpt_path} and {out / 'rm_training.png'}")
    print(phase_summary("rm"))
    return metrics


if __name__ == "__main__":
    run_main(main)
