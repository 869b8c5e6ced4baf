"""The generate stage's sweep, as the launching process runs it: check everything, then make the grid's cells.

1. Check (validate.py): the command line (before Hydra starts), the launcher, every combination's config and the
   prepared cases, before anything is written (one line and exit code 2 for a bad value).
2. `Sweep` (a context manager: the view's lock, the cell store, the view) plans the cells: the id of every cell of
   every combination. A cell already in the store (its files verified) is shown in the view at once; only the
   combinations with a cell to compute (or a Comet log to send) are launched, several per Hydra job
   (grid.batches), each job writing its cells into the store and the view itself (cells.CellMaker).
3. Once every job has ended, the store says what was computed; a completed run removes the cells of other grids
   from the view. The summary line counts computed, reused and failed cells.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from .cells import CellMaker, Identities
from .cli import one_line_errors
from .config import load_settings
from .errors import DiskFull, RunError, no_space
from .grid import Composer, batches, combinations, parse, set_values
from .identity import Digests
from .logbook import needs_work, varying_keys
from .records import read_record
from .store import CellStore, ViewLock, prune, show
from .validate import check_inputs, check_launcher
from .workspace import shared_path

EXIT_CELLS_FAILED = 1
EXIT_INTERRUPTED = 130


def sweep_id() -> str:
    """One id for every cell of this sweep, so Comet can group its experiments (override with INPAINT_SWEEP_ID)."""
    return os.environ.get("INPAINT_SWEEP_ID") or time.strftime("%Y%m%d-%H%M%S")


@dataclass
class Plan:
    cells: int = 0
    stored: int = 0
    todo: list[int] = field(default_factory=list)  # the combinations to launch, by index
    pending: list[tuple[str, bool]] = field(default_factory=list)  # (cell id, stored already) of those
    loads: int = 0


@dataclass
class Summary:
    computed: int = 0
    reused: int = 0
    failed: list[str] = field(default_factory=list)
    interrupted: bool = False
    not_run: int = 0  # cells of a stopped sweep (interrupted, a full disk) neither in the store nor failed
    unlogged: int = 0  # cells made or shown without a Comet log (the logger died): the next run logs them


class Sweep:
    """The launching process's state: the view's lock, the cell store and the view. Entering takes the lock (a
    refused sweep has made nothing), clears what killed runs left in the store, and adopts the view's cells the store
    lacks (a clone that `dvc pull`ed them); leaving after a completed run removes the other grids' cells from the
    view, then lets the lock go."""

    def __init__(self, cfg: DictConfig, sweep_id: str) -> None:
        self.view = Path(cfg.paths.generate)
        self.store = CellStore(shared_path(cfg.paths.cell_store))  # queued DVC experiments share the main one
        self.sweep_id = sweep_id
        self.identities = Identities(Digests(self.store.root / ".digests.json"))
        self.cells: set[str] = set()  # every cell of this grid
        self.completed = False
        self._lock = ViewLock(self.view)

    def __enter__(self) -> "Sweep":
        self._lock.acquire()
        try:
            self.store.remove_leftovers()  # half-written cells of a killed run
            self.store.adopt(self.view)
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            try:
                self.identities.digests.save()
            except OSError as e:  # a cache: on a full disk, the error already raised (if any) says it all
                if not no_space(e):
                    raise
                if exc_type is None:
                    raise DiskFull(str(self.store.root), "cell store") from None
            if self.completed and exc_type is None:
                prune(self.view, self.cells)
        finally:
            self._lock.release()

    def plan(self, configs: list[DictConfig], tracking_cfg) -> Plan:
        """Every cell of every combination: stored ones shown in the view now, the others' combinations to launch."""
        from .tracking import is_online

        online = is_online(tracking_cfg.offline) if tracking_cfg.comet else False
        plan, last_load = Plan(), None
        for index, cfg in enumerate(configs):
            launch = False
            for cell in self.identities.cells(cfg):
                plan.cells += 1
                self.cells.add(cell.id)
                record = self.store.get(cell.id)
                plan.stored += record is not None
                if record is not None and not (tracking_cfg.comet and needs_work(record, online)):
                    show(self.store, record, self.view)
                else:
                    launch = True
                    plan.pending.append((cell.id, record is not None))
            if launch:
                plan.todo.append(index)
                load = load_settings(cfg.model)
                plan.loads += load != last_load
                last_load = load
        return plan

    def summary(self, plan: Plan, interrupted: bool, stopped: bool = False, comet: bool = False) -> Summary:
        """What the launched jobs did, read from the store and the view: a cell is in both, finished, or it failed
        (or, in a sweep that stopped, did not run; a stored cell counts then, shown or not: the next run shows it).
        `comet`: count the cells that have no Comet log yet."""
        done = Summary(reused=plan.cells - len(plan.pending), interrupted=interrupted)
        stopped = stopped or interrupted
        for cid, was_stored in plan.pending:
            record = read_record(self.store.cell_dir(cid))
            shown = read_record(self.view / "cells" / cid)
            if record is not None and record.ok and (stopped or shown is not None and shown.ok):
                if was_stored:
                    done.reused += 1
                else:
                    done.computed += 1
                done.unlogged += comet and not record.comet
            elif stopped:
                done.not_run += 1
            else:
                done.failed.append(cid)
        return done


