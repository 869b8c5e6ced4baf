"""The sweep engine: one model load per multirun, content-addressed cells reused from the store, kill and resume,
batched seeds, and a bad cell that does not sink the sweep. Sweeps run in this process (conftest.generate); the stage
runs as a process of its own where only its process shows the promise: a kill, and Hydra's jobs."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inpaint_sweep.inpaint import inpaint
from inpaint_sweep.masks import box_mask

from conftest import FIXED_GRID, counts, generate, generate_stage, stage_env, view

FAST = ["steps=2", "strength=1.0", "negative_prompt=", "model.size=64"]


def test_sweep_loads_once_reuses_cells_and_the_view_follows_the_grid(tmp_path, prepared, model_cache):
    grid = ["strength=0.75,1.0", "hydra.sweeper.params.steps=2", "hydra.sweeper.params.negative_prompt=''",
            "tracking.comet=false"]
    # 1. A 6-cell multirun builds the pipeline once and shows an overall progress bar.
    first = generate(tmp_path, prepared, model_cache, "-m", "guidance=5,7.5,12", *grid)
    assert counts(first) == {"computed": 6, "reused": 0, "failed": 0}
    assert len(view(tmp_path)) == 6
    assert (first.stdout + first.stderr).count("loaded model builtin/tiny-sd-inpaint") == 1
    assert "6/6" in first.stderr and "failed=0" in first.stderr
    before = {r["cell_id"]: Path(r["images"][0]["path"]).read_bytes() for r in view(tmp_path)}

    # 2. Adding a value computes only the new cells; the others are the very same files.
    added = generate(tmp_path, prepared, model_cache, "-m", "guidance=5,7.5,12,15", *grid)
    assert counts(added) == {"computed": 2, "reused": 6, "failed": 0}
    assert sorted({r["guidance"] for r in view(tmp_path)}) == [5.0, 7.5, 12.0, 15.0]
    for r in view(tmp_path):
        if r["cell_id"] in before:
            assert Path(r["images"][0]["path"]).read_bytes() == before[r["cell_id"]]

    # 3. Removing values removes their cells from the output, and reverting computes nothing.
    removed = generate(tmp_path, prepared, model_cache, "-m", "guidance=5", *grid)
    assert counts(removed) == {"computed": 0, "reused": 2, "failed": 0}
    assert sorted((r["guidance"], r["strength"]) for r in view(tmp_path)) == [(5.0, 0.75), (5.0, 1.0)]


def test_a_pulled_view_seeds_an_empty_cell_store(tmp_path, prepared, model_cache):
    """A clone that `dvc pull`ed results/generate has the cells in its view but an empty store (the store is not a DVC
    output): a grid edit there must compute only the new cells."""
    import shutil

    grid = [*FIXED_GRID, "tracking.comet=false"]
    first = generate(tmp_path, prepared, model_cache, "-m", "guidance=5,7.5", *grid)
    assert counts(first) == {"computed": 2, "reused": 0, "failed": 0}
    pulled = {r["cell_id"]: Path(r["images"][0]["path"]).read_bytes() for r in view(tmp_path)}
    shutil.rmtree(tmp_path / "store")  # what a fresh clone has after `dvc pull`

    edited = generate(tmp_path, prepared, model_cache, "-m", "guidance=5,7.5,12", *grid)
    assert counts(edited) == {"computed": 1, "reused": 2, "failed": 0}
    for r in view(tmp_path):
        if r["cell_id"] in pulled:
            assert Path(r["images"][0]["path"]).read_bytes() == pulled[r["cell_id"]]
    assert len(list((tmp_path / "store").glob("*/record.json"))) == 3


def test_killed_sweep_resumes_with_only_unfinished_cells(tmp_path, prepared, model_cache):
    """The stage as a process of its own, SIGKILLed mid-sweep; the re-run (here) computes only what is missing."""
    grid = ["-m", "guidance=1,2,3,4,5", *FIXED_GRID, "hydra.sweeper.params.steps=4", "tracking.comet=false"]
    args = ["python", "stages/generate.py", *grid, "model.size=128", f"paths.prepare={prepared}",
            f"paths.generate={tmp_path}/gen", f"paths.cell_store={tmp_path}/store",
            f"hydra.sweep.dir={tmp_path}/gen/hydra", f"model.cache_dir={model_cache}"]
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen(args, env=stage_env(), stdout=log, stderr=log, start_new_session=True)
    deadline = time.time() + 120
    while len(list((tmp_path / "store").glob("*/record.json"))) < 2 and time.time() < deadline:
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(list((tmp_path / "store").glob("*/record.json")))
    assert 2 <= finished < 5, "the sweep should have been killed mid-way"

    resumed = generate(tmp_path, prepared, model_cache, *grid, "model.size=128")
    assert counts(resumed) == {"computed": 5 - finished, "reused": finished, "failed": 0}
    store = tmp_path / "store"
    assert not list(store.rglob("*.tmp")), "a half-written file was left behind"
    for record_path in store.glob("*/record.json"):
        record = json.loads(record_path.read_text())
        for entry in record["images"]:
            Image.open(entry["path"]).load()  # every image decodes


def test_seed_list_is_one_batched_call_equal_to_single_seed_calls(tiny_model, photo):
    mask = box_mask(photo.size, (30, 20, 70, 60))
    kwargs = dict(prompt="a dragon", negative_prompt="", steps=2, guidance=7.5, strength=1.0, size=64, device="cpu")
    batched = inpaint(tiny_model.pipe, photo, mask, seeds=[3, 4], **kwargs)
    assert len(batched) == 2
    for seed, (image, _) in zip([3, 4], batched):
        (alone, _), = inpaint(tiny_model.pipe, photo, mask, seeds=seed, **kwargs)
        diff = np.abs(np.asarray(image, dtype=int) - np.asarray(alone, dtype=int))
        assert diff.max() <= 2  # batching only changes float rounding
    assert (np.asarray(batched[0][0]) != np.asarray(batched[1][0])).any()


def test_seed_list_makes_one_cell_with_an_image_per_seed(tmp_path, prepared, model_cache):
    result = generate(tmp_path, prepared, model_cache, *FAST, "seed=[0,1,2]", "tracking.comet=false")
    assert counts(result) == {"computed": 1, "reused": 0, "failed": 0}
    (record,) = view(tmp_path)
    assert record["seed"] == [0, 1, 2] and [e["seed"] for e in record["images"]] == [0, 1, 2]
    assert all(Path(e["path"]).is_file() for e in record["images"])


def test_one_bad_cell_does_not_sink_the_sweep(tmp_path, prepared, model_cache):
    cases = json.loads((prepared / "cases.json").read_text())
    broken = {**cases[0], "id": "broken", "image": str(tmp_path / "deleted.jpg")}
    Image.open(cases[0]["image"]).save(broken["image"])
    (tmp_path / "prep").mkdir()
    (tmp_path / "prep" / "cases.json").write_text(json.dumps([broken, cases[0]]))
    Path(broken["image"]).write_bytes(b"truncated")  # the photo got corrupted after prepare
    result = generate(tmp_path, tmp_path / "prep", model_cache, "-m", "guidance=5,9", *FIXED_GRID,
                      "tracking.comet=false", check=False)
    assert result.returncode == 1
    assert counts(result) == {"computed": 2, "reused": 0, "failed": 2}
    records = view(tmp_path)
    failed = [r for r in records if r["status"] == "failed"]
    assert len(records) == 4 and len(failed) == 2 and all(r["case"] == "broken" for r in failed)
    assert all("UnidentifiedImageError" in r["error"] for r in failed)
    assert "error: 2 cell(s) failed: broken-" in result.stderr


@pytest.mark.parametrize("overrides", [
    ["guidance=5", "strength=0.75", "steps=4", "negative_prompt=''"],  # the default grid's kind of combination
    ["negative_prompt=cartoon", "seed=[1,2]", "model.scheduler=ddim", "guidance=12"],
    ["model=local", "model.id=/models/x", "guidance=7.5"],  # a config group choice next to plain values
    ["hydra.job.name=other", "steps=8"],  # a hydra.* key
    ["prompt='a dragon, green'", "prompt_sr=[dragon,cat]", "model.cpu_threads=null"],
])
def test_each_combination_is_composed_exactly_as_hydra_composes_it(overrides):
    """The sweeper composes each set of config-group choices once, then sets the plain values: the task config must
    be Hydra's own full composition."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from inpaint_sweep.config import CONFIG_DIR, CONFIG_NAME
    from inpaint_sweep.grid import Composer, task_part

    loader = ConfigLoaderImpl(create_config_search_path(str(CONFIG_DIR)))
    master = loader.load_configuration(CONFIG_NAME, ["hydra.sweep.dir=/tmp/x", "paths.generate=/tmp/g"],
                                       RunMode.MULTIRUN)
    compose = Composer(master, loader)
    for _ in range(2):  # the second time from the composer's cache
        expected = task_part(loader.load_sweep_config(master, overrides))
        got = compose(overrides)
        assert OmegaConf.to_yaml(got) == OmegaConf.to_yaml(expected)
        assert OmegaConf.get_type(got) is OmegaConf.get_type(expected)  # the typed schema at the root


