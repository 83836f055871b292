"""Differential checks: a student's function against the reference, on the same cases every time.

Run inside a graded copy (a pristine tree with the student's bodies put in), so `import nanorlhf.ppo` gives
the student's code; the reference, the same file of the instructor's repository, is loaded under another
module name. Each exercise's check, a function named after it, runs its fixed edge cases every time
(everything masked, one valid value, NaN and ±inf behind the mask, extreme logits and margins, every optional
argument of the contract off its default: the check's docstring lists them), then RANDOM_CASES random cases
for each seed of the seed list (SEEDS unless --seeds): the same tree and the same seeds give the same result.

Parts (Exercise.parts: the main quantity and each logged statistic) are compared apart. A part fails on its
first differing case, with a message naming the case, what came back and what was expected (first line), then
the call, the inputs, the tolerance (Tol, below) and, for a numerically off form, the form the contract wants.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.util
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

SEEDS = (0, 1, 2)  # the random cases' seeds unless --seeds: grade and selftest print them
RANDOM_CASES = 8  # per seed and check (a model-sized check runs fewer)
EDGE_SEED = 1234  # the values inside the fixed edge cases (their masks and options are written out below)


# Tolerances: what a correct answer written another way may differ by.
#   float64  |got - want| <= 1e-10 + 1e-8 |want|: the same sums in another order differ by ~1e-15, and library
#            functions approximate (F.softplus is x above 20: e^-20 = 2e-9 off, in the gradient too).
#   fp32     |got - want| <= 1e-6 + 8 u S + 1e-5 |want|, u = 2^-24 (the fp32 unit roundoff), S the largest
#            |input| (for log-probs max |logit / T|). An fp32 input is only known to u·S, and a log-prob
#            moves by up to 2uS when each logit moves by uS: log_softmax(z)[y] and z_y - logsumexp(z) both
#            round at scale S a few times (at logits near 1234.5, 8uS = 5.9e-4; they differ by at most
#            ~2.4e-4). The relative term covers the softmax's sum of V <= 64 terms in another order
#            (V·u = 4e-6).
#   bf16     a gradient handed back in bf16 is rounded there: one bf16 step, 2^-7 relative.
@dataclass(frozen=True)
class Tol:
    atol: float
    rtol: float
    why: str

    def __str__(self):
        return f"|got - expected| <= {self.atol:.3g} + {self.rtol:.3g}·|expected| ({self.why})"


U32 = 2.0 ** -24
F64 = Tol(1e-10, 1e-8, "float64: the same sums in another order differ by ~1e-15, and F.softplus's linear "
                      "branch above 20 by e^-20 = 2e-9 relative")


def fp32(scale: float = 1.0) -> Tol:
    """The fp32 tolerance at inputs of magnitude up to `scale` (see the comment above Tol)."""
    return Tol(1e-6 + 8 * U32 * scale, 1e-5,
               f"fp32 at inputs up to {scale:.5g}: 1e-6 + 8·2^-24·{scale:.5g}")


BF16_GRAD = Tol(1e-5, 2.0 ** -7, "the gradient comes back in bf16: one bf16 step")
MODEL_GRAD = Tol(1e-6, 1e-4, "fp32 matmuls through a 2-layer model, summed in another order")


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


def module_from_source(relpath: str, text: str, tag: str):
    """`text` (a version of the file at relpath) as a fresh module: a wrong or alternative answer checked in
    this process, without a copy of the tree (the tests of the catalogue)."""
    name = f"_{tag}_" + relpath.removesuffix(".py").replace("/", "_")
    module = type(sys)(name)
    module.__file__ = relpath
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    exec(compile(text, relpath, "exec"), module.__dict__)
    return module


def load_student(relpath: str):
    """The graded copy's module (train_ppo.py is a script at the root: imported by its file name)."""
    return importlib.import_module(relpath.removesuffix(".py").replace("/", "."))


# ------------------------------------------------------------------------------------------- comparing

def _kind(x) -> str:
    return f"{type(x).__name__} {x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else repr(x)[:80]


def _num(x: float) -> str:
    return f"{x:.7g}"


