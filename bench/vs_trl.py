"""nanorlhf's PPO iteration against TRL's at the same shape and precision, in one alternating sequence.

    python bench/vs_trl.py --trl_python=/tmp/trlenv/bin/python            # fp32 and bf16, one round
    python bench/vs_trl.py --trl_python=/tmp/trlenv/bin/python --rounds=3 --dtypes=fp32

For each round and each precision it runs `python bench/stages.py --part=ppo --dtype=D` (median of
--repeats iterations after a warm-up) and then `bench/trl_ppo_iteration.py` (TRL's PPOTrainer, bf16=True for
bf16; median after a warm-up) one after the other, so that whatever else runs on the machine slows both about
alike, and prints each pair's seconds and the ratio nanorlhf / TRL (target <= 0.5), then the medians over
rounds. TRL lives in its own virtual environment (see bench/trl_ppo_iteration.py), never in requirements.txt.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def seconds(cmd: list[str], pattern: str) -> float:
    r = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True)
    m = re.search(pattern, r.stdout)
    if r.returncode != 0 or not m:
        raise SystemExit(f"error: {' '.join(cmd)} failed (exit {r.returncode}):\n{r.stdout[-2000:]}\n"
                         f"{r.stderr[-2000:]}")
    return float(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trl_python", required=True, help="python of a virtual environment with trl installed")
    ap.add_argument("--dtypes", default="fp32,bf16", help="comma-separated precisions, each run by both")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5, help="timed iterations of each run after its warm-up")
    args = ap.parse_args()
    load = f"load avg {os.getloadavg()[0]:.1f} at start" if hasattr(os, "getloadavg") else ""
    print(f"nanorlhf vs TRL, one PPO iteration at the benchmark shape; {load}", flush=True)
    results = {d: [] for d in args.dtypes.split(",")}
    for r in range(args.rounds):
        for dtype in results:
            ours = seconds([sys.executable, str(Path(__file__).resolve().parent / "stages.py"), "--part=ppo",
                            f"--dtype={dtype}",
                            f"--repeats={args.repeats}"],
                           r"\*\*TOTAL\*\* rollout\(\) \+ ppo_update\(\) \| \*\*([0-9.]+)\*\*")
            trl = seconds([args.trl_python, "bench/trl_ppo_iteration.py", str(args.repeats + 1), dtype],
                          r"median of \d+ after the warm-up: ([0-9.]+) s")
            results[dtype].append((ours, trl))
            print(f"round {r + 1} {dtype}: nanorlhf {ours:.2f} s | TRL {trl:.2f} s | ratio {ours / trl:.2f}",
                  flush=True)
    print("\n| precision | nanorlhf s (median) | TRL s (median) | nanorlhf / TRL |\n|---|---:|---:|---:|")
    for dtype, pairs in results.items():
        ours, trl = (statistics.median(x) for x in zip(*pairs))
        print(f"| {dtype} | {ours:.2f} | {trl:.2f} | {ours / trl:.2f} |")


if __name__ == "__main__":
    main()
