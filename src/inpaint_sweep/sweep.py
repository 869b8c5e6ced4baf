"""The generate Hydra app's grid: validating it whole before anything is touched, composing its jobs cheaply, and
the callback that starts and feeds the process's sweep runner (runner.py).

`SweepCallback` is registered in params.yaml (hydra.callbacks). At the start of a run or multirun it checks the
whole command line, config and grid (every combination), then takes the view's lock and makes the runner; only then
is anything written. The runner removes the cells of other grids from the view once the run has completed.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import sys
import time
from pathlib import Path

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.errors import ConfigCompositionException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from .cli import one_line_errors
from .config import check_config



class GridConfigLoader(ConfigLoaderImpl):
    """Hydra's config loader, composing each distinct set of config-group choices of a sweep once.

    Hydra composes a job's config from scratch (defaults list, YAML files, the typed schema): about 0.14 s here, twice
    per job (the sweeper validates every job's config before the launcher composes it again), as long as a tiny-model
    cell takes to compute. Jobs of a grid differ in plain values only (guidance=5 vs 7.5), which never change the
    defaults list, so this loader composes the group choices (model=..., hydra/...=..., hydra.* keys) once and applies
    the plain values to a copy with Hydra's own override code, exactly as a full composition would apply them last.
    tests/test_sweep.py checks the result equals Hydra's full composition.
    """

    def __init__(self, config_search_path) -> None:
        super().__init__(config_search_path)
        self._composed: dict[tuple[str, ...], DictConfig] = {}

    def __getstate__(self) -> dict:  # launchers pickle the loader to their workers: without the cache
        return {**self.__dict__, "_composed": {}}

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        groups_key, plain, app = self._split(master_config, sweep_overrides)
        cfg = copy.deepcopy(self._groups_config(master_config, groups_key))
        self._apply(plain, cfg)
        with open_dict(cfg.hydra):
            cfg.hydra.overrides.task = [o.input_line for o in app]  # in command-line order, as Hydra lists them
            dirname = cfg.hydra.job.config.override_dirname
            cfg.hydra.job.override_dirname = get_overrides_dirname(
                overrides=app, kv_sep=dirname.kv_sep, item_sep=dirname.item_sep, exclude_keys=dirname.exclude_keys
            )
        OmegaConf.copy_cache(from_config=master_config, to_config=cfg)
        return cfg

    def check_batch(self, master_config: DictConfig, batch) -> None:
        """Raise what composing any job of `batch` would raise, as the sweeper checks before launching. Without a
        copy of the config per job: the plain values of jobs that share group choices go onto one copy in turn."""
        scratch: dict[tuple[str, ...], DictConfig] = {}
        for overrides in batch:
            groups_key, plain, _ = self._split(master_config, overrides)
            if groups_key not in scratch:
                scratch[groups_key] = copy.deepcopy(self._groups_config(master_config, groups_key))
            self._apply(plain, scratch[groups_key])

    def _split(self, master_config: DictConfig, overrides) -> tuple[tuple[str, ...], list[Override], list[Override]]:
        """(the group-level overrides as a cache key, the plain value overrides, every non-hydra override)."""
        parsed = OverridesParser.create().parse_overrides(list(overrides))
        groups = set(master_config.hydra.runtime.choices)
        plain = [o for o in parsed if _plain_value(o, groups)]
        groups_key = tuple(o.input_line for o in parsed if not _plain_value(o, groups))
        return groups_key, plain, [o for o in parsed if not o.is_hydra_override()]

    def _groups_config(self, master_config: DictConfig, groups_key: tuple[str, ...]) -> DictConfig:
        if groups_key not in self._composed:
            self._composed[groups_key] = super().load_sweep_config(master_config, list(groups_key))
        return self._composed[groups_key]

    @staticmethod
    def _apply(plain: list[Override], cfg: DictConfig) -> None:
        try:
            ConfigLoaderImpl._apply_overrides_to_config(plain, cfg)
        except OmegaConfBaseException as e:  # as Hydra's load_configuration reports it
            raise ConfigCompositionException().with_traceback(sys.exc_info()[2]) from e


def _plain_value(override: Override, groups: set[str]) -> bool:
    """`key=value` setting a value (not a config group, not hydra.*, no +, ++, ~ or @package)."""
    key = override.key_or_group
    return (override.type == OverrideType.CHANGE and override.package is None and not override.is_hydra_override()
            and "/" not in key and key not in groups)


def grid_values(sweeper_params: dict, task_overrides: list[str]) -> dict[str, list]:
    """Each overridden key and its values, as Hydra's basic sweeper sees them (command line over config grid)."""
    from hydra.core.override_parser.types import QuotedString

    parser = OverridesParser.create()
    values = {}
    for override in parser.parse_overrides([f"{k}={v}" for k, v in sweeper_params.items()] + list(task_overrides)):
        found = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
        values[override.get_key_element()] = [v.text if isinstance(v, QuotedString) else v for v in found]
    return values


def check_grid(config: DictConfig, values: dict[str, list]) -> None:
    """Validate every combination of the swept plain values before the first job, so a bad value in the last
    column of a grid fails in the first second instead of after hours of computing."""
    base = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
    plain = {k: v for k, v in values.items() if not k.startswith("hydra.") and k != "model"
             and not isinstance(OmegaConf.select(base, k), DictConfig)}
    for combo in itertools.product(*plain.values()):
        cfg = base.copy()
        for key, value in zip(plain, combo):
            OmegaConf.update(cfg, key, value, merge=False)
        check_config(cfg)


@one_line_errors
def precheck_command_line(argv: list[str]) -> None:
    """Type-check the command line's plain overrides (steps=abc, a typo'd key) before Hydra starts, so they fail with
    the same one-line error and exit code 2 as every other bad value; Hydra's own report spans several lines.
    Group selections and hydra.* overrides are left to Hydra."""
    from .config import ConfigError, load_config

    for arg in argv:  # `+key=value` adds a key the schema does not know: nothing would read it
        if arg.startswith("+") and "=" in arg and not arg.lstrip("+").startswith("hydra"):
            key = arg.lstrip("+").split("=", 1)[0]
            raise ConfigError(f"unknown key {key!r} in {arg!r}: the typed config has no such key (nothing would read "
                              "it); see `python stages/generate.py --help` for the keys")
    overrides = [a for a in argv if "=" in a and not a.startswith(("-", "+", "~", "hydra"))]
    groups = [a for a in overrides if a.split("=", 1)[0] == "model"]
    base = load_config(groups)
    for key, found in grid_values({}, [a for a in overrides if a not in groups]).items():
        for value in found:
            OmegaConf.update(base.copy(), key, value, merge=False)


def check_launcher(launcher: DictConfig) -> None:
    """The parallel launchers' worker counts, which they would otherwise refuse with a traceback mid-start."""
    from .config import ConfigError

    n_jobs = launcher.get("n_jobs")
    if n_jobs is not None and (n_jobs == 0 or n_jobs < -1):
        raise ConfigError(f"hydra.launcher.n_jobs must be >= 1 (or -1: one job per CPU core), got "
                          f"hydra.launcher.n_jobs={n_jobs}")


def sweep_id() -> str:
    """One id for every job of this sweep, in every process, so Comet can group its experiments (override with
    INPAINT_SWEEP_ID); set in the environment, so launchers' worker processes inherit it."""
    return os.environ.setdefault("INPAINT_SWEEP_ID", time.strftime("%Y%m%d-%H%M%S"))


def _begin(config: DictConfig, total_cells: int | None) -> None:
    """After validation: lock the view, make the runner, adopt the view's cells the store lacks, start Comet."""
    from . import runner

    run = runner.start(config, sweep_id(), total_cells)
    run.store.adopt(config.paths.generate)
    if run.logger:
        run.logger.start()  # imports comet_ml while this process imports torch


def _check_inputs(config: DictConfig) -> int:
    """The prepared cases exist; returns how many."""
    from .records import load_prepared

    return len(load_prepared(config.paths.prepare))


class SweepCallback(Callback):
    @one_line_errors  # hydra swallows callback exceptions; a bad value must stop the run with one line
    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        check_config(config)
        _check_inputs(config)
        _begin(config, None)  # a single run: one cell per case, no bar

    @one_line_errors
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from .runner import JOB_REPORT

        values = grid_values(config.hydra.sweeper.params or {}, config.hydra.overrides.task)
        check_grid(config, values)
        check_launcher(config.hydra.launcher)
        cases = _check_inputs(config)
        for stale in Path(config.hydra.sweep.dir).glob(f"**/{JOB_REPORT}"):
            stale.unlink()
        _begin(config, math.prod(len(v) for v in values.values()) * cases)

    def on_job_end(self, config: DictConfig, **kwargs) -> None:
        from . import runner

        run = runner.current(config, sweep_id())
        if run.pid == os.getpid() and run is not runner.launching():
            run.write_job_report(config.hydra.runtime.output_dir)  # a worker: its process may end any moment

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from . import runner

        run = runner.launching()
        if run is not None:
            run.flush()
            run.add_worker_reports(config.hydra.sweep.dir)
