"""A job's Comet log: which cells to log (or upload), what to send, and where each log went, stored with the cell.

`CometLog` owns the job's Comet logger process (tracking.CometLogger). A cell's log is part of the cell: its offline
archive is added to the stored cell and its record says where the log went, so a re-run brings it back.
"""

from __future__ import annotations

import json
import logging
import shutil
from concurrent.futures import Future
from pathlib import Path

import numpy as np
from PIL import Image

from . import tracking
from .cli import DISK_FULL
from .records import COMET_ARCHIVE, CellRecord, file_entry, write_record
from .store import CellStore

log = logging.getLogger(__name__)


def needs_work(record: CellRecord, online: bool) -> bool:
    """Whether a stored cell's log is not where it should be: never logged, or logged offline and Comet is online
    now (comet_ml's own uploader then sends the stored archive, once)."""
    return not record.comet or bool(online and COMET_ARCHIVE in record.files and not record.comet_uploaded)


class CometLog:
    def __init__(self, tracking_cfg, store: CellStore) -> None:
        self.store = store
        self.logger = tracking.CometLogger()
        self.online = tracking.is_online(tracking_cfg.offline)
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
        params = comet_params(record)
        # The case's photo and mask once per case and job, in the first experiment that needs them; the others name
        # that experiment (Comet cannot link assets across experiments, and a photo in every cell dominated storage).
        first = self._inputs_logged.setdefault(record.case, record.cell_id)
        if first == record.cell_id:
            images["input"] = preview(Path(record.input), workdir, t.image_format, t.image_max_pixels)
            images["mask"] = preview(Path(record.mask), workdir, "png", t.image_max_pixels)
        params["inputs_logged_in"] = first
        return {
            "offline_dir": str(workdir),
            "online": self.online,
            "project": t.project,
            "workspace": t.workspace,
            "name": record.cell_id,
            "params": params,
            "metrics": comet_metrics(record),
            "tags": ["kind:cell", f"sweep:{record.sweep_id}", f"case:{record.case}", f"model:{record.model}"],
            "images": images,
        }

    def log(self, record: CellRecord, job: dict, then) -> Future:
        """Send `job`; when answered, store where the log went with the cell, then call `then()`. The returned
        future is done once all of that is."""
        done: Future = Future()

        def logged(answer: Future) -> None:
            try:
                self._note(record, job, answer)
            except OSError as e:
                if e.errno in DISK_FULL:  # the sweep stops on it (cells.CellMaker), saying it once
                    done.set_exception(e)
                    return
                log.warning("cell %s: its Comet log could not be stored: %s", record.cell_id, e)
            except Exception as e:  # noqa: BLE001 - tracking must never cost a computed cell
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
            if isinstance(e, OSError) and e.errno in DISK_FULL:
                raise
            log.warning("cell %s: Comet logging failed: %s", cid, e)
            return
        finally:
            if job.get("offline_dir"):
                shutil.rmtree(job["offline_dir"], ignore_errors=True)
        write_record(record, self.store.cell_dir(cid))


def preview(source: Path, folder: Path, image_format: str, max_pixels: int | None,
            decoded: Image.Image | None = None) -> str:
    """A copy of the picture `source` for Comet: `image_format`, at most `max_pixels` pixels (aspect kept).
    `decoded`: the picture already in memory (a computed cell's), so the file need not be decoded again."""
    if image_format == "png" and not max_pixels:
        return str(source)
    image = decoded
    if image is None:
        with Image.open(source) as opened:
            image = opened.copy()
    if max_pixels and image.width * image.height > max_pixels:
        scale = (max_pixels / (image.width * image.height)) ** 0.5
        image = image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))),
                             Image.Resampling.LANCZOS)
    target = folder / f"{source.stem}.{'jpg' if image_format == 'jpeg' else image_format}"
    if image_format == "jpeg" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    image.save(target, format=image_format.upper(), quality=90, method=0)  # method: WebP's fastest
    return str(target)


def comet_params(record: CellRecord) -> dict:
    """The cell's Comet parameters: the config's own key names, plus what identifies the cell. Empty values read as
    in the report's grids and tables: "" is "(none)", null is "(default)"."""
    from .grids import fmt

    params = {k: (json.dumps(v) if isinstance(v, (list, dict)) else fmt(v) if v in ("", None) else v)
              for k, v in record.config.items()}
    params.update({k: getattr(record, k) for k in ("case", "prompt", "model_id", "model_revision", "mask_method",
                                                   "cell_id", "code_version")})
    return params


def comet_metrics(record: CellRecord) -> dict:
    """The same metric names for every cell: a multi-seed cell logs the mean over its seeds."""
    values: dict[str, list] = {}
    for entry in record.images:
        for name, value in entry.metrics.items():
            values.setdefault(name, []).append(value)
    return {name: float(np.mean(v)) for name, v in values.items()}
