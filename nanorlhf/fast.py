"""Speed variants of steps that model.py and generate.py write in plain PyTorch.

Each computes what the plain step computes (the GELU to fp32 rounding; the sampler the same distribution,
from one uniform per row) and is chosen by one switch: model.FAST_GELU, generate.FAST_SAMPLING, both on.
tests/test_fast_paths.py checks each against its plain twin; bench/NOTES.md has the measurements.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class TanhGELU(torch.autograd.Function):
    """GPT-2's GELU, 0.5·x·(1 + tanh(u)) with u = √(2/π)·(x + 0.044715·x³), written as x·σ(2u):
    the same function, since 1 + tanh(u) = 2σ(2u), with its derivative written out for the backward:

        d/dx [x·σ(2u)] = σ(2u) · (1 + x·2u'·(1 − σ(2u))),
        2u' = 2√(2/π)·(1 + 3·0.044715·x²)

    Faster on the CPU, where torch's tanh is ~2× slower than its sigmoid (bench/NOTES.md).
    """

    C = 2 * math.sqrt(2 / math.pi)  # 2u = C·(x + 0.044715·x³)
    A = 0.044715

    @staticmethod
    def forward(ctx, x):
        C, A = TanhGELU.C, TanhGELU.A
        s = (x * x).mul_(C * A).add_(C).mul_(x).sigmoid_()  # σ(2u) = σ(C·x·(1 + A·x²)), one buffer
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, s = ctx.saved_tensors
        C, A = TanhGELU.C, TanhGELU.A
        t = (x * x).mul_(3 * C * A).add_(C).mul_(x)  # x·2u'
        return t.mul_(1 - s).add_(1).mul_(s).mul_(grad)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's tanh GELU: TanhGELU on fp32 CPU tensors, F.gelu elsewhere (fast on a GPU, and bf16 needs its
    fp32 internals)."""
    if x.device.type == "cpu" and x.dtype == torch.float32:
        return TanhGELU.apply(x)
    return F.gelu(x, approximate="tanh")


def sample_inverse_cdf(probs: torch.Tensor, generator=None, u: torch.Tensor | None = None) -> torch.Tensor:
    """One index per row of `probs` (B, V), drawn with probability probs[b, i] / sum_j probs[b, j].

    Inverse-CDF sampling: with cdf_i = p_0 + ... + p_i and u ~ Uniform[0, cdf_last), the index is the first
    i with cdf_i > u, which happens with probability (cdf_i - cdf_(i-1)) / cdf_last = p_i / sum p. One
    uniform per row, given (`u`, (B, 1) in [0, 1)) or from `generator` (torch.multinomial's exponential
    race draws V of them). The sum runs in float64 so that every interval is p_i to ~1e-16, even for tiny
    p_i. A zero-probability token has an empty interval (cdf_i = cdf_(i-1)) and is never drawn;
    u < cdf_last (rand < 1), so the index stays < V.
    """
    cdf = probs.double().cumsum(-1)  # (B, V)
    if u is None:
        u = torch.rand(probs.shape[0], 1, generator=generator, dtype=cdf.dtype, device=cdf.device)
    u = u.to(cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=probs.shape[-1] - 1)
