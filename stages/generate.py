"""Stage 2, generate: one Hydra job per combination of settings, one cell (images + record) per case.

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

from inpaint_sweep import cli, sweep, tracking
from inpaint_sweep.cells import RECORD, load_prepared, read_record, run_cell
from inpaint_sweep.cells import flush as flush_cells
from inpaint_sweep.config import SWEEP_AXES, check_config
from inpaint_sweep.model import load_model, set_scheduler, use_cpu_threads
from inpaint_sweep.workspace import shared_path

log = logging.getLogger("generate")
# One id for every job this process runs, so Comet can group a sweep's experiments (override with INPAINT_SWEEP_ID).
SWEEP_ID = os.environ.get("INPAINT_SWEEP_ID") or time.strftime("%Y%m%d-%H%M%S")
OUTPUT_DIRS: set[Path] = set()


@hydra.main(version_base="1.3", config_path="..", config_name="params")
@cli.one_line_errors
def main(cfg: DictConfig) -> None:
    check_config(cfg)
    cases = load_prepared(cfg.paths.prepare)
    m = cfg.model
    model = load_model(
        m.source, m.id, m.revision, m.variant, m.dtype, m.device, m.seed, shared_path(m.cache_dir), config=m.config,
        pipeline=m.pipeline, vae_upcast=m.vae_upcast, attention=m.attention, channels_last=m.channels_last,
        compile_unet=m.compile_unet, offload=m.offload, vae_tiling=m.vae_tiling, vae_slicing=m.vae_slicing,
        allow_unsafe_pickle=m.allow_unsafe_pickle, safety_checker=m.safety_checker,
    )  # cached per process by these arguments: a scheduler sweep loads once
    set_scheduler(model, m.scheduler)  # this job's scheduler, on the shared pipeline
    use_cpu_threads(model.device, m.cpu_threads)
    settings = {
        "steps": cfg.steps,
        "guidance": cfg.guidance,
        "strength": cfg.strength,
        "negative_prompt": cfg.negative_prompt,
        "seed": cfg.seed if isinstance(cfg.seed, int) else list(cfg.seed),
        "size": m.size,
        "model_name": m.name,
        "scheduler": m.scheduler,
        "padding_mask_crop": m.padding_mask_crop,
    }
    out = Path(cfg.paths.generate)
    OUTPUT_DIRS.add(out)
    for case in cases:
        record, status = run_cell(model, case, settings, shared_path(cfg.paths.cell_store), out, cfg.tracking, SWEEP_ID,
                                  on_finished=_finished)
        if status == "failed":
            log.error("cell %s failed: %s", record["cell_id"], record["error"])
        else:
            log.info("cell %s %s %s", record["cell_id"], status, _axes(settings))


def _finished(record: dict, status: str) -> None:
    sweep.advance(status)  # the overall bar moves once a cell's files are written


def _axes(settings: dict) -> str:
    return " ".join(f"{k}={settings[k]!r}" for k in SWEEP_AXES)


def _failed_cells(out: Path) -> list[str]:
    """Failed cells in the view, read from disk so that cells run by any launcher's workers count."""
    records = (read_record(p.parent) for p in sorted(out.glob(f"cells/*/{RECORD}")))
    return [r["cell_id"] for r in records if r is not None and r.get("status") == "failed"]


if __name__ == "__main__":
    sweep.precheck_command_line(sys.argv[1:])
    try:
        main()
    finally:
        flush_cells()  # computed cells still being written
        tracking.flush()  # experiments still being logged
        sweep.finish()
    failed = []
    for out in OUTPUT_DIRS | sweep.LAUNCHER["views"]:  # views: cells that joblib/submitit workers wrote
        if any((out / "comet").glob("*.zip")):
            print(f"Comet: offline archives in {out}/comet/; upload them with: comet upload {out}/comet/*.zip")
        failed += _failed_cells(out)
    c = sweep.COUNTS
    print(f"generate: {c['done']} computed, {c['skipped']} reused from the cell store, {c['failed']} failed")
    if failed:
        print(f"error: {len(failed)} cell(s) failed: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)
