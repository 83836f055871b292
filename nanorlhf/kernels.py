"""Triton kernels for fused token log-probs (and entropy) of softmax(logits / T).

Only `logprobs.py` imports this file, and only when the Triton path is used, so importing nanorlhf never
imports triton (the CPU tests set TRITON_INTERPRET=1 first; the interpreter is chosen when the @triton.jit
decorators below run, i.e. when this module is imported). The naive `log_softmax(x.float() / T).gather(-1, y)`
on logits x (N, V) writes (and autograd saves) a second N x V fp32 tensor; the kernels here read x once
(forward) and once more in the backward, keeping only O(N) state: the forward, one program per row, loops over
V in BLOCK_V tiles with an online softmax (Milakov & Gimelshein 2018), the backward, one program per (row,
tile of V), recomputes the softmax (the equations are above each kernel). Simplifications vs Liger-Kernel's
cross-entropy: we return per-token values (not a mean loss) and so cannot compute the gradient inside the
forward, and we write the gradient into a new buffer rather than over the logits (someone else may still need
them).
"""

import math

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = tl.constexpr(0.6931471805599453)  # (a Triton kernel may only read globals that are constexpr)
# -inf logits (and the padding past V) become this finite number: 2^(NEG - m) underflows to exactly 0 as soon
# as a real logit has been seen, and 0 * NEG = 0 where 0 * -inf would be nan.
NEG = tl.constexpr(-1.0e30)


# tl.max / tl.sum / tl.zeros are written as tl.reduce / tl.full below: triton's own helpers are compiled for
# the GPU if triton was imported before TRITON_INTERPRET=1 was set, and then fail in the interpreter (the
# CPU tests); these two are defined here, after the variable is read. The generated GPU code is the same.
@triton.jit
def _max(a, b):
    return tl.maximum(a, b)


@triton.jit
def _add(a, b):
    return a + b


