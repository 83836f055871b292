"""The whole InstructGPT pipeline in one command, on the preset that fits the machine.

    python -m nanorlhf                      # tiny on a CPU, small on a GPU; writes out/report.md
    python -m nanorlhf --preset=micro --out_dir=/tmp/x --data_dir=/tmp/x/data    # seconds (tests)
    python -m nanorlhf --force=true         # rerun every stage
    python -m nanorlhf --seed=3             # another world and other stage seeds -> data/seed3/, out/seed3/
    python -m nanorlhf --nproc=8            # each training stage and the evaluation on 8 processes (torchrun)

prepare → pretrain → SFT → (RM → PPO) per round of iterated RLHF → other runs (runs.py) → eval →
report, each stage a script in a subprocess, logged to out/logs/<stage>.log, skipped when current (its
command, upstream outputs and written files match their fingerprints in out/pipeline_state.json). The pipeline
locks every folder its stages write; Ctrl-C, SIGTERM or its death stops the running stage with it.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from nanorlhf.config import (AT_LEAST_1, POSITIVE, ConfigError, check_config, default_device, default_preset,
                             one_of, parse_config, run_main)
from nanorlhf.data import DataError, read_state
from nanorlhf.files import (LOCK_ENV, atomic_write, fingerprint, lock_folder, lock_token, make_folder,
                            with_locks)
from nanorlhf.precision import resolve_dtype
from nanorlhf.runs import BETA0_LR_SCALE, OTHER_RUNS, PTX_COEF, ROUNDS, round_runs, run_flags

ROOT = Path(__file__).resolve().parent.parent  # the stage scripts live at the repository root
PRESET_NAMES = ("micro", "tiny", "small")  # every stage script has these presets


@dataclass
class PipelineConfig:
    preset: str = ""  # micro | tiny | small, passed to every stage (default: tiny on CPU, small on GPU)
    seed: int = 0  # the world's seed (data/prepare.py --seed); every stage's seed is derived from it
    data_dir: str = ""  # default: data, or data/seed<S> when --seed is not 0
    out_dir: str = ""  # default: out, or out/seed<S> when --seed is not 0
    device: str = ""  # passed to every stage: cpu | cuda | cuda:N (default: cuda if available)
    dtype: str = "auto"  # auto | fp32 | bf16: decided once here (precision.py), passed to every stage
    force: bool = False  # rerun stages even if their outputs are current
    rounds: int = 0  # rounds of comparisons -> RM -> PPO (iterated RLHF); 0: the preset's (runs.py)
    round_init: str = "sft"  # sft | previous: each round's PPO starts from SFT or from the last round's
    ptx_coef: float = PTX_COEF  # γ for the PPO-ptx run
    beta0_lr_scale: float = BETA0_LR_SCALE  # learning-rate multiple of the β = 0 run (why: runs.py)
    skip: str = ""  # optional stages left out, comma-separated: ppo_ptx, ppo_beta0, ppo_gold, dpo (runs.py)
    stop_after: str = ""  # run up to and including this stage (e.g. sft)
    nproc: int = 1  # processes per training/eval stage, via torchrun: one per GPU (NCCL), or gloo on the CPU
    jobs: int = 1  # CPU: up to N stages side by side where none reads another's (other bits; bench/NOTES.md)


# The stages' own default seeds; --seed=S adds S to each, so seed 0 reproduces the stages run by hand.
TRAIN_SEED, EVAL_SEED = 1337, 1234
OPTIONAL = tuple(run.folder for run in OTHER_RUNS)  # the stages --skip may leave out


def resolve_dirs(cfg: PipelineConfig) -> PipelineConfig:
    """Seed 0 keeps data/ and out/; another seed gets its own folders, so runs of several seeds never mix."""
    sub = "" if cfg.seed == 0 else f"/seed{cfg.seed}"
    cfg.data_dir = cfg.data_dir or "data" + sub
    cfg.out_dir = cfg.out_dir or "out" + sub
    return cfg


@dataclass
class Stage:
    name: str
    cmd: list[str]
    outputs: list[Path]  # the files it writes (all must exist once it has finished)
    needs: tuple[str, ...] = ()  # the stages whose outputs it reads
    threads: int = 0  # torch's threads (OMP_NUM_THREADS); 0: torch's default, all of the machine's cores


def stages(cfg: PipelineConfig) -> list[Stage]:
    """Every stage, in order: its command, the files it writes and the stages it reads."""
    p, d, o, s = cfg.preset, cfg.data_dir, cfg.out_dir, cfg.seed
    D, O = Path(d), Path(o)
    common = [f"--preset={p}", f"--data_dir={d}",
              f"--out_dir={o}"] + ([f"--device={cfg.device}"] if cfg.device else [])
    common += [f"--dtype={cfg.dtype}"]
    train = [*common, f"--seed={TRAIN_SEED + s}"]
    py, ppo = sys.executable, str(ROOT / "train_ppo.py")
    # several processes: torchrun starts them (nanorlhf/distributed.py); --standalone picks a free port
    run = [py] + (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={cfg.nproc}"]
                  if cfg.nproc > 1 else [])
    data = [D / f for f in ("corpus.txt", "sft.jsonl", "prompts.jsonl", "tokenizer.tiktoken", "meta.json")]
    # what every later run reads (the gold run too: its critic starts as the RM)
    ppo_reads = ("prepare", "sft", "rm")
    run_files = lambda name: [O / name / "ckpt.pt", O / name / "history.json"]  # noqa: E731
    plan = [
        Stage("prepare", [py, str(ROOT / "data/prepare.py"), f"--preset={p}", f"--out_dir={d}",
                          f"--seed={s}"], data),
        Stage("pretrain", [*run, str(ROOT / "train_sft.py"), "--stage=pretrain", *train],
              [O / "base/ckpt.pt"],
              ("prepare",)),
        Stage("sft", [*run, str(ROOT / "train_sft.py"), "--stage=sft", *train], [O / "sft/ckpt.pt"],
              ("prepare", "pretrain")),
    ]
    # iterated RLHF: round r ranks the samples of round r-1's policy (round 1: SFT's), pools every round's
    # comparisons, trains a reward model, and runs PPO against it
    prev, rounds = None, cfg.rounds or ROUNDS[p]
    for r in range(1, rounds + 1):
        rm, ppo_run = round_runs(r, rounds)
        later = [f"--round={r}", f"--sample_from={O / prev[1] / 'ckpt.pt'}",
                 f"--pool={O / prev[0] / 'comparisons.jsonl'}"] if prev else []
        start = ([f"--continue_from={O / prev[1] / 'ckpt.pt'}"] if prev and cfg.round_init == "previous"
                 else [])
        # (the flags a stage takes by default are left out: one round runs exactly today's commands)
        names = [f"--run_name={rm}"] if rm != "rm" else []
        ppo_names = [f"--run_name={ppo_run}", f"--reward_from={O / rm / 'ckpt.pt'}"] if rm != "rm" else []
        plan += [Stage(rm, [*run, str(ROOT / "train_rm.py"), *train, *names, *later],
                       [O / rm / "comparisons.jsonl", O / rm / "ckpt.pt"], ("prepare", "sft", *(prev or ()))),
                 Stage(ppo_run, [*run, ppo, *train, *ppo_names, *start], run_files(ppo_run),
                       ("prepare", "sft", rm, *(prev[1:] if start else ())))]
        prev = (rm, ppo_run)
    skip = set(filter(None, cfg.skip.split(",")))
    ppo_runs = tuple(n for n in ("ppo", *OPTIONAL) if n not in skip)
    earlier = [n for r in range(1, rounds) for n in round_runs(r, rounds)]
    # every other run (runs.py) from SFT against the last reward model
    extra = [Stage(r.folder, [*run, str(ROOT / r.script), *train,
                              *run_flags(r, cfg.ptx_coef, cfg.beta0_lr_scale, p)],
                   [O / r.folder / f for f in r.files], ppo_reads) for r in OTHER_RUNS]
    skipped = [f"--skip={','.join(sorted(skip))}"] if skip else []
    return plan + [st for st in extra if st.name not in skip] + [
        Stage("eval", [*run, "-m", "nanorlhf.eval", *common, f"--seed={EVAL_SEED + s}", f"--rounds={rounds}",
                       *skipped], [O / "eval.json"],
                       ("prepare", "pretrain", "sft", "rm", *ppo_runs, *earlier)),
        Stage("report", [py, "-m", "nanorlhf.report", f"--out_dir={o}"], [O / "report.md"],
              ("rm", *ppo_runs, *earlier, "eval")),
    ]


def share_cores(plan: list[Stage], jobs: int, threads: int) -> list[Stage]:
    """Give each stage that may run beside another (neither reads the other's files, even through a third)
    its share of the `threads`: fixed by the plan, not by what happens to run at the same time, so a stage
    computes the same bits whatever the order the stages end in (the thread count changes CPU sums' bits).
    Measured on 2 cores (bench/NOTES.md, "Stages side by side"): the five runs after the last round take
    ~277 s two at a time on a thread each against 313 s one at a time: the default stays one at a time."""
    if jobs <= 1:
        return plan
    above = {}  # every stage's upstream stages, through any chain of reads
    for st in plan:
        above[st.name] = set(st.needs).union(*(above.get(n, set()) for n in st.needs))
    for st in plan:
        if any(o is not st and st.name not in above[o.name] and o.name not in above[st.name] for o in plan):
            st.threads = max(1, threads // jobs)
    return plan


def main(argv=None):
    cfg = resolve_dirs(parse_config(PipelineConfig, argv))
    cfg.preset = cfg.preset or default_preset()
    check_config(cfg, preset=one_of(*PRESET_NAMES),
                 rounds=(lambda r: r >= 0, "a whole number >= 0 (0: the preset's)"),
                 round_init=one_of("sft", "previous"),
                 skip=(lambda v: set(filter(None, v.split(","))) <= set(OPTIONAL),
                       "a comma-separated list of "
                       + ", ".join(OPTIONAL)))
    cfg.rounds = cfg.rounds or ROUNDS[cfg.preset]
    check_config(cfg, dtype=one_of("auto", "fp32", "bf16"))
    # one precision for the whole pipeline: "auto" is resolved here, so every stage runs (and records) the
    # same
    cfg.dtype = resolve_dtype(cfg.dtype, cfg.device or default_device())
    check_config(cfg, jobs=AT_LEAST_1)
    if cfg.jobs > 1 and (cfg.nproc > 1 or (cfg.device or default_device()) != "cpu"):
        raise ConfigError(f"--jobs={cfg.jobs}: expected 1 with --nproc > 1 or on a GPU (stages side by side "
                          "share a CPU's cores)")
    plan = share_cores(stages(cfg), cfg.jobs, torch.get_num_threads())
    names = [s.name for s in plan]
    check_config(cfg, preset=one_of(*PRESET_NAMES), nproc=AT_LEAST_1, ptx_coef=POSITIVE,
                 beta0_lr_scale=POSITIVE,
                 stop_after=(lambda v: v in ("", *names), "one of " + ", ".join(names)))
    print(f"nanorlhf pipeline: preset {cfg.preset}, dtype {cfg.dtype}, seed {cfg.seed} ({cfg.data_dir}/, "
          f"{cfg.out_dir}/), stages {' → '.join(names)}", flush=True)
    t0 = time.time()
    state_path = run_pipeline(plan, Path(cfg.out_dir), cfg.force, cfg.stop_after, cfg.jobs)
    print(f"pipeline finished in {(time.time() - t0) / 60:.1f} min (stage wall times in {state_path}); "
          f"report: {Path(cfg.out_dir) / 'report.md'}", flush=True)


@with_locks
def run_pipeline(plan: list[Stage], out: Path, force: bool = False, stop_after: str = "",
                 jobs: int = 1) -> Path:
    """Run the stages of `plan` that are not current (all with `force`), holding the lock of every folder
    they write; return the state file. A stage starts once every stage it reads has finished, up to `jobs`
    at once (in the plan's order); if one fails, those running finish and are recorded, no other starts."""
    for folder in [out, *sorted({p.parent for stage in plan for p in stage.outputs} - {out})]:
        lock_folder(folder)
    make_folder(out / "logs")
    state_path = out / "pipeline_state.json"
    try:
        state = read_state(state_path)
    except DataError as e:
        if not force:
            raise
        print(f"pipeline: {e}; --force=true: every stage runs and the records are written anew", flush=True)
        state = {}
    number, total = {stage.name: i for i, stage in enumerate(plan, 1)}, len(plan)
    if stop_after:
        plan = plan[: number[stop_after]]
    waiting, running, finished, failed = list(plan), {}, set(), []
    ended: queue.Queue = queue.Queue()  # (stage, exit code, last lines) from the stages' output threads
    try:
        while waiting or running:
            for stage in [s for s in waiting if not failed]:
                if len(running) >= jobs or any(n in number and n not in finished for n in stage.needs):
                    continue
                waiting.remove(stage)
                tag = f"[{number[stage.name]}/{total}] {stage.name}"
                inputs = _inputs(stage, state)
                why = "--force=true" if force else _why_not_current(stage, state.get(stage.name), inputs)
                if why is None:
                    print(f"{tag}: current, skipped ({stage.outputs[-1]})", flush=True)
                    finished.add(stage.name)
                    continue
                cmd = " ".join(Path(c).name if j == 0 or c.endswith(".py") else c
                               for j, c in enumerate(stage.cmd))
                print(f"{tag} ({why}): {cmd}", flush=True)
                log = out / "logs" / f"{stage.name}.log"
                prefix = f"    {stage.name} | " if jobs > 1 and stage.threads else "    "
                running[stage.name] = (stage, _start(stage, log, prefix, ended), inputs, time.time(), log)
            if not running:
                break  # nothing left that may start: a failure stopped the rest
            stage, rc, tail = ended.get()
            _, _, inputs, ts, log = running.pop(stage.name)
            missing = [str(p) for p in stage.outputs if not p.exists()]
            if rc != 0 or missing:
                cause = f"exit {rc}" if rc != 0 else f"exit 0 without writing {', '.join(missing)}"
                failed.append(f"pipeline: stage '{stage.name}' failed ({cause}). Last lines of {log}:\n"
                              f"{tail}")
                continue  # the records of every stage stay as they were: they describe the files
            state[stage.name] = {"command": _command(stage), "inputs": inputs,
                                 "output": fingerprint(stage.outputs), "wall_s": round(time.time() - ts, 1)}
            atomic_write(state_path, json.dumps(state, indent=1))
            finished.add(stage.name)
            print(f"[{number[stage.name]}/{total}] {stage.name}: done in {time.time() - ts:.0f}s",
                  flush=True)
    except BaseException as e:  # Ctrl-C, SIGTERM (run_main turns it into KeyboardInterrupt), a broken pipe
        for _, proc, _, _, _ in running.values():
            _stop(proc)
        if not isinstance(e, KeyboardInterrupt) or not running:
            raise
        names = ", ".join(f"'{name}' (its log: {r[4]})" for name, r in running.items())
        raise KeyboardInterrupt(f"stopped the pipeline and its stage{'s' * (len(running) > 1)} {names}; "
                                "rerun the same command to resume: finished stages are skipped") from None
    if failed:
        print("\n".join(failed) + "\nFix the cause and rerun the same command: finished stages are skipped.",
              file=sys.stderr)
        raise SystemExit(1)
    return state_path


def _command(stage: Stage) -> list[str]:
    """The command without the interpreter's and the repository's paths (moving either changes nothing),
    after the thread count it runs with when that is not the machine's (the count changes the bits)."""
    threads = [f"OMP_NUM_THREADS={stage.threads}"] if stage.threads else []
    return threads + [Path(c).name if c.endswith(".py") else c for c in stage.cmd[1:]]


def _inputs(stage: Stage, state: dict) -> str:
    """Fingerprint of what the stage's result depends on: its command, and what its upstream stages wrote."""
    upstream = {n: state.get(n, {}).get("output") for n in stage.needs}
    return hashlib.sha256(json.dumps([_command(stage), upstream]).encode()).hexdigest()


def _why_not_current(stage: Stage, record: dict | None, inputs: str) -> str | None:
    """None if the stage's recorded run is still what its files and inputs say, else why it must run."""
    if record is None or "inputs" not in record:
        return "not run by the pipeline yet"
    if record["inputs"] != inputs:
        return ("its command changed" if record.get("command") != _command(stage)
                else "an upstream stage changed")
    missing = [str(p) for p in stage.outputs if not p.exists()]
    if missing:
        return f"{missing[0]} is missing"
    if fingerprint(stage.outputs) != record["output"]:
        return "its files changed since the pipeline wrote them (run by hand?)"
    return None


_PRINTING = threading.Lock()  # stages side by side: one line at a time on the terminal


def _start(stage: Stage, log_path: Path, prefix: str, ended: queue.Queue) -> subprocess.Popen:
    """Start a stage, with a thread that streams its output to the terminal (each line after `prefix`) and to
    its log, then puts (stage, exit code, last lines) on `ended`. The stage runs in a process group of its
    own, which the pipeline stops if it is itself stopped."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           # it writes in our folders
           LOCK_ENV: " ".join(filter(None, (os.environ.get(LOCK_ENV), lock_token())))}
    if stage.threads:
        env["OMP_NUM_THREADS"] = str(stage.threads)
    log = open(log_path, "w")
    proc = subprocess.Popen(stage.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=os.getcwd(), start_new_session=True, preexec_fn=_end_with_parent())

    def stream():
        lines: list[str] = []
        terminal = True
        try:
            with log:
                for line in proc.stdout:
                    try:
                        if terminal:
                            with _PRINTING:
                                sys.stdout.write(prefix + line)
                                sys.stdout.flush()
                    except (OSError, ValueError):  # the terminal is gone: the log still gets every line
                        terminal = False
                    log.write(line)
                    lines = (lines + [line.rstrip()])[-8:]
        finally:
            ended.put((stage, proc.wait(), "\n".join("    " + s for s in lines)))

    threading.Thread(target=stream, daemon=True).start()
    return proc


def _stop(proc: subprocess.Popen) -> None:
    """End a stage and whatever it started (torchrun's workers): SIGTERM to its process group (a stage exits
    with one line, run_main), SIGKILL if it has not ended 10 s later."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


def _end_with_parent():
    """A function the stage's process runs before its command: on Linux, ask the kernel for SIGTERM when the
    pipeline dies, even by SIGKILL, which no handler of the pipeline sees (prctl PR_SET_PDEATHSIG). The
    library call is looked up here, in the pipeline: after fork the child only makes the system call."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


if __name__ == "__main__":
    run_main(main)
