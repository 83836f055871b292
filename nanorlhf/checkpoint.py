"""Checkpoints: a plain dict {model_config, config, model, stage, tokenizer, step, metrics}.

A checkpoint carries what is needed to use it: the stage that made it (base, sft, rm, or a PPO run's name),
its head (in model_config), and its tokenizer: the ranks (`tokenizer_ranks`, so it loads from any directory)
and their SHA-256 (`tokenizer_sha256`, checked against the tokenizer file the loading stage reads its data
with: data regenerated under a trained model is an error, not garbage); `tokenizer` keeps the ranks file's
path as given, for readers that load the tokenizer by path. Written atomically (files.atomic_write), never
with non-finite weights or metrics nor before a training step was taken; loaded with
`torch.load(weights_only=True)` (tensors and plain containers only, never arbitrary code), its model_config
checked against GPTConfig and its weights first. It records whether its run finished: a stage's saves while it
trains go to `ckpt.partial.pt` beside the finished `ckpt.pt` (partial_path), so a run stopped halfway never
replaces a finished model, and no stage loads a checkpoint that did not finish.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from pathlib import Path

import torch

from nanorlhf.config import ConfigError, StageError
# partial_path: for the stages
from nanorlhf.files import atomic_write, kept, partial_path, remove_file  # noqa: F401
from nanorlhf.model import GPT, GPTConfig
from nanorlhf.runs import OTHER_RUNS, run_flags
from nanorlhf.tokenizer import Tokenizer, load_ranks, load_tokenizer, parse_ranks, ranks_text
from nanorlhf.training import NonFiniteError

# Which command creates each stage's checkpoint (as the pipeline runs it), for the "missing" and "wrong
# checkpoint" errors; another run name is made by train_dpo.py --run_name=<name> if it starts with "dpo",
# else by train_ppo.py --run_name=<name>.
MAKERS = {
    "base": "python train_sft.py --stage=pretrain",
    "sft": "python train_sft.py --stage=sft",
    "rm": "python train_rm.py",
    "ppo": "python train_ppo.py",
    **{run.folder: " ".join(["python", run.script, *run_flags(run)]) for run in OTHER_RUNS},
}
HEADS = {"rm": "scalar"}  # the head each stage's checkpoint has; every other stage writes a policy ("lm")
OTHER_FOLDERS = {"logs": "the pipeline's stage logs"}  # folders under out_dir that hold no checkpoint


class CheckpointError(StageError, RuntimeError):
    pass


ROUND_RUN = re.compile(r"(rm|ppo)_r([1-9][0-9]*)")  # an earlier round's folder (nanorlhf/runs.py)


def maker(stage: str) -> str:
    """The command that makes stage's checkpoint (a round's folder: the pipeline's rounds; another name: a
    PPO run of that name)."""
    if stage in MAKERS:
        return MAKERS[stage]
    m = ROUND_RUN.fullmatch(stage)
    if m:
        which = "reward model" if m[1] == "rm" else "PPO run"
        return f"python -m nanorlhf --rounds=N (round {m[2]}'s {which})"
    return f"python {'train_dpo.py' if stage.startswith('dpo') else 'train_ppo.py'} --run_name={stage}"


def reserved_folders() -> dict[str, str]:
    """{folder under out_dir: whose it is} for the folders a PPO run may not take: every stage's checkpoint
    folder the pipeline makes with another script than train_ppo.py (base, sft, rm; any stage added to
    MAKERS joins them), and the pipeline's own folders."""
    own = {s: f"the folder of the checkpoint made by {cmd}" for s, cmd in MAKERS.items()
           if cmd.split()[1] != "train_ppo.py"}
    return {**own, **OTHER_FOLDERS}


