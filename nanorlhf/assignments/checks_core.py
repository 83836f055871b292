"""The machinery of the differential checks (checks.py): the seeds, the tolerances (Tol), loading the
reference and the student's module, compare, the Checker that runs and records a check's cases, and
the inputs every check draws from (the fixed masks, ragged masks, garbage at padding).

checks.py re-exports these names (checks.SEEDS, checks.load_reference, ...); the per-exercise checks
are checks_losses.py, checks_ppo.py and checks_logprobs.py.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path

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
