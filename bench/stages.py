"""Stage benchmark: how fast each piece of the pipeline runs on this machine: markdown tables for the README.

    python bench/stages.py                             # every part (CPU: about 3.5 minutes on 2 cores)
    python bench/stages.py --part=ppo --repeats=5      # one PPO iteration at the README's shape
    python bench/stages.py --part=ppo --profile        # ... and torch.profiler's top ops of one iteration,
                                                       #     and the update's matmul floor (matmul_floor)
    python bench/stages.py --quick                     # tiny shapes, 1 repeat: a smoke test (< 20 s)
    python bench/stages.py --device=cuda               # the same on a GPU
    python bench/stages.py --part=ppo --dtype=both     # fp32 and bf16 side by side, iterations alternating
    python bench/stages.py --part=ppo --dtype=both --profile   # ... and where each one's time goes

Comments in the code say what each part times (PARTS), how (timeit, load_train_ppo) and --dtype (parse_args).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib.util
import os
import platform
import random
import shlex
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the package, when run as bench/stages.py

from nanorlhf.generate import generate
from nanorlhf.losses import ranking_loss, sft_loss
from nanorlhf.model import GPT, GPTConfig
from nanorlhf.precision import TORCH_DTYPES
from nanorlhf.training import autocast, make_optimizer, resolve_dtype, setup_device

# Parts (random weights and random token ids: speed does not depend on what the model has learned):
#   train     supervised tokens/s, forward + backward + grad clip + AdamW step (train_sft's step) at the
#             `tiny` shape (vocab 1306: our tokenizer at the tiny preset) and the `small` shape
#   generate  sampled tokens/s with the KV cache and without it (use_cache=False recomputes the prefix every
#             step), 64 prompts, 48 new tokens, and the speed-up (target >= 5x)
#   rm        reward-model comparison groups/s, K = 4 (forward, ranking loss, backward, AdamW: train_rm's
#             step)
#   ppo       ONE PPO iteration (train_ppo.rollout + train_ppo.ppo_update) at a fixed GPT-2-shaped size,
#             split into 1 generate | 2-4 score, reference, values, rewards, GAE | 5 update
PARTS = ("train", "generate", "rm", "ppo")
# model shapes (GPTConfig fields); TINY/SMALL are the pipeline's presets, PPO the README's PPO benchmark shape
TINY = dict(n_layer=4, n_head=4, n_embd=128, block_size=128, vocab_size=1306)
SMALL = dict(n_layer=6, n_head=8, n_embd=384, block_size=256, vocab_size=4096)
PPO = dict(n_layer=4, n_head=4, n_embd=128, block_size=256, vocab_size=4096)
MICRO = dict(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=256)  # --quick


def plan(quick: bool, cuda: bool) -> dict:
    """Every size the benchmark uses. --quick shrinks all of them to a smoke test."""
    if quick:
        return dict(train=[("micro", MICRO, 4, 1)], gen=dict(shape=MICRO, prompts=8, new=8),
                    rm=dict(shape=MICRO,
                    groups=4, K=4, T=16), ppo=dict(shape=MICRO, prompts=8, new=8, epochs=2, minibatch=4))
    # train: (preset, shape, batch, steps timed per repeat)
    return dict(train=[("tiny", TINY, 16, 10), ("small", SMALL, 64 if cuda else 8, 10 if cuda else 2)],
                gen=dict(shape=PPO, prompts=64, new=48),
                rm=dict(shape=TINY, groups=16, K=4, T=64),
                ppo=dict(shape=PPO, prompts=64, new=48, epochs=4, minibatch=16))


# ------------------------------------------------------------------------------------------------ timing
def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# Times are wall clock (perf_counter) around the work, after a device synchronise on CUDA; we report the
# median (and the best) of --repeats after one warm-up. Other processes on the machine slow every number: the
# load average at start is printed with each table.
def timeit(fn, device: str, repeats: int, warmup: int = 1) -> list[float]:
    """Seconds per call of fn(), `repeats` times after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def random_prompts(n: int, vocab: int, seed: int = 0, lengths=(16, 32)) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, vocab) for _ in range(rng.randint(*lengths))] for _ in range(n)]


