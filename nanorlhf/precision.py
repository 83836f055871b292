"""One precision policy for every stage, on the CPU and on a GPU (../shared/DESIGN.md, "Precision and scale").

Each stage takes `--dtype=auto|fp32|bf16` and resolves it once with `resolve_dtype`; `autocast(device, dtype)`
wraps every forward whose output feeds training or evaluation (training steps, sampling, scoring, held-out
evaluation), so samples and the updates they feed run in the same regime. Under bf16:
  - matmuls (and the CPU's flash attention) run in bf16 through torch.autocast; the weights stay fp32
    ("master weights"), autocast casts a bf16 copy for each matmul, and AdamW's state is fp32;
  - the residual stream and the LayerNorms stay fp32 (a bf16 block output added to the fp32 residual is fp32);
  - the scalar and value heads run in fp32 with autocast off (model.py): in bf16 a score of magnitude 2-4
    would be rounded to steps of 1/64, and the reward model's ranking accuracy would see false ties;
  - the LM head's logits come out of a bf16 matmul, but every log-softmax, entropy and cross-entropy over
    them is fp32 (logprobs.py casts; autocast runs cross_entropy in fp32); losses, GAE and whitening get
    fp32 tensors and run outside autocast (train_ppo.py);
  - attention runs in `attention_dtype`: the compute dtype on a GPU, fp32 on the CPU, and the KV cache holds
    keys and values in that dtype, so decoding does not recast the whole cache at every layer and step. Why
    fp32 on the CPU: torch's CPU flash attention (SDPA) runs its bf16 backward 6x slower than its fp32 one
    (measured, 16 x 4 heads x 80 tokens x 32, one thread: 37 ms against 6 ms forward + backward; the forward
    alone 2.7 against 2.0 ms), and attention is ~10% of the FLOPs at these sizes, so fp32 costs little there.
On a GPU, fp32 matmuls use TF32 (training.setup_device, any cuda:N).

"auto" picks bf16 where it pays: on CUDA when the GPU has bf16 (Ampere and later); on the CPU when the
processor has bf16 matmul instructions (the avx512_bf16 / amx_bf16 flags, or aarch64's bf16) AND a one-off
matmul timing finds bf16 at least BF16_MIN_SPEEDUP times faster than fp32; fp32 everywhere else. Why the
timing as well as the flags: the flag says the instruction exists, not that it is faster. Measured at 2
threads, 2048^3 matmuls: an AMD EPYC (Zen 4) runs bf16 at 2.4x its fp32 rate (411 vs 173 GFLOP/s, issue 15);
an Intel Xeon (family 6 model 207) with avx512_bf16 but without AMX runs it at 0.55x (85 vs 155 GFLOP/s),
where bf16 autocast would make every stage slower.

`NANORLHF_BF16_SPEEDUP=<x>` in the environment stands in for the timing (and the flags: bf16 autocast runs
on any CPU, only its speed differs), so a test can make "auto" pick either way on any machine: the tests
set 1.0 (fp32, tests/conftest.py) and one test sets 4.0 to run the whole micro pipeline in bf16.
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
    on the machine slows both alike. About 0.2 s; measured once per process."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n // 2, generator=gen), torch.randn(n // 2, n, generator=gen)
    pairs = {"fp32": (a, b), "bf16": (a.bfloat16(), b.bfloat16())}
    best = {k: float("inf") for k in pairs}
    for _ in range(repeats + 1):  # the first round warms up both (oneDNN builds its kernels on first use)
        for k, (x, y) in pairs.items():
            t0 = time.perf_counter()
            for _ in range(3):
                x @ y
            best[k] = min(best[k], time.perf_counter() - t0)
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
        why = f"{SPEEDUP_ENV}={given} stands in for the timing: a bf16 matmul runs at {speedup:.2f}x the fp32 rate"
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
            dtype, why = trained_in[0], f"the dtype {trained_in[1]} was trained in; --dtype=fp32|bf16 overrides"
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
