"""Direct Preference Optimization (Rafailov et al. 2023): the policy learns from the comparisons themselves.

    python train_dpo.py                           # from out/sft, on out/rm/comparisons.jsonl   -> out/dpo/
    python train_dpo.py --beta=0.1 --run_name=dpo_beta01             # the paper's β, in its own folder
    python train_dpo.py --comparisons=pairs.jsonl # {"prompt","chosen","rejected"} lines (or K-way rankings)
    python -m nanorlhf.eval --runs=dpo            # its gold win-rate vs SFT, beside the other models

No reward model, no sampling: DPO eq. (7) on the ranked groups train_rm.py wrote, π_ref the frozen SFT model,
    loss = −E_(x, y_w, y_l) [ log σ( β log π(y_w|x)/π_ref(y_w|x) − β log π(y_l|x)/π_ref(y_l|x) ) ]
Departures (why: bench/NOTES.md): 1) AdamW with warmup and cosine decay, not RMSprop at 1e-6; β 0.3 on tiny;
2) a batch holds whole ranked groups, each response through the model once; 3) answers to other prompts are
left out by default (--off_prompt); 4) the reference log-probs are computed once before training.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from nanorlhf import distributed
from nanorlhf.checkpoint import (check_run_name, checkpoint_tokenizer, load_checkpoint, load_model,
                                 save_checkpoint,
                                 stage_path, trained_dtype)
from nanorlhf.config import (AT_LEAST_1, NON_NEGATIVE, POSITIVE, UNIT, check_config, parse_config,
                             run_main)
from nanorlhf.data import (DataError, preference_pairs, preference_sequences, read_comparisons, split_groups,
                           to_device)
from nanorlhf.files import lock_folder, with_locks
from nanorlhf.generate import response_logprobs
from nanorlhf.losses import dpo_loss
from nanorlhf.plots import line_plots
from nanorlhf.training import (Progress, phase, phase_summary, autocast, by_length, check_finite, chunk_rows,
                               lr_at, make_optimizer, resolve_dtype, seed_everything, set_lr)


# ---------------------------------------------------------------------------------------------- config
@dataclass
class Config:
    preset: str = "tiny"  # micro (seconds, tests) | tiny (2-core CPU) | small (one GPU); default: by device
    data_dir: str = "data"  # where data/prepare.py wrote the tokenizer the SFT model must use
    out_dir: str = "out"  # reads out_dir/sft and out_dir/rm/comparisons.jsonl; writes out_dir/<run_name>/
    run_name: str = "dpo"  # folder under out_dir and the checkpoint's stage (eval.py --runs=<run_name>)
    init_from: str = ""  # SFT checkpoint: the start and the frozen reference (default out_dir/sft/ckpt.pt)
    comparisons: str = ""  # ranked groups or chosen/rejected pairs (default out_dir/rm/comparisons.jsonl)
    # DPO
    beta: float = 0.1  # β of eq. (7): how far from the reference the preferences may pull (paper: 0.1)
    off_prompt: bool = False  # also learn from pairs with an answer to another prompt (see Departures)
    # optimisation
    epochs: int = 1  # passes over the training groups, each group's pairs once per pass
    batch_size: int = 16  # ranked groups per step (with all of their pairs)
    lr: float = 1e-4  # peak learning rate of AdamW, after the warmup
    min_lr_frac: float = 0.1  # cosine decays to this fraction of lr
    warmup_steps: int = 10  # steps of linear warmup from 0 to lr
    weight_decay: float = 0.0  # AdamW's decoupled weight decay, on weight matrices only
    grad_clip: float = 1.0  # the gradient's global norm is clipped to this
    val_frac: float = 0.15  # held-out share of the ranked groups (train_rm.py's split, with the same seed)
    log_interval: int = 10  # print loss, margin and accuracy every N steps
    device: str = ""  # cpu | cuda | cuda:N (default: cuda if available)
    dtype: str = "auto"  # auto | fp32 | bf16: compute precision (precision.py); auto: bf16 where it pays
    seed: int = 1337  # seeds torch, the split and the batch order (train_rm.py's default: the same split)


PRESETS = {
    "micro": dict(batch_size=4, epochs=3, lr=1e-3, log_interval=2, warmup_steps=1, val_frac=0.25),
    # tiny: β 0.3 at lr 1e-4, one epoch: the best gold win-rate vs SFT of β 0.05-1 at lr 1e-4 and 3e-4; a
    # smaller β drifts further from SFT and loses correctness, a second epoch gains within the CI for twice
    # the time (the numbers: bench/NOTES.md, "DPO on the tiny preset")
    "tiny": dict(beta=0.3),
    "small": dict(batch_size=32, lr=3e-5, warmup_steps=20),  # not measured yet
}


def get_config(argv=None) -> Config:
    cfg = parse_config(Config, argv, PRESETS)
    check_run_name("run_name", cfg.run_name, "dpo")
    check_config(cfg, beta=POSITIVE, epochs=AT_LEAST_1, batch_size=AT_LEAST_1, lr=POSITIVE, min_lr_frac=UNIT,
                 warmup_steps=NON_NEGATIVE, weight_decay=NON_NEGATIVE, grad_clip=POSITIVE,
                 val_frac=(lambda v: 0 < v < 1, "a fraction in (0, 1)"), log_interval=AT_LEAST_1)
    return cfg


# ------------------------------------------------------------------------------------------------ data
def load_groups(cfg: Config, rng: random.Random) -> tuple[list[dict], list[dict]]:
    """(training groups, held-out groups): the ranked comparisons split as train_rm.py splits them; groups
    with no pair left (every pair tied or identical) dropped after the split, so the split stays the RM's.
    Each K-way ranking gives its C(K, 2) ordered pairs less the ties and identical answers
    (data.preference_pairs); with the same seed DPO holds out the groups the RM was measured on. Pair files
    are read too (one group of K = 2 per line)."""
    path = cfg.comparisons or Path(cfg.out_dir) / "rm" / "comparisons.jsonl"
    train, val = split_groups(read_comparisons(path, "python train_rm.py"), cfg.val_frac, rng)
    train = [g for g in train if preference_pairs(g, cfg.off_prompt)]
    # held out: the K samples, as the RM's accuracy
    val = [g for g in val if preference_pairs(g, off_prompt=False)]
    if not train or not val:
        raise DataError(f"{path}: no preference pair left to {'train on' if not train else 'hold out'} "
                        "(every pair tied or identical; expected more ranked groups)")
    return train, val


# ----------------------------------------------------------------------------- log-probs, the DPO step
def sequence_logps(model, tokens, attn, P: int, resp) -> torch.Tensor:
    """log π(y|x) of each row: the log-probs of its response tokens and EOS only, summed (the shared log-prob
    path, logprobs.py). (N,)"""
    logps = response_logprobs(model, tokens, attn, P)  # (N, L - P), fp32
    return torch.where(resp, logps, 0.0).sum(1)


def chunked_logps(model, tokens, attn, P: int, resp) -> torch.Tensor:
    """sequence_logps in chunks of rows of similar length (training.by_length: a chunk is padded to its own
    longest row, not the batch's; each row's log-prob is its own whatever shares its chunk). (N,)"""
    full = torch.cat([resp.new_zeros(resp.shape[0], P), resp], 1)  # aligned with tokens: cut alike
    rows = chunk_rows(tokens.device)
    return by_length(lambda t, a, r: sequence_logps(model, t, a, P, r[:, P:]), attn, rows, tokens, attn, full)


@torch.no_grad()
def reference_logps(ref, groups: list[dict], tok, block: int, cfg: Config, device: str,
                    off_prompt: bool) -> list[dict]:
    """The groups with "ref_logps": log π_ref(y|x) of each response in a pair (None for the others).
    Under torchrun each rank scores its block of the groups and every rank gets them all."""
    mine = distributed.shard(groups)
    # chunks of groups of similar length (characters of the prompt and its longest answer): a chunk is
    # padded to its longest row, and each row's log-prob is its own whatever shares its chunk
    order = sorted(range(len(mine)),
                   key=lambda j: len(mine[j]["prompt"]) + max(map(len, mine[j]["responses"])))
    out = [None] * len(mine)
    for a in range(0, len(mine), cfg.batch_size):
        at = order[a : a + cfg.batch_size]
        chunk = [mine[j] for j in at]
        tokens, attn, P, resp, _, _, keys = (to_device(t, device) if isinstance(t, torch.Tensor) else t
                                             for t in
                                             preference_sequences(chunk, tok, block, off_prompt))
        with autocast(device, cfg.dtype):
            logps = sequence_logps(ref, tokens, attn, P, resp).tolist()
        refs = [[None] * len(g["responses"]) for g in chunk]
        for (b, i), lp in zip(keys, logps):
            refs[b][i] = lp
        for j, g, r in zip(at, chunk, refs):
            out[j] = {**g, "ref_logps": r}
    return distributed.gather(out)


def dpo_step(policy, groups: list[dict], tok, block: int, beta: float, off_prompt: bool,
             device: str, dtype: str):
    """Eq. (7) on every pair of `groups`: chosen and rejected responses in one forward, each response once.
    Returns the loss and the number of pairs, the implicit-reward margin and accuracy (ties half) as
    floats."""
    tokens, attn, P, resp, chosen, rejected, keys = preference_sequences(groups, tok, block, off_prompt)
    tokens, attn, resp, chosen, rejected = (to_device(t, device)
                                            for t in (tokens, attn, resp, chosen, rejected))
    ref = torch.tensor([groups[b]["ref_logps"][i] for b, i in keys], device=device)  # (N,)
    with autocast(device, dtype):
        logps = chunked_logps(policy, tokens, attn, P, resp)  # (N,)
    loss, r_chosen, r_rejected = dpo_loss(logps[chosen], logps[rejected], ref[chosen], ref[rejected], beta)
    margin = r_chosen - r_rejected  # (M,) the implicit reward's margin β Δlogratio
    acc = ((margin > 0).float() + 0.5 * (margin == 0).float()).mean()
    return loss, {"pairs": len(chosen), "margin": margin.mean().item(), "acc": acc.item()}


@torch.no_grad()
def evaluate(policy, groups: list[dict], tok, block: int, cfg: Config, device: str) -> dict:
    """Held-out loss, implicit-reward margin and pairwise accuracy, over the pairs of the groups' K
    samples. The implicit reward r(x, y) = β log π(y|x)/π_ref(y|x) (DPO §5) orders answers like a reward
    model: its accuracy is printed beside the reward model's own."""
    policy.eval()
    sums, n = {"loss": 0.0, "margin": 0.0, "acc": 0.0}, 0
    for a in range(0, len(groups), 4 * cfg.batch_size):
        loss, s = dpo_step(policy, groups[a : a + 4 * cfg.batch_size], tok, block, cfg.beta, False,
                           device, cfg.dtype)
        for k, v in (("loss", loss.item()), ("margin", s["margin"]), ("acc", s["acc"])):
            sums[k] += v * s["pairs"]
        n += s["pairs"]
    policy.train()
    return {k: v / n for k, v in sums.items()} | {"pairs": n}


