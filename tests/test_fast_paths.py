"""Every speed-up of a PPO iteration (issue #7) against the plain way it replaces: same numbers up to fp32
rounding, same tokens for the same generator, or (the sampler, which draws differently) the same distribution.

    fast path (the switch)                         plain path
    _FastLogprobs (linear_logprobs, fast=True)      _token_logprobs_torch (fast=False)
    entropy without a gradient (logged only)        entropy inside the autograd graph
    last block only at positions first…             every position, then slice
    fast.TanhGELU (model.FAST_GELU)                 F.gelu(approximate="tanh")
    prefill: output layer at the last position      full forward, logits of every position, keep the last
    KV cache                                        recompute the prefix every step (use_cache=False)
    fast.sample_inverse_cdf (generate.FAST_SAMPLING)  torch.multinomial; both against the exact softmax
                                                      probabilities (chi-square test)
    finished rows leave the batch (generate.COMPACT)  every row decoded to the longest's end (COMPACT = 0)
    chunks of rows of similar length (training.       the batch in one piece, padded to its longest row
      length_chunks: SFT loss, RM scores, eval's
      KL, PPO's rollout scoring; DPO's in
      tests/test_dpo.py)
"""

import pytest
import torch
import torch.nn.functional as F

from nanorlhf import fast
from nanorlhf import generate as generate_module
from nanorlhf import model as model_module
from nanorlhf.fast import TanhGELU, sample_inverse_cdf
from nanorlhf.generate import _sample, generate, response_logprobs
from nanorlhf.logprobs import linear_logprobs, token_logprobs
from nanorlhf.losses import sft_loss
from nanorlhf.model import KVCache
from nanorlhf.training import by_length, length_chunks
from tests.helpers import tiny_gpt

EOS, PAD = 48, 49


def _prompts():
    return [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11], [12]]


def _grads(fn, *leaves):
    """fn(*leaves) -> (logp, entropy); returns logp, entropy and d(sum g * logp)/d leaves."""
    leaves = [x.detach().clone().requires_grad_() for x in leaves]
    logp, entropy = fn(*leaves)
    g = torch.randn(logp.shape, generator=torch.Generator().manual_seed(7))
    grads = torch.autograd.grad((logp * g).sum(), leaves)
    return logp, entropy, grads


# ----------------------------------------------------------------------------------------------------------
# log-probs: _FastLogprobs vs the reference

