"""The precision policy (nanorlhf/precision.py): what --dtype=auto picks, bf16 against fp32 within stated
tolerances, the parts that must stay fp32 under bf16, same bits for the same seed, and the fast paths under
bf16.

CPU bf16 autocast runs on every CPU (slowly where the processor lacks bf16 instructions), so nothing here is
skipped. Tolerances, where bf16 is compared with fp32: bf16 keeps 8 significant bits (a relative rounding
of up to 2^-9 = 0.2% per value), so a logit comes out of the LM-head matmul with an error of about 0.2% of
its size, plus what the trunk's matmuls add. Logits: within 5% of their spread (max), 1% (mean); log-probs:
within 0.05 nats per token (max), 0.01 (mean); rewards, values, losses: within 1%. The models are tiny GPTs
with their embeddings scaled up, so that logits and log-probs have the sizes of a trained model's (a
fresh GPT's logits are ~0.1 and every error is tiny).
"""

import copy
import math
import random

import pytest
import torch
import torch.nn.functional as F

from nanorlhf import model as model_module
from nanorlhf import precision
from nanorlhf.config import ConfigError
from nanorlhf.generate import generate, response_logprobs
from nanorlhf.logprobs import linear_logprobs
from nanorlhf.losses import ranking_accuracy, ranking_loss
from nanorlhf.precision import autocast, resolve_dtype
from nanorlhf.training import make_optimizer, setup_device
from tests.helpers import tiny_gpt
from tests.test_ppo_loop import TOK, _cfg, _models, _prompts, planted_reward
from train_ppo import _minibatch, ppo_update, rollout

BF16 = "bf16"


def _scaled(model, scale=4.0):
    """The model with its token embeddings (and so its tied output layer) scaled: trained-size logits."""
    with torch.no_grad():
        model.wte.weight.mul_(scale)
    return model


def _batch(B=4, T=20, V=64, seed=0):
    x = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, :5] = mask[2, :9] = False  # left padding: the explicit-mask attention path
    return x, mask


# ----------------------------------------------------------------------------------------------------------
# what --dtype picks

X86 = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd bf16 sve\n"


def test_cpu_flags_of_x86_and_aarch64():
    assert {"avx512f", "avx512_bf16"} <= precision.cpu_flags(X86)
    assert "bf16" in precision.cpu_flags(ARM)
    assert precision.cpu_flags("processor: 0\n") == set()


@pytest.mark.parametrize("flags, speedup, expected", [
    ({"avx2"}, None, "fp32"),  # no bf16 instructions: no timing, fp32
    ({"avx512f", "avx512_bf16"}, 2.4, "bf16"),  # AMD EPYC Zen 4 (issue 15)
    ({"avx512f", "avx512_bf16"}, 0.55, "fp32"),  # Intel Xeon without AMX: the flag is there, bf16 is slower
    ({"amx_bf16"}, 8.0, "bf16"),
])
def test_auto_on_cpu_needs_the_flag_and_a_faster_bf16_matmul(monkeypatch, flags, speedup, expected):
    monkeypatch.delenv(precision.SPEEDUP_ENV)  # the tests' stand-in (conftest.py): here the real decision
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)

    def timing():
        assert speedup is not None, "timed a matmul on a CPU without bf16 instructions"
        return speedup
    monkeypatch.setattr(precision, "cpu_bf16_speedup", timing)
    lines = []
    assert resolve_dtype("auto", "cpu", log=lines.append) == expected
    assert len(lines) == 1 and f"precision: {expected} on cpu" in lines[0]
    if speedup is not None:
        assert f"{speedup:.2f}x" in lines[0]  # the log says why


@pytest.mark.parametrize("given, expected", [("1.0", "fp32"), ("4", "bf16"), ("1.25", "bf16")])
def test_the_speedup_given_in_the_environment_replaces_flags_and_timing(monkeypatch, given, expected):
    monkeypatch.setenv(precision.SPEEDUP_ENV, given)
    monkeypatch.setattr(precision, "cpu_flags", lambda: set())  # even a CPU without bf16 instructions
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: pytest.fail("timed a matmul"))
    lines = []
    assert resolve_dtype("auto", "cpu", log=lines.append) == expected
    assert f"{precision.SPEEDUP_ENV}={given}" in lines[0]


@pytest.mark.parametrize("given", ["fast", "0", "-2", "nan", "inf"])
def test_a_bad_speedup_in_the_environment_is_one_line(monkeypatch, given):
    monkeypatch.setenv(precision.SPEEDUP_ENV, given)
    with pytest.raises(ConfigError, match=f"{precision.SPEEDUP_ENV}={given}: expected a number > 0"):
        resolve_dtype("auto", "cpu")


