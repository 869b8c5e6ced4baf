"""The sweep runner: the one owner of a generate process's state.

A `SweepRunner` holds the cell store and its view, the loaded model (one at a time), the finisher threads that
composite and write computed cells beside the next cell's denoising, the Comet logger process, the counters and the
progress bar; `close()` flushes them all once. The Hydra callback (sweep.py) makes the launching process's runner
after the whole command line, config and grid are valid; a launcher's worker process makes its own on its first job.

A value's path, e.g. `guidance`: the command line -> Hydra's job config -> `SweepRunner.run_job(cfg)` ->
`inpaint.denoise(guidance=cfg.guidance)` -> `pipe(guidance_scale=...)`, and into the record's `config` and `guidance`.
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
import logging
import os
import shutil
import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
from omegaconf import OmegaConf
from PIL import Image

from . import tracking
from .config import SWEEP_AXES, ConfigError, load_settings
from .identity import (FINGERPRINT_KEYS, Digests, cell_id, cell_identity, flatten, generation_config, model_fingerprint,
                       task_container)
from .images import load_photo, save_image, to_mask_image, write_json
from .inpaint import denoise, dropped_tokens, seed_list, to_photo, working_size
from .provenance import code_version
from .records import COMET_ARCHIVE, RECORD, PreparedCase, file_entry, load_prepared, write_record
from .workspace import shared_path
from .store import CellStore, ViewLock, prune, show, view_paths, write_failed

log = logging.getLogger(__name__)
JOB_REPORT = "job_cells.json"  # a worker process's cells and counts, in its Hydra job folder, for the launcher
STATUSES = ("done", "skipped", "failed")


class SweepRunner:
    def __init__(self, cfg, sweep_id: str, lock: bool = True) -> None:
        self.view = Path(cfg.paths.generate)
        self._lock_file = ViewLock(self.view) if lock else None
        if self._lock_file:
            self._lock_file.acquire()  # first: a refused sweep has made nothing
        self.store = CellStore(shared_path(cfg.paths.cell_store))  # queued DVC experiments share the main one
        self.sweep_id = sweep_id
        self.pid = os.getpid()
        self.launcher = lock  # the launching process's runner (it owns the view); False in a launcher's worker
        self.counts = dict.fromkeys(STATUSES, 0)
        self.cells: set[str] = set()  # every cell this run put in the view
        self.failed: list[str] = []
        self.digests = Digests(self.store.root / ".digests.json")
        self.logger = tracking.CometLogger() if cfg.tracking.comet else None
        self.online = None  # whether Comet logs go online: asked once, at the first cell that logs
        self._lock = threading.Lock()
        self._gpu: tuple[int, object] | None = None  # (index, its held lock file): this process's GPU, if pinned
        self._loaded: tuple[tuple, object] | None = None  # (load settings, LoadedModel): one pipeline resident
        self._fingerprints: dict[str, tuple[str, str]] = {}
        self._cases: dict[str, list[PreparedCase]] = {}
        self._inputs: dict[tuple, tuple] = {}
        self._warned: set[tuple] = set()
        self._mask_pngs: dict[int, tuple] = {}  # id(mask array) -> (the array, its PNG bytes, their file entry)
        self._inputs_logged: dict[str, str] = {}  # case id -> the experiment that holds its photo and mask
        self._planned: dict[tuple[str, ...], list] = {}  # a job's task overrides -> its cells, listed by plan()
        # Finishing computed cells: one thread per two CPU cores (at most 4), at most twice as many cells waiting, so
        # a fast GPU cannot pile up images in memory faster than they are written.
        workers = max(1, min(4, (os.cpu_count() or 2) // 2))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="finish-cell")
        self._waiting = threading.BoundedSemaphore(2 * workers)
        self._futures: list[Future] = []
        self._bar = None  # a multirun's overall progress bar: show_progress

    def show_progress(self, total_cells: int) -> None:
        """Start the overall progress bar (cells done, skipped, failed; ETA)."""
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total_cells, desc="sweep", unit="cell", dynamic_ncols=True, leave=True)

    # -- the job ------------------------------------------------------------------------------------------------------

    def run_job(self, cfg, task_overrides: tuple[str, ...] = ()) -> None:
        """Make every case's cell for this job's settings available in the view, computing only what the store lacks.
        `task_overrides` (the job's hydra.overrides.task) finds the cells plan() already listed for it."""
        _, revision = self.fingerprint(cfg.model)
        settings = _settings(cfg)
        cells = self._planned.pop(tuple(task_overrides), None) if task_overrides else None
        for case, prompts, identity, cid in cells or self.job_cells(cfg):
            self.cells.add(cid)
            record = self.store.get(cid)
            if record is not None:
                self._reuse(record, cfg)
                continue
            record = _new_record(cid, case, cfg, settings, identity, revision, self.sweep_id, prompts)
            self._compute(record, case, cfg)

    def job_cells(self, cfg):
        """Each cell of a job, in order: (case, its Prompts, identity, cell id). The identity holds the prompt and
        negative prompt the cell actually uses (after `prompt` and `prompt_sr`), so equal texts share a cell."""
        generation = generation_config(cfg)
        fingerprint, _ = self.fingerprint(cfg.model)
        for case in self.prepared(cfg.paths.prepare):
            for prompts in prompt_variants(case.id, case.prompt, cfg.prompt, cfg.negative_prompt, cfg.prompt_sr):
                texts = {"prompt": prompts.prompt, "negative_prompt": prompts.negative_prompt}
                identity = cell_identity({**generation, **texts}, fingerprint, case, self.digests)
                yield case, prompts, identity, cell_id(case.id, identity)

    def plan(self, jobs) -> tuple[int, int, int]:
        """(cells, of them already in the store, model loads) of a grid's jobs ((task overrides, task config) in
        launch order), loading nothing: the cell ids come from each job's config and the model's fingerprint, as
        run_job computes them (and then takes from here)."""
        cells, stored, loads = 0, 0, []
        for task_overrides, cfg in jobs:
            self._planned[tuple(task_overrides)] = listed = list(self.job_cells(cfg))
            missing = False
            for *_, cid in listed:
                cells += 1
                if (self.store.cell_dir(cid) / RECORD).is_file():
                    stored += 1
                else:
                    missing = True
            key = load_settings(cfg.model)
            if missing and (not loads or loads[-1] != key):
                loads.append(key)
        return cells, stored, len(loads)

    def prepared(self, prepare_dir: str) -> list[PreparedCase]:
        if prepare_dir not in self._cases:
            self._cases[prepare_dir] = load_prepared(prepare_dir)
        return self._cases[prepare_dir]

    def fingerprint(self, model) -> tuple[str, str]:
        key = tuple(str(model.get(k)) for k in FINGERPRINT_KEYS)
        if key not in self._fingerprints:
            self._fingerprints[key] = model_fingerprint(model, self.digests)
        return self._fingerprints[key]

    def model(self, model_cfg):
        """The loaded pipeline for `model_cfg`, with its scheduler set; loading it releases the previous one."""
        from .model import load_model, set_scheduler, use_cpu_threads

        key = load_settings(model_cfg)
        if self._loaded is None or self._loaded[0] != key:
            self.release_model()
            loaded = load_model(self.pinned(model_cfg))
            use_cpu_threads(loaded.device, model_cfg.cpu_threads)
            self._loaded = (key, loaded)
        loaded = self._loaded[1]
        use_cpu_threads(loaded.device, model_cfg.cpu_threads)
        set_scheduler(loaded, model_cfg.scheduler)
        return loaded

    def pinned(self, model_cfg):
        """`model_cfg` on this process's own GPU when it asks for `cuda` (or `auto`, finding CUDA) on a machine with
        several: the first GPU no other process holds (claim_gpu), so the N workers of a parallel launcher use N
        GPUs. The cell identity keeps `cuda`: a cell is the same whichever GPU made it (the record's `device` says)."""
        from .model import resolve_device

        if resolve_device(model_cfg.device) != "cuda" or cuda_device_count() < 2:
            return model_cfg
        if self._gpu is None:
            import torch

            self._gpu = claim_gpu(cuda_device_count(), self.store.root / ".gpus")
            torch.cuda.set_device(self._gpu[0])  # CUDA's current device too: no stray context on GPU 0
            log.info("this process uses GPU cuda:%d", self._gpu[0])
        pinned = model_cfg.copy()
        pinned.device = f"cuda:{self._gpu[0]}"
        return pinned

    def release_model(self) -> None:
        if self._loaded is None:
            return
        device = self._loaded[1].device
        self._loaded = None
        gc.unfreeze()  # the grid launcher freezes the heap (hydra_plugins.inpaint_sweep_grid): the pipeline with it
        gc.collect()
        if str(device).startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def _reuse(self, record: dict, cfg) -> None:
        """A stored cell: shown in the view; logged to Comet now if it never was (or uploaded, if it was logged
        offline and Comet is online now)."""
        job = self._tracking_job(record, cfg) if self.logger else None
        if job is None:
            show(self.store, record, self.view)
            self._advance("skipped", record["cell_id"])
        else:
            self._log(record, job, "skipped")

    def _compute(self, record: dict, case: PreparedCase, cfg) -> None:
        seeds = seed_list(cfg.seed)
        try:
            model = self.model(cfg.model)
            record["scheduler_class"] = type(model.pipe.scheduler).__name__
            record["device"], record["dtype"] = model.device, model.dtype
            image, mask, soft = self._case_inputs(case, cfg.mask)
            self._check_prompts(record, model.pipe, record["prompt"], record["negative_prompt"])
            raws, metrics, box, nsfw = denoise(
                model.pipe, image, mask, record["prompt"], record["negative_prompt"], cfg.steps, cfg.guidance,
                cfg.strength, seeds, cfg.model.size, model.device, padding_mask_crop=cfg.model.padding_mask_crop,
            )
        except Exception as e:  # noqa: BLE001 - one bad cell must not sink the sweep
            if isinstance(e, KeyboardInterrupt):
                raise
            self._fail(record, e)
            return
        self._waiting.acquire()  # blocks while the finishers are behind
        future = self._pool.submit(self._finish, record, seeds, raws, metrics, nsfw, box, (image, mask, soft), cfg)
        future.add_done_callback(lambda _: self._waiting.release())
        self._track(future)

    def _finish(self, record, seeds, raws, metrics, nsfw, box, inputs, cfg) -> None:
        """Composite and write a computed cell into the store (off the generation path), then show and log it."""
        cid = record["cell_id"]
        image, mask, soft = inputs
        staging = self.store.staging(cid)
        try:
            stored = self.store.cell_dir(cid)
            # The masks this cell inpainted and blended with (prepare's base mask under the job's mask settings).
            for name, pixels in (("mask.png", mask), ("soft_mask.png", soft)):
                if pixels is not None:
                    data, entry = self._mask_png(pixels)
                    (staging / name).write_bytes(data)  # a private folder until published: no half file is seen
                    record["files"][name] = entry
                    record[name.removesuffix(".png")] = str(stored / name)
            pictures = {}  # the composited images, for Comet's previews (decoding the PNGs again cost 20 ms each)
            for seed, raw, cell_metrics, flagged in zip(seeds, raws, metrics, nsfw):
                name = f"seed-{seed}.png"
                pictures[name] = to_photo(image, raw, mask, box, soft)
                save_image(pictures[name], staging / name, compress_level=1)  # level 1: fast
                record["images"].append({"seed": seed, "path": str(stored / name), "metrics": cell_metrics,
                                         "nsfw": flagged})
                record["files"][name] = file_entry(staging / name)
            if any(nsfw):
                log.warning("cell %s: the safety checker flagged seed(s) %s; their images are black (nsfw: true in "
                            "the record)", cid, [s for s, f in zip(seeds, nsfw) if f])
            record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            write_record(record, staging)  # last: the folder holds a complete cell
            self.store.publish(staging, cid)
        except Exception as e:  # noqa: BLE001 - e.g. a full disk: this cell fails, the sweep goes on
            shutil.rmtree(staging, ignore_errors=True)
            self._fail(record, e)
            return
        job = self._tracking_job(record, cfg, pictures) if self.logger else None
        if job is None:
            show(self.store, record, self.view)
            self._advance("done", cid)
        else:
            self._log(record, job, "done")

    def _mask_png(self, pixels: np.ndarray) -> tuple[bytes, dict]:
        """A mask as PNG bytes and their file entry, encoded once per mask (every cell of a case and mask settings
        stores the same file)."""
        with self._lock:
            hit = self._mask_pngs.get(id(pixels))
        if hit is None or hit[0] is not pixels:
            image = to_mask_image(pixels) if pixels.dtype == bool else Image.fromarray(pixels, mode="L")
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            data = buffer.getvalue()
            hit = (pixels, data, {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
            with self._lock:
                if len(self._mask_pngs) >= 16:
                    self._mask_pngs.pop(next(iter(self._mask_pngs)))
                self._mask_pngs[id(pixels)] = hit
        return hit[1], dict(hit[2])

    def _fail(self, record: dict, error: Exception) -> None:
        record.update(status="failed", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc(),
                      finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        log.error("cell %s failed: %s", record["cell_id"], record["error"])
        write_failed(view_paths(record, self.view / "cells" / record["cell_id"]), self.view)
        with self._lock:
            self.failed.append(record["cell_id"])
        self._advance("failed", record["cell_id"])

    def _check_prompts(self, record: dict, pipe, prompt: str, negative_prompt: str) -> None:
        """Record (and say once per prompt) how many tokens the model cannot read."""
        for key, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            dropped = dropped_tokens(pipe, text)
            record[f"{key}_truncated"] = dropped > 0
            if dropped and (key, text) not in self._warned:
                self._warned.add((key, text))
                log.warning("case %s: the %s is longer than the model reads; its last %d token(s) are dropped: %r",
                            record["case"], key.replace("_", " "), dropped, text)

    def _case_inputs(self, case: PreparedCase, mask_cfg):
        """A case's photo, and its mask and soft mask under this job's mask settings, decoded once per process
        (read only: shared by threads)."""
        settings = (mask_cfg.dilate, mask_cfg.feather, mask_cfg.clip_to_box)
        key = (case.image, self.digests.of(case.image), case.mask, self.digests.of(case.mask), settings)
        if key not in self._inputs:
            if len(self._inputs) >= 8:  # a few cases' worth: each job runs every case
                self._inputs.pop(next(iter(self._inputs)))
            self._inputs[key] = decode_inputs(case, *settings)
        return self._inputs[key]

    # -- Comet ---------------------------------------------------------------------------------------------------

    def _tracking_job(self, record: dict, cfg, pictures: dict | None = None) -> dict | None:
        """What to send the Comet logger for a stored cell, or None if its log is already where it should be."""
        if self.online is None:
            self.online = tracking.is_online(cfg.tracking.offline)
        comet = record.get("comet")
        if comet and not (self.online and COMET_ARCHIVE in record["files"] and not record.get("comet_uploaded")):
            return None
        if comet:  # logged offline before, online now: comet_ml's own uploader sends the stored archive, once
            return {"upload": str(self.store.cell_dir(record["cell_id"]) / COMET_ARCHIVE)}
        stored = self.store.cell_dir(record["cell_id"])
        workdir = self.store.private_dir("comet", record["cell_id"])
        t = cfg.tracking
        pictures = pictures or {}
        images = {f"output_seed-{e['seed']}": preview(stored / Path(e["path"]).name, workdir, t.image_format,
                                                      t.image_max_pixels, pictures.get(Path(e["path"]).name))
                  for e in record["images"]}
        params = comet_params(record)
        # The case's photo and mask once per case and sweep, in the first experiment that needs them; the others name
        # that experiment (Comet cannot link assets across experiments, and a photo in every cell dominated storage).
        first = self._inputs_logged.setdefault(record["case"], record["cell_id"])
        if first == record["cell_id"]:
            images["input"] = preview(Path(record["input"]), workdir, t.image_format, t.image_max_pixels)
            images["mask"] = preview(Path(record["mask"]), workdir, "png", t.image_max_pixels)
        params["inputs_logged_in"] = first
        return {
            "offline_dir": str(workdir),
            "online": self.online,
            "project": t.project,
            "workspace": t.workspace,
            "name": record["cell_id"],
            "params": params,
            "metrics": comet_metrics(record),
            "tags": ["kind:cell", f"sweep:{record['sweep_id']}", f"case:{record['case']}", f"model:{record['model']}"],
            "images": images,
        }

    def _log(self, record: dict, job: dict, status: str) -> None:
        done: Future = Future()
        self._track(done)

        def logged(answer: Future) -> None:
            try:
                self._note_log(record, job, answer)
            except Exception as e:  # noqa: BLE001 - tracking must never cost a computed cell
                log.warning("cell %s: its Comet log could not be stored: %s", record["cell_id"], e)
            try:
                show(self.store, record, self.view)
                self._advance(status, record["cell_id"])
                done.set_result(None)
            except Exception as e:  # noqa: BLE001
                done.set_exception(e)

        self.logger.submit(job).add_done_callback(logged)

    def _note_log(self, record: dict, job: dict, answer: Future) -> None:
        """Store where the cell's log went with the cell: its offline archive, its URL, or that it was uploaded."""
        cid = record["cell_id"]
        try:
            where = answer.result()
            if where.startswith("uploaded:"):
                record["comet_uploaded"] = where.removeprefix("uploaded:")
            elif where.startswith("http"):
                record["comet"] = where
            else:
                self.store.add_file(cid, Path(where), COMET_ARCHIVE)
                record["files"][COMET_ARCHIVE] = file_entry(self.store.cell_dir(cid) / COMET_ARCHIVE)
                record["comet"] = COMET_ARCHIVE
        except Exception as e:  # noqa: BLE001
            log.warning("cell %s: Comet logging failed: %s", cid, e)
            return
        finally:
            if job.get("offline_dir"):
                shutil.rmtree(job["offline_dir"], ignore_errors=True)
        write_record(record, self.store.cell_dir(cid))

    # -- book-keeping ----------------------------------------------------------------------------------------------

    def _track(self, future: Future) -> None:
        with self._lock:
            self._futures.append(future)

    def _advance(self, status: str, cid: str) -> None:
        """Count one finished cell and move the overall bar; called from any thread once the cell's files are written."""
        with self._lock:
            self.counts[status] += 1
            if self._bar is not None:
                self._bar.set_postfix(self.counts, refresh=False)
                self._bar.update(1)

    def flush(self) -> None:
        """Wait until every computed cell is written, logged and shown."""
        while True:
            with self._lock:
                futures, self._futures = self._futures, []
            if not futures:
                break
            for future in futures:
                future.result()
        self.digests.save()

    def add_worker_reports(self, sweep_dir: str | Path) -> None:
        """Count the cells that jobs run by other processes (joblib, submitit) reported in their job folders."""
        for path in sorted(Path(sweep_dir).glob(f"**/{JOB_REPORT}")):
            report = json.loads(path.read_text())
            self.cells.update(report["cells"])
            self.failed.extend(report["failed"])
            for status, n in report["counts"].items():
                self.counts[status] += n
            if self._bar is not None:
                self._bar.update(sum(report["counts"].values()))
                self._bar.set_postfix(self.counts, refresh=False)

    def write_job_report(self, job_dir: str | Path) -> None:
        """In a worker process: flush, then hand this job's cells and counts to the launching process."""
        self.flush()
        write_json({"cells": sorted(self.cells), "failed": self.failed, "counts": self.counts},
                   Path(job_dir) / JOB_REPORT)
        self.cells, self.failed, self.counts = set(), [], dict.fromkeys(STATUSES, 0)

    def close(self, completed: bool) -> None:
        """Flush everything; if the run completed, remove from the view the cells not in this grid."""
        try:
            self.flush()
        finally:
            self._pool.shutdown(wait=True)
            if self.logger:
                self.logger.close()
            self._loaded = None  # the process ends next: no collection (0.3 s) to free memory for another model
            if self._gpu is not None and self._gpu[1] is not None:
                self._gpu[1].close()  # the GPU's lock: another process may claim it
            if completed:
                prune(self.view, self.cells)
            if self._bar is not None:
                self._bar.close()
            if self._lock_file:
                self._lock_file.release()


def cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def claim_gpu(count: int, lock_dir: Path) -> tuple[int, object]:
    """(index, lock) of the first of this machine's `count` GPUs that no other process holds: an exclusive flock per
    GPU, kept until this process ends. When every GPU is held (more workers than GPUs), the one the process id picks."""
    import fcntl
    import socket

    lock_dir.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        lock = open(lock_dir / f"{socket.gethostname()}-cuda{index}.lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            continue
        return index, lock
    return os.getpid() % count, None


def decode_inputs(case: PreparedCase, dilate: int = 0, feather: int = 0, clip: bool = False) -> tuple:
    """The photo generate works on (the upright 8-bit copy prepare wrote), and the mask it inpaints: prepare's base
    mask grown by `dilate` pixels (then cut to the case's box if `clip`), with its soft mask for compositing
    (`feather` > 0; else None)."""
    from .masks import clip_to_box, dilate as grow, feather_mask

    image = load_photo(case.image, warn=False)
    mask = grow(np.asarray(Image.open(case.mask)) > 127, dilate)
    if clip and case.box:
        mask = clip_to_box(mask, tuple(case.box))
    soft = feather_mask(mask, feather) if feather > 0 else None
    return image, mask, soft


class Prompts(NamedTuple):
    prompt: str
    negative_prompt: str
    replacement: str | None  # the prompt_sr value the cell uses; None without search/replace


def prompt_variants(case_id: str, case_prompt: str, prompt: str | None, negative_prompt: str,
                    prompt_sr) -> list[Prompts]:
    """The prompts of one case's cells in a job: the job's `prompt` (null: the case's own) and negative prompt; with
    `prompt_sr` [find, a, b, ...] (A1111's Prompt S/R), one cell per value, each replacing `find` in both."""
    text = case_prompt if prompt is None else prompt
    if not prompt_sr:
        return [Prompts(text, negative_prompt, None)]
    find = prompt_sr[0]
    if find not in text:
        raise ConfigError(f"case {case_id}: prompt_sr looks for {find!r}, which its prompt {text!r} does not contain")
    return [Prompts(text.replace(find, v), negative_prompt.replace(find, v), v) for v in prompt_sr]


def _settings(cfg) -> dict:
    return {k: (OmegaConf.to_container(cfg[k]) if OmegaConf.is_config(cfg[k]) else cfg[k]) for k in SWEEP_AXES}


def _new_record(cid: str, case: PreparedCase, cfg, settings: dict, identity: dict, revision: str,
                sweep_id: str, prompts: Prompts) -> dict:
    m = cfg.model
    plain = task_container(cfg)
    for key in ("hydra", "paths", "tracking", "report"):
        plain.pop(key, None)
    plain["prompt_sr"] = prompts.replacement  # this cell's value of the search/replace axis
    return {
        "cell_id": cid,
        "status": "ok",
        "error": None,
        "case": case.id,
        **settings,
        "prompt": prompts.prompt,  # the prompt the cell used
        "negative_prompt": prompts.negative_prompt,
        "model": m.name,
        "model_id": m.id or "builtin/tiny-sd-inpaint",
        "model_revision": revision,
        "model_fingerprint": identity["model_fingerprint"],
        "scheduler": m.scheduler,  # null = the checkpoint's own: scheduler_class says which
        "padding_mask_crop": m.padding_mask_crop,
        "working_size": list(working_size(tuple(case.image_size), m.size)),
        "mask_method": case.method,
        "config": flatten(plain),  # the whole job config (flat dotted keys): what the report splits on
        "identity": identity,  # what the cell id hashes (identity.py)
        "code_version": code_version(),
        "sweep_id": sweep_id,
        "input": case.image,
        "mask": case.mask,  # then the cell's own mask.png (and soft_mask.png): the mask settings applied to it
        "soft_mask": None,
        "images": [],
        "files": {},
        "comet": None,
        "finished_at": None,
    }


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


def comet_params(record: dict) -> dict:
    """The cell's Comet parameters: the config's own key names, plus what identifies the cell. Empty values read as
    in the report's grids and tables: "" is "(none)", null is "(default)"."""
    from .grids import fmt

    params = {k: (json.dumps(v) if isinstance(v, (list, dict)) else fmt(v) if v in ("", None) else v)
              for k, v in record["config"].items()}
    params.update({k: record[k] for k in ("case", "prompt", "model_id", "model_revision", "mask_method", "cell_id",
                                          "code_version")})
    return params


def comet_metrics(record: dict) -> dict:
    """The same metric names for every cell: a multi-seed cell logs the mean over its seeds."""
    values: dict[str, list] = {}
    for entry in record["images"]:
        for name, value in entry["metrics"].items():
            values.setdefault(name, []).append(value)
    return {name: float(np.mean(v)) for name, v in values.items()}


# The runner of this process: made by the launching process's Hydra callback, or by a worker on its first job.
_CURRENT: list[SweepRunner] = []


def start(cfg, sweep_id: str) -> SweepRunner:
    runner = SweepRunner(cfg, sweep_id)
    _CURRENT[:] = [runner]
    return runner


def current(cfg, sweep_id: str) -> SweepRunner:
    """This process's runner; a launcher's worker process (another pid) makes its own, which locks nothing."""
    if not _CURRENT or _CURRENT[0].pid != os.getpid():
        _CURRENT[:] = [SweepRunner(cfg, sweep_id, lock=False)]
    return _CURRENT[0]


def launching() -> SweepRunner | None:
    """The runner the launching process made (None in a worker, or before the run started)."""
    runner = _CURRENT[0] if _CURRENT else None
    return runner if runner is not None and runner.pid == os.getpid() and runner.launcher else None


def finish(completed: bool) -> SweepRunner | None:
    """Close the launching process's runner, at exit; returns it for its counts (None if the run never started)."""
    runner = launching()
    if runner is not None:
        _CURRENT.clear()
        runner.close(completed)
    return runner
