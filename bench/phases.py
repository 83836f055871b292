"""Where the pipeline's seconds go: each stage split into its phases, and one stage's top torch ops.

    python bench/phases.py out                      # after `python -m nanorlhf`: a markdown table, one row
                                                     # per stage: wall time and its phases (from out/logs)
    python bench/phases.py --run "train_ppo.py --preset=tiny --iterations=4 --run_name=prof --eval_interval=0"
                                                     # one stage under torch.profiler: top ops by self time,
                                                     # and the share of the time spent outside torch ops

The table reads the phase line each stage prints at its end (nanorlhf.training.phase) from the pipeline's
logs: it costs nothing to rerun, and any pipeline run gives one (see `table`). --run profiles a stage in this
process; point it at a scratch --run_name (and --out_dir) so that no result of yours is replaced
(`profile_run`).
"""

from __future__ import annotations

import argparse
import json
import re
import runpy
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHASE_LINE = re.compile(r"^\s*(\S+): time by phase: (.*)$")
PART = re.compile(r"^(.+?) ([0-9.]+)s \((\d+)%\)$")


def phases_of(log: Path) -> dict[str, float]:
    """The last phase line of a stage's log as {phase: seconds} (a log of several processes: rank 0's)."""
    found = {}
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        m = PHASE_LINE.match(line)
        if m:
            found = {}
            for part in m.group(2).split(" | "):
                p = PART.match(part.strip())
                if p:
                    found[p.group(1)] = float(p.group(2))
    return found


def table(out_dir: Path) -> str:
    """Phases: every stage wraps its work in `nanorlhf.training.phase(name)` and prints one line at its end,
    "<stage>: time by phase: sampling 12.3s (25%) | update ... | other ...". Sampling is every call of
    generate.generate (KV-cache decoding, wherever it happens: RM comparisons, PPO rollouts, evaluations);
    "labeler" the simulated human's judging; "update" forward + backward + optimizer step; "other" is
    imports, loading and the untimed glue. The table reads those lines from the pipeline's logs
    (out/logs/<stage>.log) and the stage wall times from out/pipeline_state.json: it costs nothing to
    rerun, and any pipeline run (fp32 or bf16, any seed) gives one."""
    state_path = out_dir / "pipeline_state.json"
    walls = {}
    if state_path.exists():
        walls = {k: v.get("wall_s") for k, v in json.loads(state_path.read_text()).items()
                 if isinstance(v, dict)}
    logs = sorted((out_dir / "logs").glob("*.log"),
                  key=lambda p: list(walls).index(p.stem) if p.stem in walls else 99)
    if not logs:
        sys.exit(f"bench/phases.py: no stage logs in {out_dir / 'logs'} (run python -m nanorlhf first)")
    rows, names = [], []
    for log in logs:
        ph = phases_of(log)
        rows.append((log.stem, walls.get(log.stem), ph))
        names += [k for k in ph if k not in names and k not in ("other", "total")]
    names += ["other"]
    lines = ["| stage | wall (s) | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    total = 0.0
    for stage, wall, ph in rows:
        total += wall or 0.0
        cells = [f"{ph[k]:.1f}" if k in ph else "" for k in names]
        lines.append(f"| {stage} | {wall if wall is not None else '?'} | " + " | ".join(cells) + " |")
    sums = [sum(ph.get(k, 0.0) for _, _, ph in rows) for k in names]
    lines.append(f"| **all** | {total:.0f} | " + " | ".join(f"{v:.0f}" for v in sums) + " |")
    return "\n".join(lines)


def profile_run(command: str, top: int) -> None:
    """--run: execute a stage script in this process (runpy, as `python <script> <flags>` would) inside
    torch.profiler (CPU activities), then print the ops with the most self time and the sum of all ops'
    self time against the wall time: what is left is Python, the labeler and everything else outside torch
    ops. The profiler adds its own overhead per op, so the Python share is an upper bound; time a stage
    without it by its phase line. Point --run at a scratch --run_name (and --out_dir) so that no result of
    yours is replaced."""
    import torch  # only here: the table above needs nothing but the logs
    from torch.profiler import ProfilerActivity, profile

    argv = shlex.split(command)
    script = ROOT / argv[0] if not Path(argv[0]).is_absolute() else Path(argv[0])
    sys.path.insert(0, str(ROOT))
    sys.argv = [str(script), *argv[1:]]
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        try:
            runpy.run_path(str(script), run_name="__main__")
        except SystemExit as e:
            if e.code not in (0, None):
                raise
    wall = time.perf_counter() - t0
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=top))
    in_ops = sum(e.self_cpu_time_total for e in events) / 1e6
    print(f"{command}: {wall:.1f}s wall under the profiler, {in_ops:.1f}s in torch ops' own time "
          f"({in_ops / wall:.0%}); outside torch ops (Python, the labeler, the profiler's own cost): "
          f"{wall - in_ops:.1f}s ({1 - in_ops / wall:.0%}); threads {torch.get_num_threads()}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("out_dir", nargs="?", default="out", help="a pipeline's output folder (its logs/)")
    ap.add_argument("--run", default="", help="a stage script and its flags, run under torch.profiler")
    ap.add_argument("--top", type=int, default=15, help="ops listed by --run")
    args = ap.parse_args(argv)
    if args.run:
        profile_run(args.run, args.top)
    else:
        print(table(Path(args.out_dir)))


if __name__ == "__main__":
    main()