def compare(got, want, tol: Tol = F64, where=None, dtype: bool = True) -> str | None:
    """None if `got` matches `want` (same structure, shape, dtype if `dtype`, values within `tol` where
    `where` is true), else one line: what came back and what was expected, at the first value that differs."""
    if want is None:
        return None if got is None else f"got {_kind(got)}, expected None"
    if isinstance(want, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(want):
            return f"got {_kind(got)}, expected a {type(want).__name__} of {len(want)}"
        for i, (a, b) in enumerate(zip(got, want)):
            why = compare(a, b, tol, where, dtype)
            if why:
                return f"[{i}] {why}"
        return None
    if isinstance(want, (int, float)) and not isinstance(want, bool):
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if not isinstance(got, (int, float)):
            return f"got {_kind(got)}, expected the number {_num(want)}"
        if got == want or (math.isnan(got) and math.isnan(want)):
            return None
        if not math.isclose(got, want, rel_tol=tol.rtol, abs_tol=tol.atol):
            return f"got {_num(got)}, expected {_num(want)}"
        return None
    if not isinstance(got, torch.Tensor):
        return f"got {_kind(got)}, expected a tensor {want.dtype} {tuple(want.shape)}"
    if got.shape != want.shape:
        return f"got shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    if dtype and got.dtype != want.dtype:
        return f"got dtype {got.dtype}, expected {want.dtype}"
    g, w = got.detach().double(), want.detach().double()
    ok = torch.isclose(g, w, rtol=tol.rtol, atol=tol.atol, equal_nan=True)
    if where is not None:
        ok = ok | ~where.expand(ok.shape)
    if ok.all():
        return None
    bad = (~ok).nonzero()
    i = tuple(int(v) for v in bad[0])
    at = f" at {i}" if i else ""
    more = f"; {len(bad)} of {ok.numel()} differ" if ok.numel() > 1 else ""
    return f"got {_num(g[i].item())}, expected {_num(w[i].item())}{at}{more}"


def _show(x, limit: int = 64) -> str:
    """A tensor as 'dtype (shape) [values]' (7 significant digits; the first `limit` values of a big one)."""
    if not isinstance(x, torch.Tensor):
        return repr(x)
    flat = x.detach().reshape(-1)
    vals = flat[:limit].tolist()
    text = [f"{v:.7g}" if isinstance(v, float) else str(int(v)) for v in vals]
    if x.dim() >= 2 and flat.numel() <= limit:  # rows, so that a mask reads as a mask
        n = x.shape[-1]
        rows = ["[" + ", ".join(text[i:i + n]) + "]" for i in range(0, len(text), n)]
        body = "[" + ", ".join(rows) + "]"
    else:
        body = "[" + ", ".join(text) + (", …" if flat.numel() > limit else "") + "]"
    return f"{str(x.dtype).removeprefix('torch.')} {tuple(x.shape)} {body}"


class Checker:
    """Runs the cases of one check and keeps, for each part, the first case where it failed."""

    def __init__(self, parts, seeds=SEEDS):
        self.parts, self.seeds = tuple(parts), tuple(seeds)
        self.failed: dict[str, dict] = {}  # part -> {"message": one line, "detail": the whole story}
        # shown with a part's failure when its case has no hint of its own
        self.part_hints: dict[str, str] = {}
        self.cases = 0
        self._case = None

    @property
    def done(self) -> bool:
        return all(p in self.failed for p in self.parts)

    @contextlib.contextmanager
    def case(self, label: str, call: str, inputs: dict | None = None, hint: str = ""):
        """One case. An exception the block raises (the student's code crashed) fails every part still
        open."""
        self._case = (label, call, inputs or {}, hint)
        self.cases += 1
        try:
            yield
        except Exception as e:  # a wrong answer may fail any way: an error, a wrong shape, a NaN check
            said = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            for p in self.parts:
                self._fail(p, f"raised {type(e).__name__}: {said}", "the call")
        finally:
            self._case = None

    def expect(self, part, got, want, what: str, tol: Tol = F64, where=None, dtype=True) -> bool:
        if part in self.failed:
            return False
        why = compare(got, want, tol, where, dtype)
        if why is None:
            return True
        self._fail(part, why, what, got, want, tol)
        return False

    def require(self, part, ok: bool, what: str, why: str) -> None:
        if not ok and part not in self.failed:
            self._fail(part, why, what)

    def expect_grads(self, part, got_scalar, want_scalar, got_leaves, want_leaves, names, what, tol=F64,
                     where=None):
        """Gradients of got_scalar and want_scalar w.r.t. their leaves (missing ones count as 0); `where`: a
        bool tensor per leaf (or None) restricting the comparison (the reference may be NaN behind
        padding)."""
        if part in self.failed:
            return
        want = torch.autograd.grad(want_scalar, want_leaves, allow_unused=True, retain_graph=True)
        if not (isinstance(got_scalar, torch.Tensor) and got_scalar.requires_grad):
            self._fail(part, "carries no gradient (detached, or computed outside autograd)", what)
            return
        got = torch.autograd.grad(got_scalar, got_leaves, allow_unused=True, retain_graph=True)
        for i, (a, b, x) in enumerate(zip(got, want, want_leaves)):
            b = torch.zeros_like(x) if b is None else b
            a = torch.zeros_like(b) if a is None else a
            w = None if where is None else where[i]
            if not self.expect(part, a, b, f"the gradient of {what} w.r.t. {names[i]}", tol, w):
                return

    def _fail(self, part, why, what, got=None, want=None, tol=None):
        if part in self.failed:
            return
        label, call, inputs, hint = self._case or ("?", "?", {}, "")
        first = f"{what}: {why}, on {label}" if what != "the call" else f"{call} {why}, on {label}"
        lines = [f"[{part}] {first}", f"  call:      {call}"]
        for name, value in inputs.items():
            lines.append(f"  {name + ':':10s} {_show(value)}")
        hint = hint or self.part_hints.get(part, "")
        if got is not None or want is not None:
            lines += [f"  got:       {_show(got)}", f"  expected:  {_show(want)}"]
        if tol is not None:
            lines.append(f"  tolerance: {tol}")
        if hint:
            lines.append(f"  hint:      {hint}")
        self.failed[part] = {"message": first, "detail": "\n".join(lines)}

    def edge(self):
        """The fixed inputs' generators: the same values on every run."""
        return random.Random(EDGE_SEED), torch.Generator().manual_seed(EDGE_SEED)

    def random_cases(self, n: int = RANDOM_CASES):
        """(label, rng, g) for n random cases per seed; stops once every part has failed."""
        for seed in self.seeds:
            rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
            for i in range(n):
                if self.done:
                    return
                yield f"seed {seed}, random case {i + 1}", rng, g

    def result(self) -> dict:
        parts = {p: {"passed": p not in self.failed, **self.failed.get(p, {"message": "", "detail": ""})}
                 for p in self.parts}
        bad = [p for p in self.parts if p in self.failed]
        return {"passed": not bad, "parts": parts, "cases": self.cases, "seeds": list(self.seeds),
                "message": self.failed[bad[0]]["message"] if bad else "",
                "detail": "\n".join(self.failed[p]["detail"] for p in bad)}


def run_both(student, reference, inputs, wrt=()):
    """(got, want, got_leaves, want_leaves): each function on its own fresh copies of `inputs` (those in
    `wrt` require grad), the reference first."""
    out = []
    for fn in (reference, student):
        leaves = [x.detach().clone().requires_grad_(i in wrt) if isinstance(x, torch.Tensor) else x
                  for i, x in enumerate(inputs)]
        out.append((fn(*leaves), [leaves[i] for i in wrt]))
    (want, r_leaves), (got, s_leaves) = out
    return got, want, s_leaves, r_leaves


# ---------------------------------------------------------------------------------------------- inputs

MASK_ROWS = (  # (name, rows): the fixed masks of every masked check
    ("every token valid", [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]),
    ("right padding and an empty row", [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]]),
    ("an offset run", [[0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 0, 0, 1, 1]]),
    ("holes", [[1, 0, 1, 0, 1], [0, 1, 1, 0, 0], [1, 1, 1, 1, 1]]),
    ("one valid value", [[0, 0, 0, 0, 0], [0, 0, 1, 0, 0]]),
    ("everything masked", [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]),
)
MASK_DTYPES = (torch.float32, torch.bool, torch.float64, torch.int64)
FILLS = (float("nan"), float("inf"), -float("inf"))


