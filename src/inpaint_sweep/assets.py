"""Copy the sample photos that ship inside the installed ultralytics package into data/images/ (no download).

    python -m inpaint_sweep.assets [target_dir]     # `make data` runs this
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

SAMPLE_PHOTOS = ("bus.jpg", "zidane.jpg")


def copy_sample_photos(target_dir: str | Path = "data/images") -> list[Path]:
    from ultralytics.utils import ASSETS  # the folder of photos inside the installed package

    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in SAMPLE_PHOTOS:
        source, target = Path(ASSETS) / name, target_dir / name
        if not target.exists() or target.read_bytes() != source.read_bytes():
            shutil.copyfile(source, target)
        copied.append(target)
    return copied


if __name__ == "__main__":
    for path in copy_sample_photos(*sys.argv[1:]):
        print(path)
