"""Steps 1 and 2 of InstructGPT: pretrain a GPT on the corpus, then fine-tune it on demonstrations.

    python train_sft.py --stage=pretrain      # next-token loss on data/corpus.txt        -> out/base/
    python train_sft.py --stage=sft           # loss on response tokens of data/sft.jsonl -> out/sft/
    python train_sft.py --stage=sft --lr=3e-4 --max_steps=500     # any config field from the command line

One supervised loop serves both stages; they differ only in the batches (random windows of the corpus,
or demonstrations with a loss mask that is 1 exactly on the response tokens) and the initial weights.
At the end the gold labeler rates samples for held-out prompts: the base model should not follow
instructions (low rating); the SFT model should (clearly higher).
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from nanorlhf import distributed
from nanorlhf.checkpoint import (checkpoint_tokenizer, load_model, save_checkpoint, stage_path,
                                 tokenizer_record,
                                 trained_dtype)
from nanorlhf.config import (AT_LEAST_1, FRACTION, NON_NEGATIVE, POSITIVE, UNIT, ConfigError, check_config,
                             check_context, one_of, parse_config, run_main)
from nanorlhf.data import (corpus_tokens, lm_batches, load_world, read_jsonl, read_prompts, sft_batch,
                           to_device)
from nanorlhf.evaluation import format_eval, gold_eval
from nanorlhf.files import lock_folder, with_locks
from nanorlhf.generate import sample_responses
from nanorlhf.losses import sft_loss
from nanorlhf.model import GPT, GPTConfig
from nanorlhf.tokenizer import load_tokenizer
from nanorlhf.training import (Progress, phase, phase_summary, autocast, check_finite, check_learnable,
                               chunk_rows, length_chunks, lr_at, make_optimizer,
                               resolve_dtype, seed_everything, set_lr)


# ---------------------------------------------------------------------------------------------- config
@dataclass
class Config:
    stage: str = "sft"  # pretrain (corpus -> out/base) | sft (demonstrations -> out/sft)
    preset: str = "tiny"  # micro (seconds, tests) | tiny (2-core CPU) | small (one GPU); default: by device
    data_dir: str = "data"  # where data/prepare.py wrote the corpus, demonstrations, prompts and tokenizer
    out_dir: str = "out"  # checkpoints go to out_dir/base/ckpt.pt (pretrain) or out_dir/sft/ckpt.pt (sft)
    tokenizer: str = ""  # ranks file (default data_dir/tokenizer.tiktoken) or "gpt2"; SFT checks the base's
    init_from: str = ""  # sft: checkpoint to start from (default out_dir/base/ckpt.pt)
    # model (pretraining only; SFT keeps the base model's shape)
    n_layer: int = 4  # transformer blocks
    n_head: int = 4  # attention heads per block (a divisor of n_embd)
    n_embd: int = 128  # width of the residual stream
    block_size: int = 128  # context length in tokens (prompt + response must fit)
    dropout: float = 0.0  # dropout probability while pretraining (RLHF stages switch it off)
    pos_embedding: str = "rope"  # rope: rotary positions, which learn to copy sooner | learned (GPT-2)
    # optimisation
    batch_size: int = 16  # sequences per step: corpus windows, or demonstrations
    max_steps: int = 600  # optimizer steps
    lr: float = 3e-3  # peak learning rate of AdamW, after the warmup
    min_lr_frac: float = 0.1  # cosine decays to this fraction of lr
    warmup_steps: int = 50  # steps of linear warmup from 0 to lr
    weight_decay: float = 0.1  # AdamW's decoupled weight decay, on weight matrices only (not biases, gains)
    grad_clip: float = 1.0  # the gradient's global norm is clipped to this
    val_frac: float = 0.05  # held-out share of the corpus / demonstrations
    # logging and evaluation
    log_interval: int = 50  # print the training loss every N steps
    eval_interval: int = 200  # held-out loss (and a checkpoint) every N steps
    eval_batches: int = 10  # batches the held-out loss is averaged over
    sample_interval: int = 0  # print samples every N steps (0: only at the end)
    gold_eval_prompts: int = 100  # held-out prompts judged by the gold labeler at the end (0: skip)
    max_new_tokens: int = 48  # longest sampled response, in tokens
    device: str = ""  # cpu | cuda | cuda:N (default: cuda if available)
    dtype: str = "auto"  # auto | fp32 | bf16: compute precision (precision.py); auto: bf16 where it pays
    seed: int = 1337  # seeds torch, the batch order and sampling: same seed, same device -> same bits


PRESETS = {
    "micro": dict(n_layer=1, n_head=2, n_embd=32, block_size=64, batch_size=8,
                  max_steps=30, warmup_steps=5,
                  log_interval=10, eval_interval=15, eval_batches=2, gold_eval_prompts=8, max_new_tokens=16),
    # tiny: 600 steps (val loss 0.724) rather than 1,200 (0.704): the later stages did as well on it, at
    # half the time (bench/NOTES.md, "A pipeline in ten minutes")
    "tiny": dict(max_steps=600),
    "small": dict(n_layer=6, n_head=8, n_embd=384, block_size=256, batch_size=64,
                  max_steps=3000, lr=1e-3,
                  warmup_steps=200, eval_interval=500, gold_eval_prompts=400),
}
# SFT starts from the base model: a smaller learning rate, fewer steps (about 1.7 epochs on the tiny data).
SFT_OVERRIDES = {
    "micro": dict(max_steps=30, lr=1e-3),
    "tiny": dict(max_steps=400, lr=1e-3, batch_size=32, warmup_steps=20, eval_interval=100),
    "small": dict(max_steps=1500, lr=3e-4, batch_size=64, warmup_steps=100, eval_interval=250),
}


def get_config(argv=None) -> Config:
    argv = sys.argv[1:] if argv is None else argv
    stage = next((a.split("=", 1)[1] for a in argv if a.startswith("--stage=")), Config.stage)
    if stage not in ("pretrain", "sft"):
        raise ConfigError(f"--stage={stage}: expected pretrain or sft")
    presets = {k: {**v, **(SFT_OVERRIDES[k] if stage == "sft" else {})} for k, v in PRESETS.items()}
    cfg = parse_config(Config, argv, presets)
    check_config(cfg, pos_embedding=one_of("learned", "rope"), n_layer=AT_LEAST_1, n_head=AT_LEAST_1,
                 n_embd=AT_LEAST_1, block_size=AT_LEAST_1, dropout=FRACTION, batch_size=AT_LEAST_1,
                 max_steps=AT_LEAST_1, lr=POSITIVE, min_lr_frac=UNIT, warmup_steps=NON_NEGATIVE,
                 weight_decay=NON_NEGATIVE, grad_clip=POSITIVE, val_frac=FRACTION, log_interval=AT_LEAST_1,
                 eval_interval=AT_LEAST_1, eval_batches=AT_LEAST_1, sample_interval=NON_NEGATIVE,
                 gold_eval_prompts=NON_NEGATIVE, max_new_tokens=AT_LEAST_1)
    head_dim = cfg.n_embd // cfg.n_head
    check_config(cfg, n_head=(lambda h: cfg.n_embd % h == 0, f"a divisor of --n_embd={cfg.n_embd}"),
                 pos_embedding=(lambda p: p == "learned" or head_dim % 2 == 0,
                                f"learned: rotary positions need an even head size, got {head_dim}"))
    return cfg


def out_name(cfg: Config) -> str:
    return "base" if cfg.stage == "pretrain" else "sft"


# ------------------------------------------------------------------------------------- tokenizer, data
def starting_point(cfg: Config, device: str):
    """(model, tokenizer, tokenizer record). Pretraining reads the tokenizer file and builds its model once
    the data is read (None here); SFT continues the base model, with the tokenizer it carries (which must
    be the one the data came with) and its context length."""
    tok_spec = cfg.tokenizer or str(Path(cfg.data_dir) / "tokenizer.tiktoken")
    if cfg.stage == "pretrain":
        return None, load_tokenizer(tok_spec), tokenizer_record(tok_spec)
    model, tok_fields = load_model(cfg.init_from or stage_path(cfg.out_dir, "base"), "base", device=device,
                                   tokenizer=tok_spec)
    cfg.block_size = model.config.block_size
    return model, checkpoint_tokenizer(tok_fields), tok_fields


def demo_batches(pairs, cfg: Config, pad_id: int, rng: random.Random):
    """Endless shuffled epochs of demonstration batches (inputs, targets, response-only loss mask)."""
    while True:
        order = list(range(len(pairs)))
        rng.shuffle(order)
        for i in range(0, len(order) - cfg.batch_size + 1 if len(order) >= cfg.batch_size else 1,
                       cfg.batch_size):
            yield sft_batch([pairs[j] for j in order[i : i + cfg.batch_size]], pad_id, cfg.block_size)


def batches(cfg: Config, tok, gen: torch.Generator):
    """(training batches, a function that gives the same held-out batches at every call, a description).
    Pretraining: random windows of the corpus, its end held out. SFT: demonstrations with a loss mask that
    is 1 exactly on the response tokens, the last ones held out; either part without a response token
    in the model's context (every prompt too long, or too few demonstrations) is refused."""
    if cfg.stage == "pretrain":
        tokens = corpus_tokens(cfg.data_dir, tok)
        n_val = max(cfg.block_size + 2, int(len(tokens) * cfg.val_frac))
        train_batches = lm_batches(tokens[:-n_val], cfg.batch_size, cfg.block_size, gen,
                                   source=f"{Path(cfg.data_dir) / 'corpus.txt'} without its held-out end")
        val_batches = lambda: lm_batches(tokens[-n_val:], cfg.batch_size, cfg.block_size,  # noqa: E731
                                         torch.Generator().manual_seed(0))  # the same batches at every eval
        return train_batches, val_batches, f"{len(tokens):,} corpus tokens"
    path = Path(cfg.data_dir) / "sft.jsonl"
    demos = read_jsonl(path, {"prompt": str, "response": str})
    pairs = [tok.pair_ids(d["prompt"], d["response"]) for d in demos]
    n_val = max(1, int(len(pairs) * cfg.val_frac))
    for part, name in ((pairs[:-n_val], "training"), (pairs[-n_val:], "held-out")):
        loss_tokens = sum(sum(mask[1 : cfg.block_size + 1]) for _, mask in part)  # what sft_batch keeps
        check_learnable(loss_tokens, f"{path}: {len(part)} {name} demonstration(s) of {len(pairs)}, with no "
                        f"response token within the model's {cfg.block_size}-token context (expected at "
                        "least 2 demonstrations whose prompts fit the context)",
                        stage_path(cfg.out_dir, out_name(cfg)))
    train_batches = demo_batches(pairs[:-n_val], cfg, tok.pad_id, random.Random(cfg.seed))
    val_batches = lambda: demo_batches(pairs[-n_val:], cfg, tok.pad_id, random.Random(0))  # noqa: E731
    return train_batches, val_batches, f"{len(pairs):,} demonstrations"


