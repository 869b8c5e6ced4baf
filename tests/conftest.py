"""Shared fixtures and helpers: tiny seeded models, a prepared case on disk, the stages' main() and generate in this
process, fake cell records, the settings a function takes from params.yaml, and the environment for stage
subprocesses."""

from __future__ import annotations

import os
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import inpaint_sweep  # noqa: F401  (sets the offline switches before anything else is imported)
from inpaint_sweep.config import REPO_ROOT
from inpaint_sweep.images import save_image, to_mask_image, write_json

BIN = Path(sys.executable).parent


@pytest.fixture(scope="session", autouse=True)
def _run_from_repo_root():
    # Stages resolve params.yaml, conf/ and relative paths from the repository root, as dvc runs them.
    os.chdir(REPO_ROOT)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model(model_cache):
    from inpaint_sweep.config import model_config
    from inpaint_sweep.model import load_model

    return load_model(model_config("tiny", cache_dir=str(model_cache)))


@pytest.fixture
def photo() -> Image.Image:
    """A 100x80 photo-like test image with structure everywhere (so any change would show)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:80, 0:100]
    base = np.stack([x * 2.5, y * 3.0, (x + y) * 1.4], axis=-1)
    return Image.fromarray(np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8))


def _stage_main(name: str):
    """The main() of stages/<name>.py, run in this process, without its one-line-error wrapper: a bad input raises
    ConfigError, whose words a test can read (test_prepare.py runs a stage once in its own process for the `error:`
    line and exit code 2 that the wrapper makes of it)."""
    return runpy.run_path(str(REPO_ROOT / "stages" / f"{name}.py"))["main"].__wrapped__


@pytest.fixture(scope="session")
def prepare_stage(_run_from_repo_root):
    """stages/prepare.py's main(overrides) in this process: returns the case records it wrote."""
    return _stage_main("prepare")


@pytest.fixture(scope="session")
def report_stage(_run_from_repo_root):
    """stages/report.py's main(overrides) in this process (pass tracking.comet=false: Comet is the stage test's)."""
    return _stage_main("report")


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, prepare_stage) -> Path:
    """The default manifest prepared once (the sample photo, box mask), for the tests that generate from it."""
    out = tmp_path_factory.mktemp("prepared")
    prepare_stage([f"paths.prepare={out}"])
    return out


@pytest.fixture(scope="session")
def manifest():
    """write(folder, entries, photo=None) -> the path of a cases.yaml holding `entries` (and photo.png beside it)."""

    def write(folder: Path, entries: list[dict], photo: Image.Image | None = None) -> Path:
        if photo is not None:
            photo.save(folder / "photo.png")
        path = folder / "cases.yaml"
        path.write_text(yaml.safe_dump(entries))
        return path

    return write


# 3 guidance x 2 strength x 2 steps x 2 negative prompts: the default grid of params.yaml.
GRID = {"guidance": (5.0, 7.5, 12.0), "strength": (0.75, 1.0), "steps": (4, 8), "negative_prompt": ("", "cartoon")}


def _fake_cells(root: Path, grid: dict = GRID, seeds=(0,), failed=(), same_pixels=False) -> int:
    rng = np.random.default_rng(0)
    save_image(Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)), root / "input.png")
    mask = np.zeros((40, 30), bool)
    mask[10:30, 5:20] = True
    save_image(to_mask_image(mask), root / "mask.png")
    n = 0
    for g in grid["guidance"]:
        for s in grid["strength"]:
            for st in grid["steps"]:
                for neg in grid["negative_prompt"]:
                    cid = f"case-{n:03d}"
                    n += 1
                    ok = (g, s, st, neg) not in failed
                    images = []
                    for seed in seeds if ok else ():
                        path = root / "cells" / cid / f"seed-{seed}.png"
                        pixels = rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)
                        save_image(Image.fromarray(np.zeros_like(pixels) if same_pixels else pixels), path)
                        images.append({"seed": seed, "path": str(path), "metrics": {
                            "seconds": 0.1 * n, "peak_memory_mb": 500.0 + n, "drift_mae": 0.01 * n,
                            "drift_psnr": 30.0 - n, "change_inside_mae": 0.2}})
                    write_json({"cell_id": cid, "status": "ok" if ok else "failed",
                                "error": None if ok else "RuntimeError: boom", "case": "case", "prompt": "a red fox",
                                "steps": st, "guidance": g, "strength": s, "negative_prompt": neg,
                                "seed": seeds[0] if len(seeds) == 1 else list(seeds), "model": "tiny",
                                "model_id": "builtin/tiny-sd-inpaint", "model_revision": "v2-seed0",
                                "working_size": [24, 32], "sweep_id": "sweep-1", "input": str(root / "input.png"),
                                "mask": str(root / "mask.png"), "images": images,
                                "comet": f"results/generate/comet/{cid}.zip"},
                               root / "cells" / cid / "record.json")
    return n


