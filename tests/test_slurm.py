"""The Slurm preset on a real single-node cluster (conftest.slurm_cluster): the grid as one array job, a cancelled job
and a job out of time that end the sweep with its summary and lose nothing, and a preempted job that submitit
checkpoints and requeues.
Skipped, saying why, when not root or Debian's Slurm packages are missing (`make test` installs them)."""

import contextlib
import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import FIXED_GRID, counts, generate, generate_stage, stage_env, view

pytestmark = pytest.mark.slow

LOADED = "loaded model builtin/tiny-sd-inpaint"


def slurm_args(cluster, *extra: str) -> list[str]:
    """The preset on the test partition, fitted to a machine without a GPU and with few cores."""
    from slurm_cluster import PARTITION

    return ["-m", "hydra/launcher=slurm", f"hydra.launcher.partition={PARTITION}", "hydra.launcher.gpus_per_node=null",
            "hydra.launcher.cpus_per_task=1", *extra]


def env_of(cluster) -> dict:
    return stage_env(SLURM_CONF=cluster.env["SLURM_CONF"])


def submitit_dir(tmp: Path) -> Path:
    return tmp / "gen" / "hydra" / "multirun" / ".submitit"


def sacct_states(cluster, job: str) -> list[str]:
    done = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "JobID,State"], env=cluster.env,
                          capture_output=True, text=True, check=True)
    return sorted(line for line in done.stdout.splitlines() if line)


def the_job(tmp: Path, timeout: float = 60) -> str:
    """The id of the (first) job the sweep submitted, once submitit has written its folder."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        folders = [p.name for p in submitit_dir(tmp).glob("*") if p.is_dir() and p.name[0].isdigit()]
        if folders:
            return sorted(folders)[0]
        time.sleep(0.1)
    raise AssertionError("no job was submitted")


def wait_for(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def stored_cells(tmp: Path) -> int:
    return len(list((tmp / "store").glob("*/record.json")))


def test_a_grid_runs_as_one_array_job_on_the_cluster(tmp_path, prepared, model_cache, tiny_model, slurm_cluster,
                                                    report_stage):
    started = time.monotonic()
    ran = generate_stage(tmp_path, prepared, model_cache, *slurm_args(slurm_cluster), "guidance=5,7.5,9", *FIXED_GRID,
                         env=env_of(slurm_cluster))
    print(f"\n3-cell grid on the Slurm test cluster: {time.monotonic() - started:.1f} s")
    assert counts(ran) == {"computed": 3, "reused": 0, "failed": 0}
    records = view(tmp_path)
    assert sorted((r["guidance"], r["status"]) for r in records) == [(5.0, "ok"), (7.5, "ok"), (9.0, "ok")]
    assert all(Path(tmp_path, "gen", "comet", f"{r['cell_id']}.zip").is_file() for r in records)

    # One array job of three tasks, each run by slurmd on the node: its own log, one model load, COMPLETED in sacct.
    tasks = sorted(p.name for p in submitit_dir(tmp_path).glob("*_*") if p.is_dir())
    arrays = {name.split("_")[0] for name in tasks}
    assert len(tasks) == 3 and len(arrays) == 1, tasks
    for task in tasks:
        out = (submitit_dir(tmp_path) / task / f"{task}_0_log.out").read_text()
        assert f"hostname={slurm_cluster.node}" in out and out.count(LOADED) == 1, out
    array = arrays.pop()
    wait_for(lambda: sacct_states(slurm_cluster, array) == [f"{t}|COMPLETED" for t in tasks],
             "sacct to show every task COMPLETED", timeout=30)  # its step may still be ending as the sweep ends

    # The report counts the three cells.
    report_stage([f"paths.generate={tmp_path}/gen", f"paths.report={tmp_path}/report", "tracking.comet=false"])
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert (metrics["cells"], metrics["ok"], metrics["failed"]) == (3, 3, 0), metrics


def slow_grid_in_one_job(cluster) -> list[str]:
    """8 cells in one job (array_parallelism=1), each slow enough (a second or more) that a job cancelled after its
    first cell dies before its last: submitit ignores Slurm's SIGTERM, and its SIGKILL comes KillWait (2 s) later."""
    return [*slurm_args(cluster, "hydra.launcher.array_parallelism=1"), "guidance=1,2,3,4,5,6,7,8",
            *FIXED_GRID[:-2], "hydra.sweeper.params.steps=100", "hydra.sweeper.params.negative_prompt=''",
            "tracking.comet=false"]


