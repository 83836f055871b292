"""Differential checks of the supervised and reward-model losses and the masks: masked_mean,
sft_loss, ranking_loss, masked_whiten, response_mask.

The machinery (Checker, compare, the tolerances, the masks) is checks_core.py; the registry and
the entry points are checks.py.
"""

from __future__ import annotations

import torch

from nanorlhf.assignments.checks_core import (
    F64, RANDOM_CASES, _garbage, _randn, _random_case, edge_masks, fill, fp32, ragged_mask, run_both,
)


def masked_mean(ck, S, R):
    """Edge: every fixed mask and fill, with dim None, 0, 1, -1 and (0, 1); a (B, T, V) input with dim 2,
    (1, 2) and -1; float32 x with a bool mask (float32 out). Values and the gradient."""
    _, g = ck.edge()

    def run(label, x, mask, dim, tol=F64):
        kw = {} if dim is None else {"dim": dim}
        call = f"masked_mean(x, mask{'' if dim is None else f', dim={dim}'})"
        with ck.case(label, call, {"x": x, "mask": mask}):
            got, want, s_leaves, r_leaves = run_both(lambda x: S.masked_mean(x, mask, **kw),
                                                     lambda x: R.masked_mean(x, mask, **kw), [x], wrt=(0,))
            ck.expect("output", got, want, "the mean", tol)
            w = torch.linspace(-1, 1, want.numel(), dtype=want.dtype).reshape(want.shape)
            s_scalar = (got * w).sum() if isinstance(got, torch.Tensor) and got.shape == want.shape else got
            ck.expect_grads("output", s_scalar, (want * w).sum(), s_leaves, r_leaves, ["x"], "sum(w·mean)",
                            tol)

    for label, mask, value in edge_masks():
        x = fill(_randn(g, *mask.shape, scale=3), mask, value)
        for dim in (None, 0, 1, -1, (0, 1)):
            run(label, x, mask, dim)
    mask3 = torch.tensor([[[1, 0, 1], [0, 0, 0]], [[1, 1, 1], [0, 1, 0]]], dtype=torch.bool)
    x3 = fill(_randn(g, 2, 2, 3), mask3, float("nan"))
    for dim in (2, (1, 2), -1, None):
        run("edge case 'a (B, T, V) input', NaN behind the mask", x3, mask3, dim)
    x32 = torch.randn(3, 4, generator=g)
    run("edge case 'float32 x, bool mask'", x32, x32 > 0, None, fp32(4.0))
    for label, rng, g in ck.random_cases():
        B, T, mask = _random_case(rng)
        x, dims = fill(_randn(g, B, T, scale=3), mask, _garbage(rng)), [None, 0, 1, -1, (0, 1)]
        if rng.random() < 0.3:
            V = rng.randint(1, 4)
            mask = ragged_mask(B * T, V, rng).view(B, T, V)
            x, dims = fill(_randn(g, B, T, V), mask, _garbage(rng)), [None, 2, (1, 2)]
        run(label, x, mask, rng.choice(dims))


def sft_loss(ck, S, R):
    """Edge: every fixed mask with NaN/±inf logits and -100/out-of-range targets behind it; logits of
    scale 1e4; float32 logits. The loss and its gradient (at valid positions: the reference's gradient
    behind NaN logits is NaN)."""
    rng0, g = ck.edge()

    def run(label, logits, targets, mask, tol=F64, hint=""):
        B, T, V = logits.shape
        with ck.case(label, "sft_loss(logits, targets, mask)", {"targets": targets, "mask": mask}, hint):
            got, want, s_leaves, r_leaves = run_both(lambda z: S.sft_loss(z, targets, mask),
                                                     lambda z: R.sft_loss(z, targets, mask), [logits],
                                                     wrt=(0,))
            ck.expect("output", got, want, "the loss", tol)
            where = mask.bool()[..., None]
            ck.expect_grads("output", got, want, s_leaves, r_leaves, ["logits"], "the loss", tol, [where])

    for i, (label, mask, value) in enumerate(edge_masks()):
        B, T = mask.shape
        V = 6
        logits = fill(_randn(g, B, T, V, scale=3), mask, value)
        targets = torch.randint(0, V, (B, T), generator=g)
        targets = torch.where(mask.bool(), targets, torch.full_like(targets, (-100, V + 3, -1)[i % 3]))
        run(label, logits, targets, mask)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.float32)
    targets = torch.randint(0, 7, (2, 4), generator=g)
    run("edge case 'logits of scale 1e4'", _randn(g, 2, 4, 7, scale=1e4), targets, mask,
        hint="log(softmax(z)) underflows to -inf once a probability is below 1e-308: use log_softmax or "
             "cross_entropy")
    z32 = torch.randn(2, 4, 7, generator=g) * 3
    run("edge case 'float32 logits'", z32, targets, mask, fp32(z32.abs().max().item()))
    for label, rng, g in ck.random_cases():
        B, T, mask = _random_case(rng)
        V = rng.randint(2, 9)
        logits = fill(_randn(g, B, T, V, scale=3), mask, rng.choice([None, float("nan"), 1e6]))
        targets = torch.randint(0, V, (B, T), generator=g)
        targets = torch.where(mask.bool(), targets, torch.full_like(targets, rng.choice([-100, V + 3, -1])))
        run(label, logits, targets, mask)


