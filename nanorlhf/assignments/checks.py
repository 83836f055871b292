"""Differential checks: a student's function against the reference, on fresh random inputs.

Run inside a graded copy (the student's bodies put into a pristine tree), so `import nanorlhf.ppo` gives
the student's code; the reference is the same file of the instructor's repository, loaded under another
module name. Every check draws new inputs each time it runs (seeded from the clock unless --seed), so a
hard-coded answer to the unit tests cannot pass: ragged masks (full, right-padded, offset, empty rows,
holes where the contract allows them), garbage at padding (NaN, inf, huge numbers), float64 with tight
tolerances, and the gradient wherever the output is a loss. One function per exercise, named after it;
each raises AssertionError naming the case that differs.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import math
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

F64 = dict(atol=1e-11, rtol=1e-9)  # float64 maths: a different but correct order of sums is ~1e-15 off
F32 = dict(atol=1e-5, rtol=1e-5)


def load_reference(root: Path, relpath: str):
    """The module at root/relpath under the name _reference_<path> (its own imports are the copy's)."""
    name = "_reference_" + relpath.removesuffix(".py").replace("/", "_")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(root) / relpath)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_student(relpath: str):
    """The graded copy's module (train_ppo.py is a script at the root: imported by its file name)."""
    return importlib.import_module(relpath.removesuffix(".py").replace("/", "."))


