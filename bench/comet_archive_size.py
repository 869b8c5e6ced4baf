"""Size of a cell's offline Comet archive: full-size PNG outputs (tracking.image_format=png, image_max_pixels=null)
vs the defaults (JPEG previews, quality 90, capped at 1 MP). Both log the case's photo and mask once per case and sweep; the
largest archive of each run is the one holding them.

    python bench/comet_archive_size.py [--cells 6]

Runs the default case (bus.jpg, 810x1080) on the tiny model with each setting, each on a fresh cell store, and prints
the mean archive size per cell.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def archive_sizes(tmp: Path, name: str, cells: int, extra: list[str]) -> list[int]:
    guidance = ",".join(str(1 + i) for i in range(cells))
    subprocess.run([sys.executable, "stages/generate.py", "-m", f"guidance={guidance}", "hydra.sweeper.params.steps=1",
                    "hydra.sweeper.params.strength=1.0", "hydra.sweeper.params.negative_prompt=''",
                    f"paths.prepare={tmp}/prep", f"paths.generate={tmp}/{name}", f"paths.cell_store={tmp}/{name}-store",
                    f"hydra.sweep.dir={tmp}/{name}/hydra", *extra], cwd=ROOT, check=True, capture_output=True)
    return [p.stat().st_size for p in (tmp / name / "comet").glob("*.zip")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, "stages/prepare.py", f"paths.prepare={tmp}/prep"], cwd=ROOT, check=True,
                       capture_output=True)
        for name, extra in (("full-png", ["tracking.image_format=png", "tracking.image_max_pixels=null"]),
                            ("defaults", [])):
            sizes = archive_sizes(tmp, name, args.cells, extra)
            print(f"{name:9s}: {len(sizes)} archives, mean {statistics.mean(sizes) / 2**20:.3f} MiB a cell "
                  f"(min {min(sizes) / 2**20:.3f}, max {max(sizes) / 2**20:.3f})")


if __name__ == "__main__":
    main()
