"""Differential checks of the log-prob and DPO pieces: response_logprobs, token_logprobs,
dpo_loss, preference_pairs.

The machinery (Checker, compare, the tolerances, the masks) is checks_core.py; the registry and
the entry points are checks.py.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import torch

from nanorlhf.assignments.checks_core import (
    BF16_GRAD, MODEL_GRAD, RANDOM_CASES, _kind, _randn, fill, fp32, ragged_mask, run_both,
)


def response_logprobs(ck, S, R):
    """On small GPTs (learned and rotary positions) and sampled batches: the default temperature and 0.7;
    with_entropy; fast=False; impl='torch'; entropy_grad=True (the entropy's gradient is compared too).
    Parts: logp (values and the model's parameter gradients) and entropy."""
    from nanorlhf.generate import generate
    from nanorlhf.model import GPT, GPTConfig

    def batch(rng, g, pos, seed):
        torch.manual_seed(seed)
        model = GPT(GPTConfig(vocab_size=24, block_size=40, n_layer=2, n_head=2, n_embd=16, head="lm",
                              pos_embedding=pos))
        prompts = [[rng.randrange(0, 20) for _ in range(rng.randint(1, 7))] for _ in range(rng.randint(2, 5))]
        return model, generate(model, prompts, rng.randint(3, 10), 22, 23, 1.0, 0, g)

    def grads(model, fn, out_weight):
        model.zero_grad(set_to_none=True)
        res = fn()
        total = out_weight(res)
        if total is not None and total.requires_grad:
            total.backward()
        return res, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    def run(label, model, gen, **kw):
        options = "".join(f", {k}={v!r}" for k, v in kw.items())
        call = f"response_logprobs(model, tokens, attention_mask, prompt_len{options})"
        with_entropy, entropy_grad = kw.get("with_entropy", False), kw.get("entropy_grad", False)
        args = (model, gen.tokens, gen.attention_mask, gen.prompt_len)
        w = torch.randn(gen.response.shape, generator=torch.Generator().manual_seed(1))
        with ck.case(label, call, {"tokens": gen.tokens, "attention_mask": gen.attention_mask}):
            for part in ("logp", "entropy") if entropy_grad else ("logp",):
                def weight(res, part=part):
                    if part == "logp":
                        return ((res[0] if with_entropy else res) * w).sum()
                    return ((res[1] * w).sum() if isinstance(res, tuple) and isinstance(res[1], torch.Tensor)
                            else None)
                want, want_g = grads(model, lambda: R.response_logprobs(*args, **kw), weight)
                got, got_g = grads(model, lambda: S.response_logprobs(*args, **kw), weight)
                if with_entropy and not (isinstance(got, tuple) and len(got) == 2):
                    raise TypeError(f"with_entropy=True: expected (logp, entropy), got {_kind(got)}")
                if part == "logp":  # these small models' logits stay well below 30: fp32(30) is ~1.5e-5
                    ck.expect("logp", got[0] if with_entropy else got, want[0] if with_entropy else want,
                              "logp", fp32(30.0))
                    if with_entropy:
                        ck.expect("entropy", got[1], want[1], "entropy", fp32(30.0))
                        if not entropy_grad:
                            ck.require("entropy", not got[1].requires_grad, "entropy",
                                       "carries a gradient though entropy_grad=False (it is for logging)")
                for n, grad in want_g.items():
                    if not ck.expect(part, got_g.get(n, torch.zeros_like(grad)), grad,
                                     f"the gradient of sum(w·{part}) w.r.t. the parameter {n}", MODEL_GRAD):
                        break

    rng, g = ck.edge()
    model, _ = batch(rng, g, "learned", 2)
    tokens = torch.tensor([[23, 1, 2, 3, 5, 6, 22, 23, 23], [4, 5, 6, 7, 8, 22, 23, 23, 23],
                           [23, 23, 9, 10, 11, 12, 13, 14, 15]])
    attn = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0, 0],
                         [0, 0, 1, 1, 1, 1, 1, 1, 1]])
    fixed = SimpleNamespace(tokens=tokens, attention_mask=attn.bool(), prompt_len=4, response=tokens[:, 4:])
    label = "edge case 'left-padded prompts, PAD after EOS'"
    run(label, model, fixed, with_entropy=True)
    run(label, model, fixed, temperature=0.8, fast=False)
    for pos, seed in (("learned", 0), ("rope", 1)):
        model, gen = batch(rng, g, pos, seed)
        label = f"edge case '{pos} positions'"
        run(label, model, gen)
        run(label, model, gen, temperature=0.7, with_entropy=True)
        run(label, model, gen, temperature=0.7, with_entropy=True, fast=False)
        run(label, model, gen, with_entropy=True, entropy_grad=True)
        run(label, model, gen, temperature=1.3, impl="torch")
    for label, rng, g in ck.random_cases(1):
        model, gen = batch(rng, g, rng.choice(["learned", "rope"]), rng.randrange(2**31))
        kw = dict(temperature=rng.choice([1.0, 0.7, 1.5]), with_entropy=rng.random() < 0.7,
                  fast=rng.random() < 0.5)
        run(label, model, gen, **kw)