# ----------------------------------------------------------------------------------------------- model
def new_model(cfg: Config, tok, device: str) -> GPT:
    """Pretraining's fresh GPT of the configured shape."""
    mcfg = GPTConfig(vocab_size=tok.vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer,
                     n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout,
                     pos_embedding=cfg.pos_embedding)
    return GPT(mcfg).to(device)


# ------------------------------------------------------------------------------------------------ loop
@torch.no_grad()
def evaluate(model, batches, n_batches: int, device: str, dtype: str) -> float:
    model.eval()
    losses, batches = [], batches()
    for _ in range(n_batches):
        x, y, m = (to_device(t, device) for t in next(batches))
        losses.append(batch_loss(model, x, y, m, dtype).item())
    model.train()
    return sum(losses) / len(losses)


def batch_loss(model, x, y, m, dtype: str, weight: torch.Tensor | float | None = None) -> torch.Tensor:
    """The batch's next-token loss (sft_loss: the mean over every counted token of the batch), computed in
    chunks of rows of similar length (training.length_chunks: far less padding, the same loss). With
    `weight` each chunk's part of the loss, times weight, is back-propagated at once, so that only one chunk's
    activations are held. Returns the loss, detached."""
    n, loss = m.sum().clamp(min=1), torch.zeros((), device=m.device)  # no counted token: 0, as sft_loss
    for rows, cols in length_chunks(m, chunk_rows(m.device)):
        mc = m[rows, :cols]
        with autocast(x.device.type, dtype):
            part = sft_loss(model(x[rows, :cols]), y[rows, :cols], mc) * (mc.sum() / n)  # share of the mean
        if weight is not None:
            (part * weight).backward()
        loss += part.detach()
    return loss


