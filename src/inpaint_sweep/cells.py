"""Grid cells: content-addressed ids, and running one cell from prepared case to record, image and Comet log."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import traceback
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from . import tracking
from .images import save_image, write_json
from .inpaint import inpaint, working_size

RECORD = "record.json"
IMAGE = "image.png"


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
        from .config import ConfigError

        raise ConfigError(f"no prepared cases at {str(path)!r}: run `dvc repro prepare` (or stages/prepare.py) first")
    return json.loads(path.read_text())


def is_complete(cell_dir: Path) -> bool:
    try:
        return json.loads((cell_dir / RECORD).read_text()).get("status") == "ok"
    except (OSError, ValueError):
        return False


def run_cell(model, case: dict, settings: dict, cells_dir: Path, comet_dir: Path, tracking_cfg, sweep_id: str):
    """Generate one (case, settings) cell into its own folder. Returns its record (status ok, skipped or failed)."""
    # 1. Identify the cell by what decides its pixels.
    width, height = working_size(tuple(case["image_size"]), settings["size"])
    determinants = {
        "case": case["id"],
        "image_sha256": file_digest(case["image"]),
        "mask_sha256": file_digest(case["mask"]),
        "prompt": case["prompt"],
        "model_id": model.model_id,
        "model_revision": model.revision,
        "dtype": model.dtype,
        "working_size": [width, height],
        **{k: settings[k] for k in ("steps", "guidance", "strength", "negative_prompt", "seed")},
    }
    cid = cell_id(case["id"], determinants)
    cell_dir = cells_dir / cid
    if is_complete(cell_dir):
        record = json.loads((cell_dir / RECORD).read_text())
        return {**record, "status_this_run": "skipped"}

    record = {
        "cell_id": cid,
        "status": "ok",
        "error": None,
        "case": case["id"],
        "prompt": case["prompt"],
        **{k: settings[k] for k in ("steps", "guidance", "strength", "negative_prompt", "seed")},
        "model": settings["model_name"],
        "model_id": model.model_id,
        "model_revision": model.revision,
        "device": model.device,
        "dtype": model.dtype,
        "working_size": [width, height],
        "mask_method": case["method"],
        "code_version": code_version(),
        "sweep_id": sweep_id,
        "input": case["image"],
        "mask": case["mask"],
        "image": None,
        "metrics": {},
        "comet": None,
        "finished_at": None,
    }
    # 2. Generate, composite and save; a failure is recorded, never raised, so the sweep goes on.
    try:
        image = Image.open(case["image"]).convert("RGB")
        mask = np.asarray(Image.open(case["mask"])) > 127
        result, metrics = inpaint(
            model.pipe,
            image,
            mask,
            case["prompt"],
            settings["negative_prompt"],
            settings["steps"],
            settings["guidance"],
            settings["strength"],
            settings["seed"],
            settings["size"],
            model.device,
        )
        save_image(result, cell_dir / IMAGE)
        record.update(image=str(cell_dir / IMAGE), metrics=metrics)
    except Exception as e:  # noqa: BLE001 - one bad cell must not sink the sweep
        record.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
    record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    # 3. Log to Comet in the background; the record names the archive it will be in.
    if tracking_cfg.comet and record["status"] == "ok":
        online = tracking.is_online(tracking_cfg.offline)
        params = {k: record[k] for k in ("case", "prompt", "steps", "guidance", "strength", "negative_prompt", "seed")}
        params.update(model=record["model"], model_id=record["model_id"], model_revision=record["model_revision"],
                      mask_method=record["mask_method"], cell_id=cid, code_version=record["code_version"])
        future = tracking.submit(
            tracking.log_cell,
            comet_dir,
            online,
            tracking_cfg.project,
            tracking_cfg.workspace,
            cid,
            params,
            record["metrics"],
            [f"sweep:{sweep_id}", f"case:{case['id']}", f"model:{record['model']}"],
            {"input": case["image"], "mask": case["mask"], "output": record["image"]},
        )
        future.add_done_callback(lambda f, d=cell_dir: _note_comet(f, d))
    write_json(record, cell_dir / RECORD)
    return {**record, "status_this_run": record["status"]}


def _note_comet(future, cell_dir: Path) -> None:
    """Write where the cell's Comet log went into its record, once the background log finished."""
    if future.exception() is not None:
        return
    path = cell_dir / RECORD
    record = json.loads(path.read_text())
    record["comet"] = os.path.relpath(future.result()) if not future.result().startswith("http") else future.result()
    write_json(record, path)
