"""Seconds prepare takes on the default case after imports:  python bench/prepare_speed.py [key=value ...]

Runs the stage's own main() (stages/prepare.py) in this process, writing into a temporary folder, not results/.
Default: the YOLO path with a model built from yolov8n-seg.yaml (random weights, nothing downloaded) at mask.conf=0.0,
where random weights return the most instances (up to mask.max_det): the slowest case for masks and picking.
The clock starts after the imports (torch, torchvision, ultralytics: seconds of their own) and includes everything
the stage does next: config, manifest, building the model, predict, clean-up, files, contact sheet, tables.
Extra key=value arguments go to the stage, e.g. mask.method=ellipse or cases=data/cases_many.yaml.
"""

import runpy
import sys
import tempfile
import time
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import inpaint_sweep  # noqa: F401  (offline switches first)
import torchvision  # noqa: F401  (ultralytics imports it lazily on its first predict: an import, so before the clock)
import ultralytics  # noqa: F401
from inpaint_sweep.config import REPO_ROOT

DEFAULT = ["mask.method=yolo", "mask.weights=yolov8n-seg.yaml", "mask.conf=0.0"]


def main(overrides: list[str]) -> float:
    stage = runpy.run_path(str(REPO_ROOT / "stages" / "prepare.py"))
    with tempfile.TemporaryDirectory() as out, redirect_stdout(StringIO()) as printed:
        start = time.perf_counter()
        records = stage["main"](DEFAULT + overrides + [f"paths.prepare={Path(out) / 'prepare'}"])
        seconds = time.perf_counter() - start
    print(printed.getvalue(), end="")
    found = records[0].get("instances_found")
    print(f"prepare: {seconds:.2f} s after imports ({len(records)} case(s), {found} instance(s) found in the first)")
    return seconds


if __name__ == "__main__":
    main(sys.argv[1:])