def check_run_name(flag: str, name: str, family: str = "ppo") -> None:
    """A run's name is a folder under out_dir of its own: letters, digits, _ and - (no path, no file name of
    the pipeline's: eval.json, report.md). A PPO run's is no folder another stage writes (base, sft, rm, dpo;
    rm_*: a reward model's); a reward model's (family "rm") or DPO's ("dpo") is the family's name or starts
    with it and "_" (the pipeline's earlier rounds: rm_r1, rm_r2, ...)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise ConfigError(f"--{flag}={name}: expected a run name of letters, digits, _ and - (a folder under "
                          f"--out_dir), got {name!r}")
    if family != "ppo":
        if name != family and not name.startswith(family + "_"):
            raise ConfigError(f"--{flag}={name}: expected {family} or {family}_<name> (its folder under "
                              "--out_dir)")
        return
    owner = reserved_folders().get(name) or ("the folder of a "
                                             f"{'reward model' if name.startswith('rm') else 'DPO run'}"
                                             if name.startswith(("rm_", "dpo_")) else None)
    if owner:
        raise ConfigError(f"--{flag}={name}: expected a PPO run's own name; {name!r} is {owner}")


def tokenizer_record(spec: str) -> dict:
    """The checkpoint fields that tie it to the tokenizer `spec` (a ranks file, or "gpt2")."""
    if spec == "gpt2":
        return {"tokenizer": "gpt2", "tokenizer_ranks": "", "tokenizer_sha256": "gpt2"}
    text = ranks_text(load_ranks(spec))  # validated, and in one canonical form
    return {"tokenizer": str(spec), "tokenizer_ranks": text,
            "tokenizer_sha256": hashlib.sha256(text.encode()).hexdigest()}


def checkpoint_tokenizer(ckpt: dict, path="checkpoint"):
    """The Tokenizer a checkpoint was trained with, rebuilt from the ranks it carries."""
    if ckpt["tokenizer_sha256"] == "gpt2":
        return load_tokenizer("gpt2")
    return Tokenizer.from_ranks(parse_ranks(ckpt["tokenizer_ranks"], path), Path(ckpt["tokenizer"]).stem)


def save_checkpoint(path, model: GPT, config: dict, tokenizer: dict, stage: str, step: int, metrics=None,
                    finished: bool = True, describing=()):
    """Save `model` (unwrapped) and everything needed to rebuild and check it, atomically.

    `tokenizer` is tokenizer_record(spec) or the same fields of the checkpoint the model started from.
    `finished=False`: a save while training, written to partial_path(path); the finished save replaces
    `path` and removes it. `describing`: files beside `path` that describe the checkpoint it replaces (a
    PPO run's history.json), removed once the new one is written and just before it takes the old one's
    place, so a run stopped before writing them anew leaves none rather than another run's. Refused (the
    previous files are kept): a model with a NaN/inf weight, a NaN/inf top-level metric (the numbers that
    judge the model, e.g. the held-out loss), or one no training step has touched."""
    path = Path(path) if finished else partial_path(path)
    kept_ = kept(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise NonFiniteError(f"not saving: weight {bad[0]} has NaN/inf values; {kept_}")
    bad = [k for k, v in (metrics or {}).items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise NonFiniteError(f"not saving: metric {bad[0]} = {metrics[bad[0]]}; {kept_}")
    if step < 1:
        raise CheckpointError(f"not saving: no training step was taken (step {step}); {kept_}")
    ckpt = {
        "model_config": model.config.to_dict(),
        "config": _plain(config),
        "model": state,
        "stage": stage,
        **{k: tokenizer[k] for k in ("tokenizer", "tokenizer_ranks", "tokenizer_sha256")},
        "step": step,
        "metrics": _plain(metrics or {}),
        "finished": finished,
    }
    atomic_write(path, lambda tmp: (torch.save(ckpt, tmp), *map(remove_file, describing)))
    if finished:
        remove_file(partial_path(path))  # the finished run's in-progress saves are history


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
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e)[:200]})"
                              .replace("\n", " ")) from None
    remake = f"remake it with: {maker(stage)}" if stage else "remake it with the stage that wrote it"
    if not isinstance(ckpt, dict) or not {"model_config", "model", "stage", "tokenizer_sha256"} <= set(ckpt):
        raise CheckpointError(f"{path}: a checkpoint without its stage and tokenizer (written by an older "
                              f"version?); {remake}")
    if ckpt.get("finished") is False:  # (older checkpoints, without the field, were all finished ones)
        raise CheckpointError(f"{path}: an unfinished checkpoint (saved at step {ckpt.get('step')} while its "
                              f"run trained); expected a finished one: {remake}")
    check_model_config(ckpt, path, remake)
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


def trained_dtype(path) -> tuple[str, str] | None:
    """(the dtype `path` was trained in, path), for precision.resolve_dtype; None if it cannot tell (a missing
    or unreadable file is reported by the load that follows, with its own message)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return str(ckpt["config"]["dtype"]), str(path)
    except Exception:
        return None