def run_grid(cfg: DictConfig, configs: list[DictConfig], launch, jobs_of=None) -> Summary:
    """Make the cells of `configs` (each combination's config; `cfg` holds the settings they share: paths and
    tracking). `launch(indexes)` computes the combinations whose cells the store lacks; `jobs_of(indexes)` says in
    how many Hydra jobs, for the plan line."""
    with Sweep(cfg, sweep_id()) as sweep:
        plan = sweep.plan(configs, cfg.tracking)
        n_jobs = jobs_of(plan.todo) if jobs_of else None
        jobs = f" in {n_jobs} Hydra job{'s' * (n_jobs != 1)}" if jobs_of else ""
        print(f"generate: {len(configs)} combination{'s' * (len(configs) != 1)}, {plan.cells} cells, {plan.stored} "
              f"already in the cell store; {plan.loads} model load{'s' * (plan.loads != 1)}{jobs}", flush=True)
        interrupted, full = False, None
        try:
            if plan.todo:
                launch(plan.todo)
            sweep.completed = True
        except KeyboardInterrupt:
            interrupted = True
            raise
        except DiskFull as e:  # a job stopped at its first write that found no space
            full = e
        except OSError as e:  # this process's own writes before its jobs (their batch files)
            if not no_space(e):
                raise
            full = DiskFull(str(sweep.view), "view")
        finally:
            summary = sweep.summary(plan, interrupted, stopped=full is not None, comet=bool(cfg.tracking.comet))
            report(summary, sweep.view, quiet=full is not None)
        if full is not None:
            raise RunError(full.explain(summary.computed, summary.not_run))
    return summary


def report(summary: Summary, view: Path, quiet: bool = False) -> None:
    """The sweep's summary lines (`quiet`: not the failed cells' line, when one error line says why they are)."""
    if any((view / "comet").glob("*.zip")):
        print(f"Comet: offline archives in {view}/comet/; upload them with: comet upload {view}/comet/*.zip")
    if summary.unlogged:
        print(f"Comet: {summary.unlogged} cell(s) not logged to Comet yet (see the warnings above); the next run of "
              "the same command logs them")
    print(f"generate: {summary.computed} computed, {summary.reused} reused from the cell store, "
          f"{len(summary.failed)} failed" + (" (interrupted: what was computed is kept)" if summary.interrupted else ""),
          flush=True)
    if summary.failed and not quiet:
        print(f"error: {len(summary.failed)} cell(s) failed: {', '.join(summary.failed)}", file=sys.stderr)


def exit_if_failed(summary: Summary) -> None:
    if summary.failed:
        sys.exit(EXIT_CELLS_FAILED)


# -- the three ways in: a multirun (the grid sweeper), a Hydra job of it, a single run ---------------------------------

@one_line_errors
def check_multirun(config: DictConfig, lines: list[str], zipped, config_loader):
    """The grid's combinations (lists of overrides) and each one's config, composed as its job will compose it, all
    checked with the cases before anything runs or is written."""
    check_launcher(config.hydra.launcher)
    combos = combinations(parse(lines, config_loader=config_loader), zipped)
    compose = Composer(config, config_loader)
    configs = [compose(combo) for combo in combos]
    check_inputs(configs)
    return combos, configs