def token_logprobs(ck, S, R):
    """Edge: logits near 1234.5 (at T = 1 and 0.7); -inf logits (never at the target); everything masked;
    one valid value; NaN logits behind the mask (gradients then compared at valid rows); targets -100 and
    out of range behind it; masks as float, bool and int64; a (B, T, V) non-contiguous view; bf16 and
    float64 logits; uniform logits; temperatures 0.5 and 2. Parts: logp and entropy, each with its
    gradient."""
    lsm = ("the handout asks for log p = log_softmax(z/T) and H = -sum p·log p: z_y - logsumexp(z/T) is "
           "accepted too (the tolerance is 8 fp32 roundings at the largest |z/T|); log(softmax) or "
           "logsumexp(z) - sum p·z lose more at large logits")

    def run(label, logits, targets, temperature, mask, hint="", where=None):
        finite = logits.float()[torch.isfinite(logits.float())]
        scale = (finite.abs().max().item() if finite.numel() else 1.0) / temperature
        tol = fp32(max(scale, 1.0))
        for with_entropy in (False, True):
            call = (f"_token_logprobs_torch(logits {logits.dtype} {tuple(logits.shape)}, targets, "
                    f"temperature={temperature}, mask{'=None' if mask is None else ''}, "
                    f"with_entropy={with_entropy})")
            with ck.case(label, call, {"targets": targets, "mask": mask, "logits": logits}, hint):
                got, want, s_leaves, r_leaves = run_both(
                    lambda x: S._token_logprobs_torch(x, targets, temperature, mask, with_entropy),
                    lambda x: R._token_logprobs_torch(x, targets, temperature, mask, with_entropy),
                    [logits], wrt=(0,))
                if not isinstance(got, (tuple, list)) or len(got) != 2:
                    raise TypeError(f"expected (logp, entropy or None), got {_kind(got)}")
                grad_tol = BF16_GRAD if logits.dtype == torch.bfloat16 else tol
                wh = None if where is None else [where[..., None]]
                w = torch.linspace(-1, 1, want[0].numel()).reshape(want[0].shape)
                ck.expect("logp", got[0], want[0], "logp", tol)
                ck.expect_grads("logp", (got[0] * w).sum() if isinstance(got[0], torch.Tensor) else got[0],
                                (want[0] * w).sum(), s_leaves, r_leaves, ["logits"], "sum(w·logp)",
                                grad_tol, wh)
                if with_entropy:
                    ck.expect("entropy", got[1], want[1], "entropy", tol)
                    ck.expect_grads("entropy",
                                    (got[1] * w).sum() if isinstance(got[1], torch.Tensor) else got[1],
                                    (want[1] * w).sum(), s_leaves, r_leaves, ["logits"], "sum(w·entropy)",
                                    grad_tol, wh)

    rng, g = ck.edge()
    V = 50
    targets = torch.randint(0, V, (6,), generator=g)
    big = 1234.5 + torch.randn(6, V, generator=g)
    run("edge case 'logits near 1234.5'", big, targets, 1.0, None, lsm)
    run("edge case 'logits near 1234.5'", big, targets, 0.7, None, lsm)
    run("edge case 'uniform logits of 1234.5'", torch.full((3, V), 1234.5), targets[:3], 1.0, None, lsm)
    z = torch.randn(6, V, generator=g) * 3
    off = torch.rand(6, V, generator=g) < 0.4
    off[torch.arange(6), targets] = False
    off[2] = True
    off[2, targets[2]] = False  # one row where only the target is finite: logp 0, entropy 0
    run("edge case '-inf logits'", z.masked_fill(off, float("-inf")), targets, 1.0, None,
        "p·log p is 0 where p = 0 (a -inf logit): mask it, 0·(-inf) is NaN in the value and the gradient")
    masks = (("everything masked", torch.zeros(6)), ("one valid value", torch.tensor([0, 0, 1, 0, 0, 0])),
             ("holes", torch.tensor([1, 0, 1, 1, 0, 1])))
    for i, (name, m) in enumerate(masks):
        m = m.to((torch.float32, torch.bool, torch.int64)[i])
        t = torch.where(m.bool(), targets, torch.tensor((-100, V + 5, -1)[i]))
        run(f"edge case '{name}', targets -100 or out of range behind the mask", z, t, (1.0, 0.5, 2.0)[i], m)
        nan = fill(z, m, float("nan"))
        run(f"edge case '{name}', NaN logits behind the mask", nan, t, 1.0, m, where=m.bool())
    full = torch.randn(2, 5, V, generator=g) * 3
    t2 = torch.randint(0, V, (2, 4), generator=g)
    m2 = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    run("edge case 'a (B, T, V) non-contiguous view'", full[:, :-1], t2, 1.0, m2)
    run("edge case 'bf16 logits'", (torch.randn(6, V, generator=g) * 3).bfloat16(), targets, 0.7, None)
    run("edge case 'float64 logits'", torch.randn(6, V, generator=g, dtype=torch.float64) * 3, targets,
        1.3, None)
    for label, rng, g in ck.random_cases():
        N, V = rng.randint(1, 6), rng.randint(2, 40)
        dtype = rng.choice([torch.float32, torch.float64, torch.bfloat16])
        logits = (torch.randn(N, V, generator=g) * rng.choice([1.0, 3.0, 1e3])).to(dtype)
        targets = torch.randint(0, V, (N,), generator=g)
        if rng.random() < 0.3 and V > 2:  # -inf logits (masked vocabulary), never at the target
            off = torch.rand(N, V, generator=g) < 0.3
            off[torch.arange(N), targets] = False
            logits = logits.masked_fill(off, float("-inf"))
        mask = None
        if rng.random() < 0.5:
            mask = ragged_mask(2, N, rng, dtype=rng.choice([torch.float32, torch.bool, torch.long]))[1]
            targets = torch.where(mask.bool(), targets, torch.full_like(targets, rng.choice([-100, V + 5])))
        run(label, logits, targets, rng.choice([1.0, 0.7, 1.3]), mask)