def test_auto_keeps_the_dtype_the_starting_checkpoint_was_trained_in(monkeypatch):
    monkeypatch.setattr(precision, "auto_dtype",
                        lambda device: pytest.fail("timed instead of reading the checkpoint"))
    lines = []
    assert resolve_dtype("auto", "cpu", lines.append, trained_in=("bf16", "out/sft/ckpt.pt")) == "bf16"
    assert "the dtype out/sft/ckpt.pt was trained in" in lines[0]
    assert resolve_dtype("fp32", "cpu", None, trained_in=("bf16", "out/sft/ckpt.pt")) == "fp32"  # a flag wins


def test_machine_report_names_the_cpu_threads_and_the_pick():
    line = precision.machine_report()
    assert line.startswith("machine: ") and f"{torch.get_num_threads()} threads" in line
    assert "--dtype=auto picks fp32 on cpu: NANORLHF_BF16_SPEEDUP=1.0" in line  # conftest.py's stand-in


def test_the_tests_pin_auto_to_fp32():
    """conftest.py: every test (and every stage a test starts) runs fp32 under --dtype=auto."""
    assert resolve_dtype("auto", "cpu", log=None) == "fp32"


def test_explicit_dtype_is_kept_and_a_bad_one_is_a_config_error():
    assert resolve_dtype("fp32", "cpu", log=None) == "fp32"
    assert resolve_dtype("bf16", "cpu", log=None) == "bf16"
    with pytest.raises(ConfigError, match="--dtype=fp16: expected one of auto, fp32, bf16"):
        resolve_dtype("fp16", "cpu")


def test_cpu_bf16_speedup_is_a_positive_ratio_measured_once():
    # n=256: 1/64 of the default's work (a CPU without bf16 instructions emulates it, 134x slower on an AVX2
    # EPYC); any positive ratio is a possible answer on some CPU
    s = precision.cpu_bf16_speedup(n=256)
    assert 0 < s < math.inf
    assert precision.cpu_bf16_speedup(n=256) is s  # cached: one timing per process, one decision


