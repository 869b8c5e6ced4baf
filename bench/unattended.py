"""Figures of an unattended run (issue #21), measured, not asserted: the test Slurm cluster's bring-up time, a small
grid run through the Slurm preset on it, and the time from a killed Comet logger process to the sweep's exit.
Needs root and Debian's Slurm packages (`make test` installs them). Run after `make data`.

    python bench/unattended.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from slurm_cluster import PARTITION, Cluster, missing  # noqa: E402  (the tests' cluster, started the same way)

GRID = ["hydra.sweeper.params.strength=1.0", "hydra.sweeper.params.steps=2", "hydra.sweeper.params.negative_prompt=''"]


def stage(tmp: Path, *args: str) -> list[str]:
    """generate's command line, its sweep in `tmp`, the prepared case and the model cache in tmp's parent."""
    return ["python", "stages/generate.py", "-m", *args, *GRID, "model.size=64", f"paths.prepare={tmp.parent}/prepare",
            f"paths.generate={tmp}/gen", f"paths.cell_store={tmp}/store", f"hydra.sweep.dir={tmp}/gen/hydra",
            f"model.cache_dir={tmp.parent}/models"]


def run(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return time.perf_counter() - start


def logger_of(pid: int) -> int | None:
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid and \
                    b"inpaint_sweep.tracking import serve" in (entry / "cmdline").read_bytes():
                return int(entry.name)
        except (OSError, ValueError, IndexError):
            continue
    return None


def killed_logger_to_exit(tmp: Path, env: dict) -> float:
    """Seconds from SIGKILL of the logger process, once the first cell is stored, to the stage's exit."""
    proc = subprocess.Popen(stage(tmp, "guidance=1,2,3,4,5,6,7,8"), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    while not list((tmp / "store").glob("*/record.json")):
        if proc.poll() is not None:
            sys.exit(f"the stage ended before its first cell:\n{proc.communicate()}")
        time.sleep(0.02)
    logger = logger_of(proc.pid)
    if logger is None:
        sys.exit("no Comet logger process found")
    os.kill(logger, signal.SIGKILL)
    killed = time.perf_counter()
    out, err = proc.communicate(timeout=120)
    seconds = time.perf_counter() - killed
    if proc.returncode != 0 or "the Comet logger process ended" not in out + err:
        sys.exit(f"unexpected end (exit {proc.returncode}):\n{out}{err}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env = {k: v for k, v in env.items() if not k.startswith("COMET_")}
    with tempfile.TemporaryDirectory(prefix="unattended-") as tmp:
        tmp = Path(tmp)
        run(["python", "stages/prepare.py", f"paths.prepare={tmp}/prepare"], env)
        run(stage(tmp / "warm", "guidance=5", "tracking.comet=false"), env)  # the tiny model, built once

        killed = []
        for n in range(args.repeat):
            killed.append(killed_logger_to_exit(tmp / f"kill{n}", env))
        print(f"killed Comet logger -> sweep exit (8-cell grid, killed after its first cell): median "
              f"{statistics.median(killed):.2f} s ({' / '.join(f'{s:.2f}' for s in killed)} s)")

        why = missing()
        if why:
            print(f"Slurm figures skipped: {why}")
            return
        ups, grids = [], []
        for n in range(args.repeat):
            root = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))
            with Cluster(root) as cluster:
                ups.append(cluster.bring_up_seconds)
                slurm = ["hydra/launcher=slurm", f"hydra.launcher.partition={PARTITION}",
                         "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1"]
                grids.append(run(stage(tmp / f"slurm{n}", *slurm, "guidance=5,7.5,9"),
                                 {**env, "SLURM_CONF": str(cluster.conf)}))
            shutil.rmtree(root, ignore_errors=True)
        print(f"Slurm test cluster bring-up to an idle node: median {statistics.median(ups):.2f} s "
              f"({' / '.join(f'{s:.2f}' for s in ups)} s)")
        print(f"3-cell grid as a Slurm array job (3 tasks, 1 CPU each), command to summary: median "
              f"{statistics.median(grids):.1f} s ({' / '.join(f'{s:.1f}' for s in grids)} s)")


if __name__ == "__main__":
    main()
