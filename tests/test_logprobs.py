"""
Fused log-probs (nanorlhf/logprobs.py, nanorlhf/kernels.py) against a float64 reference.

Both implementations run here: 'torch' and 'triton'. Without a GPU the Triton kernels run in the Triton
interpreter (numpy), which must be switched on before nanorlhf.kernels is imported; nanorlhf imports it
lazily, so setting the variable at the top of this file is enough whatever order pytest collects in
(and even if some other module imported triton first: the kernels call none of triton's own @jit helpers).
Shapes are tiny because the interpreter is slow; tiles are made small (_block_v) so the loop over V runs
several iterations. On a CUDA machine the same tests run on the GPU, plus an N*V > 2^31 test.
"""

import math
import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

from nanorlhf.generate import response_logprobs  # noqa: E402
from nanorlhf.logprobs import _pick_impl, linear_logprobs, token_logprobs  # noqa: E402
from nanorlhf.model import GPT, GPTConfig  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
IMPLS = ["torch", "triton"]


def reference(logits, targets, temperature=1.0, mask=None):
    """float64, written out: logp = x_y/T - logsumexp(x/T), H = -sum p log p (0 log 0 = 0)."""
    x = logits.double() / temperature
    lse = torch.logsumexp(x, dim=-1)
    logp = x.gather(-1, targets.clamp(0, x.shape[-1] - 1).unsqueeze(-1)).squeeze(-1) - lse
    log_p = x - lse.unsqueeze(-1)
    p = log_p.exp()
    entropy = -(p * log_p.masked_fill(p == 0, 0.0)).sum(-1)
    if mask is not None:
        logp, entropy = logp * mask, entropy * mask
    return logp, entropy


def run(fn, logits, g_logp, g_ent):
    """fn(logits) -> (logp, entropy); returns values and d(sum g_logp*logp + g_ent*entropy)/d logits."""
    logits = logits.detach().clone().requires_grad_()
    logp, ent = fn(logits)
    (logp.double() * g_logp + ent.double() * g_ent).sum().backward()
    return logp, ent, logits.grad


def check(logits, targets, impl, temperature=1.0, mask=None, block_v=None, atol=1e-5, grad_atol=1e-5):
    g_logp = torch.randn(targets.shape, dtype=torch.float64, device=logits.device)
    g_ent = torch.randn(targets.shape, dtype=torch.float64, device=logits.device)
    ours = run(lambda x: token_logprobs(x, targets, temperature=temperature, mask=mask, with_entropy=True,
                                        impl=impl, _block_v=block_v), logits, g_logp, g_ent)
    ref = run(lambda x: reference(x, targets, temperature, mask), logits.double(), g_logp, g_ent)
    assert ours[0].dtype == ours[1].dtype == torch.float32 and ours[2].dtype == logits.dtype
    torch.testing.assert_close(ours[0].double(), ref[0], atol=atol, rtol=1e-5)
    torch.testing.assert_close(ours[1].double(), ref[1], atol=atol, rtol=1e-5)
    torch.testing.assert_close(ours[2].double(), ref[2], atol=grad_atol,
                               rtol=1e-2 if grad_atol > 1e-5 else 1e-5)
    return ours, ref


def make(N, V, dtype=torch.float32, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(N, V, generator=g) * scale).to(dtype).to(DEVICE)
    targets = torch.randint(0, V, (N,), generator=g).to(DEVICE)
    targets[0], targets[-1] = 0, V - 1  # first and last column
    return logits, targets


# ----------------------------------------------------------------------------------------------------------
# values and gradients

@pytest.mark.parametrize("impl", IMPLS)
# odd V, V > BLOCK_V, V % BLOCK_V != 0
@pytest.mark.parametrize("V,block_v", [(7, None), (33, 8), (1000, 128)])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_matches_reference(impl, V, block_v, temperature):
    logits, targets = make(5, V)  # N = 5: no power of two
    check(logits, targets, impl, temperature=temperature, block_v=block_v)