# ------------------------------------------------------------------------------------------------ loop
def train(policy, train_groups: list[dict], val_groups: list[dict], tok, cfg: Config, rng: random.Random,
          device: str, ckpt_path: Path) -> dict:
    """`cfg.epochs` passes over the training groups, each seen once per epoch (all its pairs in one step);
    the held-out numbers after each. Returns the history (the plot's curves)."""
    block = policy.config.block_size
    opt = make_optimizer(policy, cfg.lr, cfg.weight_decay)
    steps_per_epoch = max(1, len(train_groups) // cfg.batch_size)
    max_steps = cfg.epochs * steps_per_epoch
    progress = Progress(max_steps, f"dpo[{cfg.run_name}]")
    history = {"step": [], "loss": [], "margin": [], "acc": [], "val_step": [], "val_loss": [],
               "val_margin": [],
               "val_acc": []}
    step = 0
    policy.train()
    for epoch in range(cfg.epochs):
        rng.shuffle(train_groups)
        for i in range(steps_per_epoch):
            # this rank's
            batch = distributed.shard(train_groups[i * cfg.batch_size : (i + 1) * cfg.batch_size])
            set_lr(opt, lr_at(step, max_steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_frac))
            loss, s = dpo_step(policy, batch, tok, block, cfg.beta, cfg.off_prompt, device, cfg.dtype)
            check_finite("DPO loss", loss, step + 1, ckpt_path)
            opt.zero_grad(set_to_none=True)
            (loss * distributed.local_share(s["pairs"])).backward()  # the mean over every rank's pairs
            distributed.sync_grads(policy)
            torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            row = distributed.average({"loss": loss.item(), "margin": s["margin"],
                                       "acc": s["acc"]}, s["pairs"])
            for k in ("loss", "margin", "acc"):
                history[k].append(row[k])
            history["step"].append(step)
            if step % cfg.log_interval == 0 or step == max_steps:
                progress.log(step, loss=row["loss"], margin=row["margin"], acc=row["acc"],
                             lr=opt.param_groups[0]["lr"])
        val = evaluate(policy, val_groups, tok, block, cfg, device)
        check_finite("held-out DPO loss", val["loss"], f"epoch {epoch + 1}", ckpt_path)
        for k in ("loss", "margin", "acc"):
            history[f"val_{k}"].append(val[k])
        history["val_step"].append(step)
        print(f"dpo[{cfg.run_name}] epoch {epoch + 1}: held-out loss {val['loss']:.4f} | implicit-reward "
              f"margin {val['margin']:+.3f} | pairwise accuracy {val['acc']:.1%} ({val['pairs']} pairs)")
    return history


# ------------------------------------------------------------------------------------------------ save
def reward_model_accuracy(cfg: Config) -> float | None:
    """The reward model's held-out accuracy, when it was measured on the same held-out groups (its
    comparisons, seed and split): the explicit reward model beside DPO's implicit one."""
    path = stage_path(cfg.out_dir, "rm")
    if cfg.comparisons or not path.exists():
        return None
    rm = load_checkpoint(path, "rm")
    same = (all(rm["config"].get(k) == getattr(cfg, k) for k in ("seed", "val_frac"))
            and rm["config"].get("labels") == "simulated")
    return rm["metrics"].get("val_acc") if same else None


def plot_training(path: Path, history: dict) -> None:
    line_plots(path, "DPO training", "step (batches of ranked groups)", [
        ("loss (eq. 7)", [(history["step"], history["loss"], "train"),
                          (history["val_step"], history["val_loss"], "held-out")]),
        ("implicit-reward pairwise accuracy", [(history["step"], history["acc"], "train"),
                                               (history["val_step"], history["val_acc"], "held-out")]),
    ])


# ------------------------------------------------------------------------------------------------ main
@with_locks
def main(argv=None):
    cfg = get_config(argv)
    device = distributed.init(cfg.device)  # torchrun: join the other ranks (a no-op on one process)
    distributed.check_divisible(cfg, "batch_size")
    sft_path = cfg.init_from or stage_path(cfg.out_dir, "sft")
    # auto -> what runs (the SFT model's own dtype if it records one), saved with the config
    cfg.dtype = resolve_dtype(cfg.dtype, device, trained_in=trained_dtype(sft_path))
    seed_everything(cfg.seed)
    rng = random.Random(cfg.seed)
    out = Path(cfg.out_dir) / cfg.run_name
    ckpt_path = out / "ckpt.pt"
    lock_folder(out)  # one writer: a second run on the same folder is refused

    # the data; the policy (init SFT) and the frozen reference (SFT)
    train_groups, val_groups = load_groups(cfg, rng)
    tok_file = str(Path(cfg.data_dir) / "tokenizer.tiktoken")  # the data's: the SFT model must use it
    policy, sft_ckpt = load_model(sft_path, "sft", device=device, tokenizer=tok_file)
    ref, _ = load_model(sft_path, "sft", device=device)
    ref.eval().requires_grad_(False)
    tok = checkpoint_tokenizer(sft_ckpt, sft_path)
    block = policy.config.block_size
    t0 = time.time()
    with phase("reference log-probs"):
        train_groups = reference_logps(ref, train_groups, tok, block, cfg, device, cfg.off_prompt)
        val_groups = reference_logps(ref, val_groups, tok, block, cfg, device, off_prompt=False)
    del ref
    n_pairs = sum(len(preference_pairs(g, cfg.off_prompt)) for g in train_groups)
    print(f"dpo[{cfg.run_name}]: {policy.num_params() / 1e6:.2f}M parameters, {len(train_groups)} train "
          f"groups ({n_pairs} pairs{', off-prompt answers in' if cfg.off_prompt else ''}) / "
          f"{len(val_groups)} held-out, β={cfg.beta}, {cfg.epochs} epoch(s), device {device} {cfg.dtype}")

    with phase("training"):
        history = train(policy, train_groups, val_groups, tok, cfg, rng, device, ckpt_path)

    rm_acc = reward_model_accuracy(cfg)
    metrics = {"val_acc": history["val_acc"][-1], "val_margin": history["val_margin"][-1],
               "val_loss": history["val_loss"][-1], "rm_val_acc": rm_acc, "n_train_pairs": n_pairs,
               "n_train_groups": len(train_groups), "n_val_groups": len(val_groups), "history": history}
    with phase("saving"):
        save_checkpoint(ckpt_path, policy, asdict(cfg), sft_ckpt, cfg.run_name, history["step"][-1], metrics)
        plot_training(out / "dpo_training.png", history)
    beside = f" (the reward model, same held-out groups: {rm_acc:.1%})" if rm_acc is not None else ""
    print(f"dpo[{cfg.run_name}]: held-out implicit-reward accuracy {metrics['val_acc']:.1%}{beside}, margin "
          f"{metrics['val_margin']:+.3f} | done in {time.time() - t0:.0f}s, saved {ckpt_path}")
    print(phase_summary(f"dpo[{cfg.run_name}]"))
    return metrics


if __name__ == "__main__":
    run_main(main)