def run_multirun(config: DictConfig, lines: list[str], zipped, config_loader, launch_jobs, save_config) -> Summary:
    """The grid sweeper's work: `lines` are its `key=values` overrides (hydra.sweeper.params, then the command line),
    `zipped` its zip groups; `launch_jobs(jobs)` runs Hydra jobs (lists of overrides) with the configured launcher,
    `save_config()` writes the sweep's multirun.yaml once the grid is known to be sound."""
    combos, configs = check_multirun(config, lines, zipped, config_loader)
    save_config()
    groups = set(config.hydra.runtime.choices)
    sweeper = config.hydra.sweeper
    folder = Path(config.hydra.sweep.dir) / "batches"

    planned: dict[tuple[int, ...], list] = {}  # the plan line counts the jobs that launch() then starts

    def jobs_for(todo: list[int]):
        if tuple(todo) not in planned:
            planned[tuple(todo)] = batches([combos[i] for i in todo], groups, parallel_workers(config.hydra.launcher),
                                           sweeper.get("cells_per_job"))
        return planned[tuple(todo)]

    def launch(todo: list[int]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        overrides = []
        for n, (own, varying) in enumerate(jobs_for(todo)):
            path = folder / f"{os.getpid()}-{n}.json"
            path.write_text(json.dumps({"sweep_id": sid, "axes": axes, "combinations": varying}, indent=1))
            overrides.append([*own, f"batch='{path}'"])
        try:
            launch_jobs(overrides)
        finally:
            for path in folder.glob(f"{os.getpid()}-*.json"):
                path.unlink(missing_ok=True)

    sid = os.environ.setdefault("INPAINT_SWEEP_ID", sweep_id())
    axes = varying_keys(configs)  # what each Comet experiment's name shows
    return one_line_errors(run_grid)(config, configs, launch, lambda todo: len(jobs_for(todo)))


def run_batch(cfg: DictConfig) -> dict:
    """A Hydra job of the grid sweeper, in whatever process runs it: make the cells of the combinations listed in its
    batch file. Returns its counts (done, skipped, failed) and, if it stopped on a full disk, `disk_full` (a value,
    not an error: the launching process says it once, in one line, whichever launcher ran the job)."""
    spec = json.loads(Path(cfg.batch).read_text())
    base = cfg.copy()
    base.batch = None
    configs = [set_values(base.copy(), varying) for varying in spec["combinations"]]
    store = CellStore(shared_path(cfg.paths.cell_store))
    full = None
    try:
        with CellMaker(store, Path(cfg.paths.generate), spec["sweep_id"], cfg.tracking, spec.get("axes")) as maker:
            maker.make(configs)
    except DiskFull as e:
        full = e
    return {"counts": maker.tally.counts, "disk_full": full}


def run_single(cfg: DictConfig) -> Summary:
    """`generate.py` without -m: one combination (the config's own settings), computed in this process."""
    return run_in_process([cfg])


def run_in_process(configs: list[DictConfig]) -> Summary:
    """Make the cells of these combinations' configs in this process, as a sweep does (tests, notebooks)."""
    one_line_errors(check_inputs)(configs)

    def launch(todo: list[int]) -> None:
        cfg = configs[0]
        store = CellStore(shared_path(cfg.paths.cell_store))
        with CellMaker(store, Path(cfg.paths.generate), sweep_id(), cfg.tracking, varying_keys(configs)) as maker:
            maker.make([configs[i] for i in todo])

    return one_line_errors(run_grid)(configs[0], configs, launch)


def compose_grid(overrides: list[str], multirun: bool = True) -> list[DictConfig]:
    """The configs of the combinations `python stages/generate.py [-m] <overrides>` would make, composed with Hydra's
    compose API (for tests and notebooks: no Hydra app, no job folders)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from .config import CONFIG_DIR, CONFIG_NAME

    parsed = parse(overrides)
    fixed = [o.input_line for o in parsed if o.is_hydra_override() or not o.is_sweep_override()]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        master = compose(CONFIG_NAME, [o for o in fixed if o.startswith("hydra.")], return_hydra_config=True)
        if not multirun:
            return [compose(CONFIG_NAME, overrides)]
        params = [f"{k}={v}" for k, v in (master.hydra.sweeper.params or {}).items()]
        task = [o.input_line for o in parsed if not o.is_hydra_override()]
        zipped = master.hydra.sweeper.get("zip") or ()
        compose_one = Composer(master, GlobalHydra.instance().config_loader())
        return one_line_errors(lambda: [compose_one(c) for c in combinations(parse(params + task), zipped)])()


def parallel_workers(launcher: DictConfig) -> int:
    """How many jobs the launcher runs at once: joblib's n_jobs, submitit's array_parallelism; else one."""
    n_jobs = launcher.get("n_jobs")
    if n_jobs is not None:
        return os.cpu_count() or 1 if n_jobs == -1 else max(1, n_jobs)
    return max(1, launcher.get("array_parallelism") or 1)
