"""One precision policy for every stage, on the CPU and on a GPU (../shared/DESIGN.md, "Precision and scale").

Each stage resolves `--dtype=auto|fp32|bf16` once (`resolve_dtype`); `autocast(device, dtype)` wraps every
forward that feeds training or evaluation. Under bf16 the matmuls run in bf16 (fp32 master weights and AdamW
state); the residual stream, LayerNorms, scalar and value heads (a bf16 score of 2-4 rounds to steps of 1/64),
every log-softmax, entropy and loss, GAE and whitening stay fp32; attention and the KV cache use
`attention_dtype` (the compute dtype on a GPU, fp32 on the CPU). On a GPU fp32 matmuls use TF32. "auto" picks
bf16 on CUDA with bf16 (Ampere and later), and on a CPU with bf16 matmul instructions whose one-off timing
is at least BF16_MIN_SPEEDUP times fp32 (the flag says the instruction exists, not that it is faster); fp32
elsewhere. `NANORLHF_BF16_SPEEDUP=<x>` stands in for the timing (the tests set 1.0; one sets 4.0). The
measurements behind these choices: bench/NOTES.md, "Moved from docstrings (2026-12-05)".
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time

import torch

from nanorlhf.config import ConfigError

DTYPES = ("auto", "fp32", "bf16")
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX-512 BF16, x86 AMX, aarch64 BF16
BF16_MIN_SPEEDUP = 1.25  # bf16 matmul / fp32 matmul rate at which auto picks bf16 on the CPU
SPEEDUP_ENV = "NANORLHF_BF16_SPEEDUP"  # stands in for the measured bf16/fp32 rate (tests; see the docstring)


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (x86 "flags", aarch64 "Features"); empty where there is none."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


@functools.cache
def cpu_bf16_speedup(n: int = 1024, repeats: int = 5) -> float:
    """How many times faster an n x n/2 x n matmul runs in bf16 than in fp32 on this CPU, at the current
    thread count. The two are timed in alternation and the best of each is kept, so that another process
    on the machine slows both alike. About 0.2 s; measured once per process. Stops after two rounds where bf16
    is over 4x slower (a CPU that emulates it: 134x slower on an AVX2 EPYC, 17 s for all six rounds)."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n // 2, generator=gen), torch.randn(n // 2, n, generator=gen)
    pairs = {"fp32": (a, b), "bf16": (a.bfloat16(), b.bfloat16())}
    best = {k: float("inf") for k in pairs}
    for r in range(repeats + 1):  # the first round warms up both (oneDNN builds its kernels on first use)
        for k, (x, y) in pairs.items():
            t0 = time.perf_counter()
            for _ in range(3):
                x @ y
            best[k] = min(best[k], time.perf_counter() - t0)
        if r >= 1 and best["bf16"] > 4 * best["fp32"]:
            break
    return best["fp32"] / best["bf16"]


def auto_dtype(device: str) -> tuple[str, str]:
    """("bf16" | "fp32", why) for --dtype=auto on `device`."""
    if str(device).startswith("cuda"):
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16", "the GPU has bf16"
        return "fp32", "the GPU has no bf16"
    if str(device) != "cpu":
        return "fp32", f"no bf16 policy for device {device}"
    given = os.environ.get(SPEEDUP_ENV)
    if given is not None:
        speedup = _given_speedup(given)
        why = (f"{SPEEDUP_ENV}={given} stands in for the timing: a bf16 matmul runs at {speedup:.2f}x the "
               "fp32 rate")
        return ("bf16" if speedup >= BF16_MIN_SPEEDUP else "fp32"), why
    flags = sorted(set(CPU_BF16_FLAGS) & cpu_flags())
    if not flags:
        return "fp32", "the CPU has no bf16 matmul instructions"
    speedup = cpu_bf16_speedup()
    why = f"the CPU has {'/'.join(flags)}; a bf16 matmul runs at {speedup:.2f}x the fp32 rate"
    return ("bf16" if speedup >= BF16_MIN_SPEEDUP else "fp32"), why


def _given_speedup(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{SPEEDUP_ENV}={text}: expected a number > 0 (the bf16/fp32 matmul rate), or "
                          "unset it")
    return value


def resolve_dtype(dtype: str, device: str, log=print, trained_in: tuple[str, str] | None = None) -> str:
    """--dtype as given ("fp32" | "bf16"), or what "auto" picks on `device`; `log` gets one line saying why.

    `trained_in`: (dtype, checkpoint) of the model a stage starts from. "auto" then keeps that dtype instead
    of timing a matmul again: a stage or an evaluation run by hand on existing checkpoints works in the regime
    they were trained in (a timing can come out either way on a noisy machine, and bf16 and fp32 samples
    differ)."""
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype={dtype}: expected one of {', '.join(DTYPES)}")
    if dtype == "auto":
        if trained_in and trained_in[0] in TORCH_DTYPES:
            dtype = trained_in[0]
            why = f"the dtype {trained_in[1]} was trained in; --dtype=fp32|bf16 overrides"
        else:
            dtype, why = auto_dtype(device)
        if log:
            log(f"precision: {dtype} on {device} (--dtype=auto: {why})")
    return dtype


def autocast(device: str, dtype: str):
    """The compute regime `dtype` on `device`: bf16 autocast or plain fp32 ("auto": what resolve_dtype picks,
    silently; the stages resolve and log it once). Weights and optimizer state are fp32 either way."""
    if dtype == "auto":
        dtype = resolve_dtype(dtype, str(device), log=None)
    if dtype == "fp32":
        return contextlib.nullcontext()
    if dtype != "bf16":
        raise ValueError(f"autocast: dtype must be one of {DTYPES}, got {dtype!r}")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def autocast_off(device_type: str):
    """A region where autocast is off (fp32 heads, attention in its own dtype). The meta device, on which
    bench/gpu_check.py counts FLOPs, has no autocast to turn off."""
    if device_type == "meta":
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


def compute_dtype(device_type: str, default: torch.dtype) -> torch.dtype:
    """The dtype matmuls on `device_type` run in right now: autocast's, if it is on, else `default`.
    A device without autocast (the meta device of bench/gpu_check.py's FLOP count) runs in `default`."""
    if device_type != "meta" and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return default


def attention_dtype(device_type: str, default: torch.dtype) -> torch.dtype:
    """The dtype attention and the KV cache run in: the compute dtype on a GPU; `default` (the weights', fp32)
    on the CPU, whose flash attention is much slower in bf16 (see the module docstring)."""
    if device_type == "cpu":
        return default
    return compute_dtype(device_type, default)


def machine_report(device: str = "cpu") -> str:
    """What this machine is, as far as precision goes: the CPU model and its bf16 flags, torch and its thread
    count, and what --dtype=auto picks on `device` and why (`python -m nanorlhf.precision`; CI prints it)."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), model)
    except OSError:
        pass
    flags = sorted(cpu_flags() & {*CPU_BF16_FLAGS, "amx_tile", "avx512f", "avx2"})
    dtype, why = auto_dtype(device)
    return (f"machine: {model} | flags {' '.join(flags) or 'none of avx2/avx512/bf16/amx'} | torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads | --dtype=auto picks {dtype} on "
            f"{device}: {why}")


if __name__ == "__main__":
    print(machine_report())
