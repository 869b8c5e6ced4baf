"""The generate Hydra app's grid: validating it whole before anything is touched, composing its jobs cheaply, and
the callback that starts and feeds the process's sweep runner (runner.py).

`SweepCallback` is registered in params.yaml (hydra.callbacks). At the start of a run or multirun it checks the
whole command line, config and grid (every combination), then takes the view's lock and makes the runner; only then
is anything written. The runner removes the cells of other grids from the view once the run has completed.
"""

from __future__ import annotations

import copy
import itertools
import os
import pickle
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

    Each job's copy of a composed config is unpickled: 0.8 ms instead of 4 ms for copy.deepcopy (see _Template).
    """

    def __init__(self, config_search_path) -> None:
        super().__init__(config_search_path)
        self._composed: dict[tuple[str, ...], _Template] = {}  # group choices -> their composed config
        self._tasks: dict[tuple[str, ...], _Template] = {}  # the same without the hydra node (task_config)
        self._parsed: dict[str, Override] = {}  # each override's parse: a grid repeats each value in many jobs

    def __getstate__(self) -> dict:  # launchers pickle the loader to their workers: without the caches
        return {**self.__dict__, "_composed": {}, "_tasks": {}, "_parsed": {}}

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        groups_key, plain, app = self._split(master_config, sweep_overrides)
        cfg = self._groups_config(master_config, groups_key).copy()
        self._apply(plain, cfg)
        with open_dict(cfg.hydra):
            cfg.hydra.overrides.task = [o.input_line for o in app]  # in command-line order, as Hydra lists them
            dirname = cfg.hydra.job.config.override_dirname
            cfg.hydra.job.override_dirname = get_overrides_dirname(
                overrides=app, kv_sep=dirname.kv_sep, item_sep=dirname.item_sep, exclude_keys=dirname.exclude_keys
            )
        OmegaConf.copy_cache(from_config=master_config, to_config=cfg)
        return cfg

    def task_config(self, master_config: DictConfig, overrides) -> tuple[tuple[str, ...], DictConfig]:
        """(the job's task overrides, as hydra.overrides.task lists them; its task config, no hydra node), composed
        as load_sweep_config composes it but copying only the task's part of the config."""
        groups_key, plain, app = self._split(master_config, overrides)
        if groups_key not in self._tasks:
            task = self._groups_config(master_config, groups_key).copy()
            with open_dict(task):
                del task["hydra"]
            self._tasks[groups_key] = _Template(task)
        cfg = self._tasks[groups_key].copy()
        self._apply(plain, cfg)
        return tuple(o.input_line for o in app), cfg

    def check_batch(self, master_config: DictConfig, batch) -> None:
        """Raise what composing any job of `batch` would raise, as the sweeper checks before launching. Without a
        copy of the config per job: the plain values of jobs that share group choices go onto one copy in turn."""
        scratch: dict[tuple[str, ...], DictConfig] = {}
        for overrides in batch:
            groups_key, plain, _ = self._split(master_config, overrides)
            if groups_key not in scratch:
                scratch[groups_key] = self._groups_config(master_config, groups_key).copy()
            self._apply(plain, scratch[groups_key])

    def _split(self, master_config: DictConfig, overrides) -> tuple[tuple[str, ...], list[Override], list[Override]]:
        """(the group-level overrides as a cache key, the plain value overrides, every non-hydra override)."""
        new = [line for line in overrides if line not in self._parsed]
        if new:
            self._parsed.update(zip(new, OverridesParser.create().parse_overrides(new)))
        parsed = [self._parsed[line] for line in overrides]
        groups = set(master_config.hydra.runtime.choices)
        plain = [o for o in parsed if _plain_value(o, groups)]
        groups_key = tuple(o.input_line for o in parsed if not _plain_value(o, groups))
        return groups_key, plain, [o for o in parsed if not o.is_hydra_override()]

    def _groups_config(self, master_config: DictConfig, groups_key: tuple[str, ...]) -> "_Template":
        if groups_key not in self._composed:
            self._composed[groups_key] = _Template(super().load_sweep_config(master_config, list(groups_key)))
        return self._composed[groups_key]

    @staticmethod
    def _apply(plain: list[Override], cfg: DictConfig) -> None:
        try:
            ConfigLoaderImpl._apply_overrides_to_config(plain, cfg)
        except OmegaConfBaseException as e:  # as Hydra's load_configuration reports it
            raise ConfigCompositionException().with_traceback(sys.exc_info()[2]) from e


class _Template:
    """A composed config that each job gets a copy of: unpickled (0.8 ms), or deep-copied (4 ms) where it does not
    pickle. OmegaConf configs pickle whole, as Hydra's joblib and submitit launchers send them to their workers, but
    not where a node is typed by a class pickle cannot find under its name (Hydra's plugin scan loads some plugin
    modules twice: hydra/launcher=joblib's config class is one)."""

    def __init__(self, config: DictConfig) -> None:
        try:
            self._pickled, self._config = pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL), None
        except (pickle.PicklingError, TypeError, AttributeError):
            self._pickled, self._config = None, config

    def copy(self) -> DictConfig:
        return pickle.loads(self._pickled) if self._pickled is not None else copy.deepcopy(self._config)


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