def ranking_loss(ck, S, R):
    """Edge: K=2 with valid=None; groups of 5, 3, 2, 1 and 0 valid responses with garbage (±1e3, 1e6) in the
    missing slots; no group with two responses (loss 0); ties, and a group whose every pair is tied; reward
    gaps of ±800 (log sigmoid(-800) is -800, not log 0). The loss and its gradient."""
    rng0, g = ck.edge()
    stable = ("log(sigmoid(d)) underflows to log 0 = -inf once d < -745: use F.logsigmoid(d) "
              "(or -F.softplus(-d)); the two agree to rounding everywhere")

    def run(label, rewards, valid=None, tied=None, hint=""):
        kw = {k: v for k, v in (("valid", valid), ("tied", tied)) if v is not None}
        call = f"ranking_loss(rewards{''.join(', ' + k + '=' + k for k in kw)})"
        with ck.case(label, call, {"rewards": rewards, **kw}, hint):
            got, want, s_leaves, r_leaves = run_both(lambda r: S.ranking_loss(r, **kw),
                                                     lambda r: R.ranking_loss(r, **kw), [rewards], wrt=(0,))
            ck.expect("output", got, want, "the loss")
            ck.expect_grads("output", got, want, s_leaves, r_leaves, ["rewards"], "the loss")

    run("edge case 'K = 2, valid=None'", _randn(g, 4, 2, scale=2))
    valid = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0],
                          [0, 0, 0, 0, 0]], dtype=torch.bool)
    for v in (1e3, -1e6, 1e6):
        run(f"edge case 'groups of 5, 3, 2, 1 and 0 responses', {v:g} in the missing slots",
            fill(_randn(g, 5, 5, scale=2), valid, v), valid)
    few = torch.tensor([[1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    run("edge case 'no group has two responses'", fill(_randn(g, 2, 3), few, 1e3), few)
    tied = torch.zeros(3, 4, 4, dtype=torch.bool)
    tied[0, 0, 2] = tied[0, 1, 3] = True
    tied[1] = torch.ones(4, 4, dtype=torch.bool).triu(1)  # every pair of group 1 tied: it has no pair left
    r = _randn(g, 3, 4, scale=2)
    run("edge case 'ties, and a group whose every pair is tied'", r, tied=tied)
    run("edge case 'ties with valid'", r,
        valid=torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]]).bool(),
        tied=tied)
    gaps = torch.tensor([[400.0, 0.0, -400.0], [-400.0, 0.0, 400.0]], dtype=torch.float64)
    run("edge case 'reward gaps of ±800'", gaps, hint=stable)
    for label, rng, g in ck.random_cases():
        B, K = rng.randint(1, 4), rng.randint(2, 5)
        rewards = _randn(g, B, K, scale=rng.choice([2.0, 10.0]))
        valid = None if rng.random() < 0.3 else ragged_mask(B, K, rng, holes=False, dtype=torch.bool)
        tied = (torch.rand(B, K, K, generator=g) < 0.25).triu(1) if rng.random() < 0.4 else None
        if valid is not None:
            rewards = fill(rewards, valid, rng.choice([1e3, -1e3]))
        run(label, rewards, valid, tied)