def check_model_config(ckpt: dict, path, remake: str) -> None:
    """The checkpoint's model_config is GPTConfig's fields with values of their types, and describes its
    weights (width, depth, vocabulary rows): a mismatch is one line before any model is built."""
    mc = ckpt["model_config"]
    if not isinstance(mc, dict):
        raise CheckpointError(f"{path}: model_config is a {type(mc).__name__}, expected a dict of GPTConfig "
                              f"fields; {remake}")
    fields = {f.name: type(f.default) for f in dataclasses.fields(GPTConfig)}
    unknown = sorted(set(mc) - set(fields))
    if unknown:
        raise CheckpointError(f"{path}: model_config has unknown field(s) {unknown} (written by a newer "
                              f"version?); expected only GPTConfig's {sorted(fields)}")
    for k, v in mc.items():
        want = (int, float) if fields[k] is float else fields[k]
        if not isinstance(v, want) or (isinstance(v, bool) and fields[k] is not bool):
            raise CheckpointError(f"{path}: model_config {k}={v!r}, expected a {fields[k].__name__}; "
                                  f"{remake}")
    sizes = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "vocab_multiple")
    small = [k for k in sizes if mc.get(k, 1) < 1]
    if small:
        raise CheckpointError(f"{path}: model_config {small[0]}={mc[small[0]]}, expected at least 1; "
                              f"{remake}")
    state = ckpt["model"]
    cfg = GPTConfig(**{"vocab_multiple": 1, **mc})
    n_layer = len({k.split(".")[1] for k in state if k.startswith("h.")}) if isinstance(state, dict) else None
    wte = state.get("wte.weight") if isinstance(state, dict) else None
    shape = tuple(wte.shape) if isinstance(wte, torch.Tensor) else None
    if n_layer != cfg.n_layer or shape != (cfg.padded_vocab, cfg.n_embd):
        raise CheckpointError(f"{path}: model_config (n_layer={cfg.n_layer}, n_embd={cfg.n_embd}, "
                              f"vocab {cfg.padded_vocab}) does not describe its weights ({n_layer} blocks, "
                              f"embedding {shape}); {remake}")


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
    state = ckpt["model"]
    try:
        model = GPT(cfg)
        if cfg.head != src_head and not {cfg.head, src_head} <= {"scalar", "value"}:
            state = {k: v for k, v in state.items() if not k.startswith("score.")}
            missing, unexpected = model.load_state_dict(state, strict=False)
            if not all(k.startswith("score.") for k in missing) or unexpected:
                raise RuntimeError(f"missing {missing[:3]}, unexpected {unexpected[:3]}")
        else:
            model.load_state_dict(state)
    # a config its weights do not fit
    except (RuntimeError, ValueError, AssertionError, ZeroDivisionError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path}: its weights do not fit its model_config ({reason[:200]}); remake it "
                              "with the stage that wrote it") from None
    return model.to(device), ckpt


def weights_fingerprint(path) -> str:
    """SHA-256 of a checkpoint's weights alone (not of the paths in its config): the same model wherever the
    file lies."""
    state = load_checkpoint(path)["model"]
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode() + b"\0" + state[k].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_policy(path, device="cpu", tokenizer: str | None = None) -> tuple[GPT, dict]:
    """A policy (LM head) from any stage's checkpoint: SFT, a PPO run, DPO; a reward model is refused."""
    model, ckpt = load_model(path, device=device, tokenizer=tokenizer)
    if model.config.head != "lm":
        raise CheckpointError(f"{path}: a '{ckpt['stage']}' checkpoint ({model.config.head} head), expected "
                              "a policy (lm head), e.g. out/sft/ckpt.pt or out/ppo/ckpt.pt")
    return model, ckpt
