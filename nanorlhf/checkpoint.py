"""Checkpoints: a plain dict {model_config, config, model, stage, tokenizer, step, metrics}.

A checkpoint carries what is needed to use it: the stage that made it (base, sft, rm, or a PPO run's
name), its head (in model_config), and its tokenizer: the ranks themselves (`tokenizer_ranks`, so it
loads from any directory) and their SHA-256 (`tokenizer_sha256`, checked against the tokenizer file the
loading stage reads its data with: data regenerated under a trained model is an error, not garbage).
`tokenizer` keeps the ranks file's path as given, for readers that load the tokenizer by path.

Written atomically (files.atomic_write), never with non-finite weights or metrics and never before a
training step was taken, and loaded with `torch.load(weights_only=True)`, which unpickles only tensors
and plain containers (never arbitrary code).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch

from nanorlhf.config import StageError
from nanorlhf.files import atomic_write
from nanorlhf.model import GPT, GPTConfig

# Which command creates each stage's checkpoint (as the pipeline runs it), for the "missing" and "wrong
# checkpoint" errors; another run name is made by train_dpo.py --run_name=<name> if it starts with "dpo",
# else by train_ppo.py --run_name=<name>.
MAKERS = {
    "base": "python train_sft.py --stage=pretrain",
    "sft": "python train_sft.py --stage=sft",
    "rm": "python train_rm.py",
    "ppo": "python train_ppo.py",
    "ppo_ptx": "python train_ppo.py --ptx_coef=1.0",
    "ppo_beta0": "python train_ppo.py --init_kl_coef=0 --adaptive_kl=false --lr_scale=4.0 --run_name=ppo_beta0 "
                 "--eval_interval=5",
    "ppo_gold": "python train_ppo.py --reward=gold --run_name=ppo_gold",
    "dpo": "python train_dpo.py",
}
HEADS = {"rm": "scalar"}  # the head each stage's checkpoint has; every other stage writes a policy ("lm")


class CheckpointError(StageError, RuntimeError):
    pass


def maker(stage: str) -> str:
    script = "train_dpo.py" if stage.startswith("dpo") else "train_ppo.py"
    return MAKERS.get(stage, f"python {script} --run_name={stage}")


def tokenizer_record(spec: str) -> dict:
    """The checkpoint fields that tie it to the tokenizer `spec` (a ranks file, or "gpt2")."""
    if spec == "gpt2":
        return {"tokenizer": "gpt2", "tokenizer_ranks": "", "tokenizer_sha256": "gpt2"}
    from nanorlhf.tokenizer import load_ranks, ranks_text

    text = ranks_text(load_ranks(spec))  # validated, and in one canonical form
    return {"tokenizer": str(spec), "tokenizer_ranks": text,
            "tokenizer_sha256": hashlib.sha256(text.encode()).hexdigest()}


def checkpoint_tokenizer(ckpt: dict, path="checkpoint"):
    """The Tokenizer a checkpoint was trained with, rebuilt from the ranks it carries."""
    from nanorlhf.tokenizer import Tokenizer, load_tokenizer, parse_ranks

    if ckpt["tokenizer_sha256"] == "gpt2":
        return load_tokenizer("gpt2")
    return Tokenizer.from_ranks(parse_ranks(ckpt["tokenizer_ranks"], path), Path(ckpt["tokenizer"]).stem)


def save_checkpoint(path, model: GPT, config: dict, tokenizer: dict, stage: str, step: int, metrics=None):
    """Save `model` (unwrapped) and everything needed to rebuild and check it, atomically.

    `tokenizer` is tokenizer_record(spec) or the same fields of the checkpoint the model started from.
    Refused (the previous file is kept): a model with a NaN/inf weight, a NaN/inf top-level metric (the
    numbers that judge the model, e.g. the held-out loss), or one no training step has touched."""
    from nanorlhf.training import NonFiniteError

    path = Path(path)
    kept = f"{path} is kept as it was" if path.exists() else f"nothing was written to {path}"
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise NonFiniteError(f"not saving: weight {bad[0]} has NaN/inf values; {kept}")
    bad = [k for k, v in (metrics or {}).items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise NonFiniteError(f"not saving: metric {bad[0]} = {metrics[bad[0]]}; {kept}")
    if step < 1:
        raise CheckpointError(f"not saving: no training step was taken (step {step}); {kept}")
    ckpt = {
        "model_config": model.config.to_dict(),
        "config": _plain(config),
        "model": state,
        "stage": stage,
        **{k: tokenizer[k] for k in ("tokenizer", "tokenizer_ranks", "tokenizer_sha256")},
        "step": step,
        "metrics": _plain(metrics or {}),
    }
    atomic_write(path, lambda tmp: torch.save(ckpt, tmp))


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


def load_checkpoint(path, stage: str | None = None, tokenizer: str | None = None) -> dict:
    """Load a checkpoint dict and check it is what the caller expects: made by `stage` (with that stage's
    head) and, when given, with the tokenizer in the ranks file `tokenizer` (the one the caller's data came
    with; not checked for a checkpoint on GPT-2's tokenizer). Every refusal is one line naming the
    checkpoint, what was expected, and the command that makes the right one."""
    path = Path(path)
    if not path.exists():
        hint = f" (create it with: {maker(stage)})" if stage else ""
        raise CheckpointError(f"checkpoint {path} not found{hint}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e)[:200]})".replace(
            "\n", " ")) from None
    remake = f"remake it with: {maker(stage)}" if stage else "remake it with the stage that wrote it"
    if not isinstance(ckpt, dict) or not {"model_config", "model", "stage", "tokenizer_sha256"} <= set(ckpt):
        raise CheckpointError(f"{path}: a checkpoint without its stage and tokenizer (written by an older "
                              f"version?); {remake}")
    got, got_head = ckpt["stage"], ckpt["model_config"].get("head")
    if stage is not None and (got != stage or got_head != HEADS.get(stage, "lm")):
        raise CheckpointError(f"{path}: a '{got}' checkpoint ({got_head} head), expected '{stage}' "
                              f"({HEADS.get(stage, 'lm')} head); make one with: {maker(stage)}")
    if tokenizer is not None and ckpt["tokenizer_sha256"] != "gpt2":  # gpt2's ranks are no file of the data
        want = tokenizer_record(tokenizer)["tokenizer_sha256"]
        if want != ckpt["tokenizer_sha256"]:
            raise CheckpointError(f"{path}: trained with tokenizer {ckpt['tokenizer_sha256'][:12]} "
                                  f"({ckpt['tokenizer']}), but {tokenizer} is {want[:12]} (the data was made "
                                  f"again since?); {remake}")
    return ckpt


def load_model(path, stage: str | None = None, head: str | None = None, device="cpu",
               tokenizer: str | None = None) -> tuple[GPT, dict]:
    """Rebuild a GPT from a checkpoint (checked as in load_checkpoint). `head` switches the head: the
    trunk is loaded and a new head is initialised (e.g. the reward model from the SFT model), except
    scalar <-> value, which share the `score` layer (the critic starts as the reward model)."""
    ckpt = load_checkpoint(path, stage, tokenizer)
    # a checkpoint from before the vocabulary padding (no vocab_multiple) has exactly vocab_size rows
    cfg = GPTConfig(**{"vocab_multiple": 1, **ckpt["model_config"]})
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
