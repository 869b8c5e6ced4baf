"""The one reader and writer of generate's book-keeping: prepared cases (cases.json, read) and cell records
(record.json, read and written).

A cell record is a `CellRecord`, read with `read_record` (older records included: what they lack is filled in as the
report always read it) and written with `write_record` only. It lists every file of the cell with its size and
sha256, so a stored cell is served only after its files verify (`verify`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import RunError
from .images import write_json

RECORD = "record.json"
COMET_ARCHIVE = "comet.zip"  # a cell's offline Comet experiment, stored with the cell


@dataclass(frozen=True)
class PreparedCase:
    """One case as prepare wrote it: the photo, its mask(s) and the prompt (paths as prepare recorded them)."""

    id: str
    image: str
    mask: str
    soft_mask: str | None
    prompt: str
    method: str
    image_size: tuple[int, int]
    box: tuple[int, int, int, int] | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "PreparedCase":
        return cls(id=d["id"], image=d["image"], mask=d["mask"], soft_mask=d.get("soft_mask"), prompt=d["prompt"],
                   method=d["method"], image_size=tuple(d["image_size"]),
                   box=tuple(d["box"]) if d.get("box") else None)


def load_prepared(prepare_dir: str | Path) -> list[PreparedCase]:
    """prepare's cases.json; RunError (exit 1) when it is missing or unreadable: prepare has to run (again) first."""
    path = Path(prepare_dir) / "cases.json"
    if not path.is_file():
        raise RunError(f"no prepared cases at {str(path)!r}: run `dvc repro prepare` (or stages/prepare.py) first")
    try:
        return [PreparedCase.from_dict(d) for d in json.loads(path.read_text())]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunError(f"prepared cases {str(path)!r} are unreadable ({type(e).__name__}: {e}): run prepare again")


@dataclass
class ImageEntry:
    """One generated image of a cell: its seed, file, metrics and the safety checker's verdict."""

    seed: int
    path: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    nsfw: bool | None = None


# A record's top-level settings and the config keys they are under in its `config` (records written before `config`).
RECORD_SETTINGS = {"steps": "steps", "guidance": "guidance", "strength": "strength",
                   "negative_prompt": "negative_prompt", "prompt": "prompt", "model": "model.name",
                   "scheduler": "model.scheduler", "padding_mask_crop": "model.padding_mask_crop"}


@dataclass
class CellRecord:
    """What a cell is and what became of it: its settings, the model and case it was made from, its images with their
    metrics, every file with its digest, where its Comet log went. Written as record.json, in the store and the view."""

    cell_id: str
    case: str
    status: str | None = "ok"  # ok | failed
    error: str | None = None
    # The settings (SWEEP_AXES), then the texts the cell used (after `prompt` and `prompt_sr`).
    steps: Any = None
    guidance: Any = None
    strength: Any = None
    negative_prompt: Any = None
    seed: Any = None
    prompt: str | None = None
    # The model and what was loaded.
    model: str | None = None
    model_id: str | None = None
    model_revision: str | None = None
    model_fingerprint: str | None = None
    scheduler: str | None = None  # null = the checkpoint's own: scheduler_class says which
    padding_mask_crop: int | None = None
    working_size: list[int] = field(default_factory=list)
    mask_method: str | None = None
    config: dict[str, Any] = field(default_factory=dict)  # the whole job config (flat dotted keys)
    identity: dict[str, Any] = field(default_factory=dict)  # what the cell id hashes (identity.py)
    code_version: str | None = None
    sweep_id: str | None = None
    input: str | None = None  # the photo
    mask: str | None = None  # the cell's own mask.png once made (prepare's base mask before)
    soft_mask: str | None = None
    images: list[ImageEntry] = field(default_factory=list)
    files: dict[str, dict] = field(default_factory=dict)  # name -> {size, sha256}: what `verify` checks
    comet: str | None = None  # comet.zip (its offline archive), a URL, or where the view keeps the archive
    finished_at: str | None = None
    scheduler_class: str | None = None
    device: str | None = None
    dtype: str | None = None
    machine: dict[str, Any] = field(default_factory=dict)  # where it was computed (machine.py); empty in older records
    prompt_truncated: bool | None = None
    negative_prompt_truncated: bool | None = None
    comet_uploaded: str | None = None  # when an offline log was uploaded (UTC)
    comet_key: str | None = None  # its Comet experiment's key: the same offline, once uploaded, and online
    traceback: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know, kept as they were

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def from_dict(cls, d: dict) -> "CellRecord":
        """A record as read from JSON. An older record's gaps are filled as the report always read them: no `config`
        -> its top-level settings under their config keys; no `images` -> one entry per seed, without a file."""
        known = _known_fields()
        record = cls(**{k: v for k, v in d.items() if k in known},
                     images=[ImageEntry(seed=e.get("seed"), path=e.get("path"), metrics=e.get("metrics") or {},
                                        nsfw=e.get("nsfw")) for e in d.get("images") or []],
                     extra={k: v for k, v in d.items() if k not in known and k != "images"})
        if not record.config:
            record.config = {key: d[name] for name, key in RECORD_SETTINGS.items() if name in d}
        if not record.images:
            seeds = record.config.get("seed", record.seed if record.seed is not None else 0)
            record.images = [ImageEntry(seed=s, path=None) for s in (seeds if isinstance(seeds, list) else [seeds])]
        return record

    def to_dict(self) -> dict:
        d = asdict(self)
        extra = d.pop("extra")
        return {**{k: v for k, v in d.items() if v is not None or k in _ALWAYS}, **extra}

    def shown_in(self, cell_dir: Path, archive: Path | None = None) -> "CellRecord":
        """The record as shown in `cell_dir`: image and mask paths pointing at that folder's files, and `comet` at
        `archive` where the cell's offline archive is kept apart (the view's comet/ folder)."""
        images = [replace(e, path=str(cell_dir / Path(e.path).name)) if e.path else e for e in self.images]
        masks = {k: str(cell_dir / f"{k}.png") for k in ("mask", "soft_mask") if f"{k}.png" in self.files}
        comet = str(archive or cell_dir / COMET_ARCHIVE) if COMET_ARCHIVE in self.files else self.comet
        return replace(self, images=images, comet=comet, **masks)


