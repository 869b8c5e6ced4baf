"""The Comet logger process on its own: offline experiments, one 256-pixel PNG each.

    python bench/comet_logger.py [--experiments 24]

Prints the wall time from starting the logger to the first answer (its start-up), one experiment alone once it runs
(what a sweep's end waits for after its last cell), N experiments sent at once (a backlog), and the CPU the logger and
its workers used in all (psutil, read before they end).
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

import inpaint_sweep  # noqa: F401  (the offline switches)
from inpaint_sweep.tracking import CometLogger


def tree_cpu(pid: int) -> float:
    processes = [psutil.Process(pid)]
    processes += processes[0].children(recursive=True)
    return sum(sum(p.cpu_times()[:2]) for p in processes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=24)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        picture = Path(tmp) / "out.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(picture)
        logger = CometLogger()

        def job(i: int) -> dict:
            return {"offline_dir": f"{tmp}/comet", "online": False, "project": "bench", "workspace": None,
                    "name": f"cell-{i}", "params": {"i": i}, "metrics": {"seconds": 1.0}, "tags": ["bench"],
                    "images": {"output": str(picture)}}

        began = time.perf_counter()
        logger.start()
        logger.submit(job(-1)).result()
        started = time.perf_counter()
        logger.submit(job(0)).result()
        alone = time.perf_counter()
        for answer in [logger.submit(job(i)) for i in range(1, args.experiments + 1)]:
            answer.result()
        burst = time.perf_counter()
        cpu = tree_cpu(logger._process.pid)
        logger.close()
    print(f"start-up and a first experiment {started - began:.2f} s; one experiment alone {alone - started:.2f} s; "
          f"{args.experiments} at once {burst - alone:.2f} s; {cpu:.2f} s CPU in the logger and its workers in all")


if __name__ == "__main__":
    main()
