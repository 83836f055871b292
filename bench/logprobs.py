"""
Benchmark of per-token log-probs: naive PyTorch vs torch.compile vs the fused Triton kernel.

    python bench/logprobs.py                      # the full grid (GPU, a few minutes)
    python bench/logprobs.py --quick              # small shapes; runs on a CPU in < 1 min
    python bench/logprobs.py --shapes 16384x32768,4096x128256 --dtype bf16
    python bench/logprobs.py --tune               # BLOCK_V / num_warps sweep of both kernels

Every method (eager, rowloop, compiled, ours, ours+H: listed above their definitions) runs on the same inputs
in one process, timed by triton.testing.do_bench on CUDA and a perf_counter loop on CPU; effective bandwidth
(the bytes a perfect kernel must move / time) is printed against the spec sheet's HBM bandwidth and two
measured ceilings, with the extra memory of each call (how both are counted: above `bench_ms`).
"""

import argparse
import datetime
import sys
import time

import torch
import torch.nn.functional as F

# run as bench/logprobs.py
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))

from nanorlhf.logprobs import linear_logprobs, token_logprobs

PEAK_GBS = {"H100 SXM": 3350, "H100 80GB HBM3": 3350, "H100 NVL": 3900, "H100 PCIe": 2000, "H200": 4800,
            "A100-SXM4-80GB": 2039, "A100-SXM4-40GB": 1555, "A100 80GB PCIe": 1935}  # spec sheets, GB/s
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


# Methods:
#   eager     log_softmax(x.float(), -1).gather(-1, y)            the textbook line
#   rowloop   the same over chunks of 1024 rows (TRL's selective_log_softmax idea): less memory, same reads
#   compiled  torch.compile(eager, dynamic=False)                 one compile per shape
#   ours      token_logprobs(x, y)                                 Triton on CUDA; on CPU the torch path
#   ours+H    token_logprobs(x, y, with_entropy=True), gradients through both outputs
# By default fp32 runs only at N=16384, V in {32768, 128256} (spot checks), and torch.compile is skipped at
# N=65536 to keep the run short (it recompiles for every shape). On CPU the Triton kernel is not run (the
# interpreter is no benchmark): 'ours' is then the torch path, and torch.compile is skipped.
def eager(x, y):
    return F.log_softmax(x.float(), dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)


def rowloop(x, y, rows=1024):
    return torch.cat([eager(x[i:i + rows], y[i:i + rows]) for i in range(0, x.shape[0], rows)])


def ours(x, y):
    return token_logprobs(x, y)


def ours_h(x, y):
    return token_logprobs(x, y, with_entropy=True)


# ----------------------------------------------------------------------------------------------------------
# measuring
# Design (as Liger-Kernel and flash-attention benchmark their cross-entropy kernels): every method runs on the
# same inputs in one process; times are triton.testing.do_bench (which flushes L2) on CUDA and a perf_counter
# loop on CPU. Effective bandwidth = the bytes a perfect kernel must move / time: forward reads the logits
# once (N V bytes-per-element), forward + backward reads them twice and writes the gradient once (3 N V). It
# is printed against the spec sheet's HBM bandwidth and next to two ceilings measured here (x.amax(-1): read
# only; copy_: read + write). "Extra MB" = peak allocated memory during the call minus what was allocated
# before (inputs, upstream grads); for fwd+bwd it includes the N x V gradient that autograd must return.

def bench_ms(fn, cuda):
    if cuda:
        import triton.testing
        return triton.testing.do_bench(fn, warmup=10, rep=50)
    fn()
    reps, t0 = 0, time.perf_counter()
    while reps < 2 or time.perf_counter() - t0 < 0.2:
        fn()
        reps += 1
    return (time.perf_counter() - t0) / reps * 1e3


def extra_mb(fn, cuda):
    if not cuda:
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak / 2**20


def measure(fn, cuda):
    """(ms, extra MB) or an error string. A first call (compiles, autotunes) is not timed."""
    try:
        fn()
        mb = extra_mb(fn, cuda)
        return bench_ms(fn, cuda), mb
    except torch.cuda.OutOfMemoryError:
        return "OOM"
    except Exception as e:  # e.g. no C++ compiler for torch.compile
        return f"error: {type(e).__name__}"
    finally:
        if cuda:
            torch.cuda.empty_cache()


def fwd_call(method, x, y):
    def call():
        with torch.no_grad():
            return method(x, y)
    return call


def fwd_bwd_call(method, x, y, g):
    xg = x.detach().requires_grad_()

    def call():
        out = method(xg, y)
        outs = out if isinstance(out, tuple) else (out,)
        return torch.autograd.grad(outs, xg, [g] * len(outs))
    return call


