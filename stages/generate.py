"""Stage 2, generate: every cell (one case under one combination of settings) of the grid, computed once.

    python stages/generate.py                      # one cell per case, settings from params.yaml
    python stages/generate.py -m                   # the grid in params.yaml (hydra.sweeper.params); what dvc runs
    python stages/generate.py -m guidance=5,7.5,12 # replace one axis of that grid

A multirun is planned by the grid sweeper (hydra/sweeper: grid, inpaint_sweep.sweep.run_multirun), which launches
this task function once per Hydra job with a `batch` of combinations to make.
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from inpaint_sweep import sweep
from inpaint_sweep.cli import fail, one_line_errors
from inpaint_sweep.validate import precheck_command_line


@hydra.main(version_base="1.3", config_path="../conf", config_name="params")  # params.yaml: see config.py
def main(cfg: DictConfig):
    if cfg.batch:
        return sweep.run_batch(cfg)  # a job of the grid sweeper
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        fail("generate's multirun is planned by its grid sweeper: keep hydra/sweeper=grid (params.yaml)")
    summary = sweep.run_single(cfg)
    sweep.exit_if_failed(summary)
    return summary


if __name__ == "__main__":
    one_line_errors(precheck_command_line)(sys.argv[1:])
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(sweep.EXIT_INTERRUPTED)