def grid_jobs(overrides: list[Override], zipped=(), by_model: bool = True) -> list[list[str]]:
    """The grid's jobs, each a list of `key=value` overrides: Hydra's basic sweeper's cross product of every key's
    values (command line over config grid), except that
    - the keys of each group in `zipped` (hydra.sweeper.zip, e.g. [[steps, strength]]) step together, value i with
      value i, as one axis placed where the group's first key is;
    - jobs that load the same pipeline (config.forces_reload: the model preset, model.id, model.dtype, ...) run one
      after the other, in the order their first job has in the product: the costliest axis outermost, so each
      model loads once per process. Jobs that load the same pipeline keep their order.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.errors import HydraException

    from .config import ConfigError, forces_reload

    axes: dict[str, list[str]] = {}
    for override in overrides:
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise HydraException(
                    f"{BasicSweeper.__name__} does not support sweep type : {override.value_type.name}")
            axes[key] = [f"{key}={v}" for v in override.sweep_string_iterator()]
        else:
            axes[key] = [f"{key}={override.get_value_element_as_str()}"]

    # 1. Columns of the product: a plain axis, or a zipped group as one axis of tuples.
    groups = [[str(k) for k in group] for group in zipped or ()]
    for group in groups:
        missing = [k for k in group if k not in axes]
        if missing:
            raise ConfigError(f"hydra.sweeper.zip names {', '.join(missing)}, which the grid does not set; zip only "
                              f"axes of hydra.sweeper.params or the command line")
        lengths = [len(axes[k]) for k in group]
        if len(set(lengths)) > 1:
            shown = ", ".join(f"{k} ({n} value{'s' * (n != 1)})" for k, n in zip(group, lengths))
            raise ConfigError(f"hydra.sweeper.zip pairs {shown}: zipped axes need the same number of values")
    zipped_keys = {k: group for group in groups for k in group}
    columns: list[list[tuple[str, ...]]] = []
    for key, values in axes.items():
        group = zipped_keys.get(key)
        if group is None:
            columns.append([(v,) for v in values])
        elif key == group[0] or group[0] not in axes:
            columns.append(list(zip(*(axes[k] for k in group))))
    jobs = [[o for part in combo for o in part] for combo in itertools.product(*columns)]

    # 2. Jobs sharing a pipeline adjacent.
    if not by_model:
        return jobs
    runs: dict[tuple[str, ...], list[list[str]]] = {}
    for job in jobs:
        runs.setdefault(tuple(o for o in job if forces_reload(o.split("=", 1)[0])), []).append(job)
    return [job for run in runs.values() for job in run]


def sweep_jobs(config: DictConfig, config_loader=None) -> list[list[str]]:
    """This multirun's jobs, exactly as the grid sweeper will launch them (hydra.sweeper.params, then the command
    line, crossed and zipped by grid_jobs); `config_loader` lets glob() list a config group's options. Under
    another sweeper (hydra/sweeper=basic), its plain cross product."""
    sweeper = config.hydra.sweeper
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    parser = OverridesParser.create(config_loader=config_loader)
    overrides = parser.parse_overrides(params + list(config.hydra.overrides.task))
    if not str(sweeper.get("_target_", "")).endswith("GridSweeper"):
        return grid_jobs(overrides, by_model=False)
    return grid_jobs(overrides, sweeper.get("zip") or ())


def job_configs(config: DictConfig, jobs: list[list[str]]):
    """Each job's (task overrides, task config without the hydra node), composed as the grid launcher will."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GridConfigLoader(GlobalHydra.instance().config_loader().get_search_path())
    for job in jobs:
        yield loader.task_config(config, job)


