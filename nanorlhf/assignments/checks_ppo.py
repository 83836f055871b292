"""Differential checks of the PPO pieces: kl_penalty_rewards, gae, policy_loss, value_loss,
kl_estimators, adaptive_kl, ppo_ptx.

The machinery (Checker, compare, the tolerances, the masks) is checks_core.py; the registry and
the entry points are checks.py.
"""

from __future__ import annotations

import copy
import random
from types import SimpleNamespace

import torch

from nanorlhf.assignments.checks_core import (
    FILLS, MODEL_GRAD, _garbage, _kind, _randn, _random_case, edge_masks, fill, fp32, run_both,
)


def kl_penalty_rewards(ck, S, R):
    """Edge: every fixed mask (holes, an empty row, one valid value, everything masked) with NaN/±inf behind
    it in both log-probs; beta 0, 0.1 and 1. Parts: rewards and kl (the logged KL)."""
    _, g = ck.edge()

    def run(label, lp, ref, scores, mask, beta):
        call = f"kl_penalty_rewards(logprobs, ref_logprobs, scores, mask, beta={beta:.3g})"
        with ck.case(label, call, {"mask": mask, "logprobs": lp, "ref_logprobs": ref, "scores": scores}):
            got, want, _, _ = run_both(lambda *a: S.kl_penalty_rewards(*a, mask, beta),
                                       lambda *a: R.kl_penalty_rewards(*a, mask, beta), [lp, ref, scores])
            if not isinstance(got, (tuple, list)) or len(got) != 2:
                raise TypeError(f"expected (rewards, kl), got {_kind(got)}")
            ck.expect("rewards", got[0], want[0], "rewards")
            ck.expect("kl", got[1], want[1], "kl")

    for i, (label, mask, value) in enumerate(edge_masks()):
        B, T = mask.shape
        lp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
        ref = lp + _randn(g, B, T, scale=0.3)
        run(label, fill(lp, mask, value), fill(ref, mask, FILLS[(i + 1) % 3]), _randn(g, B, scale=2), mask,
            (0.0, 0.1, 1.0)[i % 3])
    for label, rng, g in ck.random_cases():
        B, T, mask = _random_case(rng)
        lp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
        ref = lp + _randn(g, B, T, scale=0.3)
        beta = rng.choice([0.0, 0.05, rng.uniform(0, 0.5)])
        run(label, fill(lp, mask, _garbage(rng)),
            fill(ref, mask, _garbage(rng, (float("-inf"), float("nan"), -1e4))),
            _randn(g, B, scale=2), mask, beta)


def gae(ck, S, R):
    """Edge: every fixed mask without holes (a hole would end the episode), NaN/±inf behind it in the
    rewards and the values; the defaults (gamma=1, lam=0.95) and (gamma, lam) = (0.9, 0.5), (0, 0.95),
    (0.99, 0), (1, 1). Advantages and returns, which must come back detached."""
    _, g = ck.edge()

    def run(label, rewards, values, mask, gamma=None, lam=None):
        kw = {k: v for k, v in (("gamma", gamma), ("lam", lam)) if v is not None}
        call = f"gae(rewards, values, mask{''.join(f', {k}={v:.3g}' for k, v in kw.items())})"
        with ck.case(label, call, {"mask": mask, "rewards": rewards, "values": values}):
            got, want, _, _ = run_both(lambda r, v: S.gae(r, v, mask, **kw),
                                       lambda r, v: R.gae(r, v, mask, **kw),
                                       [rewards, values], wrt=(1,))
            ck.expect("output", got, want, "(advantages, returns)")
            ck.require("output", not any(isinstance(t, torch.Tensor) and t.requires_grad for t in got),
                       "(advantages, returns)",
                       "keep the critic's graph: they must be detached (loss constants)")

    options = ((None, None), (0.9, 0.5), (0.0, 0.95), (0.99, 0.0), (1.0, 1.0))
    for i, (label, mask, value) in enumerate(edge_masks(holes=False)):
        B, T = mask.shape
        rewards, values = (fill(_randn(g, B, T), mask, value),
                           fill(_randn(g, B, T, scale=2), mask, FILLS[(i + 1) % 3]))
        for gamma, lam in options:
            run(label, rewards, values, mask, gamma, lam)
    for label, rng, g in ck.random_cases():
        B, T, mask = _random_case(rng, holes=False)
        rewards = fill(_randn(g, B, T), mask, _garbage(rng))
        values = fill(_randn(g, B, T, scale=2), mask, _garbage(rng))
        run(label, rewards, values, mask, rng.choice([1.0, 0.99, rng.uniform(0.5, 1.0)]),
            rng.choice([0.95, 0.0, 1.0, rng.uniform(0.0, 1.0)]))


