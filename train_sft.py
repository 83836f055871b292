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

import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from nanorlhf.checkpoint import load_model, save_checkpoint, stage_path
from nanorlhf.config import ConfigError, parse_config, run_main
from nanorlhf.data import corpus_tokens, lm_batches, load_world, read_jsonl, read_prompts, sft_batch
from nanorlhf.eval import format_eval, gold_eval
from nanorlhf.generate import sample_responses
from nanorlhf.losses import sft_loss
from nanorlhf.model import GPT, GPTConfig
from nanorlhf.tokenizer import load_tokenizer
from nanorlhf.training import (Progress, autocast, check_finite, lr_at, make_optimizer, resolve_dtype,
                               seed_everything, set_lr, setup_device)


# ---------------------------------------------------------------------------------------------- config
@dataclass
class Config:
    stage: str = "sft"  # pretrain | sft
    preset: str = "tiny"  # micro | tiny (2-core CPU) | small (one GPU); default from the device
    data_dir: str = "data"
    out_dir: str = "out"
    tokenizer: str = ""  # ranks file (default data_dir/tokenizer.tiktoken) or "gpt2"
    init_from: str = ""  # sft: checkpoint to start from (default out_dir/base/ckpt.pt)
    # model (pretraining only; SFT keeps the base model's shape)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128
    dropout: float = 0.0
    pos_embedding: str = "learned"  # learned (GPT-2) | rope: rotary positions, which learn to copy sooner (README)
    # optimisation
    batch_size: int = 16
    max_steps: int = 600
    lr: float = 3e-3
    min_lr_frac: float = 0.1  # cosine decays to this fraction of lr
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    val_frac: float = 0.05  # held-out share of the corpus / demonstrations
    # logging and evaluation
    log_interval: int = 50
    eval_interval: int = 200
    eval_batches: int = 10
    sample_interval: int = 0  # print samples every N steps (0: only at the end)
    gold_eval_prompts: int = 100  # held-out prompts judged by the gold labeler at the end (0: skip)
    max_new_tokens: int = 48
    device: str = ""  # default: cuda if available
    dtype: str = "auto"  # auto | fp32 | bf16: compute precision (nanorlhf/precision.py); auto: bf16 where it pays
    seed: int = 1337


PRESETS = {
    "micro": dict(n_layer=1, n_head=2, n_embd=32, block_size=64, batch_size=8, max_steps=30, warmup_steps=5,
                  log_interval=10, eval_interval=15, eval_batches=2, gold_eval_prompts=8, max_new_tokens=16),
    "tiny": dict(),
    "small": dict(n_layer=6, n_head=8, n_embd=384, block_size=256, batch_size=64, max_steps=3000, lr=1e-3,
                  warmup_steps=200, eval_interval=500, gold_eval_prompts=400),
}
# SFT starts from the base model: a smaller learning rate, fewer steps (about two epochs on the tiny data).
SFT_OVERRIDES = {
    "micro": dict(max_steps=30, lr=1e-3),
    "tiny": dict(max_steps=400, lr=1e-3, batch_size=32, warmup_steps=20, eval_interval=100),
    "small": dict(max_steps=1500, lr=3e-4, batch_size=64, warmup_steps=100, eval_interval=250),
}


def get_config(argv=None) -> Config:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    stage = next((a.split("=", 1)[1] for a in argv if a.startswith("--stage=")), Config.stage)
    if stage not in ("pretrain", "sft"):
        raise ConfigError(f"--stage={stage}: expected pretrain or sft")
    presets = {k: {**v, **(SFT_OVERRIDES[k] if stage == "sft" else {})} for k, v in PRESETS.items()}
    cfg = parse_config(Config, argv, presets)
    if cfg.pos_embedding not in ("learned", "rope"):
        raise ConfigError(f"--pos_embedding={cfg.pos_embedding}: expected learned or rope")
    return cfg