def train(model, tok, tok_fields: dict, opt, train_batches, val_batches, cfg: Config, device: str):
    """The supervised loop of both stages; a checkpoint at every held-out evaluation. Returns the metrics
    of the last one and the training time."""
    ckpt_path = stage_path(cfg.out_dir, out_name(cfg))
    progress = Progress(cfg.max_steps, cfg.stage)
    metrics, tokens_seen, step_t0 = {}, 0, time.time()
    model.train()
    for step in range(cfg.max_steps + 1):
        if step % cfg.eval_interval == 0 or step == cfg.max_steps:
            with phase("held-out loss"):
                val = evaluate(model, val_batches, cfg.eval_batches, device, cfg.dtype)
            check_finite("validation loss", val, step, ckpt_path)
            metrics.update(val_loss=val, step=step)
            print(f"{cfg.stage} step {step:>5}/{cfg.max_steps} | val loss {val:.4f}")
            # in progress: beside the finished checkpoint, never over it
            if step > 0 and step < cfg.max_steps:
                with phase("saving"):
                    save_checkpoint(ckpt_path, model, asdict(cfg), tok_fields, out_name(cfg), step, metrics,
                                    finished=False)
        if cfg.sample_interval and step % cfg.sample_interval == 0 and step > 0:
            print_samples(model, tok, read_prompts(cfg.data_dir, "val")[:2], cfg)
        if step == cfg.max_steps:
            break
        set_lr(opt, lr_at(step, cfg.max_steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_frac))
        with phase("batches"):
            # this rank's rows
            x, y, m = (to_device(distributed.shard(t), device) for t in next(train_batches))
        with phase("update"):
            opt.zero_grad(set_to_none=True)
            # weighted: the mean over every rank's tokens
            loss = batch_loss(model, x, y, m, cfg.dtype, distributed.local_share(m.sum()))
            check_finite("training loss", loss, step, ckpt_path)  # before the step: the weights are unchanged
            distributed.sync_grads(model)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
        tokens_seen += int(m.sum())
        if (step + 1) % cfg.log_interval == 0:
            tps = tokens_seen / (time.time() - step_t0)
            progress.log(step + 1, loss=loss.item(), lr=opt.param_groups[0]["lr"], grad_norm=float(grad_norm),
                         tok_per_s=int(tps))
    return metrics, progress.elapsed()


