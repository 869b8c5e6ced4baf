"""Hydra plugins: inpaint-sweep's grid sweeper and launcher, selected in params.yaml (`hydra/sweeper: grid`,
`hydra/launcher: grid`). Hydra only loads plugins from the `hydra_plugins` package, hence this module.

They are Hydra's basic sweeper and launcher with the per-job bookkeeping made cheap, which matters when a cell takes
a fraction of a second (the tiny model on a CPU):
- the sweeper's job configs come from `inpaint_sweep.sweep.GridConfigLoader`, which composes each distinct set of
  config-group choices once instead of the whole config twice per job (0.14 s a job here);
- the launcher is Hydra's basic launcher taking each job's config from that loader.
Any other launcher (joblib, submitit, slurm) works with the grid sweeper unchanged.
"""

import copy
import gc
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from hydra.core import utils as hydra_utils
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobRuntime, JobStatus, configure_log, env_override, filter_overrides, setup_globals
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf, flag_override, open_dict, read_write

log = logging.getLogger(__name__)


class GridSweeper(BasicSweeper):
    """Hydra's basic sweeper, with `zip` (groups of axes stepping together instead of crossed) and jobs that load
    the same model run one after the other (inpaint_sweep.sweep.grid_jobs)."""

    def __init__(self, max_batch_size: Optional[int], params: Optional[Dict[str, str]] = None,
                 zip: Optional[List[List[str]]] = None) -> None:  # noqa: A002 - the key's name in the config
        super().__init__(max_batch_size, params)
        self.zip = [list(group) for group in zip or ()]

    def split_arguments(self, overrides, max_batch_size):  # BasicSweeper.sweep calls it on the instance
        from inpaint_sweep.sweep import grid_jobs

        jobs = grid_jobs(overrides, self.zip)
        return [jobs] if max_batch_size is None else list(self.split_overrides_to_chunks(jobs, max_batch_size))

    def setup(self, *, hydra_context: HydraContext, task_function, config) -> None:
        from inpaint_sweep.sweep import GridConfigLoader

        loader = GridConfigLoader(hydra_context.config_loader.get_search_path())
        context = HydraContext(config_loader=loader, callbacks=hydra_context.callbacks)
        super().setup(hydra_context=context, task_function=task_function, config=config)

    def validate_batch_is_legal(self, batch) -> None:
        self.hydra_context.config_loader.check_batch(self.config, batch)


class GridLauncher(BasicLauncher):
    """Hydra's basic launcher: every job in this process, one after the other, each in its own output folder with its
    own log file, callbacks and JobReturn. The config a job gets from the sweeper is already its own copy, so `_run_job`
    copies only what the task may change (Hydra's `run_job` deep-copies the whole config twice more: ~20 ms a job, as
    long as a re-run's whole cell takes). tests/test_hydra_plugins.py runs Hydra's own launcher suites on it."""

    def launch(self, job_overrides, initial_job_idx: int):
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs locally")
        runs = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            if (idx - initial_job_idx) % FREEZE_EVERY == 0:
                _freeze_heap()
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(config):
                config.hydra.job.id = idx
                config.hydra.job.num = idx
            runs.append(_run_job(config, self.task_function, self.hydra_context.callbacks))
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return runs


FREEZE_EVERY = 64  # jobs


def _freeze_heap() -> None:
    """Collect the garbage, then move what is alive out of reach of Python's later collections.

    What is alive when the jobs start (torch's and Hydra's modules: ~500,000 objects) lives until exit, and so does
    each job's config, which Hydra keeps in the job's JobReturn (~1,300 objects a job). Left to itself, Python
    collects that whole growing heap every few dozen jobs (0.15-0.35 s each time): ~3 ms a job at 384 jobs, measured
    with gc.callbacks. Frozen every 64 jobs, a collection only goes over the jobs since the last freeze."""
    gc.collect()
    gc.freeze()