def make_model(shape: dict, device: str, head: str = "lm", seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**shape, head=head)).to(device)


def describe(shape: dict) -> str:
    return (f"{shape['n_layer']}L/{shape['n_head']}H/d{shape['n_embd']}, V {shape['vocab_size']}, "
            f"ctx {shape['block_size']}")


# --------------------------------------------------------------------------------------------- the header
def machine(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"{name} ({os.cpu_count()} logical CPUs)"


def caption(args, device: str, dtype: str) -> str:
    load = f"load avg {os.getloadavg()[0]:.1f} at start · " if hasattr(os, "getloadavg") else ""
    precision = "bf16 autocast" if dtype == "bf16" else "fp32"
    command = "python bench/stages.py" + (" " + shlex.join(args.argv) if args.argv else "")
    return (f"{machine(device)} · torch {torch.__version__} · {torch.get_num_threads()} threads · "
            f"{device} {precision} · {load}{datetime.datetime.now():%Y-%m-%d %H:%M} · `{command}`")


def table(title: str, cap: str, header: list[str], rows: list[list[str]], note: str = "") -> None:
    print(f"\n### {title}\n\n{cap}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    if note:
        print(f"\n{note}")
    sys.stdout.flush()


def med(times):
    return statistics.median(times)


# ----------------------------------------------------------------------------------------------- parts
def bench_train(p, args, device, cap, dtype):
    rows = []
    for name, shape, batch, steps in p["train"]:
        model = make_model(shape, device).train()
        opt = make_optimizer(model, lr=3e-4, weight_decay=0.1)
        T = shape["block_size"]
        g = torch.Generator().manual_seed(0)
        x = torch.randint(shape["vocab_size"], (batch, T), generator=g).to(device)
        y = torch.randint(shape["vocab_size"], (batch, T), generator=g).to(device)
        mask = torch.ones(batch, T, device=device)

        def step():
            for _ in range(steps):
                with autocast(device, dtype):
                    loss = sft_loss(model(x), y, mask)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()

        times = timeit(step, device, args.repeats)
        toks = steps * batch * T
        rows.append([name, describe(shape), f"{model.num_params() / 1e6:.2f}M", f"{batch} × {T}",
                     f"{1e3 * med(times) / steps:.0f}", f"{toks / med(times):,.0f}",
                     f"{toks / min(times):,.0f}"])
    table(f"train: supervised training throughput, {dtype}", cap,
          ["preset", "shape", "params", "batch × T", "ms/step", "tokens/s (median)", "tokens/s (best)"],
          rows, "One step = forward + sft_loss + backward + grad-norm clip + AdamW step.")


def bench_generate(p, args, device, cap, dtype):
    q = p["gen"]
    model = make_model(q["shape"], device).eval()
    prompts = random_prompts(q["prompts"], q["shape"]["vocab_size"])
    n_tokens = q["prompts"] * q["new"]
    results = {}
    for use_cache in (True, False):
        def run():
            g = torch.Generator(device).manual_seed(0)  # the same samples every repeat
            with autocast(device, dtype):
                gen = generate(model, prompts, q["new"], eos_id=-1, pad_id=0, temperature=1.0, generator=g,
                               use_cache=use_cache)
            assert gen.response.shape[1] == q["new"] and bool(gen.response_mask.all()), "a row stopped early"
        results[use_cache] = timeit(run, device, args.repeats)
    rows = [[label, f"{med(t):.3f}", f"{n_tokens / med(t):,.0f}", f"{n_tokens / min(t):,.0f}"]
            for label, t in (("KV cache", results[True]),
                             ("no cache (recompute the prefix)", results[False]))]
    speedup = med(results[False]) / med(results[True])
    rows.append(["speed-up of the cache", "", f"{speedup:.1f}×", "target ≥ 5×"])
    table(f"generate: sampling throughput, {dtype}", cap,
          ["", "s per batch", "tokens/s (median)", "tokens/s (best)"], rows,
          f"Policy {describe(q['shape'])}; {q['prompts']} prompts of 16-32 random tokens, {q['new']} new "
          "tokens each (no early EOS), temperature 1.0, one batch.")


def bench_rm(p, args, device, cap, dtype):
    q = p["rm"]
    B, K, T, V = q["groups"], q["K"], q["T"], q["shape"]["vocab_size"]
    rm = make_model(q["shape"], device, head="scalar").train()
    opt = make_optimizer(rm, lr=1e-5, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, V, (B * K, T), generator=g)
    lengths = torch.randint(T * 3 // 4, T + 1, (B * K,), generator=g)  # right padding, as ranked_sequences
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).to(device)
    tokens = torch.where(mask.cpu(), tokens, 0).to(device)

    def step():
        with autocast(device, dtype):
            scores = rm(tokens, mask).float().view(B, K)  # (B, K), best first
        loss = ranking_loss(scores)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(rm.parameters(), 1.0)
        opt.step()

    times = timeit(step, device, args.repeats)
    rows = [[describe(q["shape"]), f"{B} × {K} × ≤{T}", f"{1e3 * med(times):.0f}",
             f"{B / med(times):,.1f}", f"{B / min(times):,.1f}"]]
    table(f"rm: reward-model training throughput, {dtype}", cap,
          ["shape", "groups × K × tokens", "ms/step", "groups/s (median)", "groups/s (best)"], rows,
          "One step = scalar-head forward of all K responses, InstructGPT ranking loss over the C(K,2) "
          "pairs, backward, grad clip, AdamW (train_rm's step).")


# The PPO part must time exactly the code a PPO run executes, so it loads `rollout`, `ppo_update` and `Config`
# from the repository's train_ppo.py by path (importlib: a private copy, see load_train_ppo; this is a script
# beside the package, which itself never imports a stage script or a benchmark). To split rollout() without
# running anything twice, the private copy of train_ppo loaded here has its `generate` wrapped in a stopwatch;
# "score" is the rest of rollout(). No sampled token can be the EOS (eos_id = -1), so every row generates all
# its tokens and every repeat does the same work.
def load_train_ppo():
    """A private copy of the repository's train_ppo.py (the module the PPO stage runs)."""
    path = Path(__file__).resolve().parent.parent / "train_ppo.py"  # bench/ sits beside the stage scripts
    spec = importlib.util.spec_from_file_location("nanorlhf_bench_train_ppo", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # @dataclass looks its module up
    spec.loader.exec_module(mod)
    return mod


def ppo_setup(p, device, dtype):
    """Everything one PPO iteration needs, as train_ppo.main builds it: 4 models, 2 optimizers, a batch."""
    tp = load_train_ppo()
    q = p["ppo"]
    cfg = tp.Config(rollout_batch=q["prompts"], max_new_tokens=q["new"], ppo_epochs=q["epochs"],
                    minibatch_size=q["minibatch"], device=device, dtype=dtype)
    policy = make_model(q["shape"], device, "lm", seed=0)
    ref = copy.deepcopy(policy)
    reward_model = make_model(q["shape"], device, "scalar", seed=1)
    critic = make_model(q["shape"], device, "value", seed=2)
    for m in (ref, reward_model):
        m.eval().requires_grad_(False)
    opt_policy = make_optimizer(policy, cfg.lr, 0.0, betas=(0.9, 0.95), eps=1e-5)
    opt_critic = make_optimizer(critic, cfg.critic_lr, 0.0, betas=(0.9, 0.95), eps=1e-5)
    tok = SimpleNamespace(eos_id=-1, pad_id=0)  # -1 is never sampled: every row runs max_new_tokens
    prompts = random_prompts(q["prompts"], q["shape"]["vocab_size"])
    sample_gen = torch.Generator(device).manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    gen_times = []
    inner = tp.generate

    def timed_generate(*a, **kw):  # step 1 inside rollout(), on a stopwatch
        sync(device)
        t0 = time.perf_counter()
        out = inner(*a, **kw)
        sync(device)
        gen_times.append(time.perf_counter() - t0)
        return out
    tp.generate = timed_generate

    def reward_fn(gen):
        return reward_model(gen.tokens, gen.attention_mask)

    def iteration(flops: dict | None = None):
        """One PPO iteration; returns (generate, rest of rollout, update) seconds. Given a dict, also counts
        the matmul FLOPs of the rollout and of the update into it (the counter slows that iteration down)."""
        def run(phase, fn, *a):
            if flops is None:
                return fn(*a)
            with FlopCounterMode(display=False) as counter:
                out = fn(*a)
            flops[phase] = counter.get_total_flops()
            return out
        sync(device)
        t0 = time.perf_counter()
        exp = run("rollout", tp.rollout, policy, ref, critic, reward_fn, prompts, tok, cfg, cfg.init_kl_coef,
                  sample_gen)
        sync(device)
        t1 = time.perf_counter()
        run("update", tp.ppo_update, policy, critic, opt_policy, opt_critic, exp, cfg, None, rng)
        sync(device)
        t2 = time.perf_counter()
        assert exp.mask.shape[1] == q["new"] and bool(exp.mask.all()), "a row stopped early"
        return gen_times[-1], t1 - t0 - gen_times[-1], t2 - t1

    return q, cfg, policy, iteration


PPO_PHASES = ("1 generate (policy sampling, KV cache)", "2-4 score + reference + values (+ KL rewards, GAE)",
              "5 update")


def bench_ppo(p, args, device, caps: dict):
    """One table per precision in `caps` ({dtype: caption}); with two, their iterations alternate and a last
    table compares them phase by phase."""
    setups = {dtype: ppo_setup(p, device, dtype) for dtype in caps}
    for _, _, _, iteration in setups.values():
        iteration()  # warm-up
    its = {dtype: [] for dtype in caps}
    for _ in range(args.repeats):
        for dtype, (_, _, _, iteration) in setups.items():  # alternating: other processes slow each alike
            its[dtype].append(iteration())
    medians = {}
    for dtype, cap in caps.items():
        q, cfg, policy, _ = setups[dtype]
        phases = dict(zip(PPO_PHASES, zip(*its[dtype])))
        total = [sum(i) for i in its[dtype]]
        medians[dtype] = [med(t) for t in phases.values()] + [med(total)]
        rows = [[name, f"{med(t):.2f}", f"{min(t):.2f}", f"{100 * med(t) / med(total):.0f}%"]
                for name, t in phases.items()]
        rows[-1][0] += (f" ({cfg.ppo_epochs} epochs × {q['prompts'] // cfg.minibatch_size} minibatches of "
                        f"{cfg.minibatch_size})")
        rows.append(["**TOTAL** rollout() + ppo_update()", f"**{med(total):.2f}**",
                     f"{min(total):.2f}", "100%"])
        n = policy.num_params() / 1e6
        table(f"ppo: one PPO iteration, {dtype}", cap, ["phase", "median s", "best s", "share"], rows,
              f"Policy {describe(q['shape'])} ({n:.2f}M params); critic (value head), reward model (scalar "
              f"head) and frozen reference of the same shape; {q['prompts']} prompts of 16-32 random tokens, "
              f"{q['new']} new tokens (no early EOS). {args.repeats} iterations after 1 "
              f"warm-up{', alternating with the other precision' if len(caps) > 1 else ''}. "
              "Target: ≤ 6.5 s median on a 2-core CPU.")
    if len(caps) == 2:
        a, b = caps
        rows = [[name, f"{ma:.2f}", f"{mb:.2f}", f"{mb / ma:.2f}×"]
                for name, ma, mb in zip(PPO_PHASES + ("**TOTAL**",), medians[a], medians[b])]
        table(f"ppo: {b} against {a}", next(iter(caps.values())), ["phase", f"{a} median s", f"{b} median s",
              f"{b} / {a}"], rows,
              "Medians of the alternating iterations above (below 1×: the second is faster).")
    if args.profile:
        for dtype, (_, _, _, iteration) in setups.items():
            print(f"\n#### profile, {dtype}")
            profile_ppo(iteration, device)
            matmul_floor(iteration, device, med([i[2] for i in its[dtype]]),
                         256 if args.quick else 2048, dtype)


def profile_ppo(iteration, device):
    """torch.profiler over one more PPO iteration: the ops that take the time."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=acts) as prof:
        gen_s, score_s, update_s = iteration()
    print(f"\nprofiled iteration (profiler overhead included): generate {gen_s:.2f} s | score {score_s:.2f} "
          f"s | update {update_s:.2f} s\n")
    key = "self_device_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=25))


def gemm_rate(device: str, n: int, dtype: str) -> float:
    """FLOP/s of one n x n x n matmul in precision `dtype` (fp32 or bf16, as the stages compute), the best of
    5: about the most this machine's matmul library gets out of it, on an easy shape."""
    a, b = (torch.randn(n, n, device=device, dtype=TORCH_DTYPES[dtype]) for _ in range(2))

    def mm():
        a @ b
    return 2 * n**3 / min(timeit(mm, device, repeats=5))


def matmul_floor(iteration, device: str, update_s: float, n: int, dtype: str) -> None:
    """How close the update is to its matmuls alone: FLOPs counted by torch.utils.flop_counter over one more
    iteration (matmuls only: the CPU's flash attention is not counted), divided by gemm_rate."""
    flops = {}
    iteration(flops)
    rate = gemm_rate(device, n, dtype)
    floor = flops["update"] / rate
    print(f"\nmatmul floor: the update's matmuls are {flops['update'] / 1e9:.3g} GFLOP (the rollout's "
          f"{flops['rollout'] / 1e9:.3g}; torch.utils.flop_counter, attention not counted); at this "
          f"machine's rate for one {n}^3 {dtype} matmul, {rate / 1e9:.0f} GFLOP/s, they take {floor:.3g} s: "
          f"{100 * floor / update_s:.0f}% of the measured update ({update_s:.3g} s median). The rest is "
          "attention, elementwise work and per-op overhead, plus matmuls at shapes slower than that one.")


# ------------------------------------------------------------------------------------------------ main
# --dtype is the stages' flag (nanorlhf/precision.py): auto (default: what the stages would pick on this
# machine) | fp32 | bf16; `both` runs every part in fp32 and in bf16. For the PPO part the two precisions'
# iterations alternate (fp32, bf16, fp32, ...), so that other processes on the machine slow both alike, and
# a last table gives each phase's bf16/fp32 ratio of medians.
def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python bench/stages.py", description=__doc__.split("\n\n")[0].strip())
    ap.add_argument("--part", default="all", choices=("all",) + PARTS, help="which benchmark to run")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    ap.add_argument("--repeats", type=int, default=5,
                    help="timed repeats after one warm-up; the median is reported")
    ap.add_argument("--quick", action="store_true", help="tiny shapes and 1 repeat: a smoke test")
    ap.add_argument("--device", default="", help="cpu | cuda (default: cuda if available)")
    ap.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "both"),
                    help="compute precision, as the stages' --dtype; both: fp32 and bf16 side by side")
    ap.add_argument("--profile", action="store_true",
                    help="also profile one PPO iteration (torch.profiler) and print the update's matmul "
                         "floor")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.repeats = 1
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = setup_device(args.device)
    dtypes = ("fp32", "bf16") if args.dtype == "both" else (resolve_dtype(args.dtype, device),)
    caps = {dtype: caption(args, device, dtype) for dtype in dtypes}
    p = plan(args.quick, device.startswith("cuda"))
    parts = PARTS if args.part == "all" else (args.part,)
    benches = {"train": bench_train, "generate": bench_generate, "rm": bench_rm}
    for part in parts:
        if part == "ppo":
            bench_ppo(p, args, device, caps)
        else:
            for dtype, cap in caps.items():
                benches[part](p, args, device, cap, dtype)


if __name__ == "__main__":
    main()
