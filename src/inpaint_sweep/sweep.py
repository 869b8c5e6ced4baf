"""Sweep book-keeping for the generate Hydra app: a fresh view per run, an overall progress bar, a failure count.

`SweepCallback` is registered in params.yaml (hydra.callbacks). At the start of a run or multirun it empties the
view folder (paths.generate/cells), so the view holds exactly the cells of this grid; finished cells come back from
the cell store without being recomputed.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import shutil
import sys
import threading
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
from .workspace import shared_path

COUNTS = {"done": 0, "skipped": 0, "failed": 0}
STATE = {"bar": None}  # the overall progress bar of this process's multirun
# The process that started the run and the view folders it emptied. Launchers such as joblib and submitit run the jobs
# in other processes: each such job writes its counts to WORKER_COUNTS in its Hydra job folder for the launching
# process to add up, and generate.py reads failed cells from the views on disk.
LAUNCHER = {"pid": None, "views": set()}
WORKER_COUNTS = "sweep_counts.json"
_ADVANCE_LOCK = threading.Lock()


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
    from .config import load_config

    overrides = [a for a in argv if "=" in a and not a.startswith(("-", "+", "~", "hydra"))]
    groups = [a for a in overrides if a.split("=", 1)[0] == "model"]
    base = load_config(groups)
    for key, found in grid_values({}, [a for a in overrides if a not in groups]).items():
        for value in found:
            OmegaConf.update(base.copy(), key, value, merge=False)


def reset_view(generate_dir: str | Path, store_dir: str | Path) -> None:
    """Empty the view for this run's grid, after adopting into the cell store any finished cell it lacks (a clone
    that `dvc pull`ed its results has them in the view only)."""
    from .cells import adopt_view

    adopt_view(generate_dir, store_dir)
    for sub in ("cells", "comet"):
        shutil.rmtree(Path(generate_dir) / sub, ignore_errors=True)


def start(total: int) -> None:
    from tqdm.auto import tqdm

    COUNTS.update(done=0, skipped=0, failed=0)
    STATE["bar"] = tqdm(total=total, desc="sweep", unit="cell", dynamic_ncols=True, leave=True)


def advance(status: str) -> None:
    """Count one finished cell (done / skipped / failed) and move the overall bar; called from any thread."""
    with _ADVANCE_LOCK:
        COUNTS[status] += 1
        bar = STATE["bar"]
        if bar is not None:
            bar.set_postfix(COUNTS, refresh=False)
            bar.update(1)


def claim(generate_dir: str | Path) -> None:
    LAUNCHER["pid"] = os.getpid()
    LAUNCHER["views"].add(Path(generate_dir))


def add_worker_counts(sweep_dir: str | Path) -> None:
    """Add up the counts of jobs that ran in other processes, and move the bar by as many cells."""
    for path in sorted(Path(sweep_dir).glob(f"**/{WORKER_COUNTS}")):
        for status, n in json.loads(path.read_text()).items():
            COUNTS[status] += n
            if STATE["bar"] is not None:
                STATE["bar"].update(n)
    if STATE["bar"] is not None:
        STATE["bar"].set_postfix(COUNTS, refresh=False)


def finish() -> None:
    if STATE["bar"] is not None:
        STATE["bar"].close()
        STATE["bar"] = None


def _start_comet_logger(config: DictConfig) -> None:
    """Start the Comet logger process now, so that it imports comet_ml while this one imports torch."""
    if config.tracking.comet:
        from . import tracking

        tracking.start_logger()


class SweepCallback(Callback):
    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        reset_view(config.paths.generate, shared_path(config.paths.cell_store))  # a single run: one cell per case
        claim(config.paths.generate)
        _start_comet_logger(config)

    @one_line_errors  # hydra swallows callback exceptions; a bad grid must stop the sweep with one line
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        values = grid_values(config.hydra.sweeper.params or {}, config.hydra.overrides.task)
        check_grid(config, values)
        reset_view(config.paths.generate, shared_path(config.paths.cell_store))
        claim(config.paths.generate)
        for stale in Path(config.hydra.sweep.dir).glob(f"**/{WORKER_COUNTS}"):
            stale.unlink()
        cases_file = Path(config.paths.prepare) / "cases.json"
        cases = len(json.loads(cases_file.read_text())) if cases_file.is_file() else 1
        start(math.prod(len(v) for v in values.values()) * cases)  # jobs x cases, as the basic sweeper makes them
        _start_comet_logger(config)

    def on_run_end(self, config: DictConfig, **kwargs) -> None:
        from . import cells

        cells.flush()  # the last cells' files: the bar closes once they are written
        finish()

    def on_job_end(self, config: DictConfig, **kwargs) -> None:
        if LAUNCHER["pid"] == os.getpid():
            return  # the basic launcher: this process counts its cells and flushes Comet at exit
        from . import cells, tracking
        from .images import write_json

        cells.flush()  # a worker process may be ended as soon as its last job returns
        tracking.flush()
        write_json(COUNTS, Path(config.hydra.runtime.output_dir) / WORKER_COUNTS)
        COUNTS.update(done=0, skipped=0, failed=0)  # a joblib worker runs several jobs

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from . import cells

        cells.flush()
        add_worker_counts(config.hydra.sweep.dir)
        finish()
