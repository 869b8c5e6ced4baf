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
import os
import shutil
import subprocess
import time
import traceback
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from . import tracking
from .config import SWEEP_AXES, ConfigError
from .images import save_image, write_json
from .inpaint import inpaint, seed_list, working_size

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


@lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit of the code, with `-dirty` when tracked files have uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


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
            try:
                os.link(stored / name, target)
            except OSError:  # another filesystem: copy
                shutil.copy2(stored / name, target)
        images.append({**entry, "path": str(target)})
    record = {**record, "images": images}
    write_json(record, view / RECORD)
    return record


def run_cell(
    model,
    case: dict,
    settings: dict,
    store_dir: Path,
    view_dir: Path,
    tracking_cfg,
    sweep_id: str,
) -> tuple[dict, str]:
    """Make one (case, settings) cell available in the view, computing it only if the store lacks it.

    Returns the record and what happened this run: "done", "skipped" (taken from the store) or "failed".
    """
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
    # 3. Generate every seed in one call, composite, save into the store; a failure is recorded, never raised.
    try:
        image = Image.open(case["image"]).convert("RGB")
        mask = np.asarray(Image.open(case["mask"])) > 127
        results = inpaint(
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
            soft_mask=np.asarray(Image.open(case["soft_mask"]).convert("L")) if case.get("soft_mask") else None,
        )
        for seed, (result, metrics) in zip(seeds, results):
            save_image(result, stored / f"seed-{seed}.png", compress_level=1)  # on the generation path: fast
            record["images"].append({"seed": seed, "path": str(stored / f"seed-{seed}.png"), "metrics": metrics})
    except Exception as e:  # noqa: BLE001 - one bad cell must not sink the sweep
        record.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_json(record, view / RECORD)  # shown by the report; not stored, so the next run retries it
        return record, "failed"
    record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_json(record, stored / RECORD)  # last: from now on the cell is complete
    record = materialize(stored, view, record)

    # 4. Log to Comet in the background; the records learn their archive when it is written.
    if tracking_cfg.comet:
        _log_to_comet(record, case, stored, view, view_dir / "comet", tracking_cfg)
    return record, "done"


def comet_params(record: dict) -> dict:
    """The cell's Comet parameters: the config's own key names, plus what identifies the cell."""
    params = {k: record[k] for k in ("case", "prompt", *SWEEP_AXES)}
    params.update({k: record[k] for k in ("model", "model_id", "model_revision", "mask_method", "cell_id", "code_version")})
    params.update({f"model.{k}": record.get(k) for k in ("scheduler", "padding_mask_crop")})  # config key names
    return params


def _log_to_comet(record: dict, case: dict, stored: Path, view: Path, comet_dir: Path, tracking_cfg) -> None:
    online = tracking.is_online(tracking_cfg.offline)
    images = {"input": case["image"], "mask": case["mask"]}
    images.update({f"output_seed-{e['seed']}": e["path"] for e in record["images"]})
    metrics = {}
    for entry in record["images"]:
        suffix = "" if len(record["images"]) == 1 else f"_seed-{entry['seed']}"
        metrics.update({f"{k}{suffix}": v for k, v in entry["metrics"].items()})
    future = tracking.submit(
        tracking.log_cell,
        comet_dir,
        online,
        tracking_cfg.project,
        tracking_cfg.workspace,
        record["cell_id"],
        comet_params(record),
        metrics,
        [f"sweep:{record['sweep_id']}", f"case:{record['case']}", f"model:{record['model']}"],
        images,
    )
    future.add_done_callback(lambda f: _note_comet(f, (stored, view)))


def _note_comet(future, cell_dirs) -> None:
    """Write where the cell's Comet log went into its records, once the background log finished."""
    if future.exception() is not None:
        return
    where = future.result()
    where = where if where.startswith("http") else os.path.relpath(where)
    for cell_dir in cell_dirs:
        record = read_record(cell_dir)
        if record is not None:
            write_json({**record, "comet": where}, cell_dir / RECORD)
