"""Small pieces every training stage shares: optimizer, learning-rate schedule, autocast, seeding,
the non-finite and nothing-to-learn checks, the one-line progress log and the clock of a stage's phases.
The precision policy (autocast, --dtype) is nanorlhf/precision.py; `autocast` and `resolve_dtype` are
re-exported here for the stages."""

from __future__ import annotations

import math
import random
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from nanorlhf.config import StageError
from nanorlhf.files import DataError, kept, partial_path
from nanorlhf.precision import autocast, resolve_dtype  # noqa: F401 (the stages import them from here)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch.Generator for the sampling that must be reproducible."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def setup_device(device: str) -> str:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        torch.set_flush_denormal(True)  # denormal floats (tiny gradients late in training) stall CPU maths
    if device.startswith("cuda"):  # any cuda:N: fp32 matmuls in TF32 (precision.py)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95),
                   eps: float = 1e-8):
    """AdamW with weight decay on matrices only (not on biases, LayerNorm gains or heads' biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel for all parameters instead of ~10 small ops per tensor (measured −0.35 s per PPO
    # iteration on 2 CPU cores, bench/stages.py)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)


def chunk_rows(device) -> int:
    """Rows per chunk of a padded batch (length_chunks) on `device`: 16 on a CPU, where a tiny-preset
    batch padded to its longest row is half padding and 16 rows still make efficient matmuls (SFT steps
    -17%, reward-model steps -34%, DPO steps -41%: bench/NOTES.md); 0 (one piece) on a GPU, where a step
    is bound by its kernel launches, not by the padding's FLOPs (not measured)."""
    return 0 if torch.device(device).type == "cuda" else 16


def length_chunks(mask: torch.Tensor, rows: int) -> list[tuple[torch.Tensor, int]]:
    """A right-padded batch in chunks of `rows` rows of similar length: [(row indices, columns), ...], each
    chunk cut after the last 1 of its rows' `mask` (B, T) (the positions a loss counts). One chunk when rows
    is 0, the batch has at most `rows` rows, or every row ends in the same column (pretraining windows).

    Why: padded to its longest row, a batch of tiny-preset demonstrations is 47% padding, and each chunk
    padded to its own longest row is far less (bench/NOTES.md). The sum of a loss over the chunks is the
    batch's, to fp32 rounding: a causal model's output at a position never depends on the columns after it.
    """
    B, T = mask.shape
    ends = (mask.bool() * torch.arange(1, T + 1, device=mask.device)).amax(1)  # last counted column + 1
    if rows <= 0 or B <= rows or bool((ends == ends[0]).all()):
        return [(torch.arange(B, device=mask.device), max(1, int(ends.max())))]
    return [(idx, max(1, int(ends[idx].max()))) for idx in ends.argsort(stable=True).split(rows)]


def by_length(fn, mask: torch.Tensor, rows: int, *tensors: torch.Tensor) -> torch.Tensor:
    """fn(*tensors) for a right-padded batch, run on its length_chunks(mask, rows) (each tensor (B, T, ...)
    cut to the chunk's rows and columns): fn's outputs, one per row (e.g. the reward model's scores), put
    back in the batch's order."""
    chunks = length_chunks(mask, rows)
    outs = torch.cat([fn(*(t[idx, :cols] for t in tensors)) for idx, cols in chunks])
    return outs[torch.cat([idx for idx, _ in chunks]).argsort()]


