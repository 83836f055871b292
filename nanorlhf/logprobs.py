"""Per-token log-probs (and entropy) of the chosen tokens: the quantity every RLHF loss is built on (PPO ratio
exp(logp - logp_old), KL to the reference model, GRPO, DPO's sequence log-likelihoods):
    logp[i] = log p_i[targets[i]],   H[i] = -sum_j p_ij log p_ij,   p_i = softmax(logits[i] / T)

'torch', the reference log_softmax(logits.float() / T).gather(...), writes a second N x V fp32 tensor that
autograd keeps (8 GB at 16k tokens x 128k vocab); 'triton' (kernels.py) makes one pass with an online softmax,
saves O(N) floats and recomputes the softmax tile by tile in the backward: same numbers up to fp32 rounding.
Picked by: impl argument > NANORLHF_LOGPROBS=torch|triton > 'triton' for CUDA tensors when triton imports,
else 'torch'; on CPU 'triton' runs in the Triton interpreter (TRITON_INTERPRET=1, the tests). linear_logprobs
does the same for hidden @ weight.T in chunks of tokens, never holding all N x V logits (Liger-Kernel's fused
linear cross-entropy, per token). Masks: 1 = this token counts; where 0 the outputs and the gradient are 0 and
the target may be anything (e.g. -100 padding).
"""

import os

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from nanorlhf.precision import autocast_off, compute_dtype


def _pick_impl(impl, is_cuda):
    impl = impl or os.environ.get("NANORLHF_LOGPROBS") or None
    if impl is None:
        impl = "triton" if is_cuda and _triton_available() else "torch"
    if impl not in ("torch", "triton"):
        raise ValueError(f"impl must be 'torch' or 'triton', got {impl!r}")
    if impl == "triton" and not is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("impl='triton' on CPU needs TRITON_INTERPRET=1 (set before triton is imported)")
    return impl


def _triton_available():
    try:
        import triton  # noqa: F401
        return True
    except ImportError:
        return False


def _flat_inputs(targets, mask):
    """targets (...) -> (N,) int64; mask (...) -> (N,) int8 or None; masked targets replaced by 0."""
    targets = targets.reshape(-1).long()
    if mask is None:
        return targets.contiguous(), None
    keep = mask.reshape(-1) != 0
    return torch.where(keep, targets, 0).contiguous(), keep.to(torch.int8).contiguous()


# ----------------------------------------------------------------------------------------------------------
# the reference

def _token_logprobs_torch(logits, targets, temperature, mask, with_entropy):
    """The reference path of token_logprobs: the log-prob of each target and the entropy, in fp32.

    logits (..., V), any float dtype (bf16 too: the maths runs in fp32 whatever comes in); targets (...)
    integer; temperature T > 0 divides the logits; mask (...) or None, 1 = counts: where 0, the log-prob,
    the entropy and their gradients are 0 and the target may be anything (-100, out of range);
    with_entropy: also compute the entropy.
        logp = log softmax(logits / T)[target]       (log_softmax, not the log of a softmax that underflows)
        H    = -sum_j p_j log p_j, with 0 log 0 = 0   (a -inf logit has p = 0: no NaN, in H or its gradient)
    Returns (logp (...), entropy (...) or None), fp32, differentiable w.r.t. logits.
    """
    logp_all = F.log_softmax(logits.float() / temperature, dim=-1)  # (..., V) fp32: the tensor we avoid
    if mask is not None:
        targets = torch.where(mask != 0, targets, 0)  # padding targets may be out of range
    logp = logp_all.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)  # (...)
    if mask is not None:
        logp = torch.where(mask != 0, logp, 0.0)
    if not with_entropy:
        return logp, None
    p = logp_all.exp()
    # p log p -> 0 where p = 0 (a -inf logit): 0 * (-inf) would be nan, in the value and in the gradient
    entropy = -(p * logp_all.masked_fill(p == 0, 0.0)).sum(-1)
    if mask is not None:
        entropy = torch.where(mask != 0, entropy, 0.0)
    return logp, entropy