def dpo_loss(ck, S, R):
    """Edge: policy = reference (ln 2); beta·margin = ±800 (log sigmoid(-800) is -800, not log 0); the
    default beta (0.1) and beta = 1; B = 1. Parts: the loss (value and gradient w.r.t. the policy log-probs)
    and the rewards (values, detached)."""
    _, g = ck.edge()
    stable = ("log(sigmoid(x)) underflows to log 0 = -inf once x < -745: use F.logsigmoid(x) "
              "(or -F.softplus(-x)); the two agree to rounding everywhere")

    def run(label, inputs, beta=None, hint=""):
        kw = {} if beta is None else {"beta": beta}
        call = ("dpo_loss(policy_chosen_logp, policy_rejected_logp, ref_chosen_logp, ref_rejected_logp"
                + ("" if beta is None else f", beta={beta:.3g}") + ")")
        names = ("policy_chosen_logp", "policy_rejected_logp", "ref_chosen_logp", "ref_rejected_logp")
        with ck.case(label, call, dict(zip(names, inputs)), hint):
            got, want, s_leaves, r_leaves = run_both(lambda *x: S.dpo_loss(*x, **kw),
                                                     lambda *x: R.dpo_loss(*x, **kw),
                                                     inputs, wrt=(0, 1))
            if not isinstance(got, (tuple, list)) or len(got) != 3:
                raise TypeError(f"expected (loss, chosen_rewards, rejected_rewards), got {_kind(got)}")
            ck.expect("loss", got[0], want[0], "the loss")
            ck.expect_grads("loss", got[0], want[0], s_leaves, r_leaves, list(names[:2]), "the loss")
            for i, name in ((1, "chosen_rewards"), (2, "rejected_rewards")):
                if ck.expect("rewards", got[i], want[i], name):
                    ck.require("rewards", not got[i].requires_grad, name,
                               "carries a gradient: the rewards are detached")

    chosen, rejected = _randn(g, 3, scale=10), _randn(g, 3, scale=10)
    run("edge case 'policy = reference'", [chosen, rejected, chosen.clone(), rejected.clone()])
    pc, rc = _randn(g, 4, scale=5), _randn(g, 4, scale=5)
    pr = pc.clone()
    margins = torch.tensor([8000.0, -8000.0, 7500.0, -7500.0], dtype=torch.float64)  # beta 0.1: ±800, ±750
    run("edge case 'beta·margin = ±800'", [pc + margins, pr, rc, rc.clone()], hint=stable)
    run("edge case 'beta = 1, B = 1'", [_randn(g, 1, scale=5) for _ in range(4)], 1.0)
    for label, rng, g in ck.random_cases():
        B = rng.randint(1, 6)
        inputs = [_randn(g, B, scale=rng.choice([1.0, 5.0, 30.0])) for _ in range(4)]
        run(label, inputs, rng.choice([0.1, 0.5, rng.uniform(0.01, 1.0)]))