def edge_masks(holes: bool = True, fills=FILLS):
    """(label, mask, fill) for every fixed mask (with holes unless holes=False) and every garbage value
    `fill` put behind it (the full mask gets none); mask dtypes take turns (float32, bool, float64, int64)."""
    out = []
    for i, (name, rows) in enumerate(MASK_ROWS):
        if name == "holes" and not holes:
            continue
        for j, fill in enumerate(fills if name != "every token valid" else (None,)):
            mask = torch.tensor(rows, dtype=torch.float64).to(MASK_DTYPES[(i + j) % len(MASK_DTYPES)])
            out.append((f"edge case '{name}'" + (f", {fill} behind the mask" if fill is not None else ""),
                        mask, fill))
    return out


def ragged_mask(B: int, T: int, rng: random.Random, holes: bool = True, dtype=None):
    """(B, T) mask whose rows are full, right-padded, an offset run, empty, or (holes) any pattern.
    The first row is always full, so the batch has valid tokens; dtype float64, float32 or bool at random."""
    rows = []
    for b in range(B):
        kind = "full" if b == 0 else rng.choice(["full", "right", "right", "offset", "empty"]
                                                + ["holes"] * holes)
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


def fill(x, mask, value):
    """x with `value` at every masked position (value None: x unchanged); mask broadcasts over x's last
    dims."""
    if value is None:
        return x
    keep = mask.bool()
    keep = keep.reshape(keep.shape + (1,) * (x.dim() - keep.dim()))
    return torch.where(keep, x, torch.full_like(x, value))


