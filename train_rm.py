"""Step 3 of InstructGPT: sample K responses per prompt, have them ranked, train a reward model.

    python train_rm.py                         # samples from out/sft, the simulated labeler ranks -> out/rm/
    python train_rm.py --resample=true         # sample and rank again instead of reusing comparisons.jsonl
    python train_rm.py --labels=both --human_labels=data/human_labels.jsonl   # add your own rankings
                                               # (made with: python -m nanorlhf.label)

"A prompt and several model outputs are sampled. A labeler ranks the outputs from best to worst. This
data is used to train our reward model." The reward model is the SFT GPT with its LM head swapped for a
scalar head read at the last real token (the EOS). Loss: InstructGPT eq. (1) over all the pairs of one
prompt's group, in one batch element (losses.ranking_loss). A group holds the K samples and `off_prompt`
answers the policy wrote for other prompts (see collect_comparisons): with the default one, C(K+1, 2)
pairs. One epoch by default: InstructGPT found more epochs overfit. Pairs the labeler finds equally
good (ties) carry no preference and are skipped. At the end a bias is set so that SFT demonstrations
score 0 on average (InstructGPT §3.5/App. C). Held-out pairwise accuracy (on the K samples' pairs that
are not ties) is reported beside a second labeler's agreement on the same pairs.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from nanorlhf import distributed
from nanorlhf.checkpoint import checkpoint_tokenizer, load_model, save_checkpoint, stage_path
from nanorlhf.config import (AT_LEAST_1, NON_NEGATIVE, POSITIVE, UNIT, check_config, check_context, one_of,
                             parse_config, run_main)
from nanorlhf.data import (load_world, ranked_sequences, read_comparisons, read_jsonl, read_prompts, split_groups,
                           subgroup, to_device, write_jsonl)
from nanorlhf.eval import score_texts
from nanorlhf.generate import sample_responses
from nanorlhf.losses import ranking_accuracy, ranking_loss
from nanorlhf.plots import line_plots
from nanorlhf.training import (Progress, autocast, check_finite, lr_at, make_optimizer, resolve_dtype,
                               seed_everything, set_lr)
from nanorlhf.world import tied_pairs


# ---------------------------------------------------------------------------------------------- config
@dataclass
class Config:
    preset: str = "tiny"  # micro (seconds, for tests) | tiny (2-core CPU) | small (one GPU); default from the device
    data_dir: str = "data"  # where data/prepare.py wrote the prompts, demonstrations and tokenizer
    out_dir: str = "out"  # reads out_dir/sft; writes out_dir/rm/ (checkpoint, comparisons.jsonl, training plot)
    init_from: str = ""  # SFT checkpoint (default out_dir/sft/ckpt.pt)
    # comparison collection
    n_prompts: int = 1200  # training prompts to sample for
    k: int = 4  # responses per prompt (InstructGPT: 4-9)
    off_prompt: int = 1  # + responses the policy wrote for other prompts, ranked with the K (see collect_comparisons)
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
    dtype: str = "auto"  # auto | fp32 | bf16: compute precision (nanorlhf/precision.py); auto: bf16 where it pays
    seed: int = 1337  # seeds torch, sampling, the labeler's noise and the batch order


PRESETS = {
    "micro": dict(n_prompts=24, k=3, max_new_tokens=12, batch_size=4, log_interval=2, warmup_steps=1, val_frac=0.25),
    # tiny: one epoch at 1e-4 underfits a 1M-parameter RM; more than 2 epochs at 5e-4 gain nothing (the
    # accuracies: bench/NOTES.md, "Preset choices"); 2,000 prompts so the rarer axes (refusals, false
    # premises) reach the ranked groups often enough
    "tiny": dict(lr=5e-4, epochs=2, n_prompts=2000),
    "small": dict(n_prompts=6000, k=6, batch_size=32, lr=3e-5, warmup_steps=20),
}


def get_config(argv=None) -> Config:
    cfg = parse_config(Config, argv, PRESETS)
    check_config(cfg, labels=one_of("simulated", "human", "both"), n_prompts=AT_LEAST_1,
                 k=(lambda k: k >= 2, "at least 2 (a ranking compares responses)"), off_prompt=NON_NEGATIVE,
                 temperature=POSITIVE, max_new_tokens=AT_LEAST_1, epochs=AT_LEAST_1, batch_size=AT_LEAST_1,
                 lr=POSITIVE, min_lr_frac=UNIT, warmup_steps=NON_NEGATIVE, weight_decay=NON_NEGATIVE,
                 grad_clip=POSITIVE, val_frac=(lambda v: 0 < v < 1, "a fraction in (0, 1)"),
                 log_interval=AT_LEAST_1)
    return cfg


# ---------------------------------------------------------------------------- 1. comparison collection
def collect_comparisons(policy, tok, labeler, prompts: list[dict], cfg: Config, generator) -> list[dict]:
    """K samples per prompt from the SFT policy (one batched KV-cache generation), ranked by the labeler,
    who also marks the pairs it finds equally good (ties): the loss and the accuracy skip those.

    Each group also gets `cfg.off_prompt` responses the policy wrote for *other* prompts, of another
    category, listed in the record's "off_prompt". Why: the SFT model almost always answers the question
    it was asked, so K samples of it never show the reward model an answer to the wrong question -- and a
    reward model that never saw one scores "This review is negative." as highly under a chat prompt as
    under a review. PPO found exactly that hole (measured: a fifth of its answers went off task, gold
    win-rate flat). Collecting comparisons of the RL policy's own samples and retraining (Stiennon et al.
    2020; Bai et al. 2022, "iterated online RLHF") closes such holes; an answer to another prompt is the
    cheapest stand-in. Held-out accuracy is reported on the K samples only."""
    texts = [p["prompt"] for p in prompts for _ in range(cfg.k)]
    outs = sample_responses(policy, tok, texts, cfg.max_new_tokens, cfg.temperature, generator=generator)
    rng = random.Random(cfg.seed)
    others_of = {c: [i for i, q in enumerate(prompts) if q["category"] != c] for c in {p["category"] for p in prompts}}
    groups = []
    for j, p in enumerate(prompts):
        resp, others = outs[j * cfg.k : (j + 1) * cfg.k], others_of[p["category"]]
        resp += [outs[i * cfg.k + rng.randrange(cfg.k)] for i in rng.sample(others, min(cfg.off_prompt, len(others)))]
        texts_j, finished = [r for r, _ in resp], [f for _, f in resp]
        ranking = labeler.rank(p["prompt"], texts_j, rng, finished=finished)
        groups.append({"prompt": p["prompt"], "category": p["category"], "responses": texts_j,
                       "finished": finished, "ranking": ranking, "ties": labeler.ties(p["prompt"], texts_j, finished),
                       "off_prompt": list(range(cfg.k, len(resp)))})
    return groups


def comparisons(cfg: Config, policy, tok, labeler, device: str) -> list[dict]:
    """Step 1's ranked groups: the simulated labeler's (reused from comparisons.jsonl unless --resample,
    else sampled and ranked now) and, with --labels=human or both, a person's (python -m nanorlhf.label)."""
    comp_path = Path(cfg.out_dir) / "rm" / "comparisons.jsonl"
    groups = []
    if cfg.labels in ("simulated", "both"):
        if comp_path.exists() and not cfg.resample:
            groups = read_comparisons(comp_path)
            print(f"rm: reusing {len(groups)} ranked groups from {comp_path} (--resample=true to redo)")
        else:
            with autocast(device, cfg.dtype):  # sampled in the regime SFT trained in
                groups = collect_comparisons(policy, tok, labeler, read_prompts(cfg.data_dir, "train")[: cfg.n_prompts],
                                             cfg, torch.Generator(device).manual_seed(cfg.seed))
            write_jsonl(comp_path, groups)
            n_ties = sum(len(g["ties"]) for g in groups)
            n_pairs = sum(len(g["responses"]) * (len(g["responses"]) - 1) // 2 for g in groups)
            print(f"rm: wrote {len(groups)} groups of {cfg.k} samples + {cfg.off_prompt} off-prompt, ranked, to "
                  f"{comp_path} ({n_ties / n_pairs:.0%} of the pairs are ties)")
    if cfg.labels in ("human", "both"):
        human = [{**g, "human": True} for g in read_comparisons(cfg.human_labels, "python -m nanorlhf.label")]
        print(f"rm: {len(human)} human-ranked groups from {cfg.human_labels}")
        groups += human
    return groups


def sampled_only(g: dict) -> dict:
    """A group without its off-prompt responses: the K samples the accuracy is measured on."""
    off = set(g.get("off_prompt", ()))
    return subgroup(g, [i for i in range(len(g["responses"])) if i not in off]) if off else g


def split(groups: list[dict], cfg: Config, rng: random.Random):
    """(training groups, held-out groups on their K samples, held-out groups whole), in a shuffled order."""
    train_groups, val_groups = split_groups(groups, cfg.val_frac, rng)
    return train_groups, [sampled_only(g) for g in val_groups], val_groups  # accuracy: on the K samples


# --------------------------------------------------------------------- 2-3. the ranking loss, training
def rm_step(rm, groups, tok, block, device, dtype):
    tokens, mask, valid, tied = (to_device(t, device) for t in ranked_sequences(groups, tok, block))
    with autocast(device, dtype):
        scores = rm(tokens, mask).float().view(valid.shape)  # (B, K), best first
    correct, pairs = ranking_accuracy(scores.detach(), valid, tied)
    return ranking_loss(scores, valid, tied), (correct / pairs.clamp(min=1)).item()


@torch.no_grad()
def evaluate(rm, groups, tok, block, device, batch_size, dtype):
    rm.eval()
    loss_sum, correct, pairs = 0.0, 0.0, 0.0
    for i in range(0, len(groups), batch_size):
        batch = ranked_sequences(groups[i : i + batch_size], tok, block)
        tokens, mask, valid, tied = (to_device(t, device) for t in batch)
        with autocast(device, dtype):
            scores = rm(tokens, mask).float().view(valid.shape)
        loss_sum += ranking_loss(scores, valid, tied).item() * valid.shape[0]
        c, p = ranking_accuracy(scores, valid, tied)
        correct, pairs = correct + c.item(), pairs + p.item()
    rm.train()
    return loss_sum / max(1, len(groups)), correct / max(1.0, pairs)


def train(rm, train_groups: list[dict], val_groups: list[dict], tok, cfg: Config, rng: random.Random, device: str,
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
            batch = distributed.shard(train_groups[i * cfg.batch_size : (i + 1) * cfg.batch_size])  # this rank's
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
        val_loss, val_acc = evaluate(rm, val_groups, tok, block, device, cfg.batch_size, cfg.dtype)
        check_finite("held-out reward-model loss", val_loss, f"epoch {epoch + 1}", ckpt_path)
        history["val_step"].append(step), history["val_loss"].append(val_loss), history["val_acc"].append(val_acc)
        print(f"rm epoch {epoch + 1}: held-out loss {val_loss:.4f} | held-out pairwise accuracy {val_acc:.1%}")
    return history


# ------------------------------------------------------------ 4. accuracy vs the labeler's own ceiling
def labeler_agreement(labeler, groups, rng) -> float:
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


# ---------------------------------------------------------------------------------------- 5. normalise
def normalise(rm, tok, cfg: Config, ckpt_path: Path) -> float:
    """Shift the score's bias so that SFT demonstrations score 0 on average (InstructGPT §3.5); return the shift."""
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
        ("loss (eq. 1)", [(history["step"], history["loss"], "train"), (history["val_step"], history["val_loss"], "held-out")]),
        ("pairwise accuracy", [(history["step"], history["acc"], "train"), (history["val_step"], history["val_acc"], "held-out"),
                               ([0, history["step"][-1]], [ceiling, ceiling], "labeler agreement")]),
    ])