@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk_size", [None, 4])  # one chunk; several (the weight gradient sums over them)
def test_fast_linear_logprobs_equal_reference(temperature, chunk_size):
    gen = torch.Generator().manual_seed(0)
    B, T, d, V = 3, 5, 16, 57
    hidden = torch.randn(B, T, d, generator=gen)
    weight = torch.randn(V, d, generator=gen) * 0.5
    targets = torch.randint(0, V, (B, T), generator=gen)
    mask = (torch.rand(B, T, generator=gen) > 0.3).float()
    targets[mask == 0] = -100  # padding targets may be anything

    def run(fast):
        return lambda h, w: linear_logprobs(h, w, targets, temperature=temperature, mask=mask,
                                            with_entropy=True,
                                            entropy_grad=False, chunk_size=chunk_size,
                                            impl="torch", fast=fast)

    lp_fast, ent_fast, (dh_fast, dw_fast) = _grads(run(True), hidden, weight)
    lp_ref, ent_ref, (dh_ref, dw_ref) = _grads(run(False), hidden, weight)
    for a, b in ((lp_fast, lp_ref), (ent_fast, ent_ref), (dh_fast, dh_ref), (dw_fast, dw_ref)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert not ent_fast.requires_grad  # logged only: no graph behind it
    assert (lp_fast[mask == 0] == 0).all() and (ent_fast[mask == 0] == 0).all()
    # and the plain path is what token_logprobs computes on the full logits
    full = token_logprobs(hidden @ weight.T, targets, temperature=temperature, mask=mask, impl="torch")
    torch.testing.assert_close(lp_fast, full, atol=1e-5, rtol=1e-5)


def test_fast_logprobs_without_entropy_and_without_grad():
    gen = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(6, 8, generator=gen), torch.randn(33, 8, generator=gen)
    targets = torch.randint(0, 33, (6,), generator=gen)
    _, _, grads_fast = _grads(lambda h, w: (linear_logprobs(h, w, targets, impl="torch"), None),
                              hidden, weight)
    _, _, grads_ref = _grads(lambda h, w: (linear_logprobs(h, w, targets, impl="torch", fast=False), None),
                             hidden, weight)
    for a, b in zip(grads_fast, grads_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # scoring with the frozen reference: forward only
        fast = linear_logprobs(hidden, weight, targets, temperature=0.7, impl="torch")
        ref = linear_logprobs(hidden, weight, targets, temperature=0.7, impl="torch", fast=False)
    torch.testing.assert_close(fast, ref, atol=1e-6, rtol=1e-6)


def test_entropy_gradient_when_asked_for():
    """entropy_grad=True keeps the reference path: the entropy is differentiable (an entropy bonus)."""
    gen = torch.Generator().manual_seed(2)
    hidden, weight = torch.randn(5, 8, generator=gen, requires_grad=True), torch.randn(21, 8, generator=gen)
    targets = torch.randint(0, 21, (5,), generator=gen)
    _, ent = linear_logprobs(hidden, weight, targets, with_entropy=True, entropy_grad=True, impl="torch")
    (d_ent,) = torch.autograd.grad(ent.sum(), hidden)
    h64 = hidden.detach().double().requires_grad_()
    p = torch.softmax(h64 @ weight.double().T, -1)
    (d_ref,) = torch.autograd.grad(-(p * p.log()).sum(), h64)
    torch.testing.assert_close(d_ent.double(), d_ref, atol=1e-5, rtol=1e-4)


def test_response_logprobs_fast_equals_plain_gradients_of_the_model():
    """What ppo_update calls: log-probs and entropy of a minibatch, and the policy's parameter gradients."""
    m = tiny_gpt("lm").train()
    gen = generate(m, _prompts(), 6, EOS, PAD, temperature=1.0, generator=torch.Generator().manual_seed(0))
    g = torch.randn(gen.response.shape, generator=torch.Generator().manual_seed(3))
    out = {}
    for fast in (True, False):
        m.zero_grad(set_to_none=True)
        logp, ent = response_logprobs(m, gen.tokens, gen.attention_mask, gen.prompt_len, 0.9,
                                      with_entropy=True,
                                      fast=fast)
        (logp * g).sum().backward()
        out[fast] = logp, ent, {n: p.grad.clone() for n, p in m.named_parameters()}
    torch.testing.assert_close(out[True][0], out[False][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[True][1], out[False][1], atol=1e-5, rtol=1e-5)
    for name, grad in out[False][2].items():
        torch.testing.assert_close(out[True][2][name], grad, atol=1e-6, rtol=1e-4, msg=name)


# ----------------------------------------------------------------------------------------------------------
# the model: positions no loss reads, and the GELU

def _param_grads(m, fn):
    m.zero_grad(set_to_none=True)
    out = fn()
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(4))).sum().backward()
    return out, {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("first", [1, 6, 11])
@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_first_equals_slicing_every_position(first, padded, pos):
    m = tiny_gpt("value", pos=pos).train()
    x = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 12, dtype=torch.bool)
    if padded:
        mask[1, :4] = False  # left padding, as a PPO minibatch
    else:
        mask = None  # (the no-mask path builds an explicit causal mask for the last block)
    fast, g_fast = _param_grads(m, lambda: m(x, mask, first=first))
    plain, g_plain = _param_grads(m, lambda: m(x, mask)[:, first:])
    assert fast.shape == plain.shape == (3, 12 - first)
    torch.testing.assert_close(fast, plain, atol=1e-6, rtol=1e-5)
    assert g_fast.keys() == g_plain.keys()
    for name, grad in g_plain.items():
        torch.testing.assert_close(g_fast[name], grad, atol=1e-6, rtol=1e-4, msg=name)
    with pytest.raises(ValueError):
        tiny_gpt("scalar")(x, mask, first=first)


def test_tanh_gelu_equals_torch():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(10_000, generator=g) * 3, torch.linspace(-12, 12, 2001),
                   torch.tensor([0.0, -0.0, 1e-30, -1e-30, 30.0, -30.0, 1e6, -1e6])])
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours, y_theirs = TanhGELU.apply(ours), F.gelu(theirs, approximate="tanh")
    grad = torch.randn(x.shape, generator=g)
    y_ours.backward(grad)
    y_theirs.backward(grad)
    torch.testing.assert_close(y_ours, y_theirs, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-5, rtol=1e-5)
    # and both against float64
    x64 = x.double().requires_grad_()
    F.gelu(x64, approximate="tanh").backward(grad.double())
    torch.testing.assert_close(ours.grad.double(), x64.grad, atol=2e-5, rtol=1e-5)
    # fast.gelu takes this path for fp32 CPU tensors, F.gelu's for anything else
    assert type(fast.gelu(x.requires_grad_()).grad_fn).__name__ == "TanhGELUBackward"
    assert type(fast.gelu(x.double()).grad_fn).__name__ == "GeluBackward0"


