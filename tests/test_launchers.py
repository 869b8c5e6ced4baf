"""Past one process: the same multirun through hydra-joblib-launcher (parallel local processes) and
hydra-submitit-launcher (submitit_local; the Slurm preset up to the sbatch script it submits)."""

import json
import os
import stat
from pathlib import Path

import pytest
from PIL import Image

from conftest import FIXED_GRID, counts, generate_stage, run, stage_env, view

pytestmark = pytest.mark.slow

LOADED = "loaded model builtin/tiny-sd-inpaint"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_model):  # tiny_model: the checkpoint is on disk, so workers only load it
    out = tmp_path_factory.mktemp("prepared")
    run(["python", "stages/prepare.py", f"paths.prepare={out}"])
    cases = json.loads((out / "cases.json").read_text())
    broken = {**cases[0], "id": "broken", "image": str(out / "broken.jpg")}
    Path(broken["image"]).write_bytes(b"truncated")  # a photo that broke after prepare: its cells fail
    (out / "with_broken").mkdir()
    (out / "with_broken" / "cases.json").write_text(json.dumps([cases[0], broken]))
    return out


def cells_intact(tmp) -> list[dict]:
    """The view's records, after checking that each cell has a folder of its own holding its record and images
    (they decode), and that nothing half-written is left anywhere."""
    records = view(tmp)
    cells = Path(tmp, "gen", "cells")
    assert sorted(p.name for p in cells.iterdir()) == sorted(r["cell_id"] for r in records)
    for record in records:
        assert len(record["images"]) == (record["status"] == "ok")
        for entry in record["images"]:
            assert Path(entry["path"]).parent == cells / record["cell_id"]
            Image.open(entry["path"]).load()
    assert not list(Path(tmp).rglob("*.tmp")), "a half-written file was left behind"
    for record_file in Path(tmp, "store").glob("*/record.json"):
        json.loads(record_file.read_text())
    return records


def test_joblib_and_submitit_local_sweeps_report_every_cell_their_workers_ran(tmp_path, prepared, model_cache):
    common = [*FIXED_GRID, "tracking.comet=false"]

    # 1. joblib: 3 combinations x 2 cases on 2 worker processes: 2 Hydra jobs (one per worker), each loading the model
    #    once. The launching process's summary and exit code count the cells the workers computed and the broken
    #    case's failures, read from the store.
    first = generate_stage(tmp_path, prepared / "with_broken", model_cache, "-m", "hydra/launcher=joblib",
                           "hydra.launcher.n_jobs=2", "guidance=5,9,12", *common, check=False)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "generate: 3 combinations, 6 cells, 0 already in the cell store; 1 model load in 2 Hydra jobs" in first.stdout
    assert counts(first) == {"computed": 3, "reused": 0, "failed": 3}
    assert "error: 3 cell(s) failed: broken-" in first.stderr
    records = cells_intact(tmp_path)
    assert sorted((r["case"], r["guidance"]) for r in records if r["status"] == "ok") == [
        ("bus_person", 5.0), ("bus_person", 9.0), ("bus_person", 12.0)]
    job_logs = sorted(Path(tmp_path, "gen", "hydra", "multirun").glob("[0-9]*/generate.log"))
    assert len(job_logs) == 2
    assert [log.read_text().count(LOADED) for log in job_logs] == [1, 1]

    # 2. submitit_local on the same store and folders: the stored cell is shown by the launching process, and only the
    #    new one is launched (one process, one model load); nothing the first run left in the sweep folder counts.
    second = generate_stage(tmp_path, prepared, model_cache, "-m", "hydra/launcher=submitit_local",
                            "guidance=5,15", *common)
    assert counts(second) == {"computed": 1, "reused": 1, "failed": 0}
    records = cells_intact(tmp_path)
    assert sorted((r["guidance"], r["status"]) for r in records) == [(5.0, "ok"), (15.0, "ok")]
    submitit_logs = sorted(Path(tmp_path, "gen", "hydra", "multirun", ".submitit").glob("*/*_log.out"))
    assert [log.read_text().count(LOADED) for log in submitit_logs] == [1]


def test_slurm_preset_submits_one_array_job_with_one_gpu_per_task(tmp_path, prepared, model_cache):
    # A stand-in sbatch keeps the script the real launcher wrote and refuses the job, so nothing waits for a cluster.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    sbatch = fake_bin / "sbatch"
    sbatch.write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\necho "sbatch: no cluster here" >&2\nexit 1\n')
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IEXEC)
    (fake_bin / "srun").symlink_to("/bin/false")  # submitit checks that srun exists
    env = stage_env(PATH=f"{fake_bin}{os.pathsep}{stage_env()['PATH']}")
    result = generate_stage(tmp_path, prepared, model_cache, "-m", "hydra/launcher=slurm",
                            "hydra.launcher.partition=gpu", "guidance=5,7.5,9", *FIXED_GRID, "tracking.comet=false",
                            check=False, env=env)
    assert result.returncode != 0
    script = (tmp_path / "submitted.sh").read_text()
    # The 3 combinations are one array job of 3 tasks (split for the preset's array_parallelism, 16), all at once.
    for line in ("#SBATCH --array=0-2%3", "#SBATCH --gpus-per-node=1", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --cpus-per-task=4", "#SBATCH --time=60", "#SBATCH --partition=gpu"):
        assert line in script, script
