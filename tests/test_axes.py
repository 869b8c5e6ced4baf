"""Every axis a researcher compares (issue #12): checkpoints (each loaded once, one resident), prompts, paired axes,
and the grid's size before the first job. Through generate's sweep in this process (conftest.generate), with tiny
local checkpoints; the stage as a process of its own where its command line is the point, and `dvc repro` once."""

import gc
import json
import re
import weakref
from pathlib import Path

import pytest

from conftest import FIXED_GRID, counts, generate, generate_stage, run, view

FIXED = [*FIXED_GRID, "tracking.comet=false"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    """Two local diffusers folders with different weights."""
    from inpaint_sweep.tiny_model import build_tiny_pipeline

    root = tmp_path_factory.mktemp("checkpoints")
    for seed, name in ((1, "a"), (2, "b")):
        build_tiny_pipeline(seed).save_pretrained(root / name, safe_serialization=True)
    return root / "a", root / "b"


def loads(result) -> list[str]:
    return re.findall(r"loaded model (\S+)@", result.stdout + result.stderr)


def plan(result) -> dict:
    m = re.search(r"generate: (\d+) combinations?, (\d+) cells, (\d+) already in the cell store; (\d+) model loads?",
                  result.stdout)
    assert m, result.stdout + result.stderr
    return dict(zip(("jobs", "cells", "stored", "loads"), map(int, m.groups())))


def test_checkpoints_are_an_axis_each_loaded_once_costliest_axis_outermost(tmp_path, prepared, model_cache,
                                                                           checkpoints):
    a, b = checkpoints
    # 1. guidance first on the command line: Hydra's product would alternate a, b, a, b (a load each, one model being
    #    resident); the sweeper groups them: a's cells, then b's.
    first = generate(tmp_path, prepared, model_cache, "-m", "guidance=5,7.5,9", "model=local", f"model.id={a},{b}",
                     *FIXED)
    assert counts(first) == {"computed": 6, "reused": 0, "failed": 0}
    assert loads(first) == [str(a), str(b)]
    assert plan(first) == {"jobs": 6, "cells": 6, "stored": 0, "loads": 2}
    records = view(tmp_path)
    assert len({r["model_fingerprint"] for r in records}) == 2
    assert sorted((r["config"]["model.id"], r["guidance"]) for r in records) == sorted(
        (str(m), g) for m in (a, b) for g in (5.0, 7.5, 9.0))

    # 2. Again: everything stored, said before the first job, and nothing loaded.
    again = generate(tmp_path, prepared, model_cache, "-m", "guidance=5,7.5,9", "model=local", f"model.id={a},{b}",
                     *FIXED)
    assert plan(again) == {"jobs": 6, "cells": 6, "stored": 6, "loads": 0}
    assert counts(again) == {"computed": 0, "reused": 6, "failed": 0} and loads(again) == []

    # 3. Presets (config-group choices) as an axis, and a load setting (dtype-like: the tiny model's seed) likewise.
    presets = generate(tmp_path, prepared, model_cache, "-m", "model=tiny,local", f"model.id={a}", "guidance=5,9",
                       *FIXED)
    assert counts(presets) == {"computed": 2, "reused": 2, "failed": 0}
    assert loads(presets) == ["builtin/tiny-sd-inpaint"]  # local's cells were stored by step 1
    seeds = generate(tmp_path, prepared, model_cache, "-m", "guidance=5,9", "model.seed=3,4", *FIXED)
    assert loads(seeds) == ["builtin/tiny-sd-inpaint"] * 2 and plan(seeds)["loads"] == 2  # not 4: grouped by seed


def test_hub_presets_as_an_axis_reach_the_model_check(tmp_path, prepared, model_cache):
    """`-m model=sd15_inpaint,sd2_inpaint` is a grid (Hydra refused it before it started); offline, without the
    checkpoints, it stops in one line naming the first, before any job. The stage as a process: its check of the raw
    command line is what refused the swept preset."""
    result = generate_stage(tmp_path, prepared, model_cache, "-m", "model=sd15_inpaint,sd2_inpaint", *FIXED,
                            check=False)
    assert result.returncode == 2, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "stable-diffusion-v1-5/stable-diffusion-inpainting" in line and "not available offline" in line
    assert "Ambiguous" not in result.stderr and not list((tmp_path / "gen").glob("cells/*"))


@pytest.mark.parametrize("cycle", [False, True], ids=["plain", "in-a-cycle"])
def test_the_model_slot_keeps_one_pipeline_resident(tmp_path, checkpoints, cycle):
    """Loading the second checkpoint frees the first: nothing else holds it, even a pipeline held in a reference
    cycle (accelerate's hooks make some)."""
    from inpaint_sweep.cells import ModelSlot
    from inpaint_sweep.config import model_config

    slot = ModelSlot(tmp_path / "store")
    try:
        first = slot.get(model_config("pretrained", id=str(checkpoints[0]), size=64, device="cpu"))
        ref = weakref.ref(first.pipe)
        unet = weakref.ref(first.pipe.unet)
        assert slot.get(model_config("pretrained", id=str(checkpoints[0]), size=128, device="cpu",
                                     scheduler="ddim")) is first  # per-call settings: no reload
        if cycle:
            held = [first.pipe]
            held.append(held)
            del held
        del first
        slot.get(model_config("pretrained", id=str(checkpoints[1]), size=64, device="cpu"))
        assert ref() is None and unet() is None
    finally:
        slot.close()


def test_prompts_as_an_axis(tmp_path, prepared, model_cache):
    result = generate(tmp_path, prepared, model_cache, "-m", "prompt='a red dragon','a blue dragon'", "guidance=5",
                      *FIXED)
    assert counts(result)["computed"] == 2
    assert sorted(r["prompt"] for r in view(tmp_path)) == ["a blue dragon", "a red dragon"]
    assert len({r["cell_id"] for r in view(tmp_path)}) == 2

    # Search/replace: the first value is found in each case's prompt (and negative prompt), each value replaces it.
    case_prompt = json.loads((prepared / "cases.json").read_text())[0]["prompt"]  # "a realistic green dragon"
    sr = generate(tmp_path, prepared, model_cache, "-m", "prompt_sr=[dragon,cat,tram]", "guidance=5",
                  "negative_prompt='blurry dragon'", *FIXED)
    assert plan(sr) == {"jobs": 1, "cells": 3, "stored": 0, "loads": 1}
    records = sorted(view(tmp_path), key=lambda r: r["config"]["prompt_sr"])
    assert [r["prompt"] for r in records] == [case_prompt.replace("dragon", v) for v in ("cat", "dragon", "tram")]
    assert [r["negative_prompt"] for r in records] == ["blurry cat", "blurry dragon", "blurry tram"]
    # The first value is the case's own prompt: the same cell as without search/replace.
    plain = generate(tmp_path, prepared, model_cache, "-m", "guidance=5", "negative_prompt='blurry dragon'", *FIXED)
    assert counts(plain) == {"computed": 0, "reused": 1, "failed": 0}


def bad_axis(args: list[str], words: str, stage: bool = False, fails: str = ""):
    marks = [pytest.mark.xfail(strict=True, reason=fails)] if fails else []
    return pytest.param(args, words, stage, marks=marks, id=f"{'stage' if stage else 'here'}: {' '.join(args)}")


# A bad value in a combination is checked by the sweep (here); one that only the shell splits or Hydra's parser reads
# is refused by the stage's check of its raw command line, before Hydra starts (a process of its own).
@pytest.mark.parametrize("args, words, stage", [
    bad_axis(["prompt_sr=[unicorn,cat]"], "case bus_person: prompt_sr looks for 'unicorn', which its prompt"),
    bad_axis(["prompt_sr=[dragon,cat,cat]"], "prompt_sr"),
    bad_axis(["prompt_sr=[unicorn,cat]"], "case bus_person: prompt_sr looks for 'unicorn', which its prompt",
             stage=True),
    bad_axis(["negative_prompt=low", "resolution,", "ugly"], "negative_prompt=\"'low resolution, ugly'\"",
             stage=True),
    bad_axis(["prompt=a (red) dragon"], "prompt=\"'a (red) dragon'\"", stage=True),
    bad_axis(["hydra.sweeper.zip=[[steps,strength]]", "steps=2,4", "strength=0.5,0.75,1.0"],
             "hydra.sweeper.zip pairs steps (2 values), strength (3 values)"),
    bad_axis(["hydra.sweeper.zip=[[steps,strength]]", "steps=2,4", "strength=0.5,0.75,1.0"],
             "hydra.sweeper.zip pairs steps (2 values), strength (3 values)", stage=True),
])
def test_a_bad_axis_is_one_line_and_writes_nothing(tmp_path, prepared, model_cache, args, words, stage):
    run_it = generate_stage if stage else generate
    result = run_it(tmp_path, prepared, model_cache, "-m", "guidance=5", *args, *FIXED[3:], check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and words in result.stderr, result.stderr
    assert not (tmp_path / "gen").exists() and not (tmp_path / "store").exists()


def test_zipped_axes_step_together(tmp_path, prepared, model_cache):
    result = generate(tmp_path, prepared, model_cache, "-m", "hydra.sweeper.zip=[[steps,strength]]", "steps=2,4",
                      "strength=1.0,0.5", "guidance=5,9", "negative_prompt=", "tracking.comet=false")
    assert plan(result) == {"jobs": 4, "cells": 4, "stored": 0, "loads": 1}
    assert sorted((r["steps"], r["strength"], r["guidance"]) for r in view(tmp_path)) == [
        (2, 1.0, 5.0), (2, 1.0, 9.0), (4, 0.5, 5.0), (4, 0.5, 9.0)]


def test_grid_combinations_cross_zip_and_group_by_model():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from inpaint_sweep.grid import combinations as grid_jobs

    parse = OverridesParser.create().parse_overrides
    jobs = grid_jobs(parse(["guidance=5,9", "model.id=/a,/b", "model.scheduler=ddim,pndm"]))
    assert [j[1] for j in jobs] == ["model.id=/a"] * 4 + ["model.id=/b"] * 4  # scheduler swaps never reload
    assert jobs[:4] == [["guidance=5", "model.id=/a", "model.scheduler=ddim"],
                        ["guidance=5", "model.id=/a", "model.scheduler=pndm"],
                        ["guidance=9", "model.id=/a", "model.scheduler=ddim"],
                        ["guidance=9", "model.id=/a", "model.scheduler=pndm"]]
    zipped = grid_jobs(parse(["steps=2,4", "guidance=5,9", "strength=1.0,0.5"]), [["steps", "strength"]])
    assert zipped == [["steps=2", "strength=1.0", "guidance=5"], ["steps=2", "strength=1.0", "guidance=9"],
                      ["steps=4", "strength=0.5", "guidance=5"], ["steps=4", "strength=0.5", "guidance=9"]]
    # Without model keys or zip: Hydra's basic sweeper's cross product, in its order.
    assert grid_jobs(parse(["a=1,2", "b=x,y", "c=3"])) == [["a=1", "b=x", "c=3"], ["a=1", "b=y", "c=3"],
                                                         ["a=2", "b=x", "c=3"], ["a=2", "b=y", "c=3"]]


def test_mask_settings_are_generate_axes(tmp_path, prepared, model_cache):
    """mask.dilate and mask.feather apply to prepare's base mask at generate time: no new prepare, a cell per
    variant, each with its own mask files, and the photo untouched outside its own mask."""
    import numpy as np
    from PIL import Image

    base = np.asarray(Image.open(json.loads((prepared / "cases.json").read_text())[0]["mask"])) > 127
    result = generate(tmp_path, prepared, model_cache, "-m", "mask.dilate=0,8,24", "mask.feather=0,12", "guidance=5",
                      *FIXED)
    assert plan(result) == {"jobs": 6, "cells": 6, "stored": 0, "loads": 1}
    records = view(tmp_path)
    assert len({r["cell_id"] for r in records}) == 6
    areas = {}
    for r in records:
        dilate, feather = r["config"]["mask.dilate"], r["config"]["mask.feather"]
        assert Path(r["mask"]).parent == tmp_path / "gen" / "cells" / r["cell_id"] and "mask.png" in r["files"]
        mask = np.asarray(Image.open(r["mask"])) > 127
        areas[dilate] = int(mask.sum())
        assert (mask >= base).all()
        assert ("soft_mask.png" in r["files"]) == (feather > 0) and (r["soft_mask"] is not None) == (feather > 0)
        photo = np.asarray(Image.open(r["input"]).convert("RGB"))
        out = np.asarray(Image.open(r["images"][0]["path"]).convert("RGB"))
        assert (out[~mask] == photo[~mask]).all()
    assert areas[0] == base.sum() < areas[8] < areas[24]


def _claim_a_gpu(store: str, gpus: int, picked, done) -> None:
    """In a worker process: a runner on a machine faking `gpus` CUDA devices asks for model.device=cuda."""
    import torch

    import inpaint_sweep.cells as cells
    from inpaint_sweep.config import model_config

    cells.cuda_device_count = lambda: gpus
    torch.cuda.set_device = lambda index: None
    slot = cells.ModelSlot(Path(store) / "store")
    picked.put(slot.pinned(model_config("tiny", device="cuda")).device)
    done.wait(60)  # hold the GPU while the others pick theirs, as a worker does for the whole sweep


def test_each_worker_process_pins_its_own_gpu(tmp_path):
    """model.device=cuda on a node with N GPUs: N worker processes (a parallel launcher's) take one GPU each."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    picked, done = ctx.Queue(), ctx.Event()
    workers = [ctx.Process(target=_claim_a_gpu, args=(str(tmp_path), 3, picked, done)) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        devices = sorted(picked.get(timeout=120) for _ in workers)
    finally:
        done.set()
        for w in workers:
            w.join(30)
    assert devices == ["cuda:0", "cuda:1", "cuda:2"]

    # One GPU, or a device given explicitly: left as configured.
    from inpaint_sweep.cells import ModelSlot
    from inpaint_sweep.config import model_config

    assert ModelSlot(tmp_path / "s").pinned(model_config("tiny", device="cpu")).device == "cpu"


@pytest.mark.slow
def test_dvc_repro_runs_a_checkpoint_grid_from_params_yaml(tmp_path, checkpoints):
    """The grid in params.yaml (what `dvc repro` runs) can hold a checkpoint axis: each loads once."""
    from conftest import shrunk_clone, stage_env

    repo = shrunk_clone(tmp_path / "repo", {"guidance": "5,9", "strength": "1.0", "steps": "2",
                                            "negative_prompt": "\"''\""})
    params = (repo / "params.yaml").read_text()
    grid = "      negative_prompt: \"''\"\n"
    assert params.count(grid) == 1
    a, b = checkpoints
    (repo / "params.yaml").write_text(params.replace(
        grid, grid + f"      model: local\n      model.id: {a},{b}\n      model.size: 64\n"))
    result = run(["dvc", "repro", "generate"], cwd=repo, env=stage_env(PYTHONPATH=str(repo / "src")), timeout=600)
    out = result.stdout + result.stderr
    assert "generate: 4 combinations, 4 cells, 0 already in the cell store; 2 model loads" in out
    assert re.findall(r"loaded model (\S+)@", out) == [str(a), str(b)]
    records = [json.loads(p.read_text()) for p in (repo / "results" / "generate" / "cells").glob("*/record.json")]
    assert sorted((r["config"]["model.id"], r["guidance"]) for r in records) == [
        (str(a), 5.0), (str(a), 9.0), (str(b), 5.0), (str(b), 9.0)]