@contextlib.contextmanager
def stage_running(tmp: Path, prepared: Path, model_cache: Path, cluster, args: list[str]):
    """The generate stage started in the background; killed on the way out if it has not ended (a test that failed)."""
    cmd = ["python", "stages/generate.py", *args, "model.size=64", f"paths.prepare={prepared}",
           f"paths.generate={tmp}/gen", f"paths.cell_store={tmp}/store", f"hydra.sweep.dir={tmp}/gen/hydra/multirun",
           f"model.cache_dir={model_cache}"]
    stage = subprocess.Popen(cmd, env=env_of(cluster), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield stage
    finally:
        if stage.poll() is None:
            stage.kill()
            stage.communicate()


def finished(stage: subprocess.Popen, timeout: float) -> subprocess.CompletedProcess:
    out, err = stage.communicate(timeout=timeout)
    return subprocess.CompletedProcess(stage.args, stage.returncode, out, err)


def test_a_cancelled_job_ends_the_sweep_with_its_summary_and_the_rerun_computes_only_the_rest(
        tmp_path, prepared, model_cache, tiny_model, slurm_cluster):
    args = slow_grid_in_one_job(slurm_cluster)
    with stage_running(tmp_path, prepared, model_cache, slurm_cluster, args) as stage:
        job = the_job(tmp_path).split("_")[0]
        wait_for(lambda: stored_cells(tmp_path) >= 1, "the job's first cell")
        subprocess.run(["scancel", job], env=slurm_cluster.env, check=True)
        ran = finished(stage, timeout=180)
    said = ran.stdout + ran.stderr
    assert ran.returncode == 1, said
    assert "Hydra jobs did not all finish: UncompletedJobError" in said and "Traceback" not in said, said
    first = counts(ran)
    assert first["computed"] >= 1 and first["computed"] + first["failed"] == 8, first
    assert any(state.endswith("CANCELLED") or "CANCELLED" in state for state in sacct_states(slurm_cluster, job))

    # Once the job is gone (SIGTERM, then SIGKILL after KillWait), the same grid computes only what it had not kept.
    wait_for(lambda: not subprocess.run(["squeue", "-h", "-j", job], env=slurm_cluster.env, capture_output=True,
                                        text=True).stdout.strip(), "the cancelled job to end")
    kept = stored_cells(tmp_path)
    assert kept >= first["computed"]
    again = generate(tmp_path, prepared, model_cache, *args[args.index("guidance=1,2,3,4,5,6,7,8"):], "-m",
                     view_dir="gen")
    assert counts(again) == {"computed": 8 - kept, "reused": kept, "failed": 0}
    assert not [p for p in (tmp_path / "store").glob(".*") if p.is_dir()], "a killed job's half-written cell remains"


def test_a_preempted_job_is_checkpointed_and_requeued_and_finishes_the_grid(tmp_path, prepared, model_cache,
                                                                            tiny_model, slurm_cluster):
    """Slurm signals a job it preempts (or that nears its time limit) with USR2; submitit then checkpoints the Hydra
    job (hydra-submitit-launcher resubmits it with the same arguments) and requeues it. The requeued job makes the
    same batch of cells again, and the cell store hands back those the first attempt finished."""
    args = slow_grid_in_one_job(slurm_cluster)
    with stage_running(tmp_path, prepared, model_cache, slurm_cluster, args) as stage:
        job = the_job(tmp_path).split("_")[0]
        wait_for(lambda: stored_cells(tmp_path) >= 1, "the job's first cell")
        subprocess.run(["scancel", "--signal=USR2", job], env=slurm_cluster.env, check=True)
        ran = finished(stage, timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert counts(ran) == {"computed": 8, "reused": 0, "failed": 0}
    task = the_job(tmp_path)
    log_out = (submitit_dir(tmp_path) / task / f"{task}_0_log.out").read_text()
    log_err = (submitit_dir(tmp_path) / task / f"{task}_0_log.err").read_text()
    assert "this job is preempted" in log_err + log_out and "Requeued job" in log_err + log_out, log_err
    assert log_out.count(LOADED) + log_err.count(LOADED) == 2, "the job should have run twice"
    skipped = [int(n) for n in re.findall(r"skipped=(\d+)", log_err)]
    assert skipped and skipped[-1] >= 1, "the requeued job should have found the first attempt's cells stored"



def test_a_job_out_of_time_ends_the_sweep_with_its_summary_and_the_rerun_computes_only_the_rest(
        tmp_path, prepared, model_cache, tiny_model, slurm_cluster):
    """A job near its time limit gets USR2 from Slurm (signal_delay_s before the end); submitit counts it timed out
    (any timeout_min up to 10 does) and, with max_num_timeout=0 (the default), does not requeue it but raises in the
    job, which stops there: the cell it was computing is not failed, the rest not tried, its finished cells kept. The
    sweep then ends as for a cancelled job: one line naming the time-out, its summary, exit 1, no traceback, and the
    re-run computes only what the store lacks. The signal is sent here, once a cell is stored, as Slurm's clock sends
    it: that clock checks every 30 s, so a real one-minute limit lands anywhere from model load to the grid's end."""
    grid = slow_grid_in_one_job(slurm_cluster)
    at = grid.index("guidance=1,2,3,4,5,6,7,8")
    args = [*grid[:at], "hydra.launcher.timeout_min=10", "hydra.launcher.max_num_timeout=0", *grid[at:]]
    with stage_running(tmp_path, prepared, model_cache, slurm_cluster, args) as stage:
        job = the_job(tmp_path).split("_")[0]
        wait_for(lambda: stored_cells(tmp_path) >= 1, "the job's first cell")
        subprocess.run(["scancel", "--signal=USR2", job], env=slurm_cluster.env, check=True)
        ran = finished(stage, timeout=180)
    said = ran.stdout + ran.stderr
    assert ran.returncode == 1, said
    assert "Traceback" not in said, said
    assert "Hydra job #0 failed: UncompletedJobError: Job not requeued because: timed-out too many times." in said
    assert "Error executing job" not in said, said
    first = counts(ran)
    assert first["computed"] >= 1 and first["failed"] >= 1 and first["computed"] + first["failed"] == 8, first
    task = the_job(tmp_path)
    log_err = (submitit_dir(tmp_path) / task / f"{task}_0_log.err").read_text()
    log_out = (submitit_dir(tmp_path) / task / f"{task}_0_log.out").read_text()
    assert "this job is timed-out" in log_err, log_err
    assert "failed: UncompletedJobError" not in log_err, "the job's end is not a cell's failure"
    assert "Job not requeued because: timed-out too many times" in log_out, log_out
    # It ended itself (Hydra's job returned its error), not killed by Slurm.
    wait_for(lambda: sacct_states(slurm_cluster, job) in ([f"{job}|COMPLETED"], [f"{job}|FAILED"]),
             "sacct to show the job COMPLETED or FAILED (it ended itself)", timeout=30)

    # The same grid computes only what the job had not kept.
    kept = stored_cells(tmp_path)
    assert kept >= first["computed"]
    again = generate(tmp_path, prepared, model_cache, *args[args.index("guidance=1,2,3,4,5,6,7,8"):], "-m",
                     view_dir="gen")
    assert counts(again) == {"computed": 8 - kept, "reused": kept, "failed": 0}
    assert not [p for p in (tmp_path / "store").glob(".*") if p.is_dir()], "a stopped job's half-written cell remains"
