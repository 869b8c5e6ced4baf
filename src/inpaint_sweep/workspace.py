"""Caches shared by every workspace of the repository, including the temporary ones DVC runs experiments in."""

from __future__ import annotations

import os
from pathlib import Path


def shared_path(path: str | os.PathLike) -> Path:
    """A cache path (paths.cell_store, model.cache_dir) as the stage should open it: relative paths belong to the
    main repository, wherever DVC runs the stage.

    `dvc exp run --queue`/`--temp`/`--run-all` run the pipeline in a temporary copy of the repository,
    `.dvc/tmp/exps/<tmp>/`, that holds only git-tracked files and DVC-tracked data and is deleted afterwards. A relative
    cache there would start empty and be thrown away: every queued experiment would recompute every cell. DVC sets
    `DVC_ROOT` in a stage's environment to the repository root, and for those temporary runs to the *main* repository's
    root, so relative caches resolve against it: queued experiments read and fill the same cell store and model cache
    as `dvc repro` in the workspace. (A cache outside the repository, e.g. ~/.cache, would do too, but would also be
    shared by every clone and test copy, and `make clean` or deleting `.cache/` would no longer reclaim it.)
    In the workspace itself, or outside DVC, the path is returned unchanged.
    """
    path = Path(path)
    root = os.environ.get("DVC_ROOT")
    if path.is_absolute() or not root or Path(root).resolve() == Path.cwd().resolve():
        return path
    return Path(root) / path
