"""A cell's identity, by construction: everything that can change its pixels, so a stored cell is never stale.

cell id = hash of
- the whole resolved generation config (every key of params.yaml + the model preset), minus NOT_IDENTITY below;
- a fingerprint of the model actually loaded: the files of a local folder or single file (content digests, cached
  by file status), or a hub checkpoint's commit as resolved in the local cache;
- the case: its id, prompt, and the digests of its photo and mask files;
- the torch / diffusers / transformers versions and ENGINE_VERSION.
A new config key is part of the identity unless it is added to NOT_IDENTITY with its reason (a test enumerates the
schema's fields and checks each changes the id or is listed).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from functools import lru_cache
from pathlib import Path

from omegaconf import OmegaConf

from .config import ConfigError
from .workspace import shared_path
from .images import write_json
from .records import PreparedCase, sha256

# Bump when code changes what a cell's pixels are for the same settings (compositing, resizing, ...): cells computed
# by older code then get new ids instead of being reused from the store.
ENGINE_VERSION = 2

# Config keys that cannot change a cell's pixels, each with the reason. Everything else is in the identity.
NOT_IDENTITY = {
    "cases": "the manifest's path: each case's photo, mask and prompt are hashed instead",
    # mask.dilate, mask.feather and mask.clip_to_box are generate's (applied to prepare's base mask): hashed.
    **{f"mask.{k}": "prepare's setting: its result, the case's base mask file, is hashed instead"
       for k in ("method", "weights", "sam_weights", "conf", "max_det", "classes", "on_miss", "fill_holes",
                 "min_area")},
    "mask.overlay_alpha": "prepare's overlay picture, drawn for people, never inpainted",
    "prompt_sr": "search/replace of the prompts: the prompt and negative prompt each cell uses are hashed instead",
    "tracking": "where the cell is logged, not what it is",
    "batch": "which Hydra job makes the cell, not what it is",
    "report": "the report stage's settings",
    "review": "the review app's settings: how people look at cells, not what they are",
    "paths": "where files are written",
    "model.name": "the preset's label: its settings are hashed key by key",
    "model.id": "where the weights are: the loaded files are fingerprinted instead, so a moved folder keeps its cells",
    "model.revision": "the branch or tag asked for: the commit it resolved to is fingerprinted instead",
    "model.config": "single_file: where the component configs are: their files are fingerprinted instead",
    "model.cache_dir": "tiny: where the built checkpoint is saved: its files are fingerprinted instead",
    "model.allow_unsafe_pickle": "permission to load pickle weights: which files loaded is fingerprinted instead",
}


def generation_config(cfg) -> dict:
    """The resolved config as flat dotted keys (model.device -> the device actually used), NOT_IDENTITY removed."""
    from .model import resolve_cpu_threads, resolve_device, resolve_dtype

    plain = task_container(cfg) if OmegaConf.is_config(cfg) else {k: v for k, v in cfg.items() if k != "hydra"}
    flat = flatten(plain)
    flat["model.device"] = resolve_device(flat["model.device"])
    flat["model.dtype"] = resolve_dtype(flat["model.dtype"], flat["model.device"])
    # torch's CPU kernels round differently with another thread count (measured: 1 vs 2 threads, pixels off by 1).
    flat["model.cpu_threads"] = resolve_cpu_threads(flat["model.device"], flat["model.cpu_threads"])
    return {k: v for k, v in flat.items() if not _excluded(k)}


def task_container(cfg) -> dict:
    """The job config as plain, resolved values, without the hydra node (never resolved: its help template is
    rendered by a resolver: slow, and never needed here)."""
    return {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
            for k in cfg if k != "hydra"}


def flatten(d: dict, prefix: str = "") -> dict:
    """{"model": {"size": 64}} -> {"model.size": 64}: nested keys as dotted ones (an empty dict stays a value)."""
    out = {}
    for key, value in d.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _excluded(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in NOT_IDENTITY)


@lru_cache(maxsize=1)
def library_versions() -> dict:
    """The installed versions of the libraries that compute pixels (read from their metadata: no import)."""
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "diffusers", "transformers")}


def cell_identity(generation: dict, model_fingerprint: str, case: PreparedCase, digests: "Digests") -> dict:
    return {
        "engine": ENGINE_VERSION,
        "versions": library_versions(),
        "config": generation,
        "model_fingerprint": model_fingerprint,
        "case": {
            "id": case.id,
            "prompt": case.prompt,
            "image_sha256": digests.of(case.image),
            "mask_sha256": digests.of(case.mask),
            "soft_mask_sha256": digests.of(case.soft_mask) if case.soft_mask else None,
        },
    }


def cell_id(case_id: str, identity: dict) -> str:
    """`<case>-<12 hex>`: a hash of the cell's identity, so equal inputs share one id."""
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return f"{case_id}-{hashlib.sha256(blob).hexdigest()[:12]}"