def close(got, want, what: str, tol=F64, where=None) -> None:
    """got == want within tol, same shape and dtype; `where` (bool) restricts the comparison."""
    if want is None:
        if got is not None:
            raise AssertionError(f"{what}: expected None, got {_kind(got)}")
        return
    if isinstance(want, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(want):
            raise AssertionError(f"{what}: expected a {type(want).__name__} of {len(want)}, got {_kind(got)}")
        for i, (a, b) in enumerate(zip(got, want)):
            close(a, b, f"{what}[{i}]", tol, where)
        return
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            raise AssertionError(f"{what}: expected a dict with keys {sorted(want)}, got {_kind(got)}")
        for k in want:
            close(got[k], want[k], f"{what}[{k!r}]", tol, where if getattr(want[k], "dim", lambda: 0)() else None)
        return
    if not isinstance(want, torch.Tensor):
        if isinstance(got, torch.Tensor):
            got = got.item()
        if not isinstance(got, (int, float)) or not math.isclose(got, want, rel_tol=tol["rtol"], abs_tol=tol["atol"]):
            raise AssertionError(f"{what}: got {got!r}, expected {want!r}")
        return
    if not isinstance(got, torch.Tensor):
        raise AssertionError(f"{what}: expected a tensor, got {_kind(got)}")
    if got.shape != want.shape or got.dtype != want.dtype:
        raise AssertionError(f"{what}: got {got.dtype} {tuple(got.shape)}, expected {want.dtype} {tuple(want.shape)}")
    if where is not None:
        got, want = got[where], want[where]
    try:
        torch.testing.assert_close(got, want, **tol)
    except AssertionError as e:
        raise AssertionError(f"{what}: {str(e).splitlines()[0]} {_first_diff(got, want)}") from None


def _kind(x) -> str:
    return f"{type(x).__name__} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else repr(x)[:80]


def _first_diff(got, want) -> str:
    bad = ~torch.isclose(got.double(), want.double(), rtol=1e-9, atol=1e-11, equal_nan=False)
    if not bad.any():
        return ""
    i = tuple(int(v) for v in bad.nonzero()[0])
    return f"(first at {i}: got {got[i].item():.10g}, expected {want[i].item():.10g})"


# ---------------------------------------------------------------------------------------------- inputs

def ragged_mask(B: int, T: int, rng: random.Random, holes: bool = True, dtype=None):
    """(B, T) mask whose rows are full, right-padded, an offset run, empty, or (holes) any pattern.
    The first row is always full, so the batch has valid tokens; dtype float64, float32 or bool at random."""
    rows = []
    for b in range(B):
        kind = "full" if b == 0 else rng.choice(["full", "right", "right", "offset", "empty"] + ["holes"] * holes)
        if kind == "full":
            row = [1] * T
        elif kind == "right":
            n = rng.randint(1, T)
            row = [1] * n + [0] * (T - n)
        elif kind == "offset":
            s = rng.randint(0, T - 1)
            n = rng.randint(1, T - s)
            row = [0] * s + [1] * n + [0] * (T - s - n)
        elif kind == "empty":
            row = [0] * T
        else:
            row = [rng.random() < 0.6 for _ in range(T)]
        rows.append(row)
    dtype = dtype or rng.choice([torch.float64, torch.float32, torch.bool])
    return torch.tensor(rows, dtype=torch.float64).to(dtype)


def garbage(x, mask, rng: random.Random, choices=(float("nan"), float("inf"), -float("inf"), 1e6, -1e30)):
    """x with one garbage value at every masked position."""
    return torch.where(mask.bool(), x, torch.full_like(x, rng.choice(choices)))


def _case(rng: random.Random, holes=True, max_b=5, max_t=8):
    B, T = rng.randint(1, max_b), rng.randint(1, max_t)
    return B, T, ragged_mask(B, T, rng, holes)


def _randn(g, *shape, scale=1.0):
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


# ---------------------------------------------------------------------------------------------- checks

def masked_mean(S, R, rng, g):
    for trial in range(30):
        B, T, mask = _case(rng)
        x = garbage(_randn(g, B, T, scale=3), mask, rng)
        dims = [None, 0, 1, -1, (0, 1)]
        if trial % 3 == 0:  # a (B, T, V) tensor, as sft_loss hands it over
            V = rng.randint(1, 4)
            mask = ragged_mask(B * T, V, rng).view(B, T, V)
            x = garbage(_randn(g, B, T, V), mask, rng)
            dims = [None, 2, (1, 2)]
        if trial % 5 == 4:  # nothing valid at all: 0, not 0/0
            mask = torch.zeros_like(mask)
        dim = rng.choice(dims)
        kw = {} if dim is None else {"dim": dim}
        w = torch.randn(R.masked_mean(x, mask, **kw).shape, generator=g, dtype=x.dtype)

        def weighted(fn):  # (a scalar to differentiate, the output)
            return lambda x: (lambda out: ((out * w).sum(), out))(fn(x, mask, **kw))
        _compare_loss(weighted(S.masked_mean), weighted(R.masked_mean), [x],
                      f"masked_mean(x {tuple(x.shape)}, mask {mask.dtype}, dim={dim})", g)
    x = torch.randn(3, 4, generator=g)  # float32 in, float32 out
    close(S.masked_mean(x, x > 0), R.masked_mean(x, x > 0), "masked_mean float32", F32)


def sft_loss(S, R, rng, g):
    for trial in range(20):
        B, T, mask = _case(rng)
        V = rng.randint(2, 9)
        logits = _randn(g, B, T, V, scale=3)
        targets = torch.randint(0, V, (B, T), generator=g)
        targets = torch.where(mask.bool(), targets, torch.full_like(targets, rng.choice([-100, V + 3, -1])))
        dirty = trial % 2 == 1
        if dirty:  # garbage logits at padding: only the valid positions' gradients are compared
            logits = torch.where(mask.bool()[..., None], logits, torch.full_like(logits, rng.choice([float("nan"), 1e6])))
        what = f"sft_loss(B={B}, T={T}, V={V}, mask={mask.int().tolist()})"
        _compare_loss(lambda lg: S.sft_loss(lg, targets, mask), lambda lg: R.sft_loss(lg, targets, mask), [logits],
                      what, g, where=mask.bool() if dirty else None)


def _compare_loss(student, reference, inputs, what, g, tol=F64, where=None, wrt=None):
    """Values and gradients (w.r.t. inputs[i] for i in wrt, default all float inputs) of a loss."""
    wrt = range(len(inputs)) if wrt is None else wrt
    results = []
    for fn in (reference, student):
        leaves = [x.detach().clone().requires_grad_(i in wrt and x.is_floating_point()) for i, x in enumerate(inputs)]
        out = fn(*leaves)
        loss = out[0] if isinstance(out, tuple) else out
        results.append((out, leaves, loss))
    (want, r_leaves, r_loss), (got, s_leaves, s_loss) = results
    close(got, want, what, tol)
    if not isinstance(s_loss, torch.Tensor) or not s_loss.requires_grad:
        raise AssertionError(f"{what}: the loss carries no gradient")
    r_loss.backward()
    s_loss.backward()
    for i in wrt:
        if inputs[i].is_floating_point():
            r, s = r_leaves[i].grad, s_leaves[i].grad
            s = torch.zeros_like(r) if s is None else s
            w = where if where is None or where.shape == r.shape else where[..., None].expand(r.shape)
            close(s, r, f"{what} gradient w.r.t. input {i}", tol, w)


def ranking_loss(S, R, rng, g):
    for trial in range(25):
        B, K = rng.randint(1, 4), rng.randint(2, 5)
        rewards = _randn(g, B, K, scale=2)
        valid = None if trial % 4 == 0 else ragged_mask(B, K, rng, holes=False, dtype=torch.bool)
        tied = None
        if trial % 3 == 1:
            tied = (torch.rand(B, K, K, generator=g) < 0.25).triu(1)
        if valid is not None:
            rewards = torch.where(valid, rewards, torch.full_like(rewards, 1e3))
        what = f"ranking_loss(K={K}, valid={None if valid is None else valid.int().tolist()}, ties={tied is not None})"
        _compare_loss(lambda r: S.ranking_loss(r, valid, tied), lambda r: R.ranking_loss(r, valid, tied), [rewards],
                      what, g)


def kl_penalty_rewards(S, R, rng, g):
    for trial in range(25):
        B, T, mask = _case(rng)
        logprobs = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
        ref = logprobs + _randn(g, B, T, scale=0.3)
        scores = _randn(g, B, scale=2)
        beta = rng.choice([0.0, 0.05, rng.uniform(0, 0.5)])
        lp, rf = garbage(logprobs, mask, rng), garbage(ref, mask, rng, (float("-inf"), float("nan"), -1e4))
        what = f"kl_penalty_rewards(beta={beta:.3g}, mask={mask.int().tolist()})"
        close(S.kl_penalty_rewards(lp, rf, scores, mask, beta), R.kl_penalty_rewards(lp, rf, scores, mask, beta), what)


def gae(S, R, rng, g):
    for trial in range(25):
        B, T, mask = _case(rng, holes=False)
        rewards, values = _randn(g, B, T), _randn(g, B, T, scale=2).requires_grad_(True)
        rw = garbage(rewards, mask, rng)
        vl = garbage(values.detach(), mask, rng, (1e6, -1e6, 7.0)).requires_grad_(True)  # a critic's value at PAD is finite
        gamma = rng.choice([1.0, 0.99, rng.uniform(0.5, 1.0)])
        lam = rng.choice([0.95, 0.0, 1.0, rng.uniform(0.0, 1.0)])
        what = f"gae(gamma={gamma:.3g}, lam={lam:.3g}, mask={mask.int().tolist()})"
        got = S.gae(rw, vl, mask, gamma, lam)
        close(got, R.gae(rw, vl.detach(), mask, gamma, lam), what)
        if any(t.requires_grad for t in got):
            raise AssertionError(f"{what}: advantages and returns must be detached (constants in the losses)")


def masked_whiten(S, R, rng, g):
    for trial in range(25):
        B, T, mask = _case(rng)
        x = garbage(_randn(g, B, T, scale=3) + 2, mask, rng)
        shift = rng.choice([True, False])
        eps = rng.choice([1e-8, 1e-5])
        what = f"masked_whiten(shift_mean={shift}, eps={eps}, mask={mask.int().tolist()})"
        close(S.masked_whiten(x, mask, shift_mean=shift, eps=eps), R.masked_whiten(x, mask, shift_mean=shift, eps=eps),
              what)
        for unbiased in (False, True):
            what = f"masked_var(unbiased={unbiased}, mask={mask.int().tolist()})"
            try:
                want = R.masked_var(x, mask, unbiased=unbiased)
            except ValueError:
                try:
                    S.masked_var(x, mask, unbiased=unbiased)
                except ValueError:
                    continue
                raise AssertionError(f"{what}: fewer than 2 valid values must raise ValueError") from None
            close(S.masked_var(x, mask, unbiased=unbiased), want, what)


def policy_loss(S, R, rng, g):
    for trial in range(30):
        B, T, mask = _case(rng)
        old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
        new = old + _randn(g, B, T, scale=0.3)  # ratios from ~0.4 to ~2.5: both clipped regions are hit
        adv = _randn(g, B, T)  # nonzero at padding too: a mean over B*T positions would count it
        clip = rng.choice([0.2, rng.uniform(0.05, 0.4)])
        if trial % 2 == 1:  # exp(garbage) may overflow: the loss and the gradient at padding must stay clean
            new = garbage(new, mask, rng, (50.0, 1e4, float("inf")) if trial % 4 == 1 else (1e4,))
            adv = garbage(adv, mask, rng, (1e6, -1e6, float("nan")))
        what = f"policy_loss(clip={clip:.3g}, mask={mask.int().tolist()})"
        _compare_loss(lambda lp: S.policy_loss(lp, old, adv, mask, clip), lambda lp: R.policy_loss(lp, old, adv, mask, clip),
                      [new], what, g)
        _, stats = S.policy_loss(new.clone().requires_grad_(), old, adv, mask, clip)
        if any(v.requires_grad for v in stats.values()):
            raise AssertionError(f"{what}: the stats must be detached")


def value_loss(S, R, rng, g):
    for trial in range(30):
        B, T, mask = _case(rng)
        old = _randn(g, B, T)
        values = old + _randn(g, B, T, scale=0.3)
        returns = old + _randn(g, B, T)
        clip = rng.choice([0.2, float("inf"), rng.uniform(0.05, 0.5)])
        dirty = trial % 2 == 1
        if dirty:
            returns = garbage(returns, mask, rng, (1e6, float("nan")))
        what = f"value_loss(clip={clip:.3g}, mask={mask.int().tolist()})"
        _compare_loss(lambda v: S.value_loss(v, old, returns, mask, clip), lambda v: R.value_loss(v, old, returns, mask, clip),
                      [values], what, g, where=mask.bool() if dirty else None)


def kl_estimators(S, R, rng, g):
    for trial in range(25):
        B, T, mask = _case(rng)
        lp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
        ref = lp + _randn(g, B, T, scale=0.5)
        dirty = trial % 2 == 1
        if dirty:
            lp, ref = garbage(lp, mask, rng, (float("nan"), 1e4)), garbage(ref, mask, rng, (float("-inf"), -1e4))
        what = f"kl_estimators(mask={mask.int().tolist()})"

        def total(fn):
            return lambda x: (lambda d: (d["k1"] + d["k2"] + d["k3"], d))(fn(x, ref, mask))
        _compare_loss(total(S.kl_estimators), total(R.kl_estimators), [lp], what, g, where=mask.bool() if dirty else None)


def adaptive_kl(S, R, rng, g):
    for trial in range(20):
        beta, target, horizon = rng.uniform(0.01, 0.5), rng.uniform(0.5, 10), rng.choice([10, 1000, 10_000])
        s, r = S.AdaptiveKLController(beta, target, horizon), R.AdaptiveKLController(beta, target, horizon)
        for step in range(8):
            kl = rng.uniform(0, 3 * target)
            kl_in = torch.tensor(kl) if step % 3 == 0 else kl
            n_steps = rng.choice([1, 64, 512])
            what = f"AdaptiveKLController({beta:.3g}, target={target:.3g}, horizon={horizon}) update {step} (KL {kl:.3g})"
            close(s.update(kl_in, n_steps), r.update(kl_in, n_steps), what + " return value")
            close(s.value, r.value, what + " .value")


def response_mask(S, R, rng, g):
    for trial in range(40):
        B, T, V = rng.randint(1, 5), rng.randint(1, 8), 8
        eos = rng.randrange(V)
        response = torch.randint(0, V, (B, T), generator=g)  # holds EOS anywhere, several times, or never
        what = f"response_mask_from({response.tolist()}, eos_id={eos})"
        close(S.response_mask_from(response, eos), R.response_mask_from(response, eos), what)


def response_logprobs(S, R, rng, g):
    from nanorlhf.generate import generate
    from nanorlhf.model import GPT, GPTConfig

    for pos in ("learned", "rope"):
        torch.manual_seed(rng.randrange(2**31))
        model = GPT(GPTConfig(vocab_size=24, block_size=40, n_layer=2, n_head=2, n_embd=16, head="lm", pos_embedding=pos))
        prompts = [[rng.randrange(0, 20) for _ in range(rng.randint(1, 7))] for _ in range(rng.randint(2, 5))]
        gen = generate(model, prompts, rng.randint(3, 10), 22, 23, 1.0, 0, g)
        for temperature in (1.0, 0.7):
            for with_entropy, fast in ((False, True), (True, True), (True, False)):
                what = f"response_logprobs(pos={pos}, temperature={temperature}, with_entropy={with_entropy}, fast={fast})"
                out = {}
                for name, fn in (("reference", R.response_logprobs), ("student", S.response_logprobs)):
                    model.zero_grad(set_to_none=True)
                    res = fn(model, gen.tokens, gen.attention_mask, gen.prompt_len, temperature,
                             with_entropy=with_entropy, fast=fast)
                    logp = res[0] if with_entropy else res
                    w = torch.randn(logp.shape, generator=torch.Generator().manual_seed(1))
                    (logp * w).sum().backward()
                    out[name] = res, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
                close(out["student"][0], out["reference"][0], what, F32)
                ref_grads, stu_grads = out["reference"][1], out["student"][1]
                for n, grad in ref_grads.items():
                    close(stu_grads.get(n, torch.zeros_like(grad)), grad, f"{what} gradient of {n}", dict(atol=1e-6, rtol=1e-4))


def token_logprobs(S, R, rng, g):
    for trial in range(25):
        N, V = rng.randint(1, 6), rng.randint(2, 40)
        dtype = rng.choice([torch.float32, torch.float64, torch.bfloat16])
        logits = (torch.randn(N, V, generator=g) * rng.choice([1.0, 3.0, 1e3])).to(dtype)
        targets = torch.randint(0, V, (N,), generator=g)
        if trial % 3 == 0 and V > 2:  # -inf logits (masked vocabulary), never at the target
            off = torch.rand(N, V, generator=g) < 0.3
            off[torch.arange(N), targets] = False
            logits = logits.masked_fill(off, float("-inf"))
        mask = None
        if trial % 2 == 1:
            mask = ragged_mask(2, N, rng, dtype=rng.choice([torch.float32, torch.bool, torch.long]))[1]  # row 0 is full
            targets = torch.where(mask.bool(), targets, torch.full_like(targets, rng.choice([-100, V + 5])))
        temperature = rng.choice([1.0, 0.7, 1.3])
        what = f"_token_logprobs_torch(N={N}, V={V}, {dtype}, temperature={temperature}, mask={mask is not None})"
        for with_entropy in (False, True):
            def call(fn):
                def run(x):
                    logp, ent = fn(x, targets, temperature, mask, with_entropy)
                    loss = (logp * torch.linspace(-1, 1, N)).sum() + (0 if ent is None else (ent * 0.37).sum())
                    return loss, logp, ent
                return run
            tol = dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else F32
            _compare_loss(call(S._token_logprobs_torch), call(R._token_logprobs_torch), [logits],
                          f"{what} with_entropy={with_entropy}", g, tol)


def dpo_loss(S, R, rng, g):
    for trial in range(20):
        B = rng.randint(1, 6)
        inputs = [_randn(g, B, scale=rng.choice([1.0, 5.0, 30.0])) for _ in range(4)]
        beta = rng.choice([0.1, 0.5, rng.uniform(0.01, 1.0)])
        what = f"dpo_loss(B={B}, beta={beta:.3g})"
        _compare_loss(lambda *x: S.dpo_loss(*x, beta=beta), lambda *x: R.dpo_loss(*x, beta=beta), inputs, what, g,
                      wrt=(0, 1))
        out = S.dpo_loss(*[x.clone().requires_grad_() for x in inputs], beta=beta)
        if not isinstance(out, tuple) or len(out) != 3 or any(t.requires_grad for t in out[1:]):
            raise AssertionError(f"{what}: returns (loss, chosen_rewards, rejected_rewards), the rewards detached")


def ppo_ptx(S, R, rng, g):
    from nanorlhf.model import GPT, GPTConfig
    from nanorlhf.training import make_optimizer

    tok = SimpleNamespace(eos_id=14, pad_id=15)

    def reward(gen):
        return (gen.response == 3).float().sum(1)

    def gpt(head, seed):
        torch.manual_seed(seed)
        return GPT(GPTConfig(vocab_size=16, block_size=32, n_layer=1, n_head=2, n_embd=16, head=head))

    for coef in (rng.uniform(0.2, 3.0), 30.0):
        seed = rng.randrange(2**31)
        cfg = S.Config(rollout_batch=8, max_new_tokens=6, ppo_epochs=1, minibatch_size=4, ptx_coef=coef, ptx_batch=2,
                       init_kl_coef=0.05, device="cpu")
        policy, ref, critic = gpt("lm", seed), gpt("lm", seed).requires_grad_(False), gpt("value", seed + 1)
        prompts = [[rng.randrange(0, 13) for _ in range(rng.randint(2, 5))] for _ in range(8)]
        exp = S.rollout(policy, ref, critic, reward, prompts, tok, cfg, 0.05, torch.Generator().manual_seed(seed))
        x = torch.randint(0, 16, (4, 2, 10), generator=g)  # 4 corpus batches of 2 windows
        batches = [(x[i], torch.roll(x[i], -1, 1), torch.ones(2, 10)) for i in range(4)]
        out = {}
        for name, mod in (("reference", R), ("student", S)):
            p, c = copy.deepcopy(policy), copy.deepcopy(critic)
            opt_p, opt_c = make_optimizer(p, cfg.lr, 0.0, eps=1e-5), make_optimizer(c, cfg.critic_lr, 0.0, eps=1e-5)
            stats = mod.ppo_update(p, c, opt_p, opt_c, exp, cfg, iter(batches), random.Random(seed))
            out[name] = stats, dict(p.named_parameters())
        what = f"ppo_update(ptx_coef={coef:.3g})"
        close(out["student"][0]["ptx_loss"], out["reference"][0]["ptx_loss"], what + " ptx_loss", F32)
        for n, param in out["reference"][1].items():
            close(out["student"][1][n].detach(), param.detach(), f"{what}: policy parameter {n} after the update",
                  dict(atol=1e-6, rtol=1e-5))


CHECKS = {f.__name__: f for f in (masked_mean, sft_loss, ranking_loss, kl_penalty_rewards, gae, masked_whiten, policy_loss,
                                   value_loss, kl_estimators, adaptive_kl, response_mask, response_logprobs, token_logprobs,
                                   dpo_loss, ppo_ptx)}


def run(names: list[str], ref_root: Path, seed: int) -> dict[str, dict]:
    """{exercise: {"passed": bool, "message": str}} for each differential check, student vs reference."""
    from nanorlhf.assignments.exercises import BY_NAME

    results = {}
    for name in names:
        ex = BY_NAME[name]
        rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
        try:
            CHECKS[name](load_student(ex.file), load_reference(ref_root, ex.file), rng, g)
            results[name] = {"passed": True, "message": ""}
        except Exception as e:  # a wrong answer may fail any way (AssertionError, NotImplementedError, a crash)
            results[name] = {"passed": False, "message": f"{type(e).__name__}: {e}"[:600]}
    return results