def test_autocast_regimes():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast("cpu", "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with autocast("cpu", "fp32"):
        assert (a @ b).dtype == torch.float32
    with pytest.raises(ValueError):
        autocast("cpu", "fp16")


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_tf32_on_any_cuda_device(device):
    """Only flags are set: this runs on a CPU-only build too."""
    old = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        assert setup_device(device) == device
        assert torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


# ----------------------------------------------------------------------------------------------------------
# bf16 against fp32, and what must stay fp32

@pytest.mark.parametrize("pos", ["learned", "rope"])
# is_causal vs an explicit mask: both CPU flash-attention paths
@pytest.mark.parametrize("padded", [False, True])
def test_forward_logits_bf16_close_to_fp32(pos, padded):
    m = _scaled(tiny_gpt("lm", vocab=64, block=48, n_layer=2, n_embd=32, pos=pos))
    x, mask = _batch()
    mask = mask if padded else None
    ref = m(x, mask)
    with autocast("cpu", BF16):
        out = m(x, mask)
    assert out.dtype == torch.bfloat16  # bf16 really ran
    keep = mask if padded else torch.ones_like(x, dtype=torch.bool)  # padded query rows are never read
    err = (out.float() - ref).abs()[keep]
    spread = ref[keep].std()
    assert err.max() < 0.05 * spread and err.mean() < 0.01 * spread, (err.max(), err.mean(), spread)


def test_response_logprobs_bf16_close_to_fp32_and_fp32_themselves():
    m = _scaled(tiny_gpt("lm", vocab=64, block=48, n_layer=2, n_embd=32))
    x, mask = _batch()
    P = 12
    ref, ref_ent = response_logprobs(m, x, mask, P, with_entropy=True)
    with autocast("cpu", BF16):
        lp, ent = response_logprobs(m, x, mask, P, with_entropy=True)
    assert lp.dtype == ent.dtype == torch.float32  # the log-softmax reductions run in fp32
    err = (lp - ref).abs()
    assert 0 < err.max() < 0.05 and err.mean() < 0.01, (err.max(), err.mean())
    assert (ent - ref_ent).abs().max() < 0.05


@pytest.mark.parametrize("head", ["scalar", "value"])
def test_reward_and_value_heads_are_fp32_under_bf16(head):
    """In bf16 a score near 3 could only take values k/64: the heads must not be rounded to bf16."""
    m = tiny_gpt(head, vocab=64, block=48, n_layer=2, n_embd=32)
    with torch.no_grad():
        m.score.bias.fill_(3.0)  # scores of magnitude 2-4, where bf16's step is 1/64
    x, mask = _batch()
    ref = m(x, mask)
    with autocast("cpu", BF16):
        out = m(x, mask)
    assert out.dtype == torch.float32
    representable = out == out.bfloat16().float()  # what a bf16 head output would always be
    assert representable.float().mean() < 0.2, out
    assert (out - ref).abs().max() < 0.01 * ref.abs().max()


def test_ranking_loss_and_accuracy_bf16_close_to_fp32():
    rm = tiny_gpt("scalar", vocab=64, block=48, n_layer=2, n_embd=32)
    with torch.no_grad():
        rm.score.weight.mul_(8)  # scores spread over a few units, as a trained reward model's
    x, mask = _batch(B=12)
    out = {}
    for dtype in ("fp32", BF16):
        rm.zero_grad()
        with autocast("cpu", dtype):
            scores = rm(x, mask).float().view(3, 4)  # 3 groups of K = 4, best first
        loss = ranking_loss(scores)
        loss.backward()
        out[dtype] = (loss.item(), ranking_accuracy(scores.detach())[0].item(), rm.score.weight.grad.clone())
    (l32, a32, g32), (l16, a16, g16) = out["fp32"], out[BF16]
    assert abs(l16 - l32) < 0.01 * abs(l32)
    assert a16 == a32  # no false ties or flips
    assert F.cosine_similarity(g16.flatten(), g32.flatten(), 0) > 0.99


def _update(policy, critic, exp, dtype):
    """One ppo_update (2 epochs x 2 minibatches) of copies of the models; returns stats and parameter
    moves."""
    p, c = copy.deepcopy(policy), copy.deepcopy(critic)
    opt_p, opt_c = make_optimizer(p, 3e-3, 0.0, eps=1e-5), make_optimizer(c, 3e-3, 0.0, eps=1e-5)
    stats = ppo_update(p, c, opt_p, opt_c, exp, _cfg(init_kl_coef=0.1, dtype=dtype), rng=random.Random(0))

    def moved(new, old):
        return torch.cat([(a - b).flatten() for a, b in zip(new.parameters(), old.parameters())])
    return stats, moved(p, policy), moved(c, critic)


def test_one_ppo_update_bf16_close_to_fp32():
    """The same experience (an fp32 rollout) through one update in each precision: the losses agree to 1% and
    the parameters move the same way (AdamW's first steps are about lr·sign(g): only the small gradients
    whose sign bf16 flips move differently)."""
    torch.manual_seed(0)
    policy, ref, critic = _models()
    _scaled(policy), _scaled(ref)
    exp = rollout(policy, ref, critic, planted_reward, _prompts(32, random.Random(0)), TOK,
                  _cfg(init_kl_coef=0.1, dtype="fp32"), 0.1, torch.Generator().manual_seed(0))
    s32, dp32, dc32 = _update(policy, critic, exp, "fp32")
    s16, dp16, dc16 = _update(policy, critic, exp, BF16)
    for k in ("pg_loss", "vf_loss", "entropy", "ratio_mean"):
        assert abs(s16[k] - s32[k]) <= 0.01 * abs(s32[k]) + 1e-4, (k, s16[k], s32[k])
    assert abs(s16["clipfrac"] - s32["clipfrac"]) < 0.02
    for a, b in ((dp16, dp32), (dc16, dc32)):
        assert F.cosine_similarity(a, b, 0) > 0.99 and (a - b).norm() < 0.1 * b.norm()


def test_bf16_rollout_ratio_near_one_not_asserted_exact():
    """π_old comes from the sampler (KV-cache decode); the update recomputes it with the full forward. In
    fp32 they agree to 1e-4 (test_ppo_loop). In bf16 the two paths' matmuls may round differently: within
    0.01 nats per token, i.e. a ratio within 1 ± 1%, far inside the clip range ε = 0.2."""
    torch.manual_seed(0)
    policy, ref, critic = _models()
    _scaled(policy), _scaled(ref)
    lps = {}
    for dtype in ("fp32", BF16):
        cfg = _cfg(init_kl_coef=0.1, dtype=dtype)
        exp = rollout(policy, ref, critic, planted_reward, _prompts(32, random.Random(0)), TOK, cfg, 0.1,
                      torch.Generator().manual_seed(0))
        mb = _minibatch(exp, torch.arange(16))
        with autocast("cpu", dtype):
            new = response_logprobs(policy, mb.tokens, mb.attn, mb.P, cfg.temperature)
        log_ratio = (new - mb.logprobs)[mb.mask.bool()]
        assert log_ratio.abs().max() < 0.01, (dtype, log_ratio.abs().max())
        lps[dtype] = exp.logprobs
    assert not torch.equal(lps["fp32"], lps[BF16])  # the bf16 rollout really ran in bf16


def test_same_seed_same_bits_in_bf16():
    def run():
        torch.manual_seed(0)
        policy, ref, critic = _models()
        cfg = _cfg(dtype=BF16)
        opt_p = make_optimizer(policy, cfg.lr, 0.0, eps=1e-5)
        opt_c = make_optimizer(critic, cfg.critic_lr, 0.0, eps=1e-5)
        rng, gen = random.Random(0), torch.Generator().manual_seed(0)
        for _ in range(2):
            exp = rollout(policy, ref, critic, planted_reward, _prompts(32, rng), TOK, cfg, 0.0, gen)
            ppo_update(policy, critic, opt_p, opt_c, exp, cfg, rng=rng)
        return exp.tokens, [p.detach().clone() for p in (*policy.parameters(), *critic.parameters())]
    (t1, p1), (t2, p2) = run(), run()
    assert torch.equal(t1, t2)
    assert all(torch.equal(a, b) for a, b in zip(p1, p2))
    assert all(p.dtype == torch.float32 for p in p1)  # fp32 master weights


# ----------------------------------------------------------------------------------------------------------
# the KV cache and the fast paths under bf16

def test_cpu_attention_and_kv_cache_in_fp32_under_bf16(monkeypatch):
    """On the CPU attention runs in fp32 under bf16 autocast (its bf16 flash-attention backward is ~6x
    slower), and the KV cache holds keys and values in that same dtype, so decoding never recasts the
    cache."""
    seen = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append((q.dtype, k.dtype, v.dtype))
        return sdpa(q, k, v, **kw)
    monkeypatch.setattr(model_module.F, "scaled_dot_product_attention", spy)
    m = _scaled(tiny_gpt("lm", vocab=64, block=48, n_layer=2, n_embd=32))
    with autocast("cpu", BF16):
        cache = m.new_cache(2, 16)
        assert m(torch.randint(0, 64, (2, 6))).dtype == torch.bfloat16  # the matmuls are bf16 ...
        generate(m, [[1, 2, 3], [4]], 4, eos_id=-1, pad_id=0, temperature=0)
    assert seen and set(seen) == {(torch.float32,) * 3}  # ... attention fp32, with and without the cache
    assert cache.k.dtype == cache.v.dtype == torch.float32
    assert precision.attention_dtype("cpu", torch.float32) == torch.float32
    assert m.new_cache(2, 16).k.dtype == torch.float32  # no autocast: the weights' dtype


def test_cached_generation_equals_plain_under_bf16():
    m = _scaled(tiny_gpt("lm", vocab=64, block=48, n_layer=2, n_embd=32))
    prompts = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11], [12]]
    out = {}
    with autocast("cpu", BF16):
        for use_cache in (True, False):
            out[use_cache] = generate(m, prompts, 10, eos_id=-1, pad_id=0, temperature=0,
                                      use_cache=use_cache).response
        lp = response_logprobs(m, *(lambda g: (g.tokens, g.attention_mask, g.prompt_len))(
            generate(m, prompts, 10, eos_id=-1, pad_id=0, temperature=1.0,
                     generator=torch.Generator().manual_seed(0))))
    assert torch.equal(out[True], out[False])  # greedy: the same tokens with and without the cache
    assert lp.isfinite().all()


