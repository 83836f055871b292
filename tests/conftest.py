"""Shared by the tests.

Precision is explicit in every test: `--dtype=auto` picks fp32 in every test and every process a test
starts, whatever this machine's bf16 speed (a CPU with AMX would pick bf16 and miss fp32 tolerances).
Tests of the bf16 path say bf16 themselves, or set NANORLHF_BF16_SPEEDUP to make auto pick it.

`pipeline`: the micro pipeline run once for the whole session (tests that only read its files share it;
a test that changes files works on a copy)."""

import os

import pytest

from nanorlhf.precision import SPEEDUP_ENV

os.environ[SPEEDUP_ENV] = "1.0"  # fp32 (below BF16_MIN_SPEEDUP): inherited by the stages the tests start

from tests.helpers import BF16_ENV, run  # noqa: E402 (after the environment is set: stages inherit it)


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    """Run the micro pipeline (two rounds of iterated RLHF) as if interrupted after SFT, then rerun it to the
    end. `auto` is made to pick bf16 here (the other tests run fp32), so every CI exercises the bf16 path of
    every stage end to end."""
    d = tmp_path_factory.mktemp("pipe")
    args = ["-m", "nanorlhf", "--preset=micro", f"--data_dir={d}/data", f"--out_dir={d}/out"]
    first = run([*args, "--stop_after=sft"], env=BF16_ENV)
    second = run(args, env=BF16_ENV)
    return d, first.stdout, second.stdout

@pytest.fixture(scope="session")
def made(tmp_path_factory):
    """data/, out/base, out/sft, out/rm of micro models of a few steps, made once for the test modules that
    break copies of them (tests/test_robustness.py's `copy_of`)."""
    from tests.test_robustness import make

    return make(tmp_path_factory.mktemp("made"))