class Digests:
    """sha256 of files, cached by (path, size, mtime, inode) in a JSON file: a 7 GB checkpoint folder is read once,
    and later fingerprints cost one stat per file. A file changed in place changes size or mtime and is read again."""

    def __init__(self, cache_file: str | Path | None) -> None:
        self._file = Path(cache_file) if cache_file else None
        self._lock = threading.Lock()
        self._cache: dict[str, list] = {}
        self._dirty = False
        if self._file and self._file.is_file():
            try:
                self._cache = json.loads(self._file.read_text())
            except (OSError, ValueError):
                self._cache = {}

    def of(self, path: str | Path) -> str:
        path = os.path.abspath(path)
        st = os.stat(path)
        key = [st.st_size, st.st_mtime_ns, st.st_ino]
        with self._lock:
            hit = self._cache.get(path)
        if hit and hit[:3] == key:
            return hit[3]
        digest = sha256(path)
        with self._lock:
            self._cache[path] = [*key, digest]
            self._dirty = True
        return digest

    def save(self) -> None:
        with self._lock:
            if self._file and self._dirty:
                write_json(self._cache, self._file)
                self._dirty = False


def folder_fingerprint(folder: str | Path, digests: Digests) -> str:
    """A digest of every file under `folder` (relative name + content digest); hidden files and folders skipped."""
    folder = Path(folder)
    entries = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                path = Path(root) / name
                entries.append((path.relative_to(folder).as_posix(), digests.of(path)))
    return hashlib.sha256(json.dumps(sorted(entries)).encode()).hexdigest()


FINGERPRINT_KEYS = ("source", "id", "revision", "config", "cache_dir", "seed")  # the model.* keys it reads


def model_fingerprint(model, digests: Digests) -> tuple[str, str]:
    """(fingerprint, revision) of the checkpoint `model` (the model config) loads, without loading it.

    revision is what the record calls model_revision: the tiny model's version, a hub checkpoint's commit, or
    `sha256:<12 hex>` of a local folder's or file's content."""
    if model.source == "tiny":
        from .tiny_model import TINY_MODEL_VERSION, ensure_tiny_checkpoint

        folder = ensure_tiny_checkpoint(shared_path(model.cache_dir), model.seed)
        return f"tiny:{folder_fingerprint(folder, digests)}", f"v{TINY_MODEL_VERSION}-seed{model.seed}"
    path = Path(str(model.id))
    if model.source == "single_file":
        if not path.is_file():
            raise ConfigError(f"model.id={model.id!r} is not a file; model.source=single_file needs a local "
                              ".safetensors file")
        fingerprint = digests.of(path)
        if model.config:
            fingerprint += ":" + folder_fingerprint(model.config, digests)
        return f"file:{hashlib.sha256(fingerprint.encode()).hexdigest()}", f"sha256:{digests.of(path)[:12]}"
    if path.is_dir():
        fingerprint = folder_fingerprint(path, digests)
        return f"folder:{fingerprint}", f"sha256:{fingerprint[:12]}"
    commit = hub_commit(str(model.id), model.revision)
    return f"hub:{model.id}@{commit}", commit


def hub_commit(repo_id: str, revision: str | None) -> str:
    """The commit a hub id at `revision` resolves to in the local Hugging Face cache (nothing is downloaded)."""
    from huggingface_hub import snapshot_download

    try:
        snapshot = snapshot_download(repo_id, revision=revision, local_files_only=True)
    except Exception:  # noqa: BLE001 - not in the cache (huggingface_hub raises several types)
        raise ConfigError(
            f"model.id={repo_id!r} is not available offline (no local copy; HF_HUB_OFFLINE="
            f"{os.environ.get('HF_HUB_OFFLINE')}); point model=local model.id=/path/to/folder at a downloaded "
            "checkpoint, or set HF_HUB_OFFLINE=0 with a hub connection to download it"
        ) from None
    return Path(snapshot).name
