"""DVC experiments: queued grids run from a clone, share the cell store, a failed one fails the command, and the
experiments table fits a 160-column terminal."""

import re
import sys
from pathlib import Path

import pytest

from conftest import run, shrunk_clone, stage_env
from inpaint_sweep.exp_table import table
from inpaint_sweep.workspace import shared_path

GENERATE_LINE = re.compile(r"generate: (\d+) computed, (\d+) reused from the cell store, (\d+) failed")


def test_relative_cache_paths_belong_to_the_main_repository(tmp_path, monkeypatch):
    main, temp = tmp_path / "repo", tmp_path / "repo/.dvc/tmp/exps/tmpabc123"
    temp.mkdir(parents=True)
    monkeypatch.chdir(temp)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert shared_path(".cache/cells") == Path(".cache/cells")  # outside DVC: as written
    monkeypatch.setenv("DVC_ROOT", str(temp))
    assert shared_path(".cache/cells") == Path(".cache/cells")  # dvc repro in a workspace: as written
    monkeypatch.setenv("DVC_ROOT", str(main))  # a queued experiment: DVC_ROOT is the main repository
    assert shared_path(".cache/cells") == main / ".cache/cells"
    assert shared_path("/srv/cells") == Path("/srv/cells")  # absolute: as written


def _exp(rev, name, state, guidance, psnr):
    params = {"params.yaml": {"data": {"steps": 8, "hydra": {"sweeper": {"params": {"guidance": guidance}}}}}}
    metrics = {"results/report/metrics.json": {"data": {"cells": 2, "mean": {"drift_psnr": psnr}}}}
    entry = {"rev": rev, "name": name, "data": {"params": params, "metrics": metrics, "deps": {"src/a.py": {}}}}
    return {"revs": [entry], "name": name, "executor": {"state": state}}


def test_the_table_shows_changed_grid_values_and_metrics_by_short_names():
    workspace = _exp("workspace", None, None, "5", 10.9953)["revs"][0]
    commit = {**_exp("a" * 40, "main", None, "5", 10.9953)["revs"][0],
              "experiments": [_exp("b" * 40, "obese-gray", "success", "5,9", 11.25),
                              _exp("c" * 40, "front-lamb", "failed", "5", 10.9953)]}
    lines = table([workspace, commit]).splitlines()
    assert lines[0].split() == ["Experiment", "State", "drift_psnr", "guidance"]  # unchanged steps, cells: left out
    assert lines[1].split() == ["workspace", "-", "10.995", "5"]
    assert lines[3].split() == ["bbbbbbb", "[obese-gray]", "success", "11.25", "5,9"]
    assert lines[4].split() == ["ccccccc", "[front-lamb]", "failed", "-", "5"]  # not its baseline's metrics


@pytest.mark.slow
def test_queued_grids_share_the_cell_store_and_a_failed_one_fails_the_command(tmp_path):
    # A fresh clone, shrunk: one case, 64 px, 1 step, one grid point, no Comet.
    repo = shrunk_clone(tmp_path / "repo", {"guidance": "5", "strength": "1.0", "steps": "1",
                                            "negative_prompt": "\"''\""})
    for name, old, new in (("conf/model/tiny.yaml", "size: 256", "size: 64"),
                           ("params.yaml", "  comet: true ", "  comet: false")):
        text = (repo / name).read_text()
        assert old in text
        (repo / name).write_text(text.replace(old, new))
    env = stage_env(PYTHONPATH=str(repo / "src"))
    python = [sys.executable, "-m"]

    def commit(message):
        run(["git", "add", "-A"], cwd=repo)
        run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], cwd=repo)

    # 1. `make repro`, then commit the baseline as a user would.
    commit("shrunk")
    first = run(["dvc", "repro"], cwd=repo, env=env, timeout=600)
    assert [m.groups() for m in GENERATE_LINE.finditer(first.stdout)] == [("1", "0", "0")]
    commit("baseline")

    # 2. Two grids queued, run by the documented command (`make queue`): both succeed in DVC's temporary workspaces,
    #    and guidance=9, in both grids, is computed once: the experiments and the baseline share one cell store.
    for grid in ("5,9", "9,12"):
        run(["dvc", "exp", "run", "--queue", "-S", f"hydra.sweeper.params.guidance='{grid}'"], cwd=repo, env=env)
    ran = run(python + ["inpaint_sweep.exp_queue"], cwd=repo, env=env, timeout=600, check=False)
    out = ran.stdout + ran.stderr
    assert ran.returncode == 0, out
    assert "all 2 queued experiment(s) succeeded" in ran.stdout
    counts = [tuple(map(int, m.groups())) for m in GENERATE_LINE.finditer(out)]
    assert len(counts) == 2 and sum(c[0] for c in counts) == 2 and sum(c[1] for c in counts) == 2, out
    assert not any(c[2] for c in counts)
    stored = [p for p in (repo / ".cache/cells").iterdir() if not p.name.startswith(".")]
    assert len(stored) == 3  # guidance 5, 9, 12: in the main repository's store
    assert len(list((repo / ".cache/models").iterdir())) == 1  # the tiny model, built once
    assert not (repo / ".dvc/tmp/exps").exists() or not any((repo / ".dvc/tmp/exps").glob("tmp*/.cache"))

    # 3. The table fits a 160-column terminal and shows both grids and the report's metrics.
    shown = run(python + ["inpaint_sweep.exp_table"], cwd=repo, env={**env, "COLUMNS": "160"}).stdout
    assert max(map(len, shown.splitlines())) <= 160, shown
    header = shown.splitlines()[0].split()
    assert {"guidance", "seconds", "drift_psnr", "change_inside_mae"} <= set(header), shown
    assert "5,9" in shown and "9,12" in shown and shown.count("success") == 2
    run(["dvc", "exp", "show", "--only-changed", "--no-pager"], cwd=repo, env=env)

    # 4. A bad experiment, started with `dvc queue start`: DVC says nothing, the waiting command exits 1 and says why
    #    (it judges every experiment the queue lists: the two above and this one). It is queued with a code edit,
    #    undone in the workspace before it runs: the experiment must still run its own code, not the workspace's.
    offline = repo / "src/inpaint_sweep/offline.py"
    original = offline.read_text()
    offline.write_text(original + "\nprint('code as queued')\n")
    run(["dvc", "exp", "run", "--queue", "-S", "hydra.sweeper.params.steps='0'"], cwd=repo, env=env)
    offline.write_text(original)
    started = run(["dvc", "queue", "start"], cwd=repo, env=env)
    assert started.returncode == 0
    waited = run(python + ["inpaint_sweep.exp_queue", "--wait"], cwd=repo, env=env, timeout=600, check=False)
    assert waited.returncode == 1, waited.stdout + waited.stderr
    assert "steps must be >= 1, got steps=0" in waited.stderr
    assert "code as queued" in waited.stderr  # printed by the queued copy of the package, in its log's last lines
    assert "1 of 3 queued experiment(s) failed" in waited.stderr
    assert "Failed" in run(["dvc", "queue", "status"], cwd=repo, env=env).stdout