def main(argv=None):
    cfg = get_config(argv)
    device = setup_device(cfg.device)
    cfg.dtype = resolve_dtype(cfg.dtype, device)  # auto -> what runs, saved with the config
    gen = seed_everything(cfg.seed)
    out_name = "base" if cfg.stage == "pretrain" else "sft"
    ckpt_path = stage_path(cfg.out_dir, out_name)
    tok_spec = cfg.tokenizer or str(Path(cfg.data_dir) / "tokenizer.tiktoken")
    tok = load_tokenizer(tok_spec)
    world = load_world(cfg.data_dir)

    # ------------------------------------------------------------------------------------------ data
    if cfg.stage == "pretrain":
        tokens = corpus_tokens(cfg.data_dir, tok)
        n_val = max(cfg.block_size + 2, int(len(tokens) * cfg.val_frac))
        train_batches = lm_batches(tokens[:-n_val], cfg.batch_size, cfg.block_size, gen)
        val_batches = lambda: lm_batches(tokens[-n_val:], cfg.batch_size, cfg.block_size,  # noqa: E731
                                         torch.Generator().manual_seed(0))  # the same batches at every eval
        data_desc = f"{len(tokens):,} corpus tokens"
    else:
        demos = read_jsonl(Path(cfg.data_dir) / "sft.jsonl", {"prompt": str, "response": str})
        pairs = [tok.pair_ids(d["prompt"], d["response"]) for d in demos]
        n_val = max(1, int(len(pairs) * cfg.val_frac))
        train_batches = demo_batches(pairs[:-n_val], cfg, tok.pad_id, random.Random(cfg.seed))
        val_batches = lambda: demo_batches(pairs[-n_val:], cfg, tok.pad_id, random.Random(0))  # noqa: E731
        data_desc = f"{len(pairs):,} demonstrations"

    # ----------------------------------------------------------------------------------------- model
    if cfg.stage == "pretrain":
        mcfg = GPTConfig(vocab_size=tok.vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer,
                         n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, pos_embedding=cfg.pos_embedding)
        model = GPT(mcfg).to(device)
    else:
        model, _ = load_model(cfg.init_from or stage_path(cfg.out_dir, "base"), "base", head="lm", device=device)
        cfg.block_size = model.config.block_size
    print(f"{cfg.stage}: {model.num_params() / 1e6:.2f}M parameters, {data_desc}, preset {cfg.preset}, "
          f"device {device} {cfg.dtype}, {cfg.max_steps} steps of {cfg.batch_size}")
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)

    # ------------------------------------------------------------------------------------------ loop
    progress = Progress(cfg.max_steps, cfg.stage)
    metrics, best_val, tokens_seen, step_t0 = {}, math.inf, 0, time.time()
    model.train()
    for step in range(cfg.max_steps + 1):
        if step % cfg.eval_interval == 0 or step == cfg.max_steps:
            val = evaluate(model, val_batches, cfg.eval_batches, device, cfg.dtype)
            check_finite("validation loss", val, step, keep=str(ckpt_path) if ckpt_path.exists() else "none")
            metrics.update(val_loss=val, step=step)
            print(f"{cfg.stage} step {step:>5}/{cfg.max_steps} | val loss {val:.4f}")
            if step > 0:
                save_checkpoint(ckpt_path, model, asdict(cfg), tok_spec, step, metrics)
        if cfg.sample_interval and step % cfg.sample_interval == 0 and step > 0:
            print_samples(model, tok, read_prompts(cfg.data_dir, "val")[:2], cfg)
        if step == cfg.max_steps:
            break
        set_lr(opt, lr_at(step, cfg.max_steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_frac))
        x, y, m = (t.to(device) for t in next(train_batches))
        with autocast(device, cfg.dtype):
            loss = sft_loss(model(x), y, m)
        check_finite("training loss", loss, step, keep=str(ckpt_path) if ckpt_path.exists() else "none")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        tokens_seen += int(m.sum())
        if (step + 1) % cfg.log_interval == 0:
            tps = tokens_seen / (time.time() - step_t0)
            progress.log(step + 1, loss=loss.item(), lr=opt.param_groups[0]["lr"], grad_norm=float(grad_norm),
                         tok_per_s=int(tps))
    train_time = progress.elapsed()

    # ------------------------------------------------------------------------------------ evaluation
    print_samples(model, tok, read_prompts(cfg.data_dir, "val")[:3], cfg)
    if cfg.gold_eval_prompts:
        with autocast(device, cfg.dtype):  # sampled in the regime the model trained in
            ev = gold_eval(model, tok, world.labeler, read_prompts(cfg.data_dir, "val")[: cfg.gold_eval_prompts],
                           cfg.max_new_tokens, generator=torch.Generator(device).manual_seed(cfg.seed))
        ev.pop("samples")
        metrics["gold"] = ev
        print(format_eval(f"{out_name} model", ev))
    metrics["train_time_s"] = train_time
    save_checkpoint(ckpt_path, model, asdict(cfg), tok_spec, cfg.max_steps, metrics)
    print(f"{cfg.stage}: done in {train_time:.0f}s, saved {ckpt_path}")
    return metrics


def demo_batches(pairs, cfg: Config, pad_id: int, rng: random.Random):
    """Endless shuffled epochs of demonstration batches (inputs, targets, response-only loss mask)."""
    while True:
        order = list(range(len(pairs)))
        rng.shuffle(order)
        for i in range(0, len(order) - cfg.batch_size + 1 if len(order) >= cfg.batch_size else 1, cfg.batch_size):
            yield sft_batch([pairs[j] for j in order[i : i + cfg.batch_size]], pad_id, cfg.block_size)


@torch.no_grad()
def evaluate(model, batches, n_batches: int, device: str, dtype: str) -> float:
    model.eval()
    losses, batches = [], batches()
    for _ in range(n_batches):
        x, y, m = (t.to(device) for t in next(batches))
        with autocast(device, dtype):
            losses.append(sft_loss(model(x), y, m).item())
    model.train()
    return sum(losses) / len(losses)


def print_samples(model, tok, prompts: list[dict], cfg: Config) -> None:
    with autocast(model.wte.weight.device, cfg.dtype):
        outs = sample_responses(model, tok, [p["prompt"] for p in prompts], cfg.max_new_tokens, temperature=0.7,
                                generator=torch.Generator(model.wte.weight.device).manual_seed(0))
    for p, (r, finished) in zip(prompts, outs):
        print(f"  [{p['category']}] {p['prompt'][:80]!r}\n    -> {r[:160]!r}{'' if finished else ' (no EOS)'}")


if __name__ == "__main__":
    run_main(main)