class _FastLogprobs(torch.autograd.Function):
    """The 'torch' reference for logits that come out of a matmul, with fewer passes over the (N, V) block.

    (logits (N, V), targets (N,), keep (N,) int8 or None, T, with_entropy) -> logp (N,), entropy (N,) or None.
    Same values as _token_logprobs_torch up to fp32 rounding; what it saves on CPU, where every pass over an
    N x V block costs milliseconds (each named pass is one read/write of the whole block):
      - no division by T when T == 1 (a copy of the block);
      - entropy from the p we need anyway for the backward: one exp, one product, one sum; no p == 0 mask and
        masked_fill (logits from a matmul are finite, so log p is finite and 0 * log p = 0) and no autograd
        graph: the entropy comes back without a gradient (PPO only logs it);
      - a hand-written backward, d logp_t / d z_j = onehot_t(j) - p_j: one pass, instead of autograd's
        zero-filled gather gradient plus the log_softmax backward.
    Under no_grad (scoring with the reference model) only the log_softmax and the gather run.
    Not for logits that may hold -inf (token_logprobs keeps the reference for those).
    """

    @staticmethod
    def forward(ctx, logits, targets, keep, temperature, with_entropy):
        z = logits.float()
        if temperature != 1.0:
            z = z / temperature
        logp_all = F.log_softmax(z, dim=-1)  # (N, V)
        logp = logp_all.gather(1, targets.unsqueeze(1)).squeeze(1)  # (N,)
        need_grad = ctx.needs_input_grad[0]
        p = entropy = None
        if with_entropy:
            p = logp_all.exp()
            entropy = -logp_all.mul_(p).sum(-1)  # -sum_j p_j log p_j (in place: logp_all is not needed after)
        elif need_grad:
            p = logp_all.exp_()  # logp_all is not needed any more: overwrite it with p
        if keep is not None:
            logp = torch.where(keep != 0, logp, 0.0)
            entropy = torch.where(keep != 0, entropy, 0.0) if with_entropy else None
        if need_grad:
            ctx.save_for_backward(p, targets, keep)
            ctx.temperature, ctx.dtype = temperature, logits.dtype
        if with_entropy:
            ctx.mark_non_differentiable(entropy)
        ctx.set_materialize_grads(False)
        return logp, entropy

    @staticmethod
    def backward(ctx, g_logp, g_entropy):
        if g_logp is None:
            return None, None, None, None, None
        p, targets, keep = ctx.saved_tensors
        g = g_logp.float()
        if keep is not None:
            g = torch.where(keep != 0, g, 0.0)  # masked tokens: logp was set to 0, so no gradient
        g = g / ctx.temperature  # z = logits / T
        dz = p * -g.unsqueeze(1)  # (N, V): -g p_j ...
        dz.scatter_add_(1, targets.unsqueeze(1), g.unsqueeze(1))  # ... + g at the target
        return dz.to(ctx.dtype), None, None, None, None


# ----------------------------------------------------------------------------------------------------------
# public API

def token_logprobs(logits, targets, *, temperature: float = 1.0, mask=None, with_entropy: bool = False,
                   impl: str | None = None, _block_v: int | None = None):
    """Log-probs of `targets` under softmax(logits / temperature), optionally with the entropy.

    logits (..., V) any float dtype, may be a non-contiguous view such as logits[:, :-1];
    targets (...) integer; mask (...) or None, 1 = counts.
    Returns fp32 logp (...), or (logp, entropy) if with_entropy. Both are differentiable w.r.t. logits; the
    gradient comes back in the logits' dtype. _block_v: tile-size override for the tests.
    """
    if _pick_impl(impl, logits.is_cuda) == "torch":
        logp, entropy = _token_logprobs_torch(logits, targets, temperature, mask, with_entropy)
    else:
        from nanorlhf import kernels  # imports triton: only now, never at package import
        flat_targets, keep = _flat_inputs(targets, mask)
        logp, entropy = kernels.TokenLogprobs.apply(logits, flat_targets, keep, float(temperature), _block_v)
        logp, entropy = logp.view(targets.shape), entropy.view(targets.shape)
    return (logp, entropy) if with_entropy else logp