def test_fast_linear_logprobs_equal_reference_under_bf16():
    gen = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(3, 5, 16, generator=gen), torch.randn(57, 16, generator=gen)
    targets = torch.randint(0, 57, (3, 5), generator=gen)
    mask = (torch.rand(3, 5, generator=gen) > 0.3).float()
    res = {}
    for fast in (True, False):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        with autocast("cpu", BF16):
            lp, ent = linear_logprobs(h, w, targets, mask=mask, with_entropy=True, entropy_grad=False,
                                      fast=fast,
                                      impl="torch")
        (lp * torch.randn(lp.shape, generator=torch.Generator().manual_seed(7))).sum().backward()
        res[fast] = (lp, ent, h.grad, w.grad)
    for a, b in zip(res[True], res[False]):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, atol=1e-2, rtol=1e-2)  # gradients pass through bf16 logits
    # the same bf16 logits, fp32 maths
    torch.testing.assert_close(res[True][0], res[False][0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_response_logprobs_fast_equals_plain_under_bf16(pos):
    m = _scaled(tiny_gpt("lm", vocab=64, block=48, n_layer=2, n_embd=32, pos=pos))
    x, mask = _batch()
    with autocast("cpu", BF16):
        fast = response_logprobs(m, x, mask, 12, fast=True)
        plain = response_logprobs(m, x, mask, 12, fast=False)
    torch.testing.assert_close(fast, plain, atol=1e-2, rtol=0)
