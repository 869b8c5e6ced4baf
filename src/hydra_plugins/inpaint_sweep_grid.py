"""Hydra plugin: inpaint-sweep's grid sweeper, selected in params.yaml (`hydra/sweeper: grid`). Hydra only loads
plugins from the `hydra_plugins` package, hence this module. It uses Hydra's public plugin API only, as Hydra's
example sweeper plugin does, and runs its jobs with whichever launcher is configured.

The grid is Hydra's basic sweeper's (command line over `params`, crossed), plus `zip`: groups of axes that step
together. With `plan_cells` (generate's config sets it), the grid's combinations are not one Hydra job each:
inpaint_sweep.sweep plans every cell first, shows the stored ones, and launches only the combinations with cells to
compute, several per Hydra job. Without it (Hydra's own plugin test suites), every combination is one job, as with
Hydra's basic sweeper.
"""

import contextlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class GridSweeper(Sweeper):
    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[Dict[str, str]] = None,
                 zip: Optional[List[List[str]]] = None, plan_cells: bool = False,  # noqa: A002 - the key's name
                 cells_per_job: Optional[int] = None) -> None:
        super().__init__()
        self.max_batch_size = max_batch_size
        self.params = dict(params or {})
        self.zip = [list(group) for group in zip or ()]
        self.plan_cells = plan_cells
        self.hydra_context: Optional[HydraContext] = None
        self.config: Optional[DictConfig] = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        from inpaint_sweep.grid import combinations, parse

        loader = self.hydra_context.config_loader
        lines = [f"{k}={v}" for k, v in self.params.items()] + list(arguments)
        if self.plan_cells:  # the grid is checked whole before anything is written, multirun.yaml included
            from inpaint_sweep.sweep import exit_if_failed, run_multirun

            summary = run_multirun(self.config, lines, self.zip, loader, self._launch_planned, self._save_config)
            exit_if_failed(summary)
            return summary
        combos = combinations(parse(lines, config_loader=loader), self.zip, by_model=False)
        self._save_config()
        return self._launch_each(combos)

    def _save_config(self) -> None:
        """The sweep's config as multirun.yaml in its folder, as Hydra's basic sweeper saves it."""
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

    def _launch_each(self, combos: List[List[str]]) -> List[Any]:
        """Every combination one job, in batches of max_batch_size, as Hydra's basic sweeper launches them."""
        size = self.max_batch_size or len(combos) or 1
        returns, index = [], 0
        for start in range(0, len(combos), size):
            batch = combos[start:start + size]
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=index)
            for result in results:
                _ = result.return_value  # re-raises a failed job's error, as Hydra's basic sweeper does
            index += len(batch)
            returns.append(results)
        return returns

    def _launch_planned(self, jobs: List[List[str]]) -> List[Any]:
        """Launch generate's jobs; a job that failed as a whole (not one of its cells) is reported in one line, and
        its cells count as failed in the summary."""
        from inpaint_sweep.errors import DiskFull

        self.validate_batch_is_legal(jobs)
        try:
            results = self.launcher.launch(jobs, initial_job_idx=0)
        except Exception as e:  # noqa: BLE001 - e.g. a Slurm job cancelled or out of time: the summary says the rest
            log.error("Hydra jobs did not all finish: %s", _one_line(e))
            return []
        full = None
        for index, result in enumerate(results):
            try:
                with contextlib.redirect_stderr(io.StringIO()):  # Hydra's "Error executing job": said below
                    value = result.return_value
                if isinstance(value, dict) and isinstance(value.get("disk_full"), DiskFull):
                    full = full or value["disk_full"]  # said once, with what was kept, by sweep.run_grid
            except Exception as e:  # noqa: BLE001 - reported; the sweep's summary counts its cells
                log.error("Hydra job #%d failed: %s: %s", index, type(e).__name__, e)
        if full is not None:
            raise full
        return results


@dataclass
class GridSweeperConf:
    _target_: str = "hydra_plugins.inpaint_sweep_grid.GridSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None
    zip: List[Any] = field(default_factory=list)
    plan_cells: bool = False
    cells_per_job: Optional[int] = None


# Registered under Hydra's own group, so that Hydra's plugin test suites (tests/test_hydra_plugins.py) can select it
# in Hydra's test apps; params.yaml selects it through conf/hydra/sweeper/grid.yaml.
ConfigStore.instance().store(group="hydra/sweeper", name="inpaint_sweep_grid", node=GridSweeperConf,
                             provider="inpaint_sweep")


def _one_line(e: Exception) -> str:
    """A launcher's error in one line; submitit's UncompletedJobError says the job's Slurm state on its second."""
    lines = [line.strip() for line in str(e).strip().splitlines()]
    said = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    if len(lines) > 1 and lines[1].startswith("has not produced"):  # "... output (state: CANCELLED by 0)"
        said += " " + lines[1]
    return said