# ------------------------------------------------------------------------------------------ evaluation
def print_samples(model, tok, prompts: list[dict], cfg: Config) -> None:
    with autocast(model.wte.weight.device, cfg.dtype):
        outs = sample_responses(model, tok, [p["prompt"] for p in prompts], cfg.max_new_tokens,
                                temperature=0.7,
                                seed=0)
    for p, (r, finished) in zip(prompts, outs):
        end = "" if finished else " (no EOS)"
        print(f"  [{p['category']}] {p['prompt'][:80]!r}\n    -> {r[:160]!r}{end}")


def gold_judge_val_samples(model, tok, labeler, cfg: Config, device: str) -> dict:
    """The gold labeler's judgement of one sample per held-out prompt: the base model should not follow
    instructions (a low rating), the SFT model should (clearly higher)."""
    ev = gold_eval(model, tok, labeler, read_prompts(cfg.data_dir, "val")[: cfg.gold_eval_prompts],
                   cfg.max_new_tokens, seed=cfg.seed)
    ev.pop("samples")
    print(format_eval(f"{out_name(cfg)} model", ev))
    return ev


# ------------------------------------------------------------------------------------------------ main
@with_locks
def main(argv=None):
    cfg = get_config(argv)
    device = distributed.init(cfg.device)  # torchrun: join the other ranks (a no-op on one process)
    distributed.check_divisible(cfg, "batch_size")
    # auto -> what runs (SFT: the base model's own dtype, if it records one), saved with the config
    start = trained_dtype(cfg.init_from or stage_path(cfg.out_dir, "base")) if cfg.stage == "sft" else None
    cfg.dtype = resolve_dtype(cfg.dtype, device, trained_in=start)
    gen = seed_everything(cfg.seed)
    ckpt_path = stage_path(cfg.out_dir, out_name(cfg))
    lock_folder(ckpt_path.parent)  # one writer: a second run on the same folder is refused
    model, tok, tok_fields = starting_point(cfg, device)
    check_context(cfg, cfg.block_size)
    world = load_world(cfg.data_dir)
    train_batches, val_batches, data_desc = batches(cfg, tok, gen)
    if model is None:
        model = new_model(cfg, tok, device)
    print(f"{cfg.stage}: {model.num_params() / 1e6:.2f}M parameters, {data_desc}, preset {cfg.preset}, "
          f"device {device} {cfg.dtype}, {cfg.max_steps} steps of {cfg.batch_size}")
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
    metrics, train_time = train(model, tok, tok_fields, opt, train_batches, val_batches, cfg, device)
    print_samples(model, tok, read_prompts(cfg.data_dir, "val")[:3], cfg)
    if cfg.gold_eval_prompts:
        with phase("gold evaluation"):
            metrics["gold"] = gold_judge_val_samples(model, tok, world.labeler, cfg, device)
    with phase("saving"):
        save_checkpoint(ckpt_path, model, asdict(cfg), tok_fields, out_name(cfg), cfg.max_steps, metrics)
    print(f"{cfg.stage}: done in {train_time:.0f}s, saved {ckpt_path}")
    print(phase_summary(cfg.stage))
    return metrics


if __name__ == "__main__":
    run_main(main)
