"""How the grid sweeper splits the combinations that must be computed into Hydra jobs (no model, no Hydra app)."""

from omegaconf import OmegaConf

from inpaint_sweep.grid import batches
from inpaint_sweep.sweep import parallel_workers

GROUPS = {"model"}


def combos(*guidance, model="model=tiny"):
    return [[model, f"guidance={g}", "steps=2"] for g in guidance]


def test_one_job_per_model_by_default_with_the_shared_values_on_its_command_line():
    jobs = batches(combos(5, 7.5, 12) + combos(5, 9, model="model=local"), GROUPS, parts=1, per_job=None)
    assert [own for own, _ in jobs] == [["model=tiny", "steps=2"], ["model=local", "steps=2"]]
    assert [varying for _, varying in jobs] == [[["guidance=5"], ["guidance=7.5"], ["guidance=12"]],
                                               [["guidance=5"], ["guidance=9"]]]


def test_a_model_key_that_forces_a_reload_starts_a_new_job():
    grid = [["model.id=/a", "guidance=5"], ["model.id=/a", "guidance=9"], ["model.id=/b", "guidance=5"]]
    jobs = batches(grid, GROUPS, parts=1, per_job=None)
    assert jobs == [(["model.id=/a"], [["guidance=5"], ["guidance=9"]]), (["model.id=/b", "guidance=5"], [[]])]


def test_parallel_workers_each_get_a_share_and_cells_per_job_caps_a_job():
    five = combos(1, 2, 3, 4, 5)
    assert [len(v) for _, v in batches(five, GROUPS, parts=2, per_job=None)] == [3, 2]
    assert [len(v) for _, v in batches(five, GROUPS, parts=8, per_job=None)] == [1, 1, 1, 1, 1]
    assert [len(v) for _, v in batches(five, GROUPS, parts=1, per_job=2)] == [2, 2, 1]
    # Every combination is in exactly one job, in order.
    jobs = batches(five, GROUPS, parts=2, per_job=None)
    assert [own + v for own, varying in jobs for v in varying] == [
        ["model=tiny", "steps=2", f"guidance={g}"] for g in (1, 2, 3, 4, 5)]


def test_how_many_jobs_a_launcher_runs_at_once():
    assert parallel_workers(OmegaConf.create({"_target_": "basic"})) == 1
    assert parallel_workers(OmegaConf.create({"n_jobs": 3})) == 3
    assert parallel_workers(OmegaConf.create({"n_jobs": -1})) >= 1
    assert parallel_workers(OmegaConf.create({"array_parallelism": 16})) == 16
