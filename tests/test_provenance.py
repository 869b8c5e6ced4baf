"""code_version(): the commit that made a cell, `-dirty` only when tracked source differs from it."""

import subprocess

import pytest

from inpaint_sweep.provenance import code_version


def git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    """A small repository laid out like this one, one commit."""
    for name in ("src/inpaint_sweep/cells.py", "stages/generate.py", "conf/model/tiny.yaml", "dvc.yaml",
                 "params.yaml", "dvc.lock", "data/images.dvc", ".dvc/config", "results/report/metrics.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("v1\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    code_version.cache_clear()
    yield tmp_path
    code_version.cache_clear()


def test_files_dvc_writes_never_make_the_code_dirty(repo):
    head = git(repo, "rev-parse", "HEAD")
    # What a `make repro` in a fresh clone and a `dvc exp run -S` change, plus untracked and ignored results.
    (repo / "dvc.lock").write_text("rewritten by dvc repro\n")
    (repo / "params.yaml").write_text("hydra.sweeper.params.guidance: 5,12  # dvc exp run -S\n")
    (repo / "data/images.dvc").write_text("recommitted\n")
    (repo / ".dvc/config").write_text("[core]\n remote = shared\n")
    (repo / "results/report/metrics.json").write_text('{"cells": 2}')  # in git, rewritten by every run
    (repo / "results/report/runs.csv").write_text("untracked")
    assert code_version(repo) == head
    assert code_version(repo / "results") == head  # from a subdirectory too


@pytest.mark.parametrize("source", ["src/inpaint_sweep/cells.py", "stages/generate.py", "conf/model/tiny.yaml",
                                    "dvc.yaml"])
def test_a_change_to_tracked_source_is_dirty(repo, source):
    (repo / "params.yaml").write_text("changed too\n")
    (repo / source).write_text("v2\n")
    assert code_version(repo) == git(repo, "rev-parse", "HEAD") + "-dirty"


def test_outside_git_it_says_unknown(tmp_path):
    assert code_version(tmp_path) == "unknown"
