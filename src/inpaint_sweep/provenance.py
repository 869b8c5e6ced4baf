"""Which code made a result: the git commit, with `-dirty` only when tracked *source* files differ from it."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path

# Tracked files that DVC writes while a pipeline or an experiment runs. A change to them is not a change to the code,
# so it must not mark every cell of a run `-dirty`:
#   dvc.lock     rewritten after every stage `dvc repro` runs (its outputs' hashes change with every run's timings);
#   params.yaml  edited by `dvc exp run -S ...`, and by DVC in the temporary workspace of a queued experiment (each
#                cell record holds the values it used, so the config is recorded anyway);
#   *.dvc        rewritten when `dvc repro`/`dvc commit` caches a data source (data/images.dvc);
#   .dvc/        DVC's own config (`dvc remote add` edits .dvc/config);
#   results/     stage outputs; only the report's metrics.json is in git (`cache: false`), rewritten by each run.
# Everything else that git tracks counts: src/, stages/, conf/, dvc.yaml, pyproject.toml, the manifests, ...
NOT_CODE = ("dvc.lock", "params.yaml", "**/*.dvc", ".dvc", "results")


def _git(args: list[str], cwd: Path | None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=10).stdout


@lru_cache(maxsize=4)
def code_version(repo: str | Path | None = None) -> str:
    """The git commit of the code in `repo` (default: the current directory), `<sha>-dirty` when a tracked source
    file has uncommitted changes (files in NOT_CODE never count), "unknown" outside git."""
    cwd = Path(repo) if repo is not None else None
    try:
        commit = _git(["rev-parse", "HEAD"], cwd).strip()
        excludes = [f":(top,exclude,glob){p}" for p in NOT_CODE]
        dirty = _git(["status", "--porcelain", "--untracked-files=no", "--", ":(top)", *excludes], cwd).strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")