@pytest.mark.parametrize("impl", IMPLS)
def test_mask_zeroes_outputs_and_grads(impl):
    logits, targets = make(6, 33)
    mask = torch.tensor([1, 0, 1, 1, 0, 0], device=DEVICE)
    targets[1], targets[4] = -100, 10**6  # padding targets may be anything
    (logp, ent, grad), _ = check(logits, targets, impl, mask=mask, block_v=8)
    off = mask == 0
    assert (logp[off] == 0).all() and (ent[off] == 0).all() and (grad[off] == 0).all()
    assert (grad[~off] != 0).any()


@pytest.mark.parametrize("impl", IMPLS)
def test_all_masked(impl):
    logits, targets = make(3, 33)
    (logp, ent, grad), _ = check(logits, targets, impl, mask=torch.zeros(3, device=DEVICE), block_v=8)
    assert (logp == 0).all() and (ent == 0).all() and (grad == 0).all()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(impl, dtype):
    # the reference sees the same rounded logits, so values agree to fp32 rounding; the gradient is rounded
    # to the logits' dtype on the way out (bf16: 8 bits of mantissa, fp16: 11)
    logits, targets = make(5, 1000, dtype=dtype)
    grad_atol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    check(logits, targets, impl, temperature=0.7, block_v=128, atol=1e-4, grad_atol=grad_atol)


@pytest.mark.parametrize("impl", IMPLS)
def test_large_logits(impl):
    logits, targets = make(4, 33, scale=1e4)  # |x| ~ 1e4: exp would overflow without the max shift
    (logp, ent, grad), _ = check(logits, targets, impl, block_v=8, atol=1e-2)
    assert torch.isfinite(logp).all() and torch.isfinite(ent).all() and torch.isfinite(grad).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_minus_inf_logits(impl):
    logits, targets = make(4, 33)
    logits[:, 5:20] = float("-inf")  # a whole tile of -inf (block_v=8) and parts of others
    targets = targets.clamp(max=4)
    logits[1, :] = float("-inf")
    logits[1, targets[1]] = 0.0  # only the target is finite: logp = 0, H = 0
    (logp, ent, grad), _ = check(logits, targets, impl, block_v=8)
    assert logp[1] == 0 and ent[1] == 0
    assert torch.isfinite(grad).all() and (grad[:, 5:20] == 0).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_uniform_logits(impl):
    V = 1000
    logits = torch.full((3, V), 1234.5, device=DEVICE)  # lse = 1234.5 + log V
    targets = torch.tensor([0, 17, V - 1], device=DEVICE)
    logp, ent = token_logprobs(logits, targets, with_entropy=True, impl=impl, _block_v=128)
    log_v = torch.full_like(logp, math.log(V))
    # fp32 spacing at 1234.5 + log V is 1.2e-4: log p rounded there (z_y - logsumexp(z), or a fused
    # multiply-add on the GPU) loses up to two steps, and the entropy built from it two more: 4 steps allowed
    torch.testing.assert_close(logp, -log_v, atol=5e-4, rtol=0)
    torch.testing.assert_close(ent, log_v, atol=5e-4, rtol=0)
    logp0 = token_logprobs(torch.zeros(2, 33, device=DEVICE), targets[:2], impl=impl, _block_v=8)
    torch.testing.assert_close(logp0, torch.full_like(logp0, -math.log(33)))


@pytest.mark.parametrize("impl", IMPLS)
def test_non_contiguous_and_batched(impl):
    B, T, V = 2, 4, 33
    full, _ = make(B * T, V)
    full = full.view(B, T, V)
    logits = full[:, :-1]  # (B, T-1, V), the usual "predict the next token" slice: not a plain 2-D view
    assert not logits.is_contiguous()
    if impl == "triton":  # read in place through two row strides, not copied
        from nanorlhf.kernels import _as_rows
        assert _as_rows(logits)[0].data_ptr() == logits.data_ptr()
    targets = torch.randint(0, V, (B, T - 1), device=DEVICE)
    g = torch.randn(B, T - 1, device=DEVICE)
    x1 = logits.detach().clone().requires_grad_()  # contiguous copy
    x2 = full.detach().clone().requires_grad_()
    lp1 = token_logprobs(x1, targets, impl=impl, _block_v=8)
    lp2 = token_logprobs(x2[:, :-1], targets, impl=impl, _block_v=8)
    (lp1 * g).sum().backward()
    (lp2 * g).sum().backward()
    assert lp1.shape == (B, T - 1)
    torch.testing.assert_close(lp1, lp2, rtol=0, atol=0)
    torch.testing.assert_close(x2.grad[:, :-1], x1.grad, rtol=0, atol=0)
    assert (x2.grad[:, -1] == 0).all()
    torch.testing.assert_close(lp1, reference(logits, targets)[0].float())