def test_model_with_tanh_gelu_equals_plain_gelu(monkeypatch):
    m = tiny_gpt("lm").train()
    x = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(1))
    fast, g_fast = _param_grads(m, lambda: m(x))
    assert model_module.FAST_GELU  # on by default
    monkeypatch.setattr(model_module, "FAST_GELU", False)
    plain, g_plain = _param_grads(m, lambda: m(x))
    torch.testing.assert_close(fast, plain, atol=1e-6, rtol=1e-5)
    for name, grad in g_plain.items():
        torch.testing.assert_close(g_fast[name], grad, atol=1e-6, rtol=1e-4, msg=name)


# ----------------------------------------------------------------------------------------------------------
# generation: last-position prefill head + KV cache vs the plain full recomputation

@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.7, 0), (1.0, 5)])
def test_cached_generation_equals_plain_for_the_same_generator(temperature, top_k):
    m = tiny_gpt("lm")
    gens = [generate(m, _prompts(), 10, EOS, PAD, temperature=temperature, top_k=top_k, use_cache=use_cache,
                     generator=torch.Generator().manual_seed(0)) for use_cache in (True, False)]
    fast, plain = gens
    assert torch.equal(fast.response, plain.response)
    assert torch.equal(fast.response_mask, plain.response_mask)
    torch.testing.assert_close(fast.logprobs, plain.logprobs, atol=1e-5, rtol=1e-5)