POLICY_STATS = ("clipfrac", "approx_kl", "ratio_mean", "ratio_max")


def policy_loss(ck, S, R):
    """Edge: every fixed mask with +inf/NaN/-inf log-probs and NaN advantages behind it; the default clip
    and clip 0.1 and 0.5; every valid ratio below 1 (ratio_max must not see padding's 1); advantages of 0
    (neither branch is clipped); log-probs near -1000 (exp(log pi) / exp(log pi_old) is 0/0 there).
    Parts: the loss (value and gradient) and each of its stats."""
    _, g = ck.edge()
    ck.part_hints = {k: "every stat is over valid tokens only (masked_mean; ratio_max: the max over valid "
                        "tokens, where padding's ratio of 1 must not count) and detached"
                     for k in POLICY_STATS}

    def run(label, new, old, adv, mask, clip=None, hint=""):
        kw = {} if clip is None else {"clip": clip}
        call = (f"policy_loss(logprobs, old_logprobs, advantages, "
                f"mask{'' if clip is None else f', clip={clip:.3g}'})")
        with ck.case(label, call, {"mask": mask, "logprobs": new, "old_logprobs": old, "advantages": adv},
                     hint):
            got, want, s_leaves, r_leaves = run_both(lambda lp: S.policy_loss(lp, old, adv, mask, **kw),
                                                     lambda lp: R.policy_loss(lp, old, adv, mask, **kw),
                                                     [new], wrt=(0,))
            if not isinstance(got, (tuple, list)) or len(got) != 2 or not isinstance(got[1], dict):
                raise TypeError(f"expected (loss, stats), got {_kind(got)}")
            ck.expect("loss", got[0], want[0], "the loss")
            ck.expect_grads("loss", got[0], want[0], s_leaves, r_leaves, ["logprobs"], "the loss")
            for k in POLICY_STATS:
                if k not in got[1]:
                    ck.require(k, False, f"stats[{k!r}]", f"is missing (stats has {sorted(got[1])})")
                    continue
                if ck.expect(k, got[1][k], want[1][k], f"stats[{k!r}]", dtype=False):
                    ck.require(k, not got[1][k].requires_grad, f"stats[{k!r}]",
                               "carries a gradient: stats are detached")

    for i, (label, mask, value) in enumerate(edge_masks(fills=(float("inf"), float("nan"), -float("inf")))):
        B, T = mask.shape
        old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
        new, adv = old + _randn(g, B, T, scale=0.3), _randn(g, B, T)
        run(label, fill(new, mask, value), old, fill(adv, mask, float("nan")), mask, (None, 0.1, 0.5)[i % 3])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.float32)
    old = -torch.rand(2, 5, generator=g, dtype=torch.float64) * 3
    adv = _randn(g, 2, 5)
    below = old - 0.05 - torch.rand(2, 5, generator=g, dtype=torch.float64) * 0.5
    run("edge case 'every valid ratio below 1'", below, old, adv, mask,
        hint="ratio_max, like every stat, is over valid tokens only: padding (ratio 1 there) must not count")
    run("edge case 'advantages of 0'", old + _randn(g, 2, 5, scale=0.5), old,
        torch.zeros(2, 5, dtype=torch.float64),
        mask, hint="clipfrac counts the tokens where the clipped branch is strictly the larger one")
    far = old - 1000.0
    run("edge case 'log-probs near -1000'", far + _randn(g, 2, 5, scale=0.3), far, adv, mask,
        hint="take exp(log pi - log pi_old): exp(log pi) / exp(log pi_old) is 0/0 at log-probs of -1000")
    for label, rng, g in ck.random_cases():
        B, T, mask = _random_case(rng)
        old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
        # ratios ~0.4 to ~2.5: both clipped regions
        new, adv = old + _randn(g, B, T, scale=0.3), _randn(g, B, T)
        # exp(garbage) may overflow: the loss and the gradient at padding must stay clean
        if rng.random() < 0.5:
            new = fill(new, mask, rng.choice([50.0, 1e4, float("inf")]))
            adv = fill(adv, mask, rng.choice([1e6, -1e6, float("nan")]))
        run(label, new, old, adv, mask, rng.choice([0.2, rng.uniform(0.05, 0.4)]))


