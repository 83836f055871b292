"""Smoke test of the stage benchmark: every part runs at tiny shapes and prints its table (seconds, CPU)."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_prints_every_table():
    # one thread: with two OpenMP threads on a busy 2-core machine (other tests, other jobs) the micro
    # shapes spend their time spinning at barriers and the run gets ~50x slower
    r = subprocess.run([sys.executable, "-m", "nanorlhf.bench", "--quick", "--part=all", "--threads=1",
                        "--profile"], cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"bench failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    for header in ("### train:", "### generate:", "### rm:", "### ppo:"):
        assert header in r.stdout, f"missing table {header!r} in:\n{r.stdout}"
    assert "**TOTAL** rollout() + ppo_update()" in r.stdout
    assert "`python -m nanorlhf.bench --quick --part=all --threads=1 --profile`" in r.stdout  # the exact command line
    # --profile: the profiler's table, then the matmul floor, whose FLOPs were counted (a counter that saw no
    # matmul prints 0) and take less time at the big-matmul rate than the whole update measured
    assert "aten::mm" in r.stdout
    floor = re.search(r"the update's matmuls are ([0-9.e+-]+) GFLOP .* they take ([0-9.e+-]+) s: (\d+)% of the "
                      r"measured update \(([0-9.e+-]+) s median\)", r.stdout)
    assert floor, f"no matmul-floor line in:\n{r.stdout[-3000:]}"
    gflop, floor_s, pct, update_s = (float(x) for x in floor.groups())
    assert gflop > 0 and 0 < floor_s < update_s and pct < 100
