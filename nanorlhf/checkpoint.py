"""Checkpoints: a plain dict {model_config, config, model, tokenizer, step, metrics}.

Written atomically (temp file in the same directory, then `os.replace`), so an interrupted save never
leaves a half-written `ckpt.pt`, and loaded with `torch.load(weights_only=True)`, which unpickles only
tensors and plain containers (never arbitrary code).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from nanorlhf.model import GPT, GPTConfig

# Which command creates each stage's checkpoint, for the "missing checkpoint" error.
MAKERS = {
    "base": "python train_sft.py --stage=pretrain",
    "sft": "python train_sft.py --stage=sft",
    "rm": "python train_rm.py",
    "ppo": "python train_ppo.py",
    "ppo_ptx": "python train_ppo.py --ptx_coef=...",
}


class CheckpointError(RuntimeError):
    pass


def save_checkpoint(path, model: GPT, config: dict, tokenizer: str, step: int = 0, metrics=None, extra=None):
    """Save `model` (unwrapped) and everything needed to rebuild it, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "model_config": model.config.to_dict(),
        "config": _plain(config),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "tokenizer": tokenizer,
        "step": step,
        "metrics": _plain(metrics or {}),
    }
    if extra:
        ckpt.update(_plain(extra))
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _plain(x):
    """Only types that `weights_only=True` can load back: tensors, numbers, strings, lists, dicts."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (str, int, float, bool, type(None), torch.Tensor)):
        return x
    return str(x)


def stage_path(out_dir, stage: str) -> Path:
    return Path(out_dir) / stage / "ckpt.pt"


def load_checkpoint(path, stage: str | None = None) -> dict:
    """Load a checkpoint dict; a missing file says which command creates it."""
    path = Path(path)
    if not path.exists():
        hint = f" (create it with: {MAKERS[stage]})" if stage in MAKERS else ""
        raise CheckpointError(f"checkpoint {path} not found{hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None


def load_model(path, stage: str | None = None, head: str | None = None, device="cpu") -> tuple[GPT, dict]:
    """Rebuild a GPT from a checkpoint. `head` switches the head: the trunk is loaded and a new head is
    initialised (e.g. the reward model from the SFT model), except scalar <-> value, which share the
    `score` layer (the critic starts as the reward model)."""
    ckpt = load_checkpoint(path, stage)
    cfg = GPTConfig(**ckpt["model_config"])
    src_head = cfg.head
    if head is not None:
        cfg.head = head
    model = GPT(cfg)
    state = ckpt["model"]
    if cfg.head != src_head and not {cfg.head, src_head} <= {"scalar", "value"}:
        state = {k: v for k, v in state.items() if not k.startswith("score.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert all(k.startswith("score.") for k in missing) and not unexpected, (missing, unexpected)
    else:
        model.load_state_dict(state)
    return model.to(device), ckpt