# Forward, one program per row, looping over V in BLOCK_V tiles ("online softmax", Milakov & Gimelshein 2018):
#     z = x * log2(e) / T                       # scaled base-2 units, so exp2 replaces exp
#     m = running max of z,   s = sum 2^(z - m),   t = sum 2^(z - m) (z - m)     (rescaled when m grows)
#     lse2 = m + log2(s)                         # log2 sum_j 2^(z_j)
#     logp = ln2 * (z_y - lse2)                  # = x_y / T - logsumexp(x / T)
#     H    = ln2 * (log2(s) - t / s)             # = logsumexp(x / T) - sum_j p_j x_j / T = -sum_j p_j log p_j
#     saved per row in fp32: lse2 and tbar = m + t / s = sum_j p_j z_j.
@triton.jit
def _logprobs_fwd_kernel(
    # logits: row r starts at (r // n_inner) * stride_outer + (r % n_inner) * stride_inner
    x_ptr, stride_outer, stride_inner, n_inner,
    y_ptr, keep_ptr,  # targets (N,) int64, mask (N,) int8 (1 = counts)
    logp_ptr, ent_ptr, lse_ptr, tbar_ptr,  # outputs (N,) fp32
    V, scale,  # vocab size, log2(e) / T
    HAS_MASK: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # int64: N * V can exceed 2^31
    x_row = x_ptr + (row // n_inner) * stride_outer + (row % n_inner) * stride_inner
    n_cols = V
    if HAS_MASK:
        n_cols = V * tl.load(keep_ptr + row).to(tl.int32)  # masked rows: loop zero times, never read the row
    cols = tl.arange(0, BLOCK_V)
    # Each of the BLOCK_V lanes keeps its own running (m, s, t) over the columns it visits and the lanes are
    # merged once at the end: no cross-thread reduction inside the loop, and one exp2 per element.
    # t is kept relative to the lane's max, t = sum 2^(z - m) (z - m), so that H = lse - tbar does not
    # cancel two large numbers when the logits are large.
    m = tl.full([BLOCK_V], NEG, tl.float32)
    s = tl.full([BLOCK_V], 0.0, tl.float32)
    t = tl.full([BLOCK_V], 0.0, tl.float32)
    for start in range(0, n_cols, BLOCK_V):
        x = tl.load(x_row + start + cols, mask=start + cols < V, other=float("-inf"),
                    eviction_policy="evict_first")
        z = tl.maximum(x.to(tl.float32) * scale, NEG)  # fp32 from here on, whatever the input dtype
        delta = z - m
        bigger = delta > 0
        d = tl.exp2(-tl.abs(delta))  # new max: 2^(m_old - z) rescales the old sums; else 2^(z - m)
        t = tl.where(bigger, d * (t - s * delta), t + d * delta)
        s = tl.where(bigger, s * d + 1.0, s + d)
        m = tl.where(bigger, z, m)
    m_row = tl.reduce(m, 0, _max)
    w = tl.exp2(m - m_row)  # merge the lanes: rescale each lane's sums to the row max
    s_row = tl.reduce(s * w, 0, _add)
    t_row = tl.reduce(w * (t + s * (m - m_row)), 0, _add)
    keep = n_cols > 0
    s_row = tl.where(keep, s_row, 1.0)  # (masked rows: s = 0; avoid log(0) and 0/0 in values we discard)
    log2_s = tl.log2(s_row)
    tbar_rel = t_row / s_row  # sum p (z - m_row)
    y = tl.load(y_ptr + row, mask=keep, other=0)  # masked rows may carry any target (e.g. -100)
    z_y = tl.load(x_row + y, mask=keep, other=0.0).to(tl.float32) * scale
    tl.store(logp_ptr + row, tl.where(keep, LN2 * ((z_y - m_row) - log2_s), 0.0))
    tl.store(ent_ptr + row, tl.where(keep, LN2 * (log2_s - tbar_rel), 0.0))
    tl.store(lse_ptr + row, tl.where(keep, m_row + log2_s, float("inf")))  # +inf: p = 0 in the backward
    tl.store(tbar_ptr + row, tl.where(keep, m_row + tbar_rel, 0.0))


# Backward, one program per (row, tile of V), recomputing p = 2^(z - lse2):
#     d logp / d x_j = (onehot_y(j) - p_j) / T
#     d H    / d x_j = -p_j * (x_j - sum_k p_k x_k) / T^2 = -p_j * ln2 * (z_j - tbar) / T
#     d x = g_logp * d logp / d x + g_H * d H / d x,    written in the logits' dtype.
@triton.jit
def _logprobs_bwd_kernel(
    x_ptr, stride_outer, stride_inner, n_inner,
    y_ptr, keep_ptr, lse_ptr, tbar_ptr,
    g_logp_ptr, g_ent_ptr,  # upstream grads (N,) fp32
    dx_ptr,  # (N, V) contiguous, the logits' dtype
    V, scale, inv_T,
    HAS_MASK: tl.constexpr, HAS_G_LOGP: tl.constexpr, HAS_G_ENT: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    x_row = x_ptr + (row // n_inner) * stride_outer + (row % n_inner) * stride_inner
    n_cols = V
    if HAS_MASK:
        n_cols = V * tl.load(keep_ptr + row).to(tl.int32)  # masked rows: read nothing, write zeros
    read = cols < n_cols
    x = tl.load(x_row + cols, mask=read, other=float("-inf"), eviction_policy="evict_first")
    z = tl.maximum(x.to(tl.float32) * scale, NEG)
    p = tl.exp2(z - tl.load(lse_ptr + row))  # masked rows have lse = +inf, so p = 0
    dz = tl.full([BLOCK_V], 0.0, tl.float32)
    if HAS_G_LOGP:
        g = tl.load(g_logp_ptr + row)
        y = tl.load(y_ptr + row)
        dz += g * (tl.where(cols == y, 1.0, 0.0) - p)
        if HAS_MASK:
            dz = tl.where(read, dz, 0.0)  # the one-hot term of a masked row
    if HAS_G_ENT:
        g_h = tl.load(g_ent_ptr + row)
        dz -= g_h * LN2 * p * (z - tl.load(tbar_ptr + row))
    tl.store(dx_ptr + row * V + cols, (dz * inv_T).to(dx_ptr.dtype.element_ty), mask=cols < V)


# ----------------------------------------------------------------------------------------------------------
# launch configuration and wrappers

def _fwd_config(V, dtype, device):
    """(BLOCK_V, num_warps) of the forward kernel, from `python bench/logprobs.py --tune` on an H100
    (bench/logprobs_results.md). One row per program, so the tile sets the bytes in flight: bf16 at
    16384 x 32768 ran at 2.58 TB/s with (1024, 4) and 1.95 TB/s with (4096, 8), whose per-lane (m, s, t)
    state costs registers and so resident programs; fp32 ran at 2.9 TB/s with (4096, 8).
    The interpreter ignores num_warps; its numpy work is smaller with smaller tiles."""
    if device.type != "cuda":
        return min(1024, triton.next_power_of_2(V)), 1
    if dtype == torch.float32:
        block = min(4096, max(128, triton.next_power_of_2(V)))
        return block, max(1, min(8, block // 256))
    return min(1024, max(128, triton.next_power_of_2(V))), 4


def _bwd_config(V, device):
    """(BLOCK_V, num_warps) of the backward kernel: one tile per program, no loop; every tile size from 1024
    to 16384 ran at 2.8-2.9 TB/s (read + write) in the sweep."""
    if device.type != "cuda":
        return min(1024, triton.next_power_of_2(V)), 1
    block = min(4096, max(128, triton.next_power_of_2(V)))
    return block, max(1, min(8, block // 256))


def _as_rows(x):
    """View (..., V) logits as N rows without copying: returns (rows, N, stride_outer, stride_inner, n_inner),
    row r starting at (r // n_inner) * stride_outer + (r % n_inner) * stride_inner. Covers contiguous tensors
    and slices such as logits[:, :-1] of a (B, T, V) tensor; anything else is copied."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    V, N = x.shape[-1], math.prod(x.shape[:-1])
    try:
        rows = x.view(N, V)  # the leading dims merge into one: evenly spaced rows
        return rows, N, rows.stride(0), rows.stride(0), 1
    except RuntimeError:
        pass
    try:
        rows = x.view(-1, x.shape[-2], V)  # (B, T, V) with a gap after every T rows, e.g. logits[:, :-1]
        return rows, N, rows.stride(0), rows.stride(1), rows.shape[1]
    except RuntimeError:
        rows = x.contiguous().view(N, V)
        return rows, N, rows.stride(0), rows.stride(0), 1


def logprobs_fwd(logits, targets, keep, temperature, block_v=None, num_warps=None):
    """logits (..., V), targets (N,) int64, keep (N,) int8 or None -> logp, entropy, lse2, tbar: (N,) fp32."""
    x, N, s_out, s_in, n_in = _as_rows(logits)
    logp = torch.empty(N, device=x.device, dtype=torch.float32)
    ent, lse2, tbar = torch.empty_like(logp), torch.empty_like(logp), torch.empty_like(logp)
    BLOCK_V, warps = _fwd_config(x.shape[-1], x.dtype, x.device)
    BLOCK_V, num_warps = block_v or BLOCK_V, num_warps or warps
    if N > 0:
        _logprobs_fwd_kernel[(N,)](
            x, s_out, s_in, n_in, targets, keep if keep is not None else targets,  # (dummy pointer)
            logp, ent, lse2, tbar, x.shape[-1], LOG2E / temperature,
            HAS_MASK=keep is not None, BLOCK_V=BLOCK_V, num_warps=num_warps,
        )
    return logp, ent, lse2, tbar


def logprobs_bwd(logits, targets, keep, lse2, tbar, g_logp, g_ent, temperature, block_v=None, num_warps=None):
    """d logits (N, V) in the logits' dtype for upstream grads g_logp, g_ent ((N,) or None)."""
    x, N, s_out, s_in, n_in = _as_rows(logits)
    V = x.shape[-1]
    dx = torch.empty(N, V, device=x.device, dtype=x.dtype)  # the logits' dtype: no N x V fp32 temporary
    BLOCK_V, warps = _bwd_config(V, x.device)
    BLOCK_V, num_warps = block_v or BLOCK_V, num_warps or warps
    if N > 0:
        _logprobs_bwd_kernel[(N, triton.cdiv(V, BLOCK_V))](
            x, s_out, s_in, n_in, targets, keep if keep is not None else targets, lse2, tbar,
            g_logp.float().contiguous() if g_logp is not None else lse2,
            g_ent.float().contiguous() if g_ent is not None else lse2,
            dx, V, LOG2E / temperature, 1.0 / temperature,
            HAS_MASK=keep is not None, HAS_G_LOGP=g_logp is not None, HAS_G_ENT=g_ent is not None,
            BLOCK_V=BLOCK_V, num_warps=num_warps,
        )
    return dx


# ----------------------------------------------------------------------------------------------------------
# autograd

class TokenLogprobs(torch.autograd.Function):
    """(logits (..., V), targets (N,), keep (N,) int8 or None, T) -> logp (N,), entropy (N,), fp32.
    Saves the logits (a view, no copy) and lse2, tbar: O(N) extra memory."""

    @staticmethod
    def forward(ctx, logits, targets, keep, temperature, block_v=None):
        logp, ent, lse2, tbar = logprobs_fwd(logits, targets, keep, temperature, block_v)
        ctx.save_for_backward(logits, targets, keep, lse2, tbar)
        ctx.temperature, ctx.block_v = temperature, block_v
        ctx.set_materialize_grads(False)  # an unused output's grad arrives as None: skip its term
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        logits, targets, keep, lse2, tbar = ctx.saved_tensors
        if g_logp is None and g_ent is None:
            return None, None, None, None, None
        dx = logprobs_bwd(logits, targets, keep, lse2, tbar, g_logp, g_ent, ctx.temperature, ctx.block_v)
        return dx.view(logits.shape), None, None, None, None


class LinearLogprobs(torch.autograd.Function):
    """(hidden (N, d), weight (V, d), targets (N,), keep, T, chunk_size) -> logp (N,), entropy (N,), fp32.

    Liger's fused-linear-cross-entropy idea, for per-token outputs: tokens go through in chunks of
    chunk_size, so at most a (chunk_size, V) block of logits exists at a time. Because the upstream grads
    are per token (not one scalar loss) the gradient cannot be formed in the forward as Liger does; instead
    the backward recomputes each chunk's logits (one more matmul) and uses the saved lse2 / tbar:
        d logits_c = kernel backward,   d hidden_c = d logits_c @ W,   d W += d logits_c^T @ hidden_c.
    Saved: hidden, weight (references) and O(N) floats."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, keep, temperature, chunk_size):
        N = hidden.shape[0]
        logp = torch.empty(N, device=hidden.device, dtype=torch.float32)
        ent, lse2, tbar = torch.empty_like(logp), torch.empty_like(logp), torch.empty_like(logp)
        for a in range(0, N, chunk_size):
            b = min(a + chunk_size, N)
            logits = hidden[a:b] @ weight.t()  # (C, V)
            k = keep[a:b] if keep is not None else None
            logp[a:b], ent[a:b], lse2[a:b], tbar[a:b] = logprobs_fwd(logits, targets[a:b], k, temperature)
        ctx.save_for_backward(hidden, weight, targets, keep, lse2, tbar)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        ctx.set_materialize_grads(False)
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        hidden, weight, targets, keep, lse2, tbar = ctx.saved_tensors
        if g_logp is None and g_ent is None:
            return None, None, None, None, None, None
        need_h, need_w = ctx.needs_input_grad[:2]
        N, C = hidden.shape[0], ctx.chunk_size
        grad_h = torch.empty_like(hidden) if need_h else None
        # fp32 accumulator across chunks (a bf16 one would round once per chunk)
        grad_w = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if need_w else None
        for a in range(0, N, C):
            b = min(a + C, N)
            logits = hidden[a:b] @ weight.t()  # recomputed (C, V)
            dlogits = logprobs_bwd(
                logits, targets[a:b], keep[a:b] if keep is not None else None, lse2[a:b], tbar[a:b],
                g_logp[a:b] if g_logp is not None else None, g_ent[a:b] if g_ent is not None else None,
                ctx.temperature,
            )
            if need_h:
                grad_h[a:b] = dlogits @ weight  # (C, d)
            if need_w:
                if grad_w.dtype == dlogits.dtype:
                    grad_w.addmm_(dlogits.t(), hidden[a:b])
                else:
                    grad_w += dlogits.t() @ hidden[a:b]  # (V, d)
        if need_w:
            grad_w = grad_w.to(weight.dtype)
        return grad_h, grad_w, None, None, None, None
