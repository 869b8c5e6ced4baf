"""Stage 2, generate: one Hydra job per grid cell settings, one cell folder (image + record) per case.

    python stages/generate.py                      # one cell per case, settings from params.yaml
    python stages/generate.py -m                   # the grid in params.yaml (hydra.sweeper.params); what dvc runs
    python stages/generate.py -m guidance=5,7.5,12 # replace one axis of that grid
"""

import logging
import os
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from inpaint_sweep import cli, tracking
from inpaint_sweep.cells import load_prepared, run_cell
from inpaint_sweep.config import check_config
from inpaint_sweep.model import load_model

log = logging.getLogger("generate")
# One id for every job this process runs, so Comet can group a sweep's experiments (override with INPAINT_SWEEP_ID).
SWEEP_ID = os.environ.get("INPAINT_SWEEP_ID") or time.strftime("%Y%m%d-%H%M%S")
FAILED: list[str] = []
COMET_DIRS: set[Path] = set()


@hydra.main(version_base="1.3", config_path="..", config_name="params")
@cli.one_line_errors
def main(cfg: DictConfig) -> None:
    check_config(cfg)
    cases = load_prepared(cfg.paths.prepare)
    m = cfg.model
    model = load_model(m.source, m.id, m.revision, m.variant, m.dtype, m.device, m.seed, m.cache_dir)
    settings = {
        "steps": cfg.steps,
        "guidance": cfg.guidance,
        "strength": cfg.strength,
        "negative_prompt": cfg.negative_prompt,
        "seed": cfg.seed,
        "size": m.size,
        "model_name": m.name,
    }
    out = Path(cfg.paths.generate)
    COMET_DIRS.add(out / "comet")
    for case in cases:
        record = run_cell(model, case, settings, out / "cells", out / "comet", cfg.tracking, SWEEP_ID)
        status = record["status_this_run"]
        if status == "failed":
            FAILED.append(record["cell_id"])
            log.error("cell %s failed: %s", record["cell_id"], record["error"])
        else:
            secs = record["metrics"].get("seconds", 0)
            log.info("cell %s %s (%.2fs) %s", record["cell_id"], status, secs, _axes(settings))


def _axes(settings: dict) -> str:
    return " ".join(f"{k}={settings[k]!r}" for k in ("steps", "guidance", "strength", "negative_prompt", "seed"))


if __name__ == "__main__":
    try:
        main()
    finally:
        tracking.flush()
    for comet_dir in COMET_DIRS:
        if any(comet_dir.glob("*.zip")):
            print(f"Comet: offline archives in {comet_dir}/; upload them with: comet upload {comet_dir}/*.zip")
    if FAILED:
        print(f"error: {len(FAILED)} cell(s) failed: {', '.join(FAILED)}", file=sys.stderr)
        sys.exit(1)