@one_line_errors
def precheck_command_line(argv: list[str]) -> None:
    """Type-check the command line's plain overrides (steps=abc, a typo'd key) before Hydra starts, so they fail with
    the same one-line error and exit code 2 as every other bad value; Hydra's own report spans several lines.
    A swept preset (model=a,b) is checked with each of its choices; glob() choices and hydra.* are left to Hydra."""
    from hydra.errors import OverrideParseException

    from .config import ConfigError, load_config

    for arg in argv:  # `+key=value` adds a key the schema does not know: nothing would read it
        if arg.startswith("+") and "=" in arg and not arg.lstrip("+").startswith("hydra"):
            key = arg.lstrip("+").split("=", 1)[0]
            raise ConfigError(f"unknown key {key!r} in {arg!r}: the typed config has no such key (nothing would read "
                              "it); see `python stages/generate.py --help` for the keys")

    # 1. Texts with spaces, commas or brackets need Hydra's quotes; say which quotes, in one line.
    for i, arg in enumerate(argv):
        if i and "=" not in arg and not arg.startswith("-") and "=" in argv[i - 1] and not argv[i - 1].startswith("-"):
            words = list(itertools.takewhile(lambda a: "=" not in a and not a.startswith("-"), argv[i:]))
            raise ConfigError(f"{arg!r} is not key=value: the shell split {' '.join([argv[i - 1], *words])!r} at its "
                              f"spaces; {_quoting(argv[i - 1] + ' ' + ' '.join(words))}")
    for arg in argv:
        if "=" in arg and not arg.startswith("-"):
            try:
                OverridesParser.create().parse_overrides([arg])
            except OverrideParseException as e:
                raise ConfigError(f"cannot read {arg!r} ({str(e).splitlines()[0]}); {_quoting(arg)}") from None

    # 2. Types and keys.
    overrides = [a for a in argv if "=" in a and not a.startswith(("-", "+", "~", "hydra"))]
    groups = [a for a in overrides if a.split("=", 1)[0] == "model"]
    plain = grid_values({}, [a for a in overrides if a not in groups])
    if any("glob(" in g for g in groups):
        return  # glob() needs the preset folder's listing: Hydra checks it
    choices = [[f"model={c}" for c in found] for found in grid_values({}, groups[-1:]).values()]
    for group_overrides in itertools.product(*choices):
        base = load_config(list(group_overrides))
        for key, found in plain.items():
            for value in found:
                OmegaConf.update(base.copy(), key, value, merge=False)


def _quoting(override: str) -> str:
    key, value = override.split("=", 1)
    return (f"a text holding spaces, commas or brackets goes in single quotes inside double quotes: "
            f"{key}=\"'{value.strip()}'\" (several: {key}=\"'one, two','three'\")")


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


def _begin(config: DictConfig):
    """After validation: lock the view, make the runner, adopt the view's cells the store lacks, start Comet."""
    from . import runner

    run = runner.start(config, sweep_id())
    run.store.remove_leftovers()  # half-written cells of a killed run
    run.store.adopt(config.paths.generate)
    if run.logger:
        run.logger.start()  # imports comet_ml while this process imports torch
    return run


def _check_inputs(config: DictConfig, jobs: list[DictConfig]) -> None:
    """The prepared cases exist, and every job's prompts apply to each (prompt_sr finds its text): prompt_variants
    raises ConfigError naming the case otherwise."""
    from .records import load_prepared
    from .runner import prompt_variants

    cases = load_prepared(config.paths.prepare)
    for cfg in jobs:
        for case in cases:
            prompt_variants(case.id, case.prompt, cfg.prompt, cfg.negative_prompt, cfg.prompt_sr)


class SweepCallback(Callback):
    @one_line_errors  # hydra swallows callback exceptions; a bad value must stop the run with one line
    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        check_config(config)
        _check_inputs(config, [config])
        _begin(config)  # a single run: no bar

    @one_line_errors
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from hydra.core.global_hydra import GlobalHydra

        from .runner import JOB_REPORT

        check_launcher(config.hydra.launcher)
        # 1. Every job's config, composed as the launcher will, validated before anything is written.
        jobs = sweep_jobs(config, GlobalHydra.instance().config_loader())
        configs = list(job_configs(config, jobs))
        for _, cfg in configs:
            check_config(cfg)
        _check_inputs(config, [cfg for _, cfg in configs])
        for stale in Path(config.hydra.sweep.dir).glob(f"**/{JOB_REPORT}"):
            stale.unlink()
        # 2. The runner; then what the grid will cost: its cells, those already stored, and the model loads.
        run = _begin(config)
        cells, stored, loads = run.plan(configs)
        where = "" if config.hydra.launcher._target_.endswith(("GridLauncher", "BasicLauncher")) else " per worker"
        print(f"generate: {len(jobs)} jobs, {cells} cells, {stored} already in the cell store; {loads} model "
              f"load{'s' * (loads != 1)}{' at most' if where else ''}{where}", flush=True)
        run.show_progress(cells)

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
