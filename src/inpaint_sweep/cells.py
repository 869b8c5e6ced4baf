"""Grid cells: content-addressed ids, a persistent cell store, and the per-run view that DVC tracks.

A cell is one case under one combination of settings; its images (one per seed) come from one batched pipeline call.
Its id hashes everything that decides its pixels, so:
- a finished cell lives in the store (`paths.cell_store`, outside DVC's outputs) and is never computed twice:
  adding a grid value computes only the new cells, and a killed sweep resumes where it stopped;
- the stage's output folder (`paths.generate`) is a view holding exactly the cells of the grid just run, hard-linked
  from the store, so DVC and the report see the current grid and nothing else.
Writes are atomic (temporary file + rename) and a cell's record is written last, so a cell is complete exactly when its
record says `"status": "ok"`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from . import tracking
from .config import SWEEP_AXES, ConfigError
from .images import save_image, write_json
from .inpaint import denoise, seed_list, to_photo, working_size
from .provenance import code_version

log = logging.getLogger(__name__)

RECORD = "record.json"
# Bump when code changes what a cell's pixels are for the same settings (compositing, resizing, ...):
# cells computed by older code then get new ids instead of being reused from the store.
ENGINE_VERSION = 1


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cell_id(case_id: str, determinants: dict) -> str:
    """`<case>-<12 hex>`: a hash of everything that decides the cell's pixels, so equal settings share one id."""
    blob = json.dumps(determinants, sort_keys=True, default=str).encode()
    return f"{case_id}-{hashlib.sha256(blob).hexdigest()[:12]}"


def load_prepared(prepare_dir: str | Path) -> list[dict]:
    path = Path(prepare_dir) / "cases.json"
    if not path.is_file():
        raise ConfigError(f"no prepared cases at {str(path)!r}: run `dvc repro prepare` (or stages/prepare.py) first")
    return json.loads(path.read_text())


def read_record(cell_dir: Path) -> dict | None:
    try:
        return json.loads((cell_dir / RECORD).read_text())
    except (OSError, ValueError):
        return None


def materialize(stored: Path, view: Path, record: dict) -> dict:
    """Hard-link (or copy) a stored cell's images into the view and write its record with the view's paths."""
    view.mkdir(parents=True, exist_ok=True)
    images = []
    for entry in record["images"]:
        name = Path(entry["path"]).name
        target = view / name
        if not target.exists():
            _link_or_copy(stored / name, target)
        images.append({**entry, "path": str(target)})
    record = {**record, "images": images}
    write_json(record, view / RECORD)
    return record


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another filesystem: copy
        shutil.copy2(source, target)


def adopt_view(view_dir: str | Path, store_dir: str | Path) -> int:
    """Put the view's finished cells the store lacks into it (hard links; copies across filesystems).

    The view (`paths.generate`) is what DVC pushes and pulls; the store is not. A clone that pulled the results
    therefore starts with an empty store: adopting the view first means a grid edit there computes only new cells.
    Returns how many cells were adopted.
    """
    adopted = 0
    for record_path in sorted(Path(view_dir).glob(f"cells/*/{RECORD}")):
        record = read_record(record_path.parent)
        stored = Path(store_dir) / record_path.parent.name
        if record is None or record.get("status") != "ok" or read_record(stored) is not None:
            continue
        try:
            stored.mkdir(parents=True, exist_ok=True)
            images = []
            for entry in record["images"]:
                name = Path(entry["path"]).name
                if not (stored / name).exists():
                    _link_or_copy(record_path.parent / name, stored / name)
                images.append({**entry, "path": str(stored / name)})
        except OSError as e:  # an image missing from the view: that cell is computed again when needed
            log.warning("cell %s not adopted into the cell store: %s", stored.name, e)
            continue
        write_json({**record, "images": images}, stored / RECORD)  # last: the stored cell is complete
        adopted += 1
    return adopted