def test_prefill_head_at_last_position_equals_full_logits():
    m = tiny_gpt("lm")
    idx = torch.tensor([[0, 0, 3, 4, 5], [6, 7, 8, 9, 10]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    h = m.hidden_states(idx, mask, m.new_cache(2, 8))[:, -1]
    last_only = torch.nn.functional.linear(h, m.lm_head_weight)
    torch.testing.assert_close(last_only, m(idx, mask)[:, -1], atol=1e-6, rtol=1e-5)


def test_sampling_is_reproducible_for_a_seed():
    m = tiny_gpt("lm")
    a, b = (generate(m, _prompts(), 10, EOS, PAD, generator=torch.Generator().manual_seed(5))
            for _ in range(2))
    assert torch.equal(a.response, b.response) and torch.equal(a.logprobs, b.logprobs)
    c = generate(m, _prompts(), 10, EOS, PAD, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(a.response, c.response)  # the seed does decide


# ----------------------------------------------------------------------------------------------------------
# the inverse-CDF sampler draws from the same distribution as torch.multinomial

# chi-square 99.9% quantiles by degrees of freedom (scipy.stats.chi2.ppf(0.999, k))
CHI2_999 = {5: 20.52, 6: 22.46, 7: 24.32}


def _chi_square(counts, probs, n):
    expected = n * probs
    seen = expected > 0
    return (((counts[seen] - expected[seen]) ** 2) / expected[seen]).sum().item()


def test_inverse_cdf_sampler_frequencies():
    # unnormalised weights, a tiny one, and two zeros (one first, one last: the edges of the search)
    weights = torch.tensor([0.0, 5.0, 2.5, 1.25, 0.6, 0.4, 0.25, 0.02, 0.0])
    probs = weights / weights.sum()
    n = 400_000
    draws = sample_inverse_cdf(weights.expand(n, -1), torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=len(weights)).double()
    assert counts[0] == 0 and counts[-1] == 0  # zero-probability tokens are never drawn
    chi2 = _chi_square(counts, probs.double(), n)
    assert chi2 < CHI2_999[6], chi2  # 7 possible outcomes: 6 degrees of freedom
    # the test has power: torch.multinomial's draws pass it, and a sampler off by one token does not
    ref = torch.multinomial(weights.expand(n, -1), 1, generator=torch.Generator().manual_seed(0)).squeeze(1)
    assert _chi_square(torch.bincount(ref, minlength=len(weights)).double(), probs.double(), n) < CHI2_999[6]
    shifted = (draws + 1).clamp(max=len(weights) - 2)
    assert _chi_square(torch.bincount(shifted, minlength=len(weights)).double(), probs.double(), n) > 1000


@pytest.mark.parametrize("fast_sampling", [True, False])
def test_sample_follows_softmax_at_temperature_with_top_k(fast_sampling, monkeypatch):
    """_sample as generate calls it: softmax(logits / T), truncated to the top k, and the log-prob it
    returns; with the switch on (inverse CDF, the default) and off (torch.multinomial)."""
    assert generate_module.FAST_SAMPLING  # on by default
    monkeypatch.setattr(generate_module, "FAST_SAMPLING", fast_sampling)
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0, 1.5, -0.5])
    for temperature, top_k, dof in ((1.0, 0, 7), (0.7, 0, 7), (1.3, 6, 5)):
        z = logits / temperature
        if top_k:
            z = z.masked_fill(z < z.topk(top_k).values[-1], float("-inf"))
        probs = torch.softmax(z.double(), -1)
        n = 200_000
        u = torch.rand(n, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        nxt, logp = _sample(logits.expand(n, -1), temperature, top_k, u, torch.Generator().manual_seed(1))
        counts = torch.bincount(nxt, minlength=len(logits)).double()
        assert (counts[probs == 0] == 0).all()
        assert _chi_square(counts, probs, n) < CHI2_999[dof]
        torch.testing.assert_close(logp.double(), probs.log()[nxt], atol=1e-5, rtol=1e-5)


def test_plain_sampling_draws_with_the_generator_and_refuses_row_seeds(monkeypatch):
    """generate.FAST_SAMPLING off: torch.multinomial from `generator` (reproducible for a seed); row_seeds,
    one uniform per row and step, need the inverse-CDF sampler."""
    monkeypatch.setattr(generate_module, "FAST_SAMPLING", False)
    m = tiny_gpt("lm")
    a, b = (generate(m, _prompts(), 8, EOS, PAD, generator=torch.Generator().manual_seed(5))
            for _ in range(2))
    assert torch.equal(a.response, b.response)
    with pytest.raises(ValueError, match="FAST_SAMPLING"):
        generate(m, _prompts(), 8, EOS, PAD, row_seeds=[1, 2, 3, 4])


# ----------------------------------------------------------------------------------------------------------
# finished rows leave the batch (generate.COMPACT) vs every row decoded to the end

def _eos_prone_model():
    """A model whose rows end at different steps: ln_f's bias points along EOS's (tied) embedding row, so
    EOS's logit gets +1 at every step."""
    m = tiny_gpt("lm", pos="rope")
    with torch.no_grad():
        m.ln_f.bias.zero_()[0] = 1.0
        m.wte.weight[EOS] = m.ln_f.bias
    return m


@pytest.mark.parametrize("seeds", [False, True])
def test_compacted_generation_equals_the_full_batch(seeds, monkeypatch):
    m = _eos_prone_model()
    prompts = [[1 + i % 40] * (1 + i % 7) for i in range(48)]  # left padding of 0-6 columns
    calls = []
    keep_rows = KVCache.keep_rows
    monkeypatch.setattr(KVCache, "keep_rows",
                        lambda self, idx: calls.append(len(idx)) or keep_rows(self, idx))

    def run(compact):
        monkeypatch.setattr(generate_module, "COMPACT", compact)
        kw = {"row_seeds": list(range(48))} if seeds else {"generator": torch.Generator().manual_seed(3)}
        return generate(m, prompts, 20, EOS, PAD, temperature=1.0, **kw)

    full, compacted = run(0), run(0.75)
    assert len(calls) >= 2 and calls[-1] < 24  # rows did leave, more than once: the test has power
    assert 0.3 < full.finished.float().mean() < 0.9  # rows end at different steps
    assert torch.equal(compacted.response, full.response)
    assert torch.equal(compacted.response_mask, full.response_mask)
    assert torch.equal(compacted.finished, full.finished)
    torch.testing.assert_close(compacted.logprobs, full.logprobs, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# chunks of rows of similar length vs the batch in one piece

def _padded_batch():
    g = torch.Generator().manual_seed(0)
    lengths = [3, 17, 9, 30, 5, 12, 30, 2]
    x = torch.randint(0, 48, (8, 30), generator=g)
    mask = torch.arange(30).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    return x, mask


def test_length_chunks_sort_rows_and_cut_padding():
    _, mask = _padded_batch()
    chunks = length_chunks(mask, 3)
    assert [c.tolist() for c, _ in chunks] == [[7, 0, 4], [2, 5, 1], [3, 6]]
    assert [cols for _, cols in chunks] == [5, 17, 30]
    assert len(length_chunks(mask, 0)) == 1 and len(length_chunks(mask, 8)) == 1
    assert len(length_chunks(torch.ones(8, 30), 3)) == 1  # equal rows: nothing to cut


def test_sft_loss_in_chunks_equals_one_piece(monkeypatch):
    """train_sft.batch_loss: the token mean over the batch and its gradient, whatever the chunks."""
    import train_sft

    m = tiny_gpt("lm", pos="rope")
    x, mask = _padded_batch()
    y = torch.roll(x, -1, 1)
    loss_mask = (mask & (torch.arange(30) >= 2)).float()  # the first columns are "prompt": no loss

    def grads(fn):
        m.zero_grad()
        loss = fn()
        return loss.detach(), [p.grad.clone() for p in m.parameters()]

    def whole():
        loss = sft_loss(m(x), y, loss_mask)
        loss.backward()
        return loss

    want, g_want = grads(whole)
    for rows in (3, 0):  # chunks of 3 rows, and one piece
        monkeypatch.setattr(train_sft, "chunk_rows", lambda device, rows=rows: rows)
        got, g_got = grads(lambda: train_sft.batch_loss(m, x, y, loss_mask, "fp32", weight=1.0))
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        for a, b in zip(g_got, g_want):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_sft_loss_in_chunks_of_a_batch_with_no_counted_token_is_zero(monkeypatch):
    """train_sft.batch_loss on a batch whose mask counts nothing: 0, as sft_loss gives (its masked mean
    clamps the count), not 0/0 = NaN from the chunks' shares of no tokens."""
    import train_sft

    m = tiny_gpt("lm", pos="rope")
    x, _ = _padded_batch()
    monkeypatch.setattr(train_sft, "chunk_rows", lambda device: 3)
    loss = train_sft.batch_loss(m, x, torch.roll(x, -1, 1), torch.zeros(x.shape), "fp32")
    assert loss.item() == 0.0
    assert sft_loss(m(x), torch.roll(x, -1, 1), torch.zeros(x.shape)).item() == 0.0


def test_reward_scores_in_chunks_equal_one_piece():
    rm = tiny_gpt("scalar", pos="rope")
    x, mask = _padded_batch()
    torch.testing.assert_close(by_length(rm, mask, 3, x, mask), rm(x, mask), atol=1e-6, rtol=1e-5)


def test_eval_kl_and_scores_in_chunks_equal_one_piece(tmp_path, monkeypatch):
    """evaluation.kl_to_reference and score_texts: rows of similar length in chunks, the same numbers as each
    batch in one piece (right-padded texts whose prompts and responses differ in length)."""
    import random

    from nanorlhf import evaluation
    from nanorlhf.tokenizer import load_tokenizer, save_ranks, train_bpe

    texts = ["the cat sat", "a dog ran far away", "the hat", "one two three four five six", "sit", "ran"]
    save_ranks(train_bpe(texts * 10, 300), tmp_path / "t.tiktoken")
    tok = load_tokenizer(str(tmp_path / "t.tiktoken"))
    rng = random.Random(0)
    prompts = [" ".join(rng.sample(texts, rng.randint(1, 3))) for _ in range(11)]
    outs = [(" ".join(rng.sample(texts, rng.randint(1, 4))), rng.random() < 0.7) for _ in range(11)]
    policy, ref = tiny_gpt(vocab=tok.vocab_size, block=96), tiny_gpt(vocab=tok.vocab_size, block=96, seed=1)
    rm = tiny_gpt("scalar", vocab=tok.vocab_size, block=96, seed=2)

    def both(rows, batch):
        monkeypatch.setattr(evaluation, "chunk_rows", lambda device: rows)
        return (evaluation.kl_to_reference(policy, ref, tok, prompts, outs, batch),
                evaluation.score_texts(rm, tok, prompts, outs, batch))

    kl, scores = both(0, 64)
    assert abs(kl) > 0.1  # two different models: a KL the test can get wrong
    for rows, batch in ((3, 64), (3, 5), (0, 4)):
        kl_c, scores_c = both(rows, batch)
        assert kl_c == pytest.approx(kl, rel=1e-5)
        assert scores_c == pytest.approx(scores, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("reuse", [True, False])
def test_rollout_scoring_in_chunks_equals_one_piece(reuse, monkeypatch):
    """train_ppo.rollout: the RM's scores, π_old's and π_ref's log-probs and the critic's values computed in
    chunks of rows of similar length equal one piece's on the response tokens (padding is never read)."""
    import random
    from types import SimpleNamespace

    import train_ppo

    tok = SimpleNamespace(eos_id=14, pad_id=15)
    policy, ref = (tiny_gpt("lm", vocab=16, block=32, pos="rope", seed=s) for s in (0, 3))
    critic, rm = tiny_gpt("value", vocab=16, block=32, pos="rope", seed=1), tiny_gpt("scalar", vocab=16,
                                                                                       block=32, pos="rope")
    with torch.no_grad():
        policy.wte.weight[tok.eos_id] *= 30  # EOS likelier: rows end at different lengths
    rng = random.Random(0)
    prompts = [[rng.randrange(13) for _ in range(rng.randrange(1, 7))] for _ in range(8)]
    cfg = train_ppo.Config(rollout_batch=8, max_new_tokens=10, reuse_rollout_logprobs=reuse, device="cpu")

    def experience(rows):
        monkeypatch.setattr(train_ppo, "chunk_rows", lambda device: rows)
        return train_ppo.rollout(policy, ref, critic, train_ppo.model_reward(rm), prompts, tok, cfg, 0.05,
                                 torch.Generator().manual_seed(0))

    want, got = experience(0), experience(3)
    assert len({cols for _, cols in length_chunks(got.mask, 3)}) == 3  # three chunks, each cut elsewhere
    torch.testing.assert_close(got.tokens, want.tokens)
    valid = want.mask.bool()
    for k in ("logprobs", "ref_logprobs", "values", "returns", "advantages", "kl"):
        torch.testing.assert_close(getattr(got, k)[valid], getattr(want, k)[valid], atol=1e-6, rtol=1e-5,
                                   msg=k)
    torch.testing.assert_close(got.scores, want.scores, atol=1e-6, rtol=1e-5)
    assert float(got.ref_logprobs[valid].abs().min()) > 0  # every token has its log-prob, none left at 0