def _pairs_difference(got: list, want: list) -> str:
    """What sets a list of pairs apart from the expected one, in the words of the usual mistakes."""
    extra, missing = [p for p in got if p not in want], [p for p in want if p not in got]
    flipped = [p for p in extra if p[::-1] in want]
    said = [f"{len(got)} pairs, expected {len(want)}"]
    if any(got.count(p) > 1 for p in got):
        said.append(f"listed more than once: {sorted({p for p in got if got.count(p) > 1})}")
    if flipped:
        said.append(f"the worse answer first: {flipped}")
    if len(extra) > len(flipped):
        other = [p for p in extra if p not in flipped]
        said.append(f"not pairs to learn from (tied, identical, off-prompt?): {other}")
    if missing:
        said.append(f"missing: {missing}")
    if sorted(got) == sorted(want) and got != want:
        said.append("the same pairs in another order (expected the ranking's order)")
    return "; ".join(said)


def preference_pairs(ck, S, R):
    """Edge: K = 2 as a pair file reads it (ties [], no "finished"); K = 2 tied; K = 3 with every pair tied;
    K = 1; a reversed ranking with ties written both ways round; every answer the same text; the same text
    finished and cut off; off-prompt answers ranked first, in the middle and last, at the default
    off_prompt, True and False; a group with no "ties", "finished" or "off_prompt" key at off_prompt=False.
    Random: K from 2 to 7, a shuffled ranking, ties each written either way round, texts of one or two
    letters of "ab" (so identical answers), each optional key present or not. The list of pairs must be the
    reference's, in its order (the ranking's); pairs may come back as tuples or lists."""

    def run(label, g, off_prompt=None):
        kw = {} if off_prompt is None else {"off_prompt": off_prompt}
        call = "preference_pairs(g" + ("" if off_prompt is None else f", off_prompt={off_prompt}") + ")"
        with ck.case(label, call, {"g": g}):
            want = R.preference_pairs(copy.deepcopy(g), **kw)  # copies: neither sees what the other changed
            got = [tuple(int(v) for v in pair) for pair in S.preference_pairs(copy.deepcopy(g), **kw)]
            if got != want:
                ck._fail("output", _pairs_difference(got, want), "the pairs", got, want)

    two = {"prompt": "q", "responses": ["yes", "no"], "ranking": [0, 1], "ties": []}
    run("edge case 'K = 2, a pair file's record'", two)
    run("edge case 'K = 2, tied'", {**two, "ties": [[1, 0]]})
    run("edge case 'K = 3, every pair tied'",
        {"prompt": "q", "responses": ["a", "b", "c"], "ranking": [1, 2, 0], "ties": [[0, 1], [2, 1], [0, 2]]})
    run("edge case 'K = 1'", {"prompt": "q", "responses": ["a"], "ranking": [0]})
    run("edge case 'reversed ranking, ties written both ways round'",
        {"prompt": "q", "responses": ["a", "b", "c", "d", "e"], "ranking": [4, 3, 2, 1, 0],
         "ties": [[3, 4], [1, 0]]})
    run("edge case 'every answer the same text'",
        {"prompt": "q", "responses": ["x", "x", "x"], "ranking": [2, 0, 1], "finished": [True, True, True]})
    run("edge case 'the same text finished and cut off'",
        {"prompt": "q", "responses": ["x", "x", "y", "x"], "ranking": [3, 0, 2, 1],
         "finished": [True, False, True, False]})
    off = {"prompt": "q", "responses": ["a", "b", "c", "d", "e", "f"], "ranking": [4, 0, 1, 5, 2, 3],
           "ties": [[0, 1]], "off_prompt": [4, 5, 3]}  # ranked first, in the middle, last
    for flag in (None, True, False):
        run(f"edge case 'off-prompt answers first, in the middle and last', off_prompt={flag}", off, flag)
    run("edge case 'every answer off-prompt', off_prompt=False", {**two, "off_prompt": [0, 1]}, False)
    run("edge case 'no \"ties\", \"finished\" or \"off_prompt\" key', off_prompt=False",
        {"prompt": "q", "responses": ["a", "b", "c"], "ranking": [2, 1, 0]}, False)
    for label, rng, _ in ck.random_cases(2 * RANDOM_CASES):  # cheap: twice the usual count
        K = rng.randint(2, 7)
        group = {"prompt": "q", "responses": ["".join(rng.choice("ab") for _ in range(rng.randint(1, 2)))
                                              for _ in range(K)], "ranking": rng.sample(range(K), K)}
        if rng.random() < 0.7:
            pairs = [[i, j] for i in range(K) for j in range(i + 1, K)]
            group["ties"] = [p if rng.random() < 0.5 else p[::-1] for p in pairs if rng.random() < 0.25]
        if rng.random() < 0.7:
            group["finished"] = [rng.random() < 0.7 for _ in range(K)]
        if rng.random() < 0.7:
            group["off_prompt"] = rng.sample(range(K), rng.randint(0, min(2, K)))
        run(label, group, rng.choice([None, True, False]))
