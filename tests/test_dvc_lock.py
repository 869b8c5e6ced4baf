"""The committed dvc.lock matches the code: what DVC hashes of each stage's deps, params and command is what the lock
says. Otherwise `make repro` in a fresh clone re-runs stages for code that did not change and rewrites the lock's
deps, so `dvc.lock` differs from HEAD in every clone. Fix a failure with `dvc repro` and commit dvc.lock."""

import yaml

from inpaint_sweep.config import REPO_ROOT


def lock_drift(root) -> list[str]:
    """What `dvc status` says changed in dvc.yaml's stages, without their outputs and without deps that another stage
    makes (results/ is not in git; those hashes come from the stage that makes them): each dep's md5 (files and
    folders as DVC hashes them), each param's value, the command. A dep that a .dvc file tracks (data/images) must
    have that file's hash."""
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    locked = (yaml.safe_load((root / "dvc.lock").read_text()) or {}).get("stages", {})
    drift = []
    with Repo(str(root)) as repo:
        stages = list(repo.index.stages)
        made = {out.fs_path: out for stage in stages for out in stage.outs}
        for stage in stages:
            if not isinstance(stage, PipelineStage):
                continue
            if stage.name not in locked:
                drift.append(f"{stage.name}: not in dvc.lock")
                continue
            if stage.cmd_changed:
                drift.append(f"{stage.name}: command changed")
            for dep in stage.deps:
                out = made.get(dep.fs_path)
                if out is None:
                    for path, change in dep.status().items():  # a params file's change is {param: change}
                        changes = change.items() if isinstance(change, dict) else [("", change)]
                        drift += [f"{stage.name}: {path}{':' if key else ''}{key} {what}" for key, what in changes]
                elif not isinstance(out.stage, PipelineStage) and dep.hash_info != out.hash_info:
                    drift.append(f"{stage.name}: {dep} is {dep.hash_info.value} in dvc.lock, "
                                 f"{out.hash_info.value} in {out.stage.relpath}")
    return drift


def test_committed_dvc_lock_matches_the_code():
    drift = lock_drift(REPO_ROOT)
    assert not drift, "dvc.lock is stale (run `dvc repro` and commit dvc.lock):\n" + "\n".join(drift)


def test_a_changed_dep_or_param_is_caught(tmp_path):
    """The check itself: a copy of the repository with one source file and one param changed."""
    import shutil
    import subprocess

    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, text=True,
                           check=True).stdout.split("\0")
    for name in filter(None, files):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, tmp_path / name)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    with open(tmp_path / "stages/report.py", "a") as f:
        f.write("# changed\n")
    params = tmp_path / "params.yaml"
    params.write_text(params.read_text().replace("  cell_size: 256", "  cell_size: 128"))
    drift = lock_drift(tmp_path)
    assert "report: stages/report.py modified" in drift
    assert "report: params.yaml:report modified" in drift  # the stage lists the whole `report` section
