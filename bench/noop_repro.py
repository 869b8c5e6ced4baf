"""No-op `dvc repro` vs `dvc status` on the same, up-to-date repository: how much a repro that has nothing to do costs
beyond DVC's own status check. Run after `make repro`.  Prints one ratio; target <= 1.5.

    python bench/noop_repro.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout}{result.stderr}")
    if cmd[1] == "repro" and "Running stage" in result.stdout:
        sys.exit("the repository is not up to date (a stage ran): run `make repro` first")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    repro, status = [], []
    for _ in range(args.repeat):  # interleaved, so load on the machine hits both alike
        repro.append(timed(["dvc", "repro"], env))
        status.append(timed(["dvc", "status"], env))
    r, s = statistics.median(repro), statistics.median(status)
    print(f"no-op dvc repro {r:.2f} s, dvc status {s:.2f} s (medians of {args.repeat})")
    print(f"no-op repro / status ratio: {r / s:.3f}")


if __name__ == "__main__":
    main()
