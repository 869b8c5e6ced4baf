"""End to end, for real: a copy of the repository, `dvc repro` on a shrunk grid, then the no-op and the grid edit."""

import json
import zipfile

import pandas as pd
import pytest


from conftest import run, shrunk_clone, stage_env

pytestmark = pytest.mark.slow

SHRUNK_GRID = {"guidance": "5,9", "strength": "1.0", "steps": "2", "negative_prompt": "\"''\""}


def test_dvc_repro_end_to_end(tmp_path):
    repo = shrunk_clone(tmp_path / "repo", SHRUNK_GRID)
    env = stage_env(PYTHONPATH=str(repo / "src"))

    # 1. The whole pipeline.
    first = run(["dvc", "repro"], cwd=repo, env=env, timeout=600)
    for stage in ("prepare", "generate", "report"):
        assert f"Running stage '{stage}'" in first.stdout
    runs = pd.read_csv(repo / "results" / "report" / "runs.csv")
    assert sorted(runs["guidance"]) == [5.0, 9.0] and (runs["status"] == "ok").all()
    assert len(list((repo / "results" / "report" / "grids").glob("*.png"))) == 1
    assert len(list((repo / "results" / "generate" / "comet").glob("*.zip"))) == 2
    # dvc.lock, params.yaml and results/ were rewritten by now: not a change to the code
    assert not any(json.loads(p.read_text())["code_version"].endswith("-dirty")
                   for p in (repo / "results" / "generate" / "cells").glob("*/record.json"))
    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], cwd=repo, env=env).stdout)
    assert "results/report/metrics.json" in json.dumps(metrics) and '"cells": 2' in json.dumps(metrics)
    # The clone's archives read as people compare runs: a name with the swept value, typed parameters without
    # placeholders, the clone's commit through comet_ml's git logging, the generation time.
    head = run(["git", "rev-parse", "HEAD"], cwd=repo).stdout.strip()
    names = []
    for archive in (repo / "results" / "generate" / "comet").glob("*.zip"):
        with zipfile.ZipFile(archive) as z:
            messages = [json.loads(x)["payload"] for x in z.read("messages.json").decode().splitlines() if x.strip()]
        params = {m["param"]["paramName"]: m["param"]["paramValue"] for m in messages if "param" in m}
        names += [m["value"] for m in messages if m.get("key") == "Name"]
        assert isinstance(params["guidance"], float) and not {"(default)", "(none)", "[]"} & set(map(str,
                                                                                                    params.values()))
        assert [m["git_metadata"]["parent"] for m in messages if "git_metadata" in m] == [head]
        assert [m["metric"]["metricValue"] > 0 for m in messages
                if m.get("metric", {}).get("metricName") == "generation_seconds"] == [True]
    assert sorted(names) == ["bus_person · guidance=5", "bus_person · guidance=9"]

    # 2. Nothing changed: nothing runs.
    second = run(["dvc", "repro"], cwd=repo, env=env)
    assert "Running stage" not in second.stdout
    assert second.stdout.count("didn't change, skipping") == 4  # data/images.dvc and the three stages

    # 3. People answered in the review app (make review): only the report runs again, and shows it.
    from inpaint_sweep import ratings

    cells = sorted(zip(runs["cell_id"], runs["seed"]))
    ratings.append(repo / "data" / "ratings", ratings.new_answer("ann", runs["case"][0], cells[0], cells[1], "right"))
    rated = run(["dvc", "repro"], cwd=repo, env=env)
    assert "Running stage 'report'" in rated.stdout and "Running stage 'generate'" not in rated.stdout
    runs = pd.read_csv(repo / "results" / "report" / "runs.csv").set_index("cell_id")
    assert runs.loc[cells[1][0], "human_score"] > runs.loc[cells[0][0], "human_score"]
    assert runs["human_answers"].tolist() == [1, 1]
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], cwd=repo, env=env).stdout)
    assert '"answers": 1' in json.dumps(shown) and '"raters": 1' in json.dumps(shown)
    html = (repo / "results" / "report" / "index.html").read_text()
    assert html.index('id="people"') < html.index('id="summary"') and "1 blind pairwise answer(s)" in html

    # 4. Edit one grid value the way the README says: generate and report run again, prepare does not.
    run(["git", "add", "-A"], cwd=repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "ran"], cwd=repo)
    third = run(["dvc", "exp", "run", "-S", "hydra.sweeper.params.guidance='5,12'"], cwd=repo, env=env, timeout=600)
    assert "Stage 'prepare' didn't change, skipping" in third.stdout
    assert "Running stage 'generate'" in third.stdout and "Running stage 'report'" in third.stdout
    runs = pd.read_csv(repo / "results" / "report" / "runs.csv")
    assert sorted(runs["guidance"]) == [5.0, 12.0]
    metrics = json.loads(run(["dvc", "metrics", "diff", "--all", "--json"], cwd=repo, env=env).stdout)
    metrics = metrics["results/report/metrics.json"]  # HEAD's values come from git: no `dvc pull` needed
    assert metrics["cells"]["old"] == metrics["cells"]["new"] == 2 and metrics["mean.drift_psnr"]["old"] is not None
    diff = run(["dvc", "params", "diff"], cwd=repo, env=env).stdout
    assert "hydra.sweeper.params.guidance" in diff and "5,9" in diff and "5,12" in diff
