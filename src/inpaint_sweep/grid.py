"""The grid of a multirun: its combinations of settings, and each combination's config, through Hydra's public API.

A combination is a list of `key=value` overrides, as Hydra's basic sweeper makes them (command line over
hydra.sweeper.params, crossed), with two additions: `hydra.sweeper.zip` steps groups of axes together, and
combinations that load the same pipeline are placed one after the other.

`Composer` gives each combination's config as Hydra would compose it: Hydra's config loader composes each distinct
set of config-group choices (model=..., +key=...) once, and the plain values (guidance=5) are then set with OmegaConf,
as Hydra itself applies them last. tests/test_sweep.py checks the result equals Hydra's full composition.
"""

from __future__ import annotations

import functools
import itertools
import pickle

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType, QuotedString
from hydra.errors import ConfigCompositionException, HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from .config import ConfigError, forces_reload


def parse(lines: list[str], config_loader=None) -> list[Override]:
    """Hydra's parse of `key=value` overrides. Without a config loader (which only `glob()` choices need), each line's
    parse is remembered: a grid repeats each value in many combinations, and each is read again when it is composed
    and when it is put in a Hydra job."""
    if config_loader is not None:
        return OverridesParser.create(config_loader=config_loader).parse_overrides(list(lines))
    return [_parse_line(line) for line in lines]


@functools.lru_cache(maxsize=4096)
def _parse_line(line: str) -> Override:
    return OverridesParser.create().parse_overrides([line])[0]


def grid_values(sweeper_params: dict, task_overrides: list[str]) -> dict[str, list]:
    """Each overridden key and its values, as the sweeper sees them (command line over config grid)."""
    values = {}
    for override in parse([f"{k}={v}" for k, v in sweeper_params.items()] + list(task_overrides)):
        found = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
        values[override.get_key_element()] = [v.text if isinstance(v, QuotedString) else v for v in found]
    return values


def combinations(overrides: list[Override], zipped=(), by_model: bool = True) -> list[list[str]]:
    """The grid's combinations, each a list of `key=value` overrides: the cross product of every key's values
    (command line over config grid), except that
    - the keys of each group in `zipped` (hydra.sweeper.zip, e.g. [[steps, strength]]) step together, value i with
      value i, as one axis placed where the group's first key is;
    - with `by_model`, combinations that load the same pipeline (config.forces_reload: the model preset, model.id,
      model.dtype, ...) come one after the other, in the order their first one has in the product, so each model
      loads once per process. Combinations that load the same pipeline keep their order.
    """
    axes: dict[str, list[str]] = {}
    for override in overrides:
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise HydraException(f"the grid sweeper does not support sweep type : {override.value_type.name}")
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
        elif key == group[0]:
            columns.append(list(zip(*(axes[k] for k in group))))
    combos = [[o for part in combo for o in part] for combo in itertools.product(*columns)]
    if not by_model:
        return combos

    # 2. Combinations sharing a pipeline adjacent.
    runs: dict[tuple[str, ...], list[list[str]]] = {}
    for combo in combos:
        runs.setdefault(tuple(o for o in combo if forces_reload(o.split("=", 1)[0])), []).append(combo)
    return [combo for run in runs.values() for combo in run]


def is_plain_value(override: Override, groups) -> bool:
    """`key=value` setting a value (not a config group, not hydra.*, no +, ++, ~ or @package)."""
    key = override.key_or_group
    return (override.type == OverrideType.CHANGE and override.package is None and not override.is_hydra_override()
            and "/" not in key and key not in groups)


def split(overrides: list[str], groups) -> tuple[tuple[str, ...], list[str]]:
    """(the overrides that change the composition itself: config groups, +key, hydra.*; the plain values)."""
    parsed = parse(overrides)
    plain = [o.input_line for o in parsed if is_plain_value(o, groups)]
    return tuple(o.input_line for o in parsed if not is_plain_value(o, groups)), plain


def set_values(cfg: DictConfig, plain: list[str]) -> DictConfig:
    """Set plain `key=value` overrides on `cfg` in place, as Hydra applies them after composing (its error if the
    key does not exist or the value does not fit its type)."""
    for override in parse(plain):
        try:
            OmegaConf.update(cfg, override.key_or_group, override.value(), merge=True)
        except OmegaConfBaseException as e:
            raise ConfigCompositionException(f"Could not override '{override.key_or_group}': "
                                             f"{' '.join(str(e).split())}") from e
    return cfg


def task_part(config: DictConfig) -> DictConfig:
    """A copy of a composed config without its hydra node: what a job's task function gets."""
    task = config.copy()
    with open_dict(task):
        task.pop("hydra", None)
    return task


class Composer:
    """Each combination's task config (no hydra node), composed once per distinct set of config-group choices."""

    def __init__(self, master_config: DictConfig, config_loader) -> None:
        self.master = master_config
        self.loader = config_loader
        self.groups = set(master_config.hydra.runtime.choices)
        self._templates: dict[tuple[str, ...], bytes] = {}

    def __call__(self, overrides: list[str]) -> DictConfig:
        composition, plain = split(overrides, self.groups)
        if composition not in self._templates:
            composed = self.loader.load_sweep_config(self.master, list(composition))
            self._templates[composition] = pickle.dumps(task_part(composed), protocol=pickle.HIGHEST_PROTOCOL)
        return set_values(pickle.loads(self._templates[composition]), plain)


def batches(combos: list[list[str]], groups, parts: int, per_job: int | None) -> list[tuple[list[str], list[list[str]]]]:
    """The Hydra jobs that compute `combos`: (the job's own overrides, its combinations' varying plain values).
    Combinations that share their composition and pipeline form one job, split into `parts` jobs (a parallel
    launcher's worker count) or jobs of at most `per_job` combinations. Order is kept."""
    runs: dict[tuple[str, ...], list[tuple[tuple[str, ...], list[str]]]] = {}
    for combo in combos:
        composition, plain = split(combo, groups)
        reload = tuple(o for o in plain if forces_reload(o.split("=", 1)[0]))
        runs.setdefault(composition + reload, []).append((composition, plain))
    jobs = []
    for run in runs.values():
        size = per_job or -(-len(run) // max(1, min(parts, len(run))))
        for start in range(0, len(run), size):
            chunk = run[start:start + size]
            common = [o for o in chunk[0][1] if all(o in plain for _, plain in chunk)]
            varying = [[o for o in plain if o not in common] for _, plain in chunk]
            jobs.append(([*chunk[0][0], *common], varying))
    return jobs
