"""Seconds each stage's --help takes, as a user runs it:  python bench/help_speed.py [runs]

Each stage script runs as a fresh subprocess (python start, imports, config composition, the help text), `runs` times
(default 5); the median and the range are printed per stage. The goal: every stage answers in under 3 s.
"""

import statistics
import subprocess
import sys
import time

from inpaint_sweep.config import REPO_ROOT

STAGES = ("prepare", "generate", "report")
LIMIT_S = 3.0


def time_help(stage: str, runs: int) -> list[float]:
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        result = subprocess.run([sys.executable, f"stages/{stage}.py", "--help"], cwd=REPO_ROOT, capture_output=True,
                                text=True)
        seconds.append(time.perf_counter() - start)
        if result.returncode != 0:
            sys.exit(f"{stage} --help exited {result.returncode}: {result.stderr.strip()}")
    return seconds


def main(runs: int) -> bool:
    ok = True
    for stage in STAGES:
        seconds = time_help(stage, runs)
        median = statistics.median(seconds)
        ok &= median < LIMIT_S
        print(f"{stage:>8} --help: median {median:.2f} s over {runs} runs (min {min(seconds):.2f}, "
              f"max {max(seconds):.2f})")
    print(f"every stage under {LIMIT_S:g} s: {'yes' if ok else 'NO'}")
    return ok


if __name__ == "__main__":
    sys.exit(0 if main(int(sys.argv[1]) if len(sys.argv) > 1 else 5) else 1)