def lr_at(step: int, max_steps: int, lr: float, warmup: int, min_frac: float = 0.1) -> float:
    """Linear warmup to `lr`, then cosine decay to `min_frac * lr` at `max_steps`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return lr * (min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


class NonFiniteError(StageError, RuntimeError):
    pass


def check_learnable(count: int, what: str, ckpt_path) -> None:
    """Refuse to train on data that holds nothing to learn from (or to measure on): `count` of them (loss
    tokens, preferences that are not ties) is 0. Trained on it, a stage would replace `ckpt_path` with a
    model no example has touched and report a loss of 0 or an accuracy of 0% as if they meant something.
    `what` names the file and says what is missing and what was expected."""
    if count < 1:
        raise DataError(f"{what}: nothing to learn from; not training, {kept(ckpt_path)}")


def check_finite(name: str, value: torch.Tensor | float, where: int | str, ckpt_path) -> None:
    """Stop training on NaN/inf; the message says what blew up, where (`where`: a step number or a
    phrase), and whether a good checkpoint is left at `ckpt_path` (saves refuse non-finite weights)."""
    v = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
    if not math.isfinite(v):
        where = f"step {where}" if isinstance(where, int) else where
        left = (f"Last good checkpoint kept: {ckpt_path}" if Path(ckpt_path).exists() else
                f"No checkpoint was written ({ckpt_path} does not exist)")
        if partial_path(ckpt_path).exists():
            left += f"; latest in-progress save: {partial_path(ckpt_path)}"
        raise NonFiniteError(f"{name} became {v} at {where}; stopping. {left}")


class Progress:
    """One fixed-format line per log interval: step, named metrics, ms/step, ETA."""

    def __init__(self, total: int, prefix: str, stream=None):
        self.total, self.prefix, self.stream = total, prefix, stream or sys.stdout
        self.start = self.last = time.time()
        self.last_step = 0

    def log(self, step: int, **metrics) -> None:
        now = time.time()
        dt = (now - self.last) / max(1, step - self.last_step)
        self.last, self.last_step = now, step
        eta = dt * (self.total - step)
        parts = " | ".join(f"{k} {_fmt(v)}" for k, v in metrics.items())
        print(f"{self.prefix} step {step:>5}/{self.total} | {parts} | {dt * 1000:.0f} ms/step | "
              f"ETA {_hms(eta)}", file=self.stream, flush=True)

    def elapsed(self) -> float:
        return time.time() - self.start


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3e}"
    return str(v)


def _hms(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


# ------------------------------------------------------------------------------------------ phases
# Where a stage's seconds go (sampling, the labeler, updates, evaluation, saving): each stage wraps its
# phases in `with phase(name):` and prints phase_summary() last; bench/phases.py tabulates the
# pipeline's logs. Wall clock, on this process: a phase inside another counts in the inner one only.
_PHASE_TOTALS: dict[str, float] = {}
_PHASE_STACK: list[list] = []  # [name, start] of the phases open now, innermost last
_PROCESS_START = time.perf_counter()  # this module is imported first thing by every stage


@contextmanager
def phase(name: str):
    now = time.perf_counter()
    if _PHASE_STACK:  # the outer phase pauses while this one runs
        outer = _PHASE_STACK[-1]
        _PHASE_TOTALS[outer[0]] = _PHASE_TOTALS.get(outer[0], 0.0) + now - outer[1]
    _PHASE_STACK.append([name, now])
    try:
        yield
    finally:
        now = time.perf_counter()
        _PHASE_TOTALS[name] = _PHASE_TOTALS.get(name, 0.0) + now - _PHASE_STACK.pop()[1]
        if _PHASE_STACK:
            _PHASE_STACK[-1][1] = now


def phase_summary(prefix: str) -> str:
    """One line: each phase's seconds and share of the process's time so far, largest first, then the
    rest (imports, loading, the untimed glue)."""
    total = time.perf_counter() - _PROCESS_START
    by_time = sorted(_PHASE_TOTALS.items(), key=lambda kv: -kv[1])
    parts = [f"{k} {v:.1f}s ({v / total:.0%})" for k, v in by_time]
    rest = total - sum(_PHASE_TOTALS.values())
    parts.append(f"other {rest:.1f}s ({rest / total:.0%})")
    return f"{prefix}: time by phase: {' | '.join(parts)} | total {total:.1f}s"