def value_loss(ck, S, R):
    """Edge: every fixed mask with NaN/±inf returns and old values behind it (and values: then the gradient
    is compared at valid positions only); the default clip, clip=inf (no clipping), 0 and 0.5.
    Parts: the loss (value and gradient) and vf_clipfrac."""
    _, g = ck.edge()
    ck.part_hints = {"vf_clipfrac": "the fraction of valid tokens (masked_mean) where the clipped branch is "
                                    "strictly the larger one; detached"}

    def run(label, values, old, returns, mask, clip=None, where=None):
        kw = {} if clip is None else {"clip": clip}
        call = f"value_loss(values, old_values, returns, mask{'' if clip is None else f', clip={clip:.3g}'})"
        with ck.case(label, call, {"mask": mask, "values": values, "old_values": old, "returns": returns}):
            got, want, s_leaves, r_leaves = run_both(lambda v: S.value_loss(v, old, returns, mask, **kw),
                                                     lambda v: R.value_loss(v, old, returns, mask, **kw),
                                                     [values], wrt=(0,))
            if not isinstance(got, (tuple, list)) or len(got) != 2 or not isinstance(got[1], dict):
                raise TypeError(f"expected (loss, stats), got {_kind(got)}")
            ck.expect("loss", got[0], want[0], "the loss")
            ck.expect_grads("loss", got[0], want[0], s_leaves, r_leaves, ["values"], "the loss",
                            where=[where])
            if "vf_clipfrac" not in got[1]:
                ck.require("vf_clipfrac", False, "stats['vf_clipfrac']",
                           f"is missing (stats has {sorted(got[1])})")
            elif ck.expect("vf_clipfrac", got[1]["vf_clipfrac"], want[1]["vf_clipfrac"],
                           "stats['vf_clipfrac']", dtype=False):
                ck.require("vf_clipfrac", not got[1]["vf_clipfrac"].requires_grad, "stats['vf_clipfrac']",
                           "carries a gradient: it is detached")

    for i, (label, mask, value) in enumerate(edge_masks()):
        B, T = mask.shape
        old = _randn(g, B, T)
        values, returns = old + _randn(g, B, T, scale=0.3), old + _randn(g, B, T)
        clip = (None, float("inf"), 0.0, 0.5)[i % 4]
        run(label, values, fill(old, mask, value), fill(returns, mask, value), mask, clip)
        if i % 3 == 0:
            run(label + " (values too)", fill(values, mask, value), old, returns, mask, clip, mask.bool())
    for label, rng, g in ck.random_cases():
        B, T, mask = _random_case(rng)
        old = _randn(g, B, T)
        values, returns = old + _randn(g, B, T, scale=0.3), old + _randn(g, B, T)
        dirty = rng.random() < 0.5
        if dirty:
            returns = fill(returns, mask, rng.choice([1e6, float("nan")]))
        run(label, values, old, returns, mask, rng.choice([0.2, float("inf"), rng.uniform(0.05, 0.5)]),
            mask.bool() if dirty else None)


