"""The one reader and writer of generate's book-keeping: prepared cases (cases.json) and cell records (record.json).

A cell record is written by the process that owns the sweep (`runner.SweepRunner`), through `write_record` only; no
other process rewrites it. It lists every file of the cell with its size and sha256, so a stored cell is served only
after its files verify (`verify`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

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


def read_record(cell_dir: str | Path) -> dict | None:
    """The cell's record, or None if it has none (or an unreadable one)."""
    try:
        record = json.loads((Path(cell_dir) / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_record(record: dict, cell_dir: str | Path) -> None:
    write_json(record, Path(cell_dir) / RECORD)  # atomic: temporary file + rename


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(path: str | Path) -> dict:
    """What `verify` checks a file against: its size and sha256."""
    return {"size": os.path.getsize(path), "sha256": sha256(path)}


def verify(cell_dir: str | Path, record: dict, elsewhere: dict[str, Path] | None = None) -> str | None:
    """None if every file the record lists is in `cell_dir` (or at its path in `elsewhere`) with its size and
    digest; else what is wrong."""
    files = record.get("files")
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
