"""Making cells: the work of one Hydra job, in whatever process its launcher runs it.

`CellMaker` (a context manager, made for the job and closed once) makes every cell of the job's combinations of
settings available in the store and the view, computing only what the store lacks. It is built from parts, each
owning one piece of state:
- `Identities`: cell ids (prepared cases, model fingerprints, the file-digest cache);
- `ModelSlot`: the one resident pipeline (and this process's GPU);
- `Finisher`: the threads that composite and write computed cells while the next cell denoises;
- `Tally`: counts, failed cells and the progress bar;
- `CometLog` (logbook.py): the Comet logger process.

A value's path, e.g. `guidance`: the command line -> the combination's config -> `CellMaker.make(cfg)` ->
`inpaint.denoise(guidance=cfg.guidance)` -> `pipe(guidance_scale=...)`, and into the record's `config` and `guidance`.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import logging
import os
import shutil
import sys
import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
from omegaconf import OmegaConf
from PIL import Image

from .cases import Prompts, prompt_variants
from .config import SWEEP_AXES, load_settings
from .errors import DiskFull, no_space
from .identity import FINGERPRINT_KEYS, Digests, cell_id, cell_identity, flatten, generation_config, model_fingerprint
from .identity import task_container
from .images import load_photo, save_image, to_mask_image
from .inpaint import denoise, dropped_tokens, seed_list, to_photo, working_size
from .logbook import CometLog
from .machine import machine_info
from .provenance import code_version
from .records import CellRecord, ImageEntry, PreparedCase, file_entry, load_prepared, write_record
from .store import CellStore, show, write_failed

log = logging.getLogger(__name__)
STATUSES = ("done", "skipped", "failed")


def job_ending(e: BaseException) -> bool:
    """Whether an exception ends the job, not the cell: submitit's signal handler raises UncompletedJobError in a
    Slurm job out of time (or preempted) that it does not requeue; the job stops there, its finished cells kept."""
    submitit = sys.modules.get("submitit")  # only a submitit job can raise it
    return submitit is not None and isinstance(e, submitit.core.utils.UncompletedJobError)


class PlannedCell(NamedTuple):
    case: PreparedCase
    prompts: Prompts
    identity: dict
    id: str


class Identities:
    """Cell ids of combinations: the prepared cases and each model's fingerprint read once, file digests cached."""

    def __init__(self, digests: Digests) -> None:
        self.digests = digests
        self._cases: dict[str, list[PreparedCase]] = {}
        self._fingerprints: dict[tuple, tuple[str, str]] = {}

    def prepared(self, prepare_dir: str) -> list[PreparedCase]:
        if prepare_dir not in self._cases:
            self._cases[prepare_dir] = load_prepared(prepare_dir)
        return self._cases[prepare_dir]

    def fingerprint(self, model) -> tuple[str, str]:
        """(the loaded files' fingerprint, the revision to record) of a model config."""
        key = tuple(str(model.get(k)) for k in FINGERPRINT_KEYS)
        if key not in self._fingerprints:
            self._fingerprints[key] = model_fingerprint(model, self.digests)
        return self._fingerprints[key]

    def cells(self, cfg) -> list[PlannedCell]:
        """Each cell of a combination, in order. The identity holds the prompt and negative prompt the cell actually
        uses (after `prompt` and `prompt_sr`), so equal texts share a cell."""
        generation = generation_config(cfg)
        fingerprint, _ = self.fingerprint(cfg.model)
        found = []
        for case in self.prepared(cfg.paths.prepare):
            for prompts in prompt_variants(case.id, case.prompt, cfg.prompt, cfg.negative_prompt, cfg.prompt_sr):
                texts = {"prompt": prompts.prompt, "negative_prompt": prompts.negative_prompt}
                identity = cell_identity({**generation, **texts}, fingerprint, case, self.digests)
                found.append(PlannedCell(case, prompts, identity, cell_id(case.id, identity)))
        return found


