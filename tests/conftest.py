"""Shared fixtures: tiny seeded models, a prepared case on disk, and the environment for stage subprocesses."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import inpaint_sweep  # noqa: F401  (sets the offline switches before anything else is imported)
from inpaint_sweep.config import REPO_ROOT

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


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    """The default manifest prepared once (the sample photo, box mask), for the tests that generate from it."""
    out = tmp_path_factory.mktemp("prepared")
    run(["python", "stages/prepare.py", f"paths.prepare={out}"])
    return out


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


def prepare_settings(**overrides) -> dict:
    """masks.prepare's keyword arguments (mask.*) as params.yaml sets them, with `overrides`: the functions have no
    defaults of their own, so a test states what it changes and takes the rest from the one config."""
    from inpaint_sweep.config import load_config

    m = load_config().mask
    settings = dict(method=m.method, weights=m.weights, sam_weights=m.sam_weights, conf=m.conf, max_det=m.max_det,
                    classes=list(m.classes), on_miss=m.on_miss, clip=m.clip_to_box, holes=m.fill_holes,
                    min_area=m.min_area, overlay_alpha=m.overlay_alpha)
    return {**settings, **overrides}