def masked_whiten(ck, S, R):
    """Edge: every fixed mask with NaN/±inf behind it; shift_mean=False; eps=0.1; moments=(mean, var) given
    (the statistics of every rank's batch replace x's own); values around 1e6 (a mean of 1e6: E[x²] - E[x]²
    loses every digit); masked_var with unbiased=True, which raises ValueError for fewer than 2 values."""
    _, g = ck.edge()

    def run(label, x, mask, hint="", **kw):
        args = "".join(f", {k}={'(mean, var)' if k == 'moments' else v}" for k, v in kw.items())
        with ck.case(label, f"masked_whiten(x, mask{args})", {"x": x, "mask": mask, **kw}, hint):
            ck.expect("output", S.masked_whiten(x, mask, **kw), R.masked_whiten(x, mask, **kw),
                      "the whitened x")
        for unbiased in (None, True):
            kw = {} if unbiased is None else {"unbiased": unbiased}
            call = f"masked_var(x, mask{', unbiased=True' if unbiased else ''})"
            with ck.case(label, call, {"x": x, "mask": mask}, hint):
                try:
                    want = R.masked_var(x, mask, **kw)
                except ValueError:
                    try:
                        S.masked_var(x, mask, **kw)
                    except ValueError:
                        continue
                    ck.require("output", False, "masked_var",
                               "returned a value for fewer than 2 valid values: "
                               "unbiased=True must raise ValueError (n - 1 = 0 or less)")
                    continue
                ck.expect("output", S.masked_var(x, mask, **kw), want, "the variance")

    for i, (label, mask, value) in enumerate(edge_masks()):
        x = fill(_randn(g, *mask.shape, scale=3) + 2, mask, value)
        run(label, x, mask)
        run(label, x, mask, shift_mean=False)
        run(label, x, mask, eps=0.1)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.float32)
    x = fill(_randn(g, 2, 4) + 1e6, mask, float("nan"))
    two_pass = "E[x²] - E[x]² cancels at a mean of 1e6: take the mean of (x - mean)² over valid positions"
    run("edge case 'values around 1e6'", x, mask, two_pass)
    run("edge case 'values around 1e6'", x, mask, two_pass, shift_mean=False)
    moments = (torch.tensor(0.3, dtype=torch.float64), torch.tensor(2.5, dtype=torch.float64))
    x = fill(_randn(g, 2, 4, scale=3), mask, float("inf"))
    hint = ("moments=(mean, var) replaces the mean and variance of x (distributed: those of every rank's "
            "batch)")
    run("edge case 'moments given'", x, mask, hint, moments=moments)
    run("edge case 'moments given'", x, mask, hint, moments=moments, shift_mean=False)
    for label, rng, g in ck.random_cases():
        B, T, mask = _random_case(rng)
        x = fill(_randn(g, B, T, scale=3) + 2, mask, _garbage(rng))
        run(label, x, mask, shift_mean=rng.choice([True, False]), eps=rng.choice([1e-8, 1e-5]))


def response_mask(ck, S, R):
    """Edge: no EOS, EOS first, several EOS, every token EOS, one column, EOS id 0. A float (B, T) mask."""
    eos = 7
    fixed = (("no EOS", [[1, 2, 3, 4], [5, 6, 5, 6]], eos), ("EOS first", [[7, 1, 2, 3], [7, 7, 7, 7]], eos),
             ("several EOS", [[1, 7, 2, 7], [3, 4, 7, 8]], eos), ("one column", [[7], [1], [8]], eos),
             ("EOS id 0", [[3, 0, 0, 5], [0, 2, 2, 2]], 0))
    for name, rows, e in fixed:
        response = torch.tensor(rows)
        with ck.case(f"edge case '{name}'", f"response_mask_from(response, eos_id={e})",
                     {"response": response}):
            ck.expect("output", S.response_mask_from(response, e), R.response_mask_from(response, e),
                      "the mask")
    for label, rng, g in ck.random_cases(2 * RANDOM_CASES):
        B, T, V = rng.randint(1, 5), rng.randint(1, 8), 8
        e = rng.randrange(V)
        response = torch.randint(0, V, (B, T), generator=g)  # holds EOS anywhere, several times, or never
        with ck.case(label, f"response_mask_from(response, eos_id={e})", {"response": response}):
            ck.expect("output", S.response_mask_from(response, e), R.response_mask_from(response, e),
                      "the mask")