class Tally:
    """Counts of finished cells (done, skipped, failed), the failed ones' ids and the progress bar; thread-safe."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(STATUSES, 0)
        self.failed: list[str] = []
        self._lock = threading.Lock()
        self._bar = None

    def start(self, total: int) -> None:
        """Show a progress bar of `total` cells."""
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, desc="cells", unit="cell", dynamic_ncols=True, leave=True)

    def add(self, status: str, cid: str) -> None:
        with self._lock:
            self.counts[status] += 1
            if status == "failed":
                self.failed.append(cid)
            if self._bar is not None:
                self._bar.set_postfix(self.counts, refresh=False)
                self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class Finisher:
    """Threads that finish computed cells (composite, write, publish, log) beside the next cell's denoising: one per
    two CPU cores (at most 4), with at most twice as many cells waiting, so a fast GPU cannot pile up images in
    memory faster than they are written. Work that raises is handed to `on_error(cell id, error)` as it ends: it
    never stops the wait for the rest, nor is it lost in a thread."""

    def __init__(self, on_error) -> None:
        workers = max(1, min(4, (os.cpu_count() or 2) // 2))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="finish-cell")
        self._waiting = threading.BoundedSemaphore(2 * workers)
        self._futures: list[Future] = []
        self._lock = threading.Lock()
        self._on_error = on_error

    def submit(self, cid: str, fn, *args) -> None:
        """Run `fn(*args)`, the work of finishing cell `cid`, on a finisher thread."""
        self._waiting.acquire()  # blocks while the finishers are behind
        future = self._pool.submit(fn, *args)
        future.add_done_callback(lambda _: self._waiting.release())
        self.track(cid, future)

    def track(self, cid: str, future: Future) -> None:
        """Wait for `future` (more work of cell `cid`, e.g. its Comet log) too."""
        future.add_done_callback(lambda done: done.exception() and self._on_error(cid, done.exception()))
        with self._lock:
            self._futures.append(future)

    def wait(self) -> None:
        """Until every submitted or tracked piece of work is done (work may add more as it ends)."""
        while True:
            with self._lock:
                futures, self._futures = self._futures, []
            if not futures:
                return
            concurrent.futures.wait(futures)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class ModelSlot:
    """The one resident pipeline of this process's job: loading another releases it first."""

    def __init__(self, store_root: Path) -> None:
        self._store_root = store_root
        self._loaded: tuple[tuple, object] | None = None  # (load settings, LoadedModel)
        self._gpu: tuple[int, object] | None = None  # (index, its held lock file): this process's GPU, if pinned

    def get(self, model_cfg):
        """The loaded pipeline for `model_cfg`, with its scheduler and CPU threads set."""
        from .model import load_model, set_scheduler, use_cpu_threads

        key = load_settings(model_cfg)
        if self._loaded is None or self._loaded[0] != key:
            self.release()
            self._loaded = (key, load_model(self.pinned(model_cfg)))
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

            self._gpu = claim_gpu(cuda_device_count(), self._store_root / ".gpus")
            torch.cuda.set_device(self._gpu[0])  # CUDA's current device too: no stray context on GPU 0
            log.info("this process uses GPU cuda:%d", self._gpu[0])
        pinned = model_cfg.copy()
        pinned.device = f"cuda:{self._gpu[0]}"
        return pinned

    def release(self) -> None:
        if self._loaded is None:
            return
        device = self._loaded[1].device
        self._loaded = None
        import gc

        gc.collect()  # a pipeline in a reference cycle is freed now, before the next one loads
        if str(device).startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def close(self) -> None:
        self.release()
        if self._gpu is not None and self._gpu[1] is not None:
            self._gpu[1].close()  # the GPU's lock: another process may claim it
            self._gpu = None


