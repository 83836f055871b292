"""bench/gpu_check.py: the device check's plan fits its budget, and its dry run works on the CPU."""

import runpy
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECK = runpy.run_path(str(ROOT / "bench/gpu_check.py"))


def test_the_gpu_plan_fits_nine_minutes_and_runs_what_the_issue_asks(tmp_path):
    plan = CHECK["steps"](tmp_path, dry=False, nproc=1)
    assert sum(budget for *_, budget in plan) <= CHECK["BUDGET_S"] <= 9 * 60
    cmds = {name: " ".join(cmd) for name, cmd, _ in plan}
    assert "16384x32768,16384x128256" in cmds["log-prob table"] and "bf16" in cmds["log-prob table"]
    assert "--preset=small" in cmds["pipeline"] and all(t in cmds["kernel tests"]
                                                        for t in CHECK["KERNEL_TESTS"])


def test_dry_run_lists_times_and_summarises_every_step(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "bench/gpu_check.py"), "--dry-run", f"--out={tmp_path}"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    summary = (tmp_path / "summary.md").read_text()
    for name in ("environment", "kernel tests", "log-prob table", "pipeline"):
        assert f"| {name} | 0 | " in summary  # each step ran and exited 0, with its wall time
    assert "| pretrain |" in summary and "dry run" in summary  # the pipeline's stage times; not a measurement
    assert "| N × V |" in (tmp_path / "logprob_table.log").read_text()  # the benchmark printed its table


def test_the_estimate_counts_flops_on_meta_tensors(capsys, monkeypatch):
    """The numbers behind the docstring's estimate; the model must run on the meta device (no autocast)."""
    monkeypatch.setitem(CHECK["estimate"].__globals__, "labeler_rate", lambda: None)  # it prepares a world
    CHECK["estimate"]()
    out = capsys.readouterr().out
    assert "small: 11.2M parameters" in out
    step = float(out.split("pretraining/SFT step, 64 × 256, fwd+bwd: ")[1].split()[0])
    assert 1.10 < step < 1.35  # 6 × 11.2M parameters × 16,384 tokens = 1.10 TFLOP, plus attention's share
