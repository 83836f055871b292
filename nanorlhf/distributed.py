"""Data parallelism with torchrun: the same stage on N processes, each with a share of the data.

    python -m torch.distributed.run --standalone --nproc_per_node=2 train_sft.py --stage=pretrain
    python -m nanorlhf --nproc=2                   # every training stage and the evaluation that way

Every rank runs every line of the recipe with the same global RNG (the same start and global batch, of
which it keeps its `shard`) and its own sampling generator (`rank_seed`). Gradients are averaged by hand
after every backward, weighted by each rank's share (`sync_grads`, `local_share`), not by DDP's forward hook,
which PPO's loss bypasses (it reads the trunk through hidden_states and lm_head_weight). The statistics
that steer training are all-reduced (`masked_moments`, `average`); sampling is sharded and gathered; cheap
work is repeated on every rank; rank 0 alone writes. On one process every function is a no-op.
The longer account: bench/NOTES.md, "Moved from docstrings (2026-12-05)".
"""

from __future__ import annotations

import atexit
import datetime
import os
import sys

import torch
import torch.distributed as dist

from nanorlhf.config import ConfigError
from nanorlhf.training import setup_device


def rank() -> int:
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    """Rank 0: the process that writes files and prints."""
    return rank() == 0


def active() -> bool:
    return world_size() > 1 and dist.is_available() and dist.is_initialized()


def init(device: str = "") -> str:
    """Join the process group if torchrun started several processes; return this rank's device.

    NCCL on CUDA (one GPU per process: cuda:LOCAL_RANK), gloo on the CPU. One process: only
    training.setup_device(device)."""
    if world_size() == 1:
        return setup_device(device)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if ":" in device:
            raise ConfigError(f"--device={device}: expected cuda under torchrun (each process takes "
                              "cuda:LOCAL_RANK)")
        device = f"cuda:{local_rank()}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo",
                                timeout=datetime.timedelta(minutes=10))
        atexit.register(close)
    if not is_main():
        sys.stdout = open(os.devnull, "w")  # one copy of every log line: rank 0's
    return setup_device(device)


def close() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_seed(seed: int) -> int:
    """This rank's seed for sampling: `seed` itself on rank 0 (so one process keeps its bits)."""
    return seed + 100_003 * rank()


def rank_generator(generator: torch.Generator | None) -> torch.Generator | None:
    """`generator` on rank 0; on rank r a new one seeded rank_seed(its seed), so ranks draw other noise."""
    if generator is None or rank() == 0:
        return generator
    return torch.Generator(generator.device).manual_seed(rank_seed(generator.initial_seed()))


def check_divisible(cfg, *names: str) -> None:
    """Every rank must take the same number of optimizer steps (an all-reduce waits for all of them):
    the global batch sizes `names` must split evenly over the processes."""
    for name in names:
        value = getattr(cfg, name)
        if value % world_size():
            raise ConfigError(f"--{name}={value}: expected a multiple of the {world_size()} processes")


def shard(items):
    """This rank's contiguous block of `items` (a list or a tensor's rows); concatenating the blocks of
    ranks 0, 1, ... gives `items` back (what `gather` does)."""
    n, r, w = len(items), rank(), world_size()
    return items[n * r // w : n * (r + 1) // w]


def gather(local: list) -> list:
    """Every rank's list, concatenated in rank order, on every rank."""
    if not active():
        return local
    parts = [None] * world_size()
    dist.all_gather_object(parts, local)
    return [x for part in parts for x in part]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum over ranks (a new tensor; `t` is left alone)."""
    t = t.detach().clone()
    if active():
        dist.all_reduce(t)
    return t


def local_share(count) -> torch.Tensor | float:
    """world_size × this rank's count / the global count. A loss that averages over this rank's `count`
    items (tokens, groups), times its share, has gradients whose average over ranks is the gradient of
    the average over all the ranks' items: the single-process update on the global batch."""
    if not active():
        return 1.0
    count = torch.as_tensor(count).detach().to("cpu", torch.float64)
    total = all_reduce_sum(count.to(device_of_group())).cpu()
    return float(world_size() * count / total.clamp(min=1))


def device_of_group() -> str:
    """Where collectives' tensors live: the GPU for NCCL, the CPU for gloo."""
    return f"cuda:{local_rank()}" if dist.get_backend() == "nccl" else "cpu"


def sync_grads(*models: torch.nn.Module) -> None:
    """Average the gradients of `models` over ranks, in one all-reduce of a flat buffer. A parameter
    without a gradient on this rank counts as a zero gradient (another rank's loss may have used it)."""
    if not active():
        return
    params = [p for m in models for p in m.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
        offset += p.numel()


def masked_moments(x: torch.Tensor, mask: torch.Tensor):
    """(mean, biased variance) of x over the valid positions of every rank's batch: the statistics of
    ppo.masked_whiten taken over the global batch, so every rank whitens by the same numbers. None on one
    process: masked_whiten then takes its own (the same numbers)."""
    if not active():
        return None
    m = mask.to(x.dtype)
    # as masked_mean: no NaN leaks
    x = torch.where(m != 0, x, torch.zeros((), dtype=x.dtype, device=x.device))
    sums = all_reduce_sum(torch.stack([(x * m).sum(), m.sum()]))
    mean = sums[0] / sums[1].clamp(min=1)
    var = all_reduce_sum(((x - mean) ** 2 * m).sum()) / sums[1].clamp(min=1)
    return mean, var


def average(row: dict, weight: float = 1.0) -> dict:
    """`row` with each float replaced by its mean over ranks, weighted by `weight` (e.g. this rank's
    episodes); other values (ints, strings) are kept. Every rank gets the same row."""
    if not active():
        return row
    keys = [k for k, v in row.items() if isinstance(v, float)]
    t = torch.tensor([row[k] * weight for k in keys] + [weight], dtype=torch.float64,
                     device=device_of_group())
    t = all_reduce_sum(t).cpu()
    return {**row, **{k: float(t[i] / t[-1]) for i, k in enumerate(keys)}}
