"""The device check: kernel tests, the log-prob table and the small pipeline, on one GPU in under 9 min.

    python bench/gpu_check.py                       # on the GPU: writes bench/results_gpu_<date>/
    python bench/gpu_check.py --dry-run             # on a CPU: the same steps on tiny shapes, listed, timed
    python bench/gpu_check.py --estimate            # the FLOP counts behind the estimate below (meta tensors)
    python bench/gpu_check.py --out=DIR --nproc=8   # another folder; the pipeline on 8 GPUs (torchrun)

Five steps (listed above `steps`), each stopped past its wall-time budget so the check stays under BUDGET_S:
environment, kernel tests, the log-prob table, the small pipeline (a rerun resumes it), DIR/summary.md.
ESTIMATE of the small pipeline on one H100, not a measurement (the FLOP counts, assumptions and breakdown are
in bench/NOTES.md): ≈ 310-330 s ≈ 5.5 min, under the 8-minute target and the pipeline step's 350 s; kernel
launches dominate, not the GPU's FLOPs (~75 s).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # a script in bench/: the package is one folder up
PY = sys.executable
LOGPROB_BENCH = [PY, str(Path(__file__).resolve().parent / "logprobs.py")]  # the log-prob benchmark
BUDGET_S = 9 * 60  # the whole check, on one H100/H200
KERNEL_TESTS = ["tests/test_logprobs.py", "tests/test_fast_paths.py", "tests/test_distributed.py"]
ENVIRONMENT = ("import torch, triton, platform; c = torch.cuda.is_available(); "
               "print('device:', torch.cuda.get_device_name(0) if c else platform.processor() or 'cpu'); "
               "print('torch', torch.__version__, '| triton', triton.__version__, '| cuda', "
               "torch.version.cuda); print('gpus:', torch.cuda.device_count())")


# The steps, each with a wall-time budget (a step past its budget is stopped and recorded as such, so the
# whole check stays under BUDGET_S; the pipeline keeps its finished stages, so a second run of the same
# command resumes where the first stopped, in out/gpu_check/):
#   1. environment   device name, driver, torch/triton versions            -> DIR/environment.log
#   2. kernel tests  tests/test_logprobs.py, test_fast_paths.py, test_distributed.py on the GPU
#   3. log-prob table  LOGPROB_BENCH: fwd and fwd+bwd at 16k×32k and 16k×128k, bf16, % of HBM
#                    bandwidth, vs eager and torch.compile                  -> DIR/logprob_table.log
#   4. pipeline      python -m nanorlhf --preset=small (prepare ... eval, report) in out/gpu_check/ (git
#                    ignores it: checkpoints are large); its report.md, eval.json and stage times are copied
#   5. summary       DIR/summary.md: device, date, every command with its exit code and wall time, the
#                    pipeline's stage wall times and the win-rates vs SFT (from its eval.json)
def steps(work: Path, dry: bool, nproc: int) -> list[tuple[str, list[str], int]]:
    """(name, command, budget in seconds) of each step, the pipeline's files under `work`; --dry-run: the
    same steps on tiny shapes."""
    data, runs = work / "data", work / "out"
    if dry:
        return [("environment", [PY, "-c", ENVIRONMENT], 30),
                ("kernel tests", [PY, "-m", "pytest", "-q", KERNEL_TESTS[0], "-k", "dispatch"], 120),
                ("log-prob table",
                 [*LOGPROB_BENCH, "--shapes", "64x512", "--dtype", "fp32", "--hidden", "0"], 120),
                ("pipeline",
                 [PY, "-m", "nanorlhf", "--preset=micro", "--stop_after=pretrain", f"--data_dir={data}",
                              f"--out_dir={runs}", f"--nproc={nproc}"], 270)]
    return [("environment", [PY, "-c", ENVIRONMENT], 20),
            ("kernel tests", [PY, "-m", "pytest", "-q", *KERNEL_TESTS], 70),
            ("log-prob table",
             [*LOGPROB_BENCH, "--shapes", "16384x32768,16384x128256", "--dtype", "bf16"], 90),
            ("pipeline", [PY, "-m", "nanorlhf", "--preset=small", f"--data_dir={data}", f"--out_dir={runs}",
                          f"--nproc={nproc}"], 350)]


def run_step(name: str, cmd: list[str], budget: int, log: Path) -> dict:
    """Run one step with its output in `log`; stop its whole process group past `budget` seconds."""
    t0 = time.time()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = "stopped at its budget"
    shown = ["python", *(("-c", "<print the environment>") if cmd[1] == "-c" else cmd[1:])]
    return {"step": name, "command": " ".join(shown), "rc": rc, "wall_s": round(time.time() - t0, 1),
            "budget_s": budget, "log": log.name}


def pipeline_summary(runs: Path) -> list[str]:
    """The stage wall times and the win-rates vs SFT the pipeline wrote (what exists of them)."""
    lines = []
    state = runs / "pipeline_state.json"
    if state.exists():
        lines += ["", "| stage | wall s |", "|---|---|"]
        lines += [f"| {k} | {v.get('wall_s', '')} |" for k, v in json.loads(state.read_text()).items()]
    ev = runs / "eval.json"
    if ev.exists():
        lines += ["", "| model | win-rate vs SFT | 95% CI |", "|---|---|---|"]
        for name, r in json.loads(ev.read_text())["models"].items():
            lines.append(f"| {name} | {r['win_rate']:.1%} | [{r['ci_low']:.1%}, {r['ci_high']:.1%}] |")
    return lines


def write_summary(out: Path, work: Path, rows: list[dict], dry: bool) -> Path:
    env = (out / "environment.log").read_text().strip() if (out / "environment.log").exists() else "?"
    lines = [f"# Device check{' (dry run, tiny shapes, not a measurement)' if dry else ''}",
             f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; run with: "
             f"{' '.join([Path(PY).name, *sys.argv])}", "", "```", env, "```", "",
             "| step | exit | wall s | budget s | command | log |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['step']} | {r['rc']} | {r['wall_s']} | {r['budget_s']} | `{r['command']}` | {r['log']} |"
              for r in rows]
    lines += pipeline_summary(work / "out")
    for name in ("report.md", "eval.json", "pipeline_state.json"):  # the results, without the checkpoints
        if (work / "out" / name).exists():
            shutil.copy(work / "out" / name, out / name)
    path = out / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def estimate() -> None:
    """FLOPs of each unit of work of the small preset, counted on meta tensors (no memory, no time)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from nanorlhf.model import GPT, GPTConfig

    def flops(fn) -> float:
        with FlopCounterMode(display=False) as c:
            fn()
        return c.get_total_flops() / 1e12

    cfg = dict(vocab_size=1337, block_size=256, n_layer=6, n_head=8, n_embd=384, pos_embedding="rope")
    with torch.device("meta"):
        lm, scalar, value = (GPT(GPTConfig(**cfg, head=h)) for h in ("lm", "scalar", "value"))
    tokens = lambda b, t: torch.zeros(b, t, dtype=torch.long, device="meta")  # noqa: E731
    print(f"small: {sum(p.numel() for p in lm.parameters()) / 1e6:.1f}M parameters")
    print("pretraining/SFT step, 64 × 256, fwd+bwd: "
          f"{flops(lambda: lm(tokens(64, 256)).sum().backward()):.3f} TFLOP")
    rm_flops = flops(lambda: scalar(tokens(224, 104)).sum().backward())
    print(f"RM step, 224 × 104, fwd+bwd: {rm_flops:.3f} TFLOP")
    ppo = lambda: (lm(tokens(64, 104)).sum() + value(tokens(64, 104)).sum()).backward()  # noqa: E731
    print(f"PPO minibatch, 64 × 104, policy + critic fwd+bwd: {flops(ppo):.3f} TFLOP")
    with torch.no_grad():
        cache = lm.new_cache(256, 104)
        lm(tokens(256, 56), cache=cache)
        step = flops(lambda: lm(tokens(256, 1), cache=cache))
        print(f"one decoding step, batch 256 at 56 cached tokens: {step:.4f} TFLOP")
    labeler_rate()


