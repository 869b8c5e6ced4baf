"""Cost of a re-run whose cells are all stored: ms per cell beyond start-up (target <= 20 ms).

    python bench/rerun_cost.py [--cells 384] [--repeat 3]

Fills a fresh cell store with an N-cell grid of the tiny model at model.size=64 (1 step; Comet off; one case, so each
cell is a Hydra job), then times, in alternation, re-runs of the whole grid and of a 1-cell grid (start-up: Python,
Hydra, torch imports, the store's first look-ups). Per cell = (median N-cell re-run - median 1-cell re-run) / (N - 1).

Two figures, each from its own alternation:
- re-run: each grid re-run in its own view (paths.generate), both sharing the store, as `dvc repro` or the same
  `generate -m` command run again: the view holds the grid's copies already. The target applies to this one.
- back to the grid after another one ran in the same view: the 1-cell grid removed the other 383 cells from the
  view, so each re-run also copies every cell's files back from the store (full-size PNGs, 1.3 MB each here).
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def generate(tmp: Path, guidance: list[float], seeds: list[int], view: str = "gen") -> float:
    cmd = [sys.executable, "stages/generate.py", "-m", f"guidance={','.join(map(str, guidance))}",
           f"seed={','.join(map(str, seeds))}", "hydra.sweeper.params.steps=1", "hydra.sweeper.params.strength=1.0",
           "hydra.sweeper.params.negative_prompt=''", "model.size=64", "tracking.comet=false",
           f"paths.prepare={tmp}/prep", f"paths.generate={tmp}/{view}", f"paths.cell_store={tmp}/store",
           f"hydra.sweep.dir={tmp}/{view}/hydra"]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"generate failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=384)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    seeds = list(range(args.cells // 24 or 1))
    guidance = [1 + i * 0.5 for i in range(args.cells // len(seeds))]
    n = len(seeds) * len(guidance)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, "stages/prepare.py", f"paths.prepare={tmp}/prep"], cwd=ROOT, check=True,
                       capture_output=True)
        print(f"filling the store: {n} cells ...", flush=True)
        print(f"  first run {generate(tmp, guidance, seeds):.1f} s", flush=True)
        for title, one_view in (("re-run (each grid in its own view)", "one"),
                                ("back to the grid after another ran in the same view", "gen")):
            full, one = [], []
            for _ in range(args.repeat):  # alternate, so a noisy neighbour hits both alike
                full.append(generate(tmp, guidance, seeds))
                one.append(generate(tmp, guidance[:1], seeds[:1], one_view))
            per_cell = (statistics.median(full) - statistics.median(one)) / (n - 1) * 1000
            print(f"{title}:")
            print(f"  {n} stored cells: {', '.join(f'{t:.2f}' for t in full)} s (median {statistics.median(full):.2f} s)")
            print(f"  1 stored cell (start-up): {', '.join(f'{t:.2f}' for t in one)} s (median "
                  f"{statistics.median(one):.2f} s)")
            print(f"  per cell beyond start-up: {per_cell:.1f} ms" + (" (target <= 20 ms)" if one_view == "one" else ""),
                  flush=True)


if __name__ == "__main__":
    main()
