"""A job's Comet log: which cells to log (or upload), what to send, and where each log went, stored with the cell.

`CometLog` owns the job's Comet logger process (tracking.CometLogger). A cell's log is part of the cell: its offline
archive is added to the stored cell and its record says where the log went, so a re-run brings it back.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from concurrent.futures import Future
from pathlib import Path

import numpy as np

from . import tracking
from .errors import no_space
from .images import preview
from .identity import NOT_IDENTITY, flatten, task_container
from .records import COMET_ARCHIVE, CellRecord, file_entry, write_record
from .store import CellStore

log = logging.getLogger(__name__)


def needs_work(record: CellRecord, online: bool) -> bool:
    """Whether a stored cell's log is not where it should be: never logged, or logged offline and Comet is online
    now (comet_ml's own uploader then sends the stored archive, once)."""
    return not record.comet or bool(online and COMET_ARCHIVE in record.files and not record.comet_uploaded)


class CometLog:
    def __init__(self, tracking_cfg, store: CellStore, axes: list[str] | None = None) -> None:
        self.store = store
        self.logger = tracking.CometLogger()
        self.online = tracking.is_online(tracking_cfg.offline)
        self.git = tracking.git_remote_is_safe()  # asked here once, not in each of the logger's workers
        self.axes = list(axes or ())  # the settings that vary in this sweep: what each experiment's name shows
        self._inputs_logged: dict[str, str] = {}  # case id -> the experiment that holds its photo and mask

    def start(self) -> None:
        self.logger.start()

    def close(self) -> None:
        self.logger.close()

    def job_for(self, record: CellRecord, t, pictures: dict | None = None) -> dict | None:
        """What to send the logger for a cell (`t`: the tracking settings), or None if its log is where it should be."""
        if not needs_work(record, self.online):
            return None
        stored = self.store.cell_dir(record.cell_id)
        if record.comet:
            return {"upload": str(stored / COMET_ARCHIVE)}
        workdir = self.store.private_dir("comet", record.cell_id)
        pictures = pictures or {}
        images = {f"output_seed-{e.seed}": preview(stored / Path(e.path).name, workdir, t.image_format,
                                                   t.image_max_pixels, pictures.get(Path(e.path).name))
                  for e in record.images}
        others = {f"machine.{k}": v for k, v in flatten(record.machine).items()}
        # The case's photo and mask once per case and job, in the first experiment that needs them; the others name
        # that experiment (Comet cannot link assets across experiments, and a photo in every cell dominated storage).
        first = self._inputs_logged.setdefault(record.case, record.cell_id)
        if first == record.cell_id:
            images["input"] = preview(Path(record.input), workdir, t.image_format, t.image_max_pixels)
            images["mask"] = preview(Path(record.mask), workdir, "png", t.image_max_pixels)
        others["inputs_logged_in"] = first
        config = workdir / "config.json"  # the whole resolved job config, as one asset
        config.write_text(json.dumps(record.config, indent=1, sort_keys=True, default=str))
        return {
            "offline_dir": str(workdir),
            "online": self.online,
            "project": t.project,
            "workspace": t.workspace,
            "name": experiment_name(record, self.axes),
            "params": comet_params(record),
            "metrics": comet_metrics(record),
            "tags": ["kind:cell", f"sweep:{record.sweep_id}", f"case:{record.case}", f"model:{record.model}",
                     f"cell:{record.cell_id}"],
            "images": images,
            "assets": {"config.json": str(config)},
            "others": others,
            "experiment_key": record.comet_key or new_experiment_key(),
            "git": self.git,
            "git_patch": bool(t.git_patch),
        }

    def log(self, record: CellRecord, job: dict, then) -> Future:
        """Send `job`; when answered, store where the log went with the cell, then call `then()`. The returned
        future is done once all of that is."""
        done: Future = Future()

        def logged(answer: Future) -> None:
            try:
                self._note(record, job, answer)
            except Exception as e:  # noqa: BLE001 - tracking must never cost a computed cell
                if no_space(e):  # the sweep stops on it (cells.CellMaker), saying it once
                    done.set_exception(e)
                    return
                log.warning("cell %s: its Comet log could not be stored: %s", record.cell_id, e)
            try:
                then()
                done.set_result(None)
            except Exception as e:  # noqa: BLE001
                done.set_exception(e)

        self.logger.submit(job).add_done_callback(logged)
        return done

    def _note(self, record: CellRecord, job: dict, answer: Future) -> None:
        """Store where the cell's log went with the cell: its offline archive, its URL, or that it was uploaded."""
        cid = record.cell_id
        try:
            where = answer.result()
            # The experiment's key: the last part of an online experiment's URL, else the one chosen here (which
            # its archive keeps when uploaded).
            record.comet_key = where.rstrip("/").rsplit("/", 1)[-1] if where.startswith("http") else (
                job.get("experiment_key") or record.comet_key)
            if where.startswith("uploaded:"):
                record.comet_uploaded = where.removeprefix("uploaded:")
            elif where.startswith("http"):
                record.comet = where
            else:
                self.store.add_file(cid, Path(where), COMET_ARCHIVE)
                record.files[COMET_ARCHIVE] = file_entry(self.store.cell_dir(cid) / COMET_ARCHIVE)
                record.comet = COMET_ARCHIVE
        except tracking.LoggerEnded:  # said once, by the logger's end; the record says "not logged", so the next
            return                      # run logs it
        except Exception as e:  # noqa: BLE001
            if no_space(e):
                raise
            log.warning("cell %s: Comet logging failed: %s", cid, e)
            return
        finally:
            if job.get("offline_dir"):
                shutil.rmtree(job["offline_dir"], ignore_errors=True)
        write_record(record, self.store.cell_dir(cid))


# Settings in a cell's identity that are not sent as parameters, each with why: the rest go, once each.
NOT_PARAMS = {
    "model.seed": "the tiny model's weights: model.revision says it (v<version>-seed<seed>)",
    "model.source": "the loader: model.name (the preset) and model.id say which checkpoint",
}
# Identifiers a person filters and groups by, from the record (resolved: model.id is the checkpoint actually loaded).
RECORD_PARAMS = {"case": "case", "model.name": "model", "model.id": "model_id", "model.revision": "model_revision",
                 "mask.method": "mask_method", "cell_id": "cell_id", "sweep_id": "sweep_id",
                 "code_version": "code_version"}
SHORT_NAMES = {"negative_prompt": "neg"}  # in experiment names


def comet_params(record: CellRecord) -> dict:
    """The cell's Comet parameters: each setting that defines the cell once, with its own type (the resolved values
    the cell id hashes: model.device is the device used, prompt the text used), and what identifies it. An unset
    value (null, an empty list) is left out: a column is a number or a text in every experiment, never a placeholder.
    The whole config goes along as the config.json asset."""
    settings = (record.identity or {}).get("config")
    if not settings:  # a record written before identities were stored: its config, minus what the id never hashed
        settings = {k: v for k, v in record.config.items()
                    if not any(k == n or k.startswith(n + ".") for n in NOT_IDENTITY)}
        settings.update(prompt=record.prompt, negative_prompt=record.negative_prompt)
    params = {k: v for k, v in settings.items() if k not in NOT_PARAMS}
    if isinstance(params.get("seed"), list):  # several images from one call: `seeds`, so `seed` is always a number
        params["seeds"] = params.pop("seed")
    if record.config.get("prompt_sr") is not None:  # this cell's value of the search/replace axis
        params["prompt_sr"] = record.config["prompt_sr"]
    params.update({key: getattr(record, name) for key, name in RECORD_PARAMS.items()})
    return {k: v for k, v in sorted(params.items()) if v is not None and v != [] and v != {}}


def comet_metrics(record: CellRecord) -> dict:
    """The same metric names for every cell: a multi-seed cell logs the mean over its seeds. `generation_seconds` is
    the cell's whole pipeline call (every seed of a batched call); `seconds` its share per image."""
    values: dict[str, list] = {}
    for entry in record.images:
        for name, value in entry.metrics.items():
            values.setdefault(name, []).append(value)
    metrics = {name: float(np.mean(v)) for name, v in values.items()}
    if "seconds" in values:
        metrics["generation_seconds"] = round(float(np.sum(values["seconds"])), 4)
    return metrics


def experiment_name(record: CellRecord, axes: list[str]) -> str:
    """`bus_person · guidance=7.5 · strength=0.75 · steps=8 · neg=cartoon`: the case and this cell's values of the
    settings that vary in its sweep (SWEEP_AXES' own when none vary). The cell id is its tag and parameter."""
    from .config import SWEEP_AXES
    from .grids import fmt

    values = {**record.config, "prompt": record.prompt, "negative_prompt": record.negative_prompt}
    shown = [a for a in axes if a in values] or [a for a in SWEEP_AXES if a in values and a != "seed"]
    return " · ".join([record.case, *(f"{SHORT_NAMES.get(a, a)}={fmt(values[a])}" for a in shown)])


def varying_keys(configs: list) -> list[str]:
    """The config keys whose values differ between a sweep's combinations, in config order (flat dotted keys)."""
    seen: dict[str, set] = {}
    for cfg in configs:
        for key, value in flatten(task_container(cfg)).items():
            seen.setdefault(key, set()).add(json.dumps(value, sort_keys=True, default=str))
    return [k for k, values in seen.items() if len(values) > 1 and k != "batch"]


def new_experiment_key() -> str:
    """A Comet experiment key chosen here (32 hex digits, the form comet_ml's own keys take), so the offline archive,
    the uploaded experiment and the record all name the same experiment (comet_ml would give an upload a new key)."""
    return uuid.uuid4().hex