def _run_job(config: DictConfig, task_function, callbacks) -> JobReturn:
    """hydra.core.utils.run_job for a sweep job, step for step, without its two deep copies of the whole `config`
    (the sweeper's loader made this job's config for it alone)."""
    old_cwd, previous = os.getcwd(), HydraConfig.instance().cfg
    output_dir = os.path.join(str(OmegaConf.select(config, "hydra.sweep.dir")),
                              str(OmegaConf.select(config, "hydra.sweep.subdir")))
    with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
        config.hydra.runtime.output_dir = os.path.abspath(output_dir)
    _set_hydra_config(config)
    chdir = None
    try:
        ret = JobReturn()
        # The task's config: a copy with the typed schema at its root (OmegaConf.get_type is the schema class) and
        # no hydra node. The hydra node is left out of the copy (the memo maps it to itself), not copied and deleted.
        hydra_node = config._get_node("hydra")
        task_cfg = copy.deepcopy(config, memo={id(hydra_node): hydra_node})
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        ret.cfg, ret.hydra_cfg = task_cfg, config
        ret.overrides = OmegaConf.to_container(config.hydra.overrides.task)
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        chdir = config.hydra.job.chdir
        if chdir is None:  # as Hydra decides it: from version_base 1.2 on, no chdir
            chdir = not hydra_utils.version.base_at_least("1.2")
        if chdir:
            os.chdir(output_dir)
            ret.working_dir = output_dir
        else:
            ret.working_dir = os.getcwd()
        configure_log(config.hydra.job_logging, config.hydra.verbose)
        if config.hydra.output_subdir is not None:
            saved = Path(config.hydra.runtime.output_dir) / str(config.hydra.output_subdir)
            hydra_utils._save_config(task_cfg, "config.yaml", saved)
            hydra_utils._save_config(HydraConfig.instance().cfg, "hydra.yaml", saved)
            hydra_utils._save_config(config.hydra.overrides.task, "overrides.yaml", saved)
        with env_override(config.hydra.job.env_set):
            callbacks.on_job_start(config=config, task_function=task_function)
            try:
                ret.return_value = task_function(task_cfg)
                ret.status = JobStatus.COMPLETED
            except Exception as e:
                ret.return_value = e
                ret.status = JobStatus.FAILED
        ret.task_name = JobRuntime.instance().get("name")
        hydra_utils._flush_loggers()
        callbacks.on_job_end(config=config, job_return=ret)
        return ret
    finally:
        HydraConfig.instance().cfg = previous
        if chdir:
            os.chdir(old_cwd)


def _set_hydra_config(config: DictConfig) -> None:
    """HydraConfig.instance().set_config(config) without its copy of the hydra node (3-7 ms a job): this job's config
    is its own (the loader composed it for this job alone), so HydraConfig holds its hydra node as is. As set_config
    leaves its copy: read-only, under a root of its own, its parent the job's config (so that interpolations from
    hydra.* into the task's keys resolve). Hydra's config loader places nodes without copies the same way."""
    OmegaConf.set_readonly(config.hydra, True)
    hydra_node = config._get_node("hydra")
    holder = OmegaConf.create()
    with flag_override(holder, "no_deepcopy_set_nodes", True):
        holder.hydra = hydra_node
    hydra_node._set_parent(config)
    HydraConfig.instance().cfg = holder


# Registered under Hydra's own groups too, so that Hydra's plugin test suites (tests/test_hydra_plugins.py) can select
# them in Hydra's test apps; params.yaml selects them through conf/hydra/{launcher,sweeper}/grid.yaml.
@dataclass
class GridLauncherConf:
    _target_: str = "hydra_plugins.inpaint_sweep_grid.GridLauncher"


@dataclass
class GridSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.inpaint_sweep_grid.GridSweeper"
    zip: List[Any] = field(default_factory=list)


ConfigStore.instance().store(group="hydra/launcher", name="inpaint_sweep_grid", node=GridLauncherConf,
                             provider="inpaint_sweep")
ConfigStore.instance().store(group="hydra/sweeper", name="inpaint_sweep_grid", node=GridSweeperConf,
                             provider="inpaint_sweep")