class CaseInputs:
    """Each case's photo and masks under a combination's mask settings, decoded once (read only: shared by
    threads), and each mask's PNG encoded once."""

    def __init__(self, digests: Digests) -> None:
        self._digests = digests
        self._decoded: dict[tuple, tuple] = {}
        self._pngs: dict[int, tuple] = {}  # id(mask array) -> (the array, its PNG bytes, their file entry)
        self._lock = threading.Lock()

    def get(self, case: PreparedCase, mask_cfg) -> tuple:
        settings = (mask_cfg.dilate, mask_cfg.feather, mask_cfg.clip_to_box)
        key = (case.image, self._digests.of(case.image), case.mask, self._digests.of(case.mask), settings)
        if key not in self._decoded:
            if len(self._decoded) >= 8:  # a few cases' worth: each combination runs every case
                self._decoded.pop(next(iter(self._decoded)))
            self._decoded[key] = decode_inputs(case, *settings)
        return self._decoded[key]

    def png(self, pixels: np.ndarray) -> tuple[bytes, dict]:
        """A mask as PNG bytes and their file entry (every cell of a case and mask settings stores the same file)."""
        with self._lock:
            hit = self._pngs.get(id(pixels))
        if hit is None or hit[0] is not pixels:
            image = to_mask_image(pixels) if pixels.dtype == bool else Image.fromarray(pixels, mode="L")
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            data = buffer.getvalue()
            hit = (pixels, data, {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
            with self._lock:
                if len(self._pngs) >= 16:
                    self._pngs.pop(next(iter(self._pngs)))
                self._pngs[id(pixels)] = hit
        return hit[1], dict(hit[2])


class CellMaker:
    """Makes the cells of one job's combinations; use as a context manager, which closes every part once."""

    def __init__(self, store: CellStore, view: Path, sweep_id: str, tracking_cfg,
                 axes: list[str] | None = None) -> None:
        self.store = store
        self.view = view
        self.sweep_id = sweep_id
        self.digests = Digests(store.root / ".digests.json")
        self.identities = Identities(self.digests)
        self.inputs = CaseInputs(self.digests)
        self.model = ModelSlot(store.root)
        self.finisher = Finisher(self._finish_failed)
        self.tally = Tally()
        self.comet = CometLog(tracking_cfg, store, axes) if tracking_cfg.comet else None
        self._warned: set[tuple] = set()
        self.disk_full: DiskFull | None = None  # set by the first write that found no space: no further cell starts

    def __enter__(self) -> "CellMaker":
        if self.comet:
            self.comet.start()  # imports comet_ml while this process imports torch
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            self.finisher.wait()
            try:
                self.digests.save()
            except OSError as e:
                if not self._note_full(e, self.store.root, "cell store"):
                    raise
            if self.disk_full is not None and exc_type is None:
                raise self.disk_full  # the launching process says what was kept (sweep.run_grid)
        finally:
            self.finisher.close()
            if self.comet:
                self.comet.close()
            self.model.close()
            self.tally.close()

    def make(self, configs: list) -> None:
        """Make every case's cell of each combination's config available in the view."""
        planned = [(cfg, self.identities.cells(cfg)) for cfg in configs]
        self.tally.start(sum(len(cells) for _, cells in planned))
        for cfg, cells in planned:
            _, revision = self.identities.fingerprint(cfg.model)
            settings = _settings(cfg)
            for cell in cells:
                if self.disk_full is not None:
                    return  # every later write would fail too; the cells made so far are kept
                record = self.store.get(cell.id)
                if record is not None:
                    try:
                        self._reuse(record, cfg)
                    except OSError as e:
                        if not self._note_full(e, self.view, "view"):
                            raise
                        self.tally.add("failed", cell.id)
                else:
                    self._compute(_new_record(cell, cfg, settings, revision, self.sweep_id), cell.case, cfg)

    def _reuse(self, record: CellRecord, cfg) -> None:
        """A stored cell: shown in the view; logged to Comet now if it never was (or uploaded, if it was logged
        offline and Comet is online now)."""
        job = self.comet.job_for(record, cfg.tracking) if self.comet else None
        if job is None:
            self._show(record, "skipped")
        else:
            self.finisher.track(record.cell_id, self.comet.log(record, job, lambda: self._show(record, "skipped")))

    def _compute(self, record: CellRecord, case: PreparedCase, cfg) -> None:
        seeds = seed_list(cfg.seed)
        try:
            model = self.model.get(cfg.model)
            record.scheduler_class = type(model.pipe.scheduler).__name__
            record.device, record.dtype = model.device, model.dtype
            record.machine = machine_info()  # where it ran: not part of its identity
            image, mask, soft = self.inputs.get(case, cfg.mask)
            self._check_prompts(record, model.pipe)
            raws, metrics, box, nsfw = denoise(
                model.pipe, image, mask, record.prompt, record.negative_prompt, cfg.steps, cfg.guidance,
                cfg.strength, seeds, cfg.model.size, model.device, padding_mask_crop=cfg.model.padding_mask_crop,
            )
        except Exception as e:  # noqa: BLE001 - one bad cell must not sink the sweep
            if job_ending(e):
                raise
            self._note_full(e, self.store.root, "cell store")  # e.g. the model cache, written on first load
            self._fail(record, e)
            return
        self.finisher.submit(record.cell_id, self._finish, record, seeds, raws, metrics, nsfw, box, (image, mask, soft),
                             cfg.tracking)

    def _finish(self, record, seeds, raws, metrics, nsfw, box, inputs, tracking_cfg) -> None:
        """Composite and write a computed cell into the store (off the generation path), then show and log it."""
        cid = record.cell_id
        image, mask, soft = inputs
        staging = self.store.staging(cid)
        try:
            stored = self.store.cell_dir(cid)
            # The masks this cell inpainted and blended with (prepare's base mask under the job's mask settings).
            for name, pixels in (("mask.png", mask), ("soft_mask.png", soft)):
                if pixels is not None:
                    data, entry = self.inputs.png(pixels)
                    (staging / name).write_bytes(data)  # a private folder until published: no half file is seen
                    record.files[name] = entry
                    setattr(record, name.removesuffix(".png"), str(stored / name))
            pictures = {}  # the composited images, for Comet's previews (no second decode of the PNGs)
            for seed, raw, cell_metrics, flagged in zip(seeds, raws, metrics, nsfw):
                name = f"seed-{seed}.png"
                pictures[name] = to_photo(image, raw, mask, box, soft)
                save_image(pictures[name], staging / name, compress_level=1)  # level 1: fast
                record.images.append(ImageEntry(seed=seed, path=str(stored / name), metrics=cell_metrics,
                                                nsfw=flagged))
                record.files[name] = file_entry(staging / name)
            if any(nsfw):
                log.warning("cell %s: the safety checker flagged seed(s) %s; their images are black (nsfw: true in "
                            "the record)", cid, [s for s, f in zip(seeds, nsfw) if f])
            record.finished_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            write_record(record, staging)  # last: the folder holds a complete cell
            self.store.publish(staging, cid)
        except Exception as e:  # noqa: BLE001 - one bad cell must not sink the sweep (a full disk stops it)
            shutil.rmtree(staging, ignore_errors=True)
            self._note_full(e, self.store.root, "cell store")
            self._fail(record, e)
            return
        job = self.comet.job_for(record, tracking_cfg, pictures) if self.comet else None
        if job is None:
            self._show(record, "done")
        else:
            self.finisher.track(cid, self.comet.log(record, job, lambda: self._show(record, "done")))

    def _show(self, record: CellRecord, status: str) -> None:
        show(self.store, record, self.view)
        self.tally.add(status, record.cell_id)

    def _fail(self, record: CellRecord, error: Exception) -> None:
        record.status, record.error = "failed", f"{type(error).__name__}: {error}"
        record.traceback, record.finished_at = traceback.format_exc(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if self.disk_full is None:  # else the launching process says it once, for every cell
            log.error("cell %s failed: %s", record.cell_id, record.error)
        try:
            write_failed(record, self.view)
        except OSError as e:
            if not self._note_full(e, self.view, "view"):
                raise
        self.tally.add("failed", record.cell_id)

    def _finish_failed(self, cid: str, error: BaseException) -> None:
        """Finishing cell `cid` raised past its own handling (showing it in the view, its Comet log): the cell counts
        as failed here, and the launching process, finding it missing from the view, counts it failed too; a stored
        cell is shown by the next run."""
        if not self._note_full(error, self.view, "view"):
            log.error("cell %s: finishing it failed: %s: %s", cid, type(error).__name__, error)
        self.tally.add("failed", cid)

    def _note_full(self, error: BaseException, default: Path, role: str) -> bool:
        """Whether `error` is a full disk; the first one is noted (the folder it was writing, as the user named it,
        `default` when its file is in neither the store nor the view) and no further cell starts."""
        if not no_space(error):
            return False
        if self.disk_full is None:
            path, role = _full_folder(error, ((self.store.root, "cell store"), (self.view, "view")), (default, role))
            self.disk_full = DiskFull(_shown(path), role)
        return True

    def _check_prompts(self, record: CellRecord, pipe) -> None:
        """Record (and say once per prompt) how many tokens the model cannot read."""
        for key in ("prompt", "negative_prompt"):
            text = getattr(record, key)
            dropped = dropped_tokens(pipe, text)
            setattr(record, f"{key}_truncated", dropped > 0)
            if dropped and (key, text) not in self._warned:
                self._warned.add((key, text))
                log.warning("case %s: the %s is longer than the model reads; its last %d token(s) are dropped: %r",
                            record.case, key.replace("_", " "), dropped, text)


def _full_folder(error: OSError, folders, default) -> tuple[Path, str]:
    """(folder, role) of the folder whose file the error names; `default` when it names none of them."""
    if error.filename:
        written = Path(os.path.abspath(error.filename))
        for folder, role in folders:
            if written.is_relative_to(os.path.abspath(folder)):
                return folder, role
    return default


def _shown(path: Path) -> str:
    """A path as the user wrote it: relative to the working directory when it is inside it."""
    try:
        return str(Path(os.path.abspath(path)).relative_to(os.getcwd()))
    except ValueError:
        return str(path)


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


def decode_inputs(case: PreparedCase, dilate: int, feather: int, clip: bool) -> tuple:
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


def _settings(cfg) -> dict:
    return {k: (OmegaConf.to_container(cfg[k]) if OmegaConf.is_config(cfg[k]) else cfg[k]) for k in SWEEP_AXES}


def _new_record(cell: PlannedCell, cfg, settings: dict, revision: str, sweep_id: str) -> CellRecord:
    m, case = cfg.model, cell.case
    plain = task_container(cfg)
    for key in ("hydra", "paths", "tracking", "report", "batch"):
        plain.pop(key, None)
    plain["prompt_sr"] = cell.prompts.replacement  # this cell's value of the search/replace axis
    return CellRecord(
        cell_id=cell.id,
        case=case.id,
        **{k: v for k, v in settings.items() if k != "negative_prompt"},  # the text the cell used, below
        prompt=cell.prompts.prompt,
        negative_prompt=cell.prompts.negative_prompt,
        model=m.name,
        model_id=m.id or "builtin/tiny-sd-inpaint",
        model_revision=revision,
        model_fingerprint=cell.identity["model_fingerprint"],
        scheduler=m.scheduler,
        padding_mask_crop=m.padding_mask_crop,
        working_size=list(working_size(tuple(case.image_size), m.size)),
        mask_method=case.method,
        config=flatten(plain),
        identity=cell.identity,
        code_version=code_version(),
        sweep_id=sweep_id,
        input=case.image,
        mask=case.mask,  # then the cell's own mask.png (and soft_mask.png): the mask settings applied to it
    )