def run_cell(
    model,
    case: dict,
    settings: dict,
    store_dir: Path,
    view_dir: Path,
    tracking_cfg,
    sweep_id: str,
    on_finished=None,
) -> tuple[dict, str]:
    """Make one (case, settings) cell available in the view, computing it only if the store lacks it.

    Returns the record and what happened this run: "done" (computed), "skipped" (taken from the store) or "failed".
    A computed cell's images are composited and written by a background thread (`flush` waits for them) while the
    caller goes on to the next cell. `on_finished(record, status)` is called once the cell's files are all written,
    from that thread; status is then "done", or "failed" if writing failed.
    """
    on_finished = on_finished or (lambda record, status: None)
    # 1. Identify the cell by what decides its pixels.
    seeds = seed_list(settings["seed"])
    width, height = working_size(tuple(case["image_size"]), settings["size"])
    determinants = {
        "engine": ENGINE_VERSION,
        "case": case["id"],
        "image_sha256": file_digest(case["image"]),
        "mask_sha256": file_digest(case["mask"]),
        "soft_mask_sha256": file_digest(case["soft_mask"]) if case.get("soft_mask") else None,
        "prompt": case["prompt"],
        "model_id": model.model_id,
        "model_revision": model.revision,
        "dtype": model.dtype,
        "model_settings": model.settings,  # device, attention, memory format, VAE precision/tiling, offload, compile
        "scheduler": settings.get("scheduler"),
        "padding_mask_crop": settings.get("padding_mask_crop"),
        "working_size": [width, height],
        **{k: settings[k] for k in SWEEP_AXES if k != "seed"},
        "seeds": seeds,
    }
    cid = cell_id(case["id"], determinants)
    stored, view = store_dir / cid, view_dir / "cells" / cid

    # 2. Already computed (this sweep, an earlier one, or before a kill): reuse it.
    record = read_record(stored)
    if record is not None and record.get("status") == "ok":
        # Same bytes, maybe another place: point the record at this run's copies of the photo and mask.
        record = materialize(stored, view, {**record, "input": case["image"], "mask": case["mask"]})
        if tracking_cfg.comet and not record.get("comet"):  # killed before its Comet log finished: log it now
            _log_to_comet(record, case, stored, view, view_dir / "comet", tracking_cfg)
        on_finished(record, "skipped")
        return record, "skipped"

    record = {
        "cell_id": cid,
        "status": "ok",
        "error": None,
        "case": case["id"],
        "prompt": case["prompt"],
        **{k: settings[k] for k in SWEEP_AXES},
        "model": settings["model_name"],
        "model_id": model.model_id,
        "model_revision": model.revision,
        "device": model.device,
        "dtype": model.dtype,
        "scheduler": settings.get("scheduler"),  # null = the checkpoint's own: scheduler_class says which
        "scheduler_class": type(model.pipe.scheduler).__name__,
        "padding_mask_crop": settings.get("padding_mask_crop"),
        "model_settings": model.settings,
        "working_size": [width, height],
        "mask_method": case["method"],
        "code_version": code_version(),
        "sweep_id": sweep_id,
        "input": case["image"],
        "mask": case["mask"],
        "soft_mask": case.get("soft_mask"),
        "images": [],
        "comet": None,
        "finished_at": None,
    }
    # 3. Generate every seed in one call; a failure is recorded, never raised.
    try:
        image, mask, soft = _case_inputs(case["image"], determinants["image_sha256"], case["mask"],
                                         determinants["mask_sha256"], case.get("soft_mask"),
                                         determinants["soft_mask_sha256"])
        raws, metrics, box = denoise(
            model.pipe,
            image,
            mask,
            case["prompt"],
            settings["negative_prompt"],
            settings["steps"],
            settings["guidance"],
            settings["strength"],
            seeds,
            settings["size"],
            model.device,
            padding_mask_crop=settings.get("padding_mask_crop"),
        )
    except Exception as e:  # noqa: BLE001 - one bad cell must not sink the sweep
        _record_failure(record, e, view)
        on_finished(record, "failed")
        return record, "failed"

    # 4. Composite, save into the store, show in the view and log to Comet, off the generation path.
    def finish() -> None:
        try:
            for seed, raw, cell_metrics in zip(seeds, raws, metrics):
                path = stored / f"seed-{seed}.png"
                save_image(to_photo(image, raw, mask, box, soft), path, compress_level=1)  # level 1: fast
                record["images"].append({"seed": seed, "path": str(path), "metrics": cell_metrics})
            record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            write_json(record, stored / RECORD)  # last: from now on the cell is complete
            done = materialize(stored, view, record)
        except Exception as e:  # noqa: BLE001 - e.g. a full disk: this cell fails, the sweep goes on
            _record_failure(record, e, view)
            log.error("cell %s failed: %s", cid, record["error"])
            on_finished(record, "failed")
            return
        if tracking_cfg.comet:
            try:
                _log_to_comet(done, case, stored, view, view_dir / "comet", tracking_cfg)
            except Exception as e:  # noqa: BLE001 - tracking must never cost a computed cell
                log.warning("cell %s: could not hand its Comet log over: %s", cid, e)
        on_finished(done, "done")

    _submit(finish)
    return record, "done"