def fmt(res, nbytes, peak):
    """'ms', 'GB/s (% of spec)', 'MB' cells."""
    if isinstance(res, str):
        return res, "", ""
    ms, mb = res
    gbs = nbytes / ms / 1e6
    bw = (f"{gbs:,.0f}" if gbs >= 100 else f"{gbs:.1f}") + (f" ({100 * gbs / peak:.0f}%)" if peak else "")
    return f"{ms:.3f}", bw, "—" if mb is None else f"{mb:,.0f}"


def device_info(cuda):
    if not cuda:
        return "CPU", None
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_GBS.items() if k in name), None)
    if peak is None and "H100" in name:
        peak = 3350
    return name, peak


def ceilings(cuda, dev):
    """measured read-only and copy bandwidth on a 1 GiB (CUDA) / 64 MiB (CPU) bf16 tensor, GB/s"""
    n = 2**29 if cuda else 2**25
    x = torch.randn(n // 4096, 4096, device=dev).to(torch.bfloat16)
    out = torch.empty_like(x)
    read = x.numel() * 2 / bench_ms(lambda: x.amax(-1), cuda) / 1e6
    copy = 2 * x.numel() * 2 / bench_ms(lambda: out.copy_(x), cuda) / 1e6
    return read, copy


# ----------------------------------------------------------------------------------------------------------
# tables

def logits_table(shapes, dt, dev, cuda, peak, no_compile_above):
    dtype = DTYPES[dt]
    elt = torch.finfo(dtype).bits // 8
    print(f"\n### logits -> log-probs, {dt}\n")
    print("| N × V | method | fwd ms | fwd GB/s (% spec) | fwd extra MB | fwd+bwd ms "
          "| fwd+bwd GB/s (% spec) | fwd+bwd extra MB |")
    print("|---|---|---|---|---|---|---|---|")
    for N, V, view in shapes:
        try:
            if view:  # logits[:, :-1] of a (B, T+1, V) tensor: rows are not evenly spaced
                B = N // 1024
                x = torch.randn(B, 1025, V, device=dev).to(dtype)[:, :-1]
                y = torch.randint(0, V, (B, 1024), device=dev)
            else:
                x = torch.randn(N, V, device=dev).to(dtype)
                y = torch.randint(0, V, (N,), device=dev)
            g = torch.randn(y.shape, device=dev)
        except torch.cuda.OutOfMemoryError:
            print(f"| {N} × {V} | (inputs do not fit) | | | | | | |")
            continue
        methods = [("eager", eager), ("rowloop", rowloop), ("compiled", None), ("ours", ours),
                   ("ours+H", ours_h)]
        if view:
            methods = [("eager", eager), ("ours", ours)]
        for name, method in methods:
            if name == "rowloop" and view:
                continue
            if name == "compiled":
                if not cuda or N > no_compile_above:
                    continue
                torch._dynamo.reset()  # a fresh cache per shape: no recompile limit, memory freed
                method = torch.compile(eager, dynamic=False)
            fwd = fmt(measure(fwd_call(method, x, y), cuda), N * V * elt, peak)
            bwd = fmt(measure(fwd_bwd_call(method, x, y, g), cuda), 3 * N * V * elt, peak)
            shape = f"{N} × {V}" + (" `[:, :-1]`" if view else "")
            print(f"| {shape} | {name} | {fwd[0]} | {fwd[1]} | {fwd[2]} | {bwd[0]} | {bwd[1]} | {bwd[2]} |")
            sys.stdout.flush()
        del x, y, g
        if cuda:
            torch.cuda.empty_cache()


def naive_linear(h, w, y):
    return eager(h @ w.t(), y)


def linear_table(shapes, d, dt, dev, cuda):
    dtype = DTYPES[dt]
    print(f"\n### hidden @ W.T -> log-probs (d = {d}), {dt}: time and peak extra memory\n")
    print("| N × V | method | fwd ms | fwd extra MB | fwd+bwd ms | fwd+bwd extra MB |")
    print("|---|---|---|---|---|---|")
    for N, V in shapes:
        h = (torch.randn(N, d, device=dev) / d**0.5).to(dtype)
        w = (torch.randn(V, d, device=dev) * 0.02).to(dtype)
        y = torch.randint(0, V, (N,), device=dev)
        g = torch.randn(N, device=dev)
        hg, wg = h.detach().requires_grad_(), w.detach().requires_grad_()
        for name, method in [("matmul + eager", naive_linear), ("linear_logprobs", linear_logprobs)]:
            def fwd():
                with torch.no_grad():
                    return method(h, w, y)

            def fwd_bwd():
                return torch.autograd.grad(method(hg, wg, y), (hg, wg), g)
            f, b = measure(fwd, cuda), measure(fwd_bwd, cuda)
            cells = []
            for r in (f, b):
                cells += [r, ""] if isinstance(r, str) else [f"{r[0]:.3f}",
                                                             "—" if r[1] is None else f"{r[1]:,.0f}"]
            print(f"| {N} × {V} | {name} | " + " | ".join(cells) + " |")
            sys.stdout.flush()
        del h, w, hg, wg


def tune(dev):
    """Sweep the kernels' launch parameters (bf16): forward (BLOCK_V, num_warps) at four vocab sizes, backward
    at 16384 x 32768. Prints GB/s of the kernel alone."""
    import triton.testing
    from nanorlhf import kernels
    N = 16384
    data = {}
    for V in (8192, 32768, 50257, 128256):
        x = torch.randn(N, V, device=dev, dtype=torch.bfloat16)
        data[V] = x, torch.randint(0, V, (N,), device=dev)
    print("\n| fwd BLOCK_V | num_warps | " + " | ".join(f"GB/s V={V}" for V in data) + " |")
    print("|---|---|" + "---|" * len(data))
    for block, warps in [(512, 4), (1024, 2), (1024, 4), (1024, 8), (2048, 4), (2048, 8),
                         (4096, 8), (4096, 16)]:
        cells = []
        for V, (x, y) in data.items():
            ms = triton.testing.do_bench(lambda: kernels.logprobs_fwd(x, y, None, 1.0, block, warps))
            cells.append(f"{x.numel() * 2 / ms / 1e6:,.0f}")
        print(f"| {block} | {warps} | " + " | ".join(cells) + " |")
        sys.stdout.flush()
    x, y = data[32768]
    g = torch.randn(N, device=dev)
    _, _, lse2, tbar = kernels.logprobs_fwd(x, y, None, 1.0)
    print("\n| bwd BLOCK_V | num_warps | GB/s V=32768 |\n|---|---|---|")
    for block, warps in [(1024, 4), (2048, 8), (4096, 8), (4096, 16), (8192, 16), (16384, 16)]:
        ms = triton.testing.do_bench(
            lambda: kernels.logprobs_bwd(x, y, None, lse2, tbar, g, g, 1.0, block, warps))
        print(f"| {block} | {warps} | {2 * x.numel() * 2 / ms / 1e6:,.0f} |")
        sys.stdout.flush()


# ----------------------------------------------------------------------------------------------------------

def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1],
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small shapes (the CPU default)")
    p.add_argument("--shapes", default=None, help="comma-separated NxV, e.g. 16384x32768,4096x128256")
    p.add_argument("--dtype", default="bf16,fp32", help="comma-separated: bf16, fp16, fp32")
    p.add_argument("--hidden", type=int, default=1024, help="d for the linear_logprobs table (0: skip it)")
    p.add_argument("--tune", action="store_true", help="only sweep the kernels' BLOCK_V / num_warps")
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    torch.manual_seed(0)
    if args.tune:
        return tune(dev)

    name, peak = device_info(cuda)
    print(f"# log-prob benchmark: {name}, {datetime.date.today()}")
    print(f"torch {torch.__version__}" + (f", triton {__import__('triton').__version__}" if cuda else ""))
    print("command: python bench/logprobs.py " + " ".join(sys.argv[1:]))
    read, copy = ceilings(cuda, dev)
    spec = f"{peak:,} GB/s spec; " if peak else ""
    print(f"\nbandwidth: {spec}measured read-only (amax) {read:,.0f} GB/s, copy {copy:,.0f} GB/s"
          + (f" = {100 * copy / peak:.0f}% of spec" if peak else ""))

    quick = args.quick or not cuda
    if args.shapes:
        grid = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    elif quick:
        grid = [(256, 8192), (512, 32768)] if not cuda else [(4096, 32768), (16384, 32768)]
    else:
        grid = [(N, V) for N in (4096, 16384, 65536) for V in (8192, 32768, 50257, 128256)]
    for dt in args.dtype.split(","):
        dtype = DTYPES[dt]
        spot = lambda N, V: N == 16384 and V in (32768, 128256)  # noqa: E731  (fp32 spot checks)
        shapes = [(N, V, False) for N, V in grid if args.shapes or quick or dtype != torch.float32
                  or spot(N, V)]
        if dtype == torch.bfloat16 and not quick and not args.shapes:
            shapes.append((16384, 32768, True))  # the non-contiguous case
        logits_table(shapes, dt, dev, cuda, peak, no_compile_above=16384 if not args.shapes else 10**9)
    if args.hidden:
        lin = [(256, 8192)] if not cuda else ([(4096, 32768)] if quick else [(4096, 32768), (16384, 128256)])
        d = args.hidden if cuda else min(args.hidden, 256)  # (a 2-core CPU is slow at matmuls)
        linear_table(lin, d, "bf16" if cuda else "fp32", dev, cuda)


if __name__ == "__main__":
    main()
