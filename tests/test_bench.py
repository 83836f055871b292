"""Smoke test of the stage benchmark: every part runs at tiny shapes and prints its table (seconds, CPU)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_prints_every_table():
    # one thread: with two OpenMP threads on a busy 2-core machine (other tests, other jobs) the micro
    # shapes spend their time spinning at barriers and the run gets ~50x slower
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "stages.py"), "--quick", "--part=all",
                        "--threads=1",
                        "--profile", "--dtype=both"], cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, f"bench failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    for part in ("train: supervised training throughput", "generate:", "rm:", "ppo: one PPO iteration"):
        for dtype in ("fp32", "bf16"):  # --dtype=both: every table in each precision
            assert re.search(rf"### {part}.*, {dtype}\n", r.stdout), (
                f"missing table {part!r}, {dtype} in:\n{r.stdout}")
    assert "### ppo: bf16 against fp32" in r.stdout and "| **TOTAL** |" in r.stdout  # the side-by-side ratios
    assert "**TOTAL** rollout() + ppo_update()" in r.stdout
    # the exact command line
    assert "`python bench/stages.py --quick --part=all --threads=1 --profile --dtype=both`" in r.stdout
    # --profile: the profiler's table, then the matmul floor, whose FLOPs were counted (a counter that saw no
    # matmul prints 0) and take less time at the big-matmul rate than the whole update measured
    assert "aten::mm" in r.stdout
    assert "#### profile, fp32" in r.stdout and "#### profile, bf16" in r.stdout
    floor = re.search(r"the update's matmuls are ([0-9.e+-]+) GFLOP .* they take ([0-9.e+-]+) s: (\d+)% of "
                      r"the "
                      r"measured update \(([0-9.e+-]+) s median\)", r.stdout)
    assert floor, f"no matmul-floor line in:\n{r.stdout[-3000:]}"
    gflop, floor_s, pct, update_s = (float(x) for x in floor.groups())
    assert gflop > 0 and 0 < floor_s < update_s and pct < 100


def test_phases_count_a_nested_phase_in_the_inner_one_only(monkeypatch):
    from nanorlhf import training

    clock = iter([0.0, 1.0, 3.0, 7.0, 100.0])  # outer opens, inner opens, inner closes, outer closes, summary
    monkeypatch.setattr(training.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(training, "_PHASE_TOTALS", {})
    monkeypatch.setattr(training, "_PROCESS_START", 0.0)
    with training.phase("outer"):
        with training.phase("inner"):
            pass
    assert training._PHASE_TOTALS == {"outer": 1.0 + 4.0, "inner": 2.0}
    line = training.phase_summary("stage")
    assert line == ("stage: time by phase: outer 5.0s (5%) | inner 2.0s (2%) | other 93.0s (93%) "
                    "| total 100.0s")


def test_every_stage_of_the_pipeline_prints_its_phases_and_the_table_has_them(pipeline):
    sys.path.insert(0, str(ROOT / "bench"))
    import phases

    d, _, _ = pipeline
    rows = {log.stem: phases.phases_of(log) for log in (d / "out" / "logs").glob("*.log")}
    for stage, ph in rows.items():
        if stage in ("prepare", "report"):
            continue
        assert "other" in ph and sum(ph.values()) > 0, (stage, ph)
    for stage in ("pretrain", "rm_r1", "ppo", "eval"):
        # generate() is timed wherever it runs; at micro scale a phase can print as 0.0s, so the key is the
        # check
        assert "sampling" in rows[stage], (stage, rows[stage])
    assert "update" in rows["ppo"] and "labeler" in rows["rm"] and "training" in rows["dpo"]
    table = phases.table(d / "out")
    assert table.splitlines()[0].startswith("| stage | wall (s) | ") and "| ppo_gold | " in table


def test_fast_paths_bench_runs_every_pair_on_the_micro_pipeline_and_they_agree(pipeline):
    """bench/fast_paths.py on the micro pipeline's checkpoints: a line per fast path, each with its plain
    twin's output beside it (no time is checked: the figures are the bench's, on the tiny preset)."""
    d, _, _ = pipeline
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "fast_paths.py"), "--repeats=1",
                        f"--out_dir={d}/out", f"--data_dir={d}/data"],
                       capture_output=True, text=True, cwd=ROOT, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    for name in ("compact", "order", "sft", "rm", "dpo", "eval", "ppo"):
        assert any(line.startswith(name) for line in lines), (name, r.stdout)
    assert "same tokens: True" in r.stdout
    for diff in re.findall(r"max diff ([0-9.e+-]+)", r.stdout):
        assert float(diff) < 1e-4, r.stdout


@pytest.mark.parametrize("flag, message", [
    ("--only=sft,foo", "--only=sft,foo: expected a comma-separated list of compact, order, sft, rm, dpo"),
    ("--out_dir=nowhere", "nowhere/base/ckpt.pt, nowhere/sft/ckpt.pt"),
])
def test_fast_paths_bench_refuses_a_bad_flag_or_missing_checkpoints_in_one_line(tmp_path, flag, message):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "fast_paths.py"), flag], capture_output=True,
                       text=True, cwd=tmp_path, check=False)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