@lru_cache(maxsize=4)
def _case_inputs(image_path, image_sha, mask_path, mask_sha, soft_path, soft_sha):
    """A case's photo, mask and soft mask, decoded once per process for all the cells of a sweep (the digests in the
    key make a changed file load anew). Shared by threads: read only."""
    image = Image.open(image_path).convert("RGB")
    mask = np.asarray(Image.open(mask_path)) > 127
    soft = np.asarray(Image.open(soft_path).convert("L")) if soft_path else None
    return image, mask, soft


def _record_failure(record: dict, error: Exception, view: Path) -> None:
    record.update(status="failed", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc())
    record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_json(record, view / RECORD)  # shown by the report; not stored, so the next run retries it


# Finishing computed cells: one thread per two CPU cores (at most 4), and at most twice as many cells waiting, so a
# fast GPU cannot pile up images in memory faster than they are written.
_FINISHERS = max(1, min(4, (os.cpu_count() or 2) // 2))
_WAITING = threading.BoundedSemaphore(2 * _FINISHERS)
_POOL: dict = {"executor": None, "futures": []}


def _submit(fn) -> None:
    _WAITING.acquire()  # blocks while the finishers are behind
    if _POOL["executor"] is None:
        _POOL["executor"] = ThreadPoolExecutor(max_workers=_FINISHERS, thread_name_prefix="finish-cell")
    future = _POOL["executor"].submit(fn)
    future.add_done_callback(lambda _: _WAITING.release())
    _POOL["futures"].append(future)


def flush() -> None:
    """Wait until every computed cell is written (and handed to the Comet logger)."""
    futures, _POOL["futures"] = _POOL["futures"], []
    for future in futures:
        future.result()


def comet_params(record: dict) -> dict:
    """The cell's Comet parameters: the config's own key names, plus what identifies the cell."""
    params = {k: record[k] for k in ("case", "prompt", *SWEEP_AXES)}
    params.update({k: record[k] for k in ("model", "model_id", "model_revision", "mask_method", "cell_id", "code_version")})
    params.update({f"model.{k}": record.get(k) for k in ("scheduler", "padding_mask_crop")})  # config key names
    return params


def _log_to_comet(record: dict, case: dict, stored: Path, view: Path, comet_dir: Path, tracking_cfg) -> None:
    """Hand the cell's experiment to the Comet logger; its records learn their archive (or URL) once it is written."""
    images = {"input": case["image"], "mask": case["mask"]}
    images.update({f"output_seed-{e['seed']}": e["path"] for e in record["images"]})
    metrics = {}
    for entry in record["images"]:
        suffix = "" if len(record["images"]) == 1 else f"_seed-{entry['seed']}"
        metrics.update({f"{k}{suffix}": v for k, v in entry["metrics"].items()})
    tracking.submit({
        "offline_dir": str(comet_dir),
        "online": tracking.is_online(tracking_cfg.offline),
        "project": tracking_cfg.project,
        "workspace": tracking_cfg.workspace,
        "name": record["cell_id"],
        "params": comet_params(record),
        "metrics": metrics,
        "tags": [f"sweep:{record['sweep_id']}", f"case:{record['case']}", f"model:{record['model']}"],
        "images": images,
        "records": [str(stored / RECORD), str(view / RECORD)],
    })