# ------------------------------------------------------------------------------------------------ main
def main(argv=None):
    cfg = get_config(argv)
    device = distributed.init(cfg.device)  # torchrun: join the other ranks; sampling is sharded in generate.py
    distributed.check_divisible(cfg, "batch_size")
    cfg.dtype = resolve_dtype(cfg.dtype, device)  # auto -> what runs, saved with the config
    seed_everything(cfg.seed)
    out = Path(cfg.out_dir) / "rm"
    ckpt_path = stage_path(cfg.out_dir, "rm")
    sft_path = cfg.init_from or stage_path(cfg.out_dir, "sft")
    labeler = load_world(cfg.data_dir).labeler

    # 1. comparison collection: K samples of the SFT policy per prompt, ranked
    policy, sft_ckpt = load_model(sft_path, "sft", device=device,
                                  tokenizer=str(Path(cfg.data_dir) / "tokenizer.tiktoken"))
    check_context(cfg, policy.config.block_size)
    tok = checkpoint_tokenizer(sft_ckpt, sft_path)
    groups = comparisons(cfg, policy, tok, labeler, device)
    del policy
    rng = random.Random(cfg.seed)
    train_groups, val_groups, val_all = split(groups, cfg, rng)

    # 2. the model: the SFT trunk with a fresh scalar head; 3. training
    rm, _ = load_model(sft_path, "sft", head="scalar", device=device)
    print(f"rm: {rm.num_params() / 1e6:.2f}M parameters, {len(train_groups)} train / {len(val_groups)} held-out "
          f"groups, {cfg.epochs} epoch(s), {cfg.dtype}")
    t0 = time.time()
    history = train(rm, train_groups, val_groups, tok, cfg, rng, device, ckpt_path)
    val_loss, val_acc = history["val_loss"][-1], history["val_acc"][-1]

    # 4. accuracy vs the labeler's own ceiling
    block = rm.config.block_size
    ceiling = labeler_agreement(labeler, val_groups, random.Random(cfg.seed + 1))
    gold_acc = evaluate(rm, [gold_order(labeler, g) for g in val_groups], tok, block, device, cfg.batch_size,
                        cfg.dtype)[1]
    off_acc = evaluate(rm, val_all, tok, block, device, cfg.batch_size, cfg.dtype)[1]
    print(f"rm: held-out pairwise accuracy {val_acc:.1%} | a second labeler agrees with the labels on "
          f"{ceiling:.1%} of the same pairs | vs the gold (noise-free) order: {gold_acc:.1%} | "
          f"with the off-prompt answers: {off_acc:.1%}")

    # 5. normalise: SFT demonstrations score 0 on average
    shift = normalise(rm, tok, cfg, ckpt_path)

    metrics = {"val_acc": val_acc, "val_loss": val_loss, "labeler_agreement": ceiling, "gold_order_acc": gold_acc,
               "val_acc_with_off_prompt": off_acc,
               "n_train_groups": len(train_groups), "n_val_groups": len(val_groups), "norm_shift": shift,
               "train_time_s": time.time() - t0}
    save_checkpoint(ckpt_path, rm, asdict(cfg), sft_ckpt, "rm", history["step"][-1], metrics)
    plot_training(out / "rm_training.png", history, ceiling)
    print(f"rm: done in {time.time() - t0:.0f}s, saved {ckpt_path} and {out / 'rm_training.png'}")
    return metrics


if __name__ == "__main__":
    run_main(main)
