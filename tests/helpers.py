"""Tiny models shared by the tests, and `run`: a stage script or module in a subprocess, with the
repository on its path (ENV: --dtype=auto picks fp32, as in every test; BF16_ENV: it picks bf16)."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from nanorlhf.model import GPT, GPTConfig
from nanorlhf.precision import SPEEDUP_ENV


def tiny_gpt(head="lm", vocab=50, block=32, n_layer=2, n_head=2, n_embd=16, seed=0, pos="learned") -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                         head=head, pos_embedding=pos)).eval()


ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), SPEEDUP_ENV: "1.0"}
BF16_ENV = {**ENV, SPEEDUP_ENV: "4.0"}  # --dtype=auto measures bf16 4x faster: the pipeline picks bf16


def run(args, cwd=None, check=True, env=ENV):
    r = subprocess.run([sys.executable, *args], cwd=cwd or ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r