def kl_estimators(ck, S, R):
    """Edge: every fixed mask with NaN/±inf behind it in both log-probs; log-probs near -1000 (exp() of each
    underflows to 0); |log r| up to 20. Parts: k1, k2, k3, each a value and its gradient (not detached)."""
    _, g = ck.edge()
    parts = ("k1", "k2", "k3")

    def run(label, lp, ref, mask, where=None, hint=""):
        with ck.case(label, "kl_estimators(logprobs, ref_logprobs, mask)",
                     {"mask": mask, "logprobs": lp, "ref_logprobs": ref}, hint):
            got, want, s_leaves, r_leaves = run_both(lambda x: S.kl_estimators(x, ref, mask),
                                                     lambda x: R.kl_estimators(x, ref, mask), [lp], wrt=(0,))
            if not isinstance(got, dict):
                raise TypeError(f"expected a dict with keys k1, k2, k3, got {_kind(got)}")
            for k in parts:
                if k not in got:
                    ck.require(k, False, f"[{k!r}]", f"is missing (got keys {sorted(got)})")
                    continue
                ck.expect(k, got[k], want[k], f"[{k!r}]")
                ck.expect_grads(k, got[k], want[k], s_leaves, r_leaves, ["logprobs"], f"[{k!r}]",
                                where=[where])

    for i, (label, mask, value) in enumerate(edge_masks()):
        B, T = mask.shape
        lp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
        ref = lp + _randn(g, B, T, scale=0.5)
        run(label, fill(lp, mask, value), fill(ref, mask, FILLS[(i + 1) % 3]), mask, mask.bool())
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.float32)
    lp = -1000.0 - torch.rand(2, 4, generator=g, dtype=torch.float64)
    run("edge case 'log-probs near -1000'", lp, lp + _randn(g, 2, 4, scale=0.5), mask,
        hint="take log r = log pi_ref - log pi first: exp(log pi_ref) / exp(log pi) is 0/0 at log-probs of "
             "-1000")
    lp = -torch.rand(2, 4, generator=g, dtype=torch.float64)
    run("edge case '|log r| up to 20'", lp,
        lp + torch.tensor([[20.0, -20.0, 5.0, -5.0], [12.0, -12.0, 0, 0]]), mask)
    for label, rng, g in ck.random_cases():
        B, T, mask = _random_case(rng)
        lp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
        ref = lp + _randn(g, B, T, scale=0.5)
        dirty = rng.random() < 0.5
        if dirty:
            lp = fill(lp, mask, rng.choice([float("nan"), 1e4]))
            ref = fill(ref, mask, rng.choice([float("-inf"), -1e4]))
        run(label, lp, ref, mask, mask.bool() if dirty else None)


def adaptive_kl(ck, S, R):
    """Edge: the KL as a float, an int, and 0-dim float32/float64 tensors; KL of 0 (error clipped to -0.2),
    exactly the target (beta unchanged), 1.1 x the target (unclipped) and 100 x (clipped to +0.2); n_steps 1,
    512 and the horizon; updates chained on one controller. The return value and .value after each update."""

    def run(label, beta, target, horizon, updates):
        call = (f"AdaptiveKLController({beta:.4g}, target={target:.4g}, horizon={horizon}).update(...) "
                f"x {len(updates)}")
        with ck.case(label, call, {"updates (current_kl, n_steps)": updates}):
            s, r = (S.AdaptiveKLController(beta, target, horizon),
                    R.AdaptiveKLController(beta, target, horizon))
            for i, (kl, n) in enumerate(updates):
                want = r.update(kl, n)
                got = s.update(kl, n)
                what = f"update {i + 1} (KL {float(kl):.4g}, n_steps {n})"
                if not (ck.expect("output", got, want, f"{what}: its return value")
                        and ck.expect("output", s.value, r.value, f"{what}: .value afterwards")):
                    return

    run("edge case 'KL types'", 0.15, 6.0, 10_000,
        [(9.0, 512), (3, 512), (torch.tensor(7.5), 512), (torch.tensor(4.0, dtype=torch.float64), 512)])
    run("edge case 'clipping'", 0.1, 2.0, 1000,
        [(0.0, 64), (2.0, 64), (2.2, 64), (200.0, 64), (1.9, 1000), (0.5, 1)])
    run("edge case 'n_steps = horizon'", 0.2, 1.0, 64, [(1.5, 64), (0.5, 64), (1.0, 64)])
    for label, rng, g in ck.random_cases():
        beta, target, horizon = rng.uniform(0.01, 0.5), rng.uniform(0.5, 10), rng.choice([10, 1000, 10_000])
        updates = []
        for step in range(6):
            kl = rng.uniform(0, 3 * target)
            updates.append((torch.tensor(kl) if step % 3 == 0 else kl, rng.choice([1, 64, 512])))
        run(label, beta, target, horizon, updates)