def labeler_rate() -> None:
    """Judgements per second of the gold labeler on this CPU (the micro world, demonstrations as answers)."""
    from nanorlhf.data import load_world

    with tempfile.TemporaryDirectory() as d:
        subprocess.run([PY, str(ROOT / "data/prepare.py"), "--preset=micro", f"--out_dir={d}"], check=True,
                       capture_output=True)
        labeler = load_world(d).labeler
        demos = [json.loads(line) for line in open(Path(d) / "sft.jsonl")][:200]
    for r in demos:  # the first judgements build the world's lookup tables once (~1.5 ms each)
        labeler.judge(r["prompt"], r["response"])
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        for r in demos:
            labeler.judge(r["prompt"], r["response"])
        times.append((time.perf_counter() - t0) / len(demos))
    print(f"gold labeler: {sorted(times)[1] * 1e6:.0f} µs per judgement on this CPU (median of 3 passes, "
          "warm)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU: list and time the steps")
    p.add_argument("--estimate", action="store_true",
                   help="print the FLOP counts behind the docstring's estimate")
    p.add_argument("--out", default="",
                   help="results folder (default bench/results_gpu_<date>, a temp folder dry)")
    p.add_argument("--nproc", type=int, default=1, help="processes (GPUs) for the pipeline's stages")
    args = p.parse_args(argv)
    if args.estimate:
        estimate()
        return 0
    out = Path(args.out or (tempfile.mkdtemp(prefix="gpu_check_dry_") if args.dry_run else
                            ROOT / f"bench/results_gpu_{datetime.date.today():%Y%m%d}"))
    out.mkdir(parents=True, exist_ok=True)
    work = out if args.dry_run else ROOT / "out/gpu_check"
    plan = steps(work, args.dry_run, args.nproc)
    print(f"device check -> {out} (budget {sum(b for *_, b in plan)} s of {BUDGET_S} s)")
    rows = []
    for name, cmd, budget in plan:
        log = out / (name.replace(" ", "_").replace("-", "") + ".log")
        print(f"  {name}: {' '.join(cmd)}", flush=True)
        rows.append(run_step(name, cmd, budget, log))
        print(f"    -> exit {rows[-1]['rc']} in {rows[-1]['wall_s']} s (budget {budget} s)", flush=True)
    print(f"summary: {write_summary(out, work, rows, args.dry_run)}")
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
