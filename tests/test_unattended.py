"""Faults of a sweep that runs with nobody watching end cleanly: the Comet logger process killed at a random point, a
finisher thread that raises, a full disk. Each ends the sweep with its summary (never a hang, never a traceback),
keeps what was computed, and the next run of the same command completes the rest."""

import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import FIXED_GRID, counts, generate, generate_here, stage_env, view
from inpaint_sweep.records import COMET_ARCHIVE

LOGGER = "inpaint_sweep.tracking import serve"  # the logger process's command line (tracking.LOGGER_MAIN)


def children(pid: int, needle: str) -> list[int]:
    """The processes whose parent is `pid` and whose command line holds `needle`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid and needle in cmdline:
            found.append(int(entry.name))
    return found


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stage_command(tmp: Path, prepared: Path, model_cache: Path, *args: str) -> list[str]:
    return ["python", "stages/generate.py", *args, "model.size=64", f"paths.prepare={prepared}",
            f"paths.generate={tmp}/gen", f"paths.cell_store={tmp}/store", f"hydra.sweep.dir={tmp}/gen/hydra",
            f"model.cache_dir={model_cache}"]


@pytest.mark.slow
def test_a_killed_comet_logger_never_hangs_the_sweep_and_the_next_run_logs_every_cell(tmp_path, prepared,
                                                                                     model_cache):
    seed = random.randrange(1 << 16)
    delay = random.Random(seed).uniform(0.0, 3.0)  # after the logger started: model load, or among the cells
    cmd = stage_command(tmp_path, prepared, model_cache, "-m", "guidance=3,5,7,9,11,13", *FIXED_GRID)
    stage = subprocess.Popen(cmd, env=stage_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (logger := children(stage.pid, LOGGER)) and stage.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert logger, "the stage never started its Comet logger process"
        time.sleep(delay)
        assert stage.poll() is None, f"the sweep ended before the kill (seed {seed}): {stage.communicate()}"
        os.kill(logger[0], signal.SIGKILL)
        killed = time.monotonic()
        out, err = stage.communicate(timeout=30)  # a hang fails here
        exited = time.monotonic() - killed
    finally:
        if stage.poll() is None:
            stage.kill()
            stage.communicate()
    assert stage.returncode == 0, f"seed {seed}\n{out}\n{err}"
    assert exited < 30, exited
    assert "the Comet logger process ended (killed by signal 9)" in out + err, out + err
    assert "Traceback" not in out + err, err
    assert counts(subprocess.CompletedProcess(cmd, 0, out, err)) == {"computed": 6, "reused": 0, "failed": 0}
    assert not group_alive(logger[0]), "the logger's forkserver or workers outlived it"

    # The next run of the same command logs every cell the dead logger had not: an archive for each, in the view
    # and with the stored cell; nothing is computed again.
    again = generate(tmp_path, prepared, model_cache, "-m", "guidance=3,5,7,9,11,13", *FIXED_GRID, view_dir="gen")
    assert counts(again) == {"computed": 0, "reused": 6, "failed": 0}
    records = view(tmp_path)
    assert len(records) == 6
    for record in records:
        assert Path(tmp_path, "gen", "comet", f"{record['cell_id']}.zip").is_file(), record["cell_id"]
        assert (tmp_path / "store" / record["cell_id"] / COMET_ARCHIVE).is_file()


def test_a_finisher_thread_that_raises_fails_its_cell_not_the_sweep(tmp_path, prepared, model_cache, monkeypatch):
    """Showing a computed cell raises past the cell's own handling (a bug, a view that vanished): the sweep still
    ends with its summary, that cell counts as failed (exit 1), and the next run shows it from the store."""
    from inpaint_sweep import cells

    real_show, calls = cells.show, []

    def show_once_broken(store, record, view_dir):
        calls.append(record.cell_id)
        if len(calls) == 2:
            raise RuntimeError("the view went away")
        return real_show(store, record, view_dir)

    monkeypatch.setattr(cells, "show", show_once_broken)
    started = time.monotonic()
    ran = generate_here(tmp_path, prepared, model_cache, "-m", "guidance=3,5,7", *FIXED_GRID)
    assert time.monotonic() - started < 60
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert counts(ran) == {"computed": 2, "reused": 0, "failed": 1}
    assert f"cell {calls[1]}: finishing it failed: RuntimeError: the view went away" in ran.stderr, ran.stderr
    assert "generate: 2 computed, 0 reused from the cell store, 1 failed" in ran.stdout

    monkeypatch.setattr(cells, "show", real_show)
    again = generate(tmp_path, prepared, model_cache, "-m", "guidance=3,5,7", *FIXED_GRID)
    assert counts(again) == {"computed": 0, "reused": 3, "failed": 0}  # the cell was kept in the store
    assert sorted(r["status"] for r in view(tmp_path)) == ["ok"] * 3


@pytest.fixture
def small_disk(tmp_path):
    """A 12 MB tmpfs (room for a few full-size cells of the sample photo), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("a full disk is made with a tmpfs mount, which needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


FULL = re.compile(r"error: no space left on device writing (\S+) \((cell store|view)\): (\d+) cells? computed and "
                  r"kept, (\d+) not run; free space and run the same command again")


@pytest.mark.slow
def test_a_full_disk_ends_the_sweep_in_one_line_and_the_rerun_completes_it(small_disk, prepared, model_cache):
    grid = ["-m", "guidance=1,2,3,4,5,6,7,8,9,10", *FIXED_GRID]
    cmd = stage_command(small_disk, prepared, model_cache, *grid)
    full = subprocess.run(cmd, env=stage_env(), capture_output=True, text=True, timeout=300)
    said = full.stdout + full.stderr
    assert full.returncode == 1, said
    assert "Traceback" not in said and "Error executing job" not in said, said
    errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and (m := FULL.fullmatch(errors[0])), full.stderr
    path, role, kept, not_run = m.group(1), m.group(2), int(m.group(3)), int(m.group(4))
    assert (path, role) == (str(small_disk / "store"), "cell store")
    assert kept >= 1 and not_run >= 1 and kept + not_run == 10, errors[0]
    assert f"generate: {kept} computed, 0 reused from the cell store, 0 failed" in full.stdout

    # What it said is what is there: `kept` sound cells in the store, nothing half-written, and no cell attempted
    # after the first write that found no space (at most the few already being finished then).
    from inpaint_sweep.store import CellStore

    store = CellStore(small_disk / "store")
    stored = [p.name for p in store.root.iterdir() if not p.name.startswith(".")]
    assert len(stored) == kept and all(store.get(cid) is not None for cid in stored)
    assert not [p for p in store.root.glob(".*") if p.is_dir()], "a private folder was left in the store"
    attempted = set(stored) | {r["cell_id"] for r in view(small_disk)}
    assert len(attempted) <= kept + 3, "cells went on being attempted on a full disk"

    # Space freed: the same command completes the grid from where it stopped.
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    done = subprocess.run(cmd, env=stage_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert counts(done) == {"computed": not_run, "reused": kept, "failed": 0}
    records = view(small_disk)
    assert len(records) == 10 and {r["status"] for r in records} == {"ok"}
    for record in records:
        for entry in record["images"]:
            Image.open(entry["path"]).load()
        assert Path(small_disk, "gen", "comet", f"{record['cell_id']}.zip").is_file()