@functools.cache
def _known_fields() -> frozenset[str]:
    """CellRecord's fields that a record's keys fill one to one (once: the report reads thousands of records)."""
    return frozenset(f.name for f in fields(CellRecord)) - {"extra", "images"}


# Fields written even when null (the record's shape, as every version wrote it).
_ALWAYS = {"status", "error", "steps", "guidance", "strength", "negative_prompt", "seed", "prompt", "model",
           "model_id", "model_revision", "model_fingerprint", "scheduler", "padding_mask_crop", "mask_method",
           "code_version", "sweep_id", "input", "mask", "soft_mask", "comet", "finished_at"}


def read_record(cell_dir: str | Path) -> CellRecord | None:
    """The cell's record, or None if it has none (or an unreadable one)."""
    try:
        data = json.loads((Path(cell_dir) / RECORD).read_text())
        return CellRecord.from_dict(data) if isinstance(data, dict) else None
    except (OSError, ValueError, TypeError):
        return None


def read_records(cells_dir: str | Path):
    """Every cell record under `cells_dir` (the view's cells/), in folder order; RunError for one that is cut off."""
    for path in sorted(Path(cells_dir).glob(f"*/{RECORD}"), key=lambda p: p.parent.name):  # as Path order, faster
        try:
            data = json.loads(path.read_text())
        except ValueError as e:
            raise RunError(f"cell record {path} is not valid JSON ({e}): run generate again") from e
        yield CellRecord.from_dict(data)


def write_record(record: CellRecord, cell_dir: str | Path) -> None:
    write_json(record.to_dict(), Path(cell_dir) / RECORD)  # atomic: temporary file + rename


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(path: str | Path) -> dict:
    """What `verify` checks a file against: its size and sha256."""
    return {"size": os.path.getsize(path), "sha256": sha256(path)}


def verify(cell_dir: str | Path, record: CellRecord, elsewhere: dict[str, Path] | None = None) -> str | None:
    """None if every file the record lists is in `cell_dir` (or at its path in `elsewhere`) with its size and
    digest; else what is wrong."""
    files = record.files
    if not isinstance(files, dict) or not files:
        return "its record lists no file digests (written by an older version)"
    for name, expected in files.items():
        path = (elsewhere or {}).get(name) or Path(cell_dir) / name
        try:
            if os.path.getsize(path) != expected["size"]:
                return f"{name} has {os.path.getsize(path)} bytes, its record says {expected['size']}"
            if sha256(path) != expected["sha256"]:
                return f"{name} does not match its recorded sha256"
        except OSError as e:
            return f"{name} is unreadable ({e.strerror or e})"
    return None