def linear_logprobs(hidden, weight, targets, *, temperature: float = 1.0, mask=None,
                    with_entropy: bool = False,
                    entropy_grad: bool = True, chunk_size: int | None = None, impl: str | None = None,
                    fast: bool = True):
    """token_logprobs(hidden @ weight.T, targets, ...) without materialising the (N, V) logits.

    hidden (..., d); weight (V, d), e.g. the tied lm_head / wte; targets (...); mask (...) or None.
    Tokens go through in chunks of chunk_size (default: ~2^27 logits per chunk, 1024 tokens at V = 128k),
    so the extra memory is a few chunk_size x V blocks instead of several N x V ones. (Liger picks chunks as
    big as `hidden`; bigger chunks here because the weight gradient is summed over chunks in an fp32
    buffer and each chunk's addition costs a pass over V x d.)
    Gradients flow to hidden and weight. Under autocast the matmul runs in the autocast dtype.
    entropy_grad=False: the entropy is only logged; it comes back without a gradient, which lets the 'torch'
    path use _FastLogprobs (so does with_entropy=False). fast=False: always the plain reference (the tests).
    """
    lead, d = hidden.shape[:-1], hidden.shape[-1]
    h = hidden.reshape(-1, d)  # (N, d)
    N, V = h.shape[0], weight.shape[0]
    if chunk_size is None:
        chunk_size = max(64, 2**27 // V)  # ~2^27 logits (256 MB in bf16) per chunk: 1024 tokens at V = 128k
    dtype = compute_dtype(h.device.type, weight.dtype)  # the autocast dtype, else the weight's
    h, weight = h.to(dtype), weight.to(dtype)
    flat_targets, keep = _flat_inputs(targets, mask)

    if _pick_impl(impl, h.is_cuda) == "torch":
        # chunked the simple way: a big chunk's logits are recomputed in the backward (activation
        # checkpointing) instead of being kept by autograd. Each chunk runs _FastLogprobs unless the entropy
        # needs a gradient (or fast=False): then the reference.
        use_fast = fast and not (with_entropy and entropy_grad)

        def chunk_fn(h_c, w, t_c, k_c):
            if use_fast:
                return _FastLogprobs.apply(h_c @ w.t(), t_c, k_c, float(temperature), with_entropy)
            return _token_logprobs_torch(h_c @ w.t(), t_c, temperature, k_c, with_entropy)
        outs = []
        for a in range(0, N, chunk_size):
            k_c = keep[a:a + chunk_size] if keep is not None else None
            args = (h[a:a + chunk_size], weight, flat_targets[a:a + chunk_size], k_c)
            # recompute the chunk's logits in the backward only when keeping them would cost real memory
            # (> 2^24 logits); small chunks (a CPU minibatch) keep them: recomputing is pure waste there
            big = args[0].shape[0] * V > 2**24
            if big and torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
                outs.append(checkpoint(chunk_fn, *args, use_reentrant=False))
            else:
                outs.append(chunk_fn(*args))
        logp = torch.cat([lp for lp, _ in outs])
        entropy = torch.cat([ent for _, ent in outs]) if with_entropy else None
    else:
        from nanorlhf import kernels  # imports triton: only now, never at package import
        with autocast_off(h.device.type):
            logp, entropy = kernels.LinearLogprobs.apply(h, weight, flat_targets, keep, float(temperature),
                                                         chunk_size)
    if with_entropy:
        if not entropy_grad:
            # the same on every path: an entropy that is only logged has no gradient
            entropy = entropy.detach()
        return logp.view(lead), entropy.view(lead)
    return logp.view(lead)