@pytest.mark.parametrize("impl", IMPLS)
def test_logp_only_and_entropy_only_grads(impl):
    logits, targets = make(5, 33)
    x = logits.clone().requires_grad_()
    logp, ent = token_logprobs(x, targets, with_entropy=True, impl=impl, _block_v=8)
    (d_logp,) = torch.autograd.grad(logp.sum(), x, retain_graph=True)
    (d_ent,) = torch.autograd.grad(ent.sum(), x)
    ref = logits.double().requires_grad_()
    r_logp, r_ent = reference(ref, targets)
    torch.testing.assert_close(d_logp.double(), torch.autograd.grad(r_logp.sum(), ref, retain_graph=True)[0],
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(d_ent.double(), torch.autograd.grad(r_ent.sum(), ref)[0], atol=1e-5, rtol=1e-5)
    out = token_logprobs(logits, targets, impl=impl)  # with_entropy=False: one tensor
    assert isinstance(out, torch.Tensor) and out.shape == (5,)


def test_repeat_runs_bitwise_identical():
    logits, targets = make(5, 1000, dtype=torch.bfloat16)
    g = torch.randn(5, device=DEVICE)
    outs = []
    for _ in range(2):
        x = logits.clone().requires_grad_()
        logp, ent = token_logprobs(x, targets, with_entropy=True, impl="triton", _block_v=128)
        (logp * g + ent * g).sum().backward()
        outs.append((logp, ent, x.grad))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------------------
# linear_logprobs: logits = hidden @ weight.T, chunked

@pytest.mark.parametrize("impl", IMPLS)
def test_linear_logprobs(impl):
    g = torch.Generator().manual_seed(1)
    B, T, d, V = 2, 5, 16, 33
    hidden = torch.randn(B, T, d, generator=g).to(DEVICE)
    weight = (torch.randn(V, d, generator=g) * 0.5).to(DEVICE)
    targets = torch.randint(0, V, (B, T), generator=g).to(DEVICE)
    mask = (torch.rand(B, T, generator=g) > 0.3).to(DEVICE)
    g_logp, g_ent = torch.randn(B, T, device=DEVICE), torch.randn(B, T, device=DEVICE)

    def grads(h, w, fn):
        h, w = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
        logp, ent = fn(h, w)
        (logp * g_logp + ent * g_ent).sum().backward()
        return logp, ent, h.grad, w.grad

    ours = grads(hidden, weight, lambda h, w: linear_logprobs(
        h, w, targets, temperature=0.8, mask=mask, with_entropy=True, chunk_size=3, impl=impl))  # 4 chunks
    ref = grads(hidden.double(), weight.double(), lambda h, w: reference(h @ w.T, targets, 0.8, mask))
    assert ours[0].shape == (B, T) and ours[2].shape == hidden.shape and ours[3].shape == weight.shape
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.double(), b.double(), atol=1e-5, rtol=1e-4)


def test_linear_logprobs_bf16_default_chunk():
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(7, 16, generator=g).to(DEVICE, torch.bfloat16).requires_grad_()
    weight = (torch.randn(40, 16, generator=g) * 0.5).to(DEVICE, torch.bfloat16).requires_grad_()
    targets = torch.randint(0, 40, (7,), generator=g).to(DEVICE)
    logp = linear_logprobs(hidden, weight, targets, impl="triton")
    logp.sum().backward()
    assert hidden.grad.dtype == weight.grad.dtype == torch.bfloat16
    h, w = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    ref = reference(h @ w.T, targets)[0]
    ref.sum().backward()
    torch.testing.assert_close(logp.double(), ref, atol=0.05, rtol=0.02)  # bf16 matmul
    torch.testing.assert_close(weight.grad.double(), w.grad, atol=0.05, rtol=0.05)