def ppo_ptx(ck, S, R):
    """One ppo_update (which calls the student's ptx_loss) of a small policy against the reference's: gamma 1,
    0.5 with a corpus mask that has padding, and 30; two PPO epochs (a fresh corpus batch per minibatch).
    Parts: the update (the policy's parameters afterwards) and ptx_loss (the logged term)."""
    from nanorlhf.model import GPT, GPTConfig
    from nanorlhf.training import make_optimizer

    tok = SimpleNamespace(eos_id=14, pad_id=15)

    def reward(gen):
        return (gen.response == 3).float().sum(1)

    def gpt(head, seed):
        torch.manual_seed(seed)
        return GPT(GPTConfig(vocab_size=16, block_size=32, n_layer=1, n_head=2, n_embd=16, head=head))

    def run(label, rng, g, coef, epochs=1, ragged=False):
        seed = rng.randrange(2**31)
        cfg = S.Config(rollout_batch=8, max_new_tokens=6, ppo_epochs=epochs, minibatch_size=4, ptx_coef=coef,
                       ptx_batch=2, init_kl_coef=0.05, device="cpu", dtype="fp32")
        policy, ref, critic = gpt("lm", seed), gpt("lm", seed).requires_grad_(False), gpt("value", seed + 1)
        prompts = [[rng.randrange(0, 13) for _ in range(rng.randint(2, 5))] for _ in range(8)]
        exp = S.rollout(policy, ref, critic, reward, prompts, tok, cfg, 0.05,
                        torch.Generator().manual_seed(seed))
        x = torch.randint(0, 16, (8, 2, 10), generator=g)  # 8 corpus batches of 2 windows
        m = torch.ones(8, 2, 10)
        if ragged:
            m[:, 1, 6:] = 0
        batches = [(x[i], torch.roll(x[i], -1, 1), m[i]) for i in range(8)]
        call = f"ppo_update(policy, critic, ..., ptx_batches) with ptx_coef={coef:.3g}, ppo_epochs={epochs}"
        with ck.case(label, call, {"corpus mask": m[0]}):
            out = {}
            for name, mod in (("reference", R), ("student", S)):
                p, c = copy.deepcopy(policy), copy.deepcopy(critic)
                opt_p, opt_c = (make_optimizer(p, cfg.lr, 0.0, eps=1e-5),
                                make_optimizer(c, cfg.critic_lr, 0.0, eps=1e-5))
                stats = mod.ppo_update(p, c, opt_p, opt_c, exp, cfg, iter(batches), random.Random(seed))
                out[name] = stats, dict(p.named_parameters())
            ck.expect("ptx_loss", out["student"][0].get("ptx_loss"), out["reference"][0]["ptx_loss"],
                      "stats['ptx_loss']", fp32(10.0))  # a next-token loss near log(16), logits well below 10
            for n, param in out["reference"][1].items():
                if not ck.expect("update", out["student"][1][n].detach(), param.detach(),
                                 f"the policy parameter {n} after the update", MODEL_GRAD):
                    break

    rng, g = ck.edge()
    run("edge case 'gamma 1'", rng, g, 1.0)
    run("edge case 'gamma 0.5, padding in the corpus mask'", rng, g, 0.5, ragged=True)
    run("edge case 'gamma 30, two epochs'", rng, g, 30.0, epochs=2)
    for label, rng, g in ck.random_cases(1):
        run(label, rng, g, rng.uniform(0.2, 3.0), ragged=rng.random() < 0.5)