@pytest.fixture(scope="session")
def fake_cells():
    """write(root, grid=GRID, seeds=(0,), failed=(), same_pixels=False) -> number of cells: cell folders under
    root/cells as generate writes them (a record + one random PNG per seed; `failed` holds (guidance, strength, steps,
    negative_prompt) tuples of failed cells), and the case's input.png and mask.png in root."""
    return _fake_cells


def stage_env(**extra) -> dict:
    """Environment for running stage scripts and dvc in a subprocess: this venv first on PATH, no real Comet key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMET_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def run(cmd: list[str], cwd: Path = REPO_ROOT, env: dict | None = None, check: bool = True, timeout: int = 300):
    result = subprocess.run(cmd, cwd=cwd, env=env or stage_env(), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def clone_of_working_tree(dest):
    """What `git clone` of this commit gives, plus uncommitted edits: every tracked or unignored file."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        if (REPO_ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, dest / name)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "clone"]):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True)


def shrunk_clone(dest: Path, grid: dict[str, str]) -> Path:
    """A clone of the working tree with no dvc.lock, the sample photos in place and a smaller grid in params.yaml
    (`grid` maps an axis of hydra.sweeper.params to its new value, written as in the file)."""
    from inpaint_sweep.assets import copy_sample_photos

    dest.mkdir(parents=True, exist_ok=True)
    clone_of_working_tree(dest)
    (dest / "dvc.lock").unlink(missing_ok=True)
    copy_sample_photos(dest / "data" / "images")
    params = (dest / "params.yaml").read_text()
    for axis, value in grid.items():
        params, n = re.subn(rf"(\n {{6}}{axis}: )[^\n]*", rf"\g<1>{value}", params)
        assert n == 1, f"grid axis {axis} not found in params.yaml"
    (dest / "params.yaml").write_text(params)
    return dest


# -- generate, in this process (the tests' usual way) or as the stage script -----------------------------------------

def store_args(tmp: Path, prepared: Path, model_cache: Path, view_dir: str = "gen") -> list[str]:
    """Overrides that keep a test's sweep in `tmp`, on the tiny model at 64 px."""
    return ["model.size=64", f"paths.prepare={prepared}", f"paths.generate={tmp}/{view_dir}",
            f"paths.cell_store={tmp}/store", f"hydra.sweep.dir={tmp}/{view_dir}/hydra",
            f"hydra.run.dir={tmp}/{view_dir}/hydra/run", f"model.cache_dir={model_cache}"]


# params.yaml's grid shrunk to one value per axis but guidance, at 2 steps: a test's -m sweeps what it names.
FIXED_GRID = ["hydra.sweeper.params.strength=1.0", "hydra.sweeper.params.steps=2",
              "hydra.sweeper.params.negative_prompt=''"]


def generate(tmp: Path, prepared: Path, model_cache: Path, *args: str, check: bool = True, view_dir: str = "gen"):
    """generate_here, and with `check` the test fails (showing what was printed) unless the run exited 0."""
    ran = generate_here(tmp, prepared, model_cache, *args, view_dir=view_dir)
    assert not check or ran.returncode == 0, f"exit {ran.returncode}\n{ran.stdout}\n{ran.stderr}"
    return ran


def generate_stage(tmp: Path, prepared: Path, model_cache: Path, *args: str, check: bool = True,
                   env: dict | None = None):
    """`python stages/generate.py <args>` in a process of its own, its sweep kept in `tmp` (Hydra's job folders in
    gen/hydra/multirun): for what only the stage's process shows (Hydra's job lines and folders, a launcher, the
    check of the raw command line, the whole run end to end)."""
    cmd = ["python", "stages/generate.py", *args, "model.size=64", f"paths.prepare={prepared}",
           f"paths.generate={tmp}/gen", f"paths.cell_store={tmp}/store", f"hydra.sweep.dir={tmp}/gen/hydra/multirun",
           f"hydra.run.dir={tmp}/gen/hydra/run", f"model.cache_dir={model_cache}"]
    return run(cmd, check=check, env=env)