# ----------------------------------------------------------------------------------------------------------
# response_logprobs: the alignment of log-probs with the response tokens, and the response mask

@pytest.mark.parametrize("fast", [True, False])
def test_response_logprobs_are_a_shifted_loop_and_zero_after_eos(fast):
    """logp_t = log softmax(logits[P-1+t] / T)[tokens[P+t]] at the response tokens up to EOS (float64 loop);
    exactly 0 at the PAD columns after EOS, whose targets are PAD ids that must not be scored."""
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=12, block_size=16, n_layer=1, n_head=2, n_embd=16, head="lm"))
    EOS, PAD, P, T = 10, 11, 3, 0.8
    tokens = torch.tensor([[PAD, 1, 2, 3, EOS, PAD, PAD], [4, 5, 6, 7, 8, 9, EOS]])
    attn = torch.tensor([[0, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    logp = response_logprobs(m, tokens, attn, P, T, fast=fast)
    with torch.no_grad():
        logits = m(tokens, attn).double() / T
    for b in range(2):
        for t in range(tokens.shape[1] - P):
            want = (torch.log_softmax(logits[b, P - 1 + t], -1)[tokens[b, P + t]].item() if attn[b, P + t]
                    else 0.0)
            assert logp[b, t].item() == pytest.approx(want, abs=1e-5), (b, t)
    assert (logp[0, 2:] == 0).all()


# ----------------------------------------------------------------------------------------------------------
# dispatch

def autograd_ops(t):
    """names of the autograd nodes behind t"""
    names, todo = set(), [t.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and type(node).__name__ not in names:
            names.add(type(node).__name__)
            todo += [next_fn for next_fn, _ in node.next_functions]
    return names


def test_dispatch(monkeypatch):
    monkeypatch.delenv("NANORLHF_LOGPROBS", raising=False)
    assert _pick_impl(None, is_cuda=False) == "torch"  # CPU default
    assert _pick_impl(None, is_cuda=True) == "triton"
    assert _pick_impl("torch", is_cuda=True) == "torch"
    monkeypatch.setenv("NANORLHF_LOGPROBS", "torch")
    assert _pick_impl(None, is_cuda=True) == "torch"
    logits, targets = make(3, 7)
    x = logits.requires_grad_()
    assert "TokenLogprobsBackward" not in autograd_ops(token_logprobs(x, targets))
    monkeypatch.setenv("NANORLHF_LOGPROBS", "triton")
    assert _pick_impl(None, is_cuda=False) == "triton"
    assert "TokenLogprobsBackward" in autograd_ops(token_logprobs(x, targets))
    with pytest.raises(ValueError):
        _pick_impl("numpy", is_cuda=False)


# ----------------------------------------------------------------------------------------------------------
# GPU only

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (4 GB)")
def test_int64_offsets():
    N, V = 32800, 65536  # N * V > 2^31: int32 row offsets would wrap
    logits = torch.randn(N, V, device="cuda", dtype=torch.bfloat16)
    targets = torch.randint(0, V, (N,), device="cuda")
    x = logits.requires_grad_()
    logp, ent = token_logprobs(x, targets, with_entropy=True, impl="triton")
    (logp.sum() + ent.sum()).backward()
    rows = [0, N // 2, N - 1]
    ref_x = logits.detach()[rows].double().requires_grad_()
    r_logp, r_ent = reference(ref_x, targets[rows])
    (r_logp.sum() + r_ent.sum()).backward()
    torch.testing.assert_close(logp[rows].double(), r_logp, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(ent[rows].double(), r_ent, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(x.grad[rows].double(), ref_x.grad, atol=1e-3, rtol=1e-2)
