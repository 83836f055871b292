"""Precision is explicit in every test: `--dtype=auto` picks fp32 in every test and every process a test
starts, whatever this machine's bf16 speed (a CPU with AMX would pick bf16 and miss fp32 tolerances).
Tests of the bf16 path say bf16 themselves, or set NANORLHF_BF16_SPEEDUP to make auto pick it."""

import os

import pytest

from nanorlhf.precision import SPEEDUP_ENV

os.environ[SPEEDUP_ENV] = "1.0"  # fp32 (below BF16_MIN_SPEEDUP): inherited by the stages the tests start


@pytest.fixture(scope="session")
def made(tmp_path_factory):
    """data/, out/base, out/sft, out/rm of micro models of a few steps, made once for the test modules that
    break copies of them (tests/test_robustness.py's `copy_of`)."""
    from tests.test_robustness import make

    return make(tmp_path_factory.mktemp("made"))