def _random_case(rng: random.Random, holes=True, max_b=5, max_t=8):
    B, T = rng.randint(1, max_b), rng.randint(1, max_t)
    return B, T, ragged_mask(B, T, rng, holes)


def _randn(g, *shape, scale=1.0):
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def _garbage(rng, choices=(float("nan"), float("inf"), -float("inf"), 1e6, -1e30)):
    return rng.choice(choices)


# ---------------------------------------------------------------------------------------------- checks

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


CHECKS = {f.__name__: f for f in (masked_mean, sft_loss, ranking_loss, kl_penalty_rewards, gae, masked_whiten,
                                   policy_loss, value_loss, kl_estimators, adaptive_kl, response_mask,
                                   response_logprobs, token_logprobs, preference_pairs, dpo_loss, ppo_ptx)}


def check(name: str, student, reference, seeds=SEEDS) -> dict:
    """Run one exercise's check: {"passed", "parts": {part: {"passed", "message", "detail"}}, "cases",
    "seeds", "message" (the first failing part's first line), "detail" (every failing part's whole
    story)}."""
    from nanorlhf.assignments.exercises import BY_NAME

    ck = Checker(BY_NAME[name].part_names, seeds)
    with torch.random.fork_rng():  # the model checks seed torch's global RNG; the caller's is left alone
        CHECKS[name](ck, student, reference)
    return ck.result()


def run(names: list[str], ref_root: Path, seeds=SEEDS) -> dict[str, dict]:
    """{exercise: check(...)} for each named exercise, the graded copy's module against the reference's."""
    from nanorlhf.assignments.exercises import BY_NAME

    results = {}
    for name in names:
        ex = BY_NAME[name]
        try:
            results[name] = check(name, load_student(ex.file), load_reference(ref_root, ex.file), seeds)
        except Exception as e:  # the student's module does not even import
            msg = f"the check could not run: {type(e).__name__}: {e}"
            results[name] = {"passed": False, "parts": {p: {"passed": False, "message": msg, "detail": msg}
                                                        for p in ex.part_names},
                             "cases": 0, "seeds": list(seeds), "message": msg, "detail": msg}
    return results