@pytest.mark.parametrize("bad", ["guidanse=5", "steps=abc"])
def test_a_bad_combination_is_refused_as_hydra_refuses_it(bad):
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.errors import ConfigCompositionException
    from hydra.types import RunMode

    from inpaint_sweep.config import CONFIG_DIR, CONFIG_NAME
    from inpaint_sweep.grid import Composer

    loader = ConfigLoaderImpl(create_config_search_path(str(CONFIG_DIR)))
    master = loader.load_configuration(CONFIG_NAME, [], RunMode.MULTIRUN)
    with pytest.raises(ConfigCompositionException):
        loader.load_sweep_config(master, ["guidance=5", bad])
    with pytest.raises(ConfigCompositionException, match=bad.split("=")[0]):
        Composer(master, loader)(["guidance=5", bad])


def test_a_stored_grid_launches_no_hydra_job(tmp_path, prepared, model_cache):
    """A re-run of a grid whose cells are all stored shows them in the view and launches nothing (Hydra's own
    `Launching` line: the stage as a process of its own)."""
    grid = ["-m", "guidance=5,9", *FIXED_GRID, "tracking.comet=false"]
    first = generate_stage(tmp_path, prepared, model_cache, *grid)
    assert "Launching 1 jobs" in first.stdout + first.stderr
    again = generate_stage(tmp_path, prepared, model_cache, *grid)
    assert counts(again) == {"computed": 0, "reused": 2, "failed": 0}
    assert "Launching" not in again.stdout + again.stderr and "0 model loads" in again.stdout