def sweep_here(tmp: Path, prepared: Path, model_cache: Path, *overrides: str, view_dir: str = "gen",
               multirun: bool = True):
    """What `python stages/generate.py [-m] <overrides>` makes, run in this process; returns the sweep's Summary."""
    from inpaint_sweep.sweep import compose_grid, run_in_process

    configs = compose_grid([*store_args(tmp, prepared, model_cache, view_dir), *overrides], multirun=multirun)
    return run_in_process(configs)


def counts(result) -> dict:
    """Computed, reused and failed cells: of a Summary (in process), or read from a stage run's summary line."""
    if hasattr(result, "computed"):
        return {"computed": result.computed, "reused": result.reused, "failed": len(result.failed)}
    m = re.search(r"generate: (\d+) computed, (\d+) reused from the cell store, (\d+) failed", result.stdout)
    assert m, result.stdout + result.stderr
    return dict(zip(("computed", "reused", "failed"), map(int, m.groups())))


def view(tmp, view_dir: str = "gen") -> list[dict]:
    """The records of the cells in a test's view."""
    import json

    return [json.loads(p.read_text()) for p in sorted(Path(tmp, view_dir, "cells").glob("*/record.json"))]


class Ran:
    """A generate run made in this process, read as a stage run would be: exit code, printed text, Summary."""

    def __init__(self, returncode: int, stdout: str, stderr: str, summary) -> None:
        self.returncode, self.stdout, self.stderr, self.summary = returncode, stdout, stderr, summary
        if summary is not None:
            self.computed, self.reused, self.failed = summary.computed, summary.reused, summary.failed


def generate_here(tmp: Path, prepared: Path, model_cache: Path, *args: str, view_dir: str = "gen") -> Ran:
    """`python stages/generate.py [-m] <args>` made in this process: the same plan, cells, view and summary, without
    the seconds a new process spends importing torch. Warnings are printed as the stage prints them."""
    import contextlib
    import io
    import logging

    out, err, code, summary = io.StringIO(), io.StringIO(), 0, None
    printed = logging.StreamHandler(err)
    printed.setFormatter(logging.Formatter("[%(name)s][%(levelname)s] - %(message)s"))
    package = logging.getLogger("inpaint_sweep")
    level, package.level = package.level, logging.INFO
    package.addHandler(printed)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            summary = sweep_here(tmp, prepared, model_cache, *[a for a in args if a != "-m"], view_dir=view_dir,
                                 multirun="-m" in args)
        except SystemExit as e:
            code = e.code
        finally:
            package.removeHandler(printed)
            package.setLevel(level)
    if summary is not None and summary.failed:
        code = 1
    return Ran(code, out.getvalue(), err.getvalue(), summary)


# -- the settings a function takes from the config, as params.yaml sets them -----------------------------------------

def prepare_settings(**overrides) -> dict:
    """masks.prepare's keyword arguments (mask.*) as params.yaml sets them, with `overrides`: the functions have no
    defaults of their own, so a test states what it changes and takes the rest from the one config."""
    from inpaint_sweep.config import load_config

    m = load_config().mask
    settings = dict(method=m.method, weights=m.weights, sam_weights=m.sam_weights, conf=m.conf, max_det=m.max_det,
                    classes=list(m.classes), on_miss=m.on_miss, clip=m.clip_to_box, holes=m.fill_holes,
                    min_area=m.min_area, overlay_alpha=m.overlay_alpha)
    return {**settings, **overrides}


def report_settings(**overrides) -> dict:
    """report.build_report's keyword arguments (report.*) as params.yaml sets them, no CLIP model and no ratings
    ledger, with `overrides`."""
    from inpaint_sweep.config import load_config

    r = load_config().report
    return {"rows": r.rows, "cols": r.cols, "cell_size": r.cell_size, "max_megapixels": r.max_megapixels,
            "clip": None, "ratings_dir": None, **overrides}


# -- a real Slurm cluster (tests/slurm_cluster.py) ------------------------------------------------------------------

@pytest.fixture(scope="session")
def slurm_cluster():
    """A single-node Slurm cluster on this machine for the session (munged, MariaDB, slurmdbd, slurmctld, slurmd),
    its clients found through SLURM_CONF in `cluster.env`; every daemon stopped by its pid afterwards. Skips, saying
    why, when not root or the packages are missing."""
    import tempfile

    from slurm_cluster import Cluster, missing

    why = missing()
    if why:
        pytest.skip(why)
    root = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))  # short: a unix socket's path must fit in 108 bytes
    with Cluster(root) as cluster:
        print(f"\nSlurm test cluster up in {cluster.bring_up_seconds:.1f} s ({root})")
        yield cluster
    shutil.rmtree(root, ignore_errors=True)
