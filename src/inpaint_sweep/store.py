"""The cell store (paths.cell_store) and the view (paths.generate) that DVC tracks.

- The store holds every finished cell by id (identity.py), whatever grid made it: never computed twice. A cell is
  published by renaming a complete folder into place, so a reader never sees half a cell; its files are read-only
  and listed in its record with size and sha256, and a cell is served only after they verify.
- The view holds the cells of the grid just run: *copies* of the stored files (never shared inodes, so editing or
  truncating a view file cannot corrupt the store), each cell's Comet archive in comet/<cell id>.zip. It is updated
  in place: cells of this grid are (re)written, others are removed at the end of the run, so an interrupted run
  never leaves the view emptier than it found it.
- One sweep writes a view at a time (`ViewLock`); views may share one store.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path

from .errors import RunError
from .images import DIR_MODE
from .records import COMET_ARCHIVE, RECORD, CellRecord, read_record, verify, write_record

log = logging.getLogger(__name__)


def view_archive(view_dir: Path, cell_id: str) -> Path:
    """Where the view keeps a cell's offline Comet archive: `comet upload <view>/comet/*.zip` uploads the grid."""
    return view_dir / "comet" / f"{cell_id}.zip"


class CellStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def cell_dir(self, cell_id: str) -> Path:
        return self.root / cell_id

    def get(self, cell_id: str) -> CellRecord | None:
        """The stored cell's record if it is complete and its files verify; a corrupt cell is removed, with one
        warning line, so that it is computed again."""
        folder = self.cell_dir(cell_id)
        record = read_record(folder)
        if record is None:
            return None
        problem = "it did not finish" if not record.ok else verify(folder, record)
        if problem is None:
            _open_up(folder)
            return record
        log.warning("stored cell %s is corrupt (%s): computing it again", cell_id, problem)
        self.remove(cell_id)
        return None

    def remove(self, cell_id: str) -> None:
        folder = self.cell_dir(cell_id)
        if folder.exists():
            trash = self.private_dir("trash", cell_id)
            os.replace(folder, trash / "cell")  # atomic: readers see the cell or nothing
            shutil.rmtree(trash, ignore_errors=True)

    def staging(self, cell_id: str) -> Path:
        """A private folder to write a new cell into; `publish` moves it into place."""
        return self.private_dir("new", cell_id)

    def private_dir(self, kind: str, cell_id: str) -> Path:
        """A folder of this process's in the store (`.<kind>-<host>-<pid>-<cell id>-<random>`): a process killed
        mid-write leaves it behind, and `remove_leftovers` finds it by its dead pid."""
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{kind}-{_HOST}-{os.getpid()}-{cell_id}-", dir=self.root))

    def remove_leftovers(self) -> int:
        """Remove the private folders of processes of this host that are gone (killed mid-write)."""
        removed = 0
        for folder in self.root.glob(f".*-{_HOST}-*-*"):
            pid = folder.name.split(f"-{_HOST}-", 1)[1].split("-", 1)[0]
            if folder.is_dir() and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed

    def publish(self, staging: Path, cell_id: str) -> Path:
        """Move a complete cell folder into the store. If another process published the same cell meanwhile (views
        sharing a store), its copy stays and ours is dropped: same id, same pixels."""
        for path in staging.iterdir():
            _read_only(path)
        os.chmod(staging, DIR_MODE)  # mkdtemp made it 0700: colleagues sharing the store could not read the cell
        target = self.cell_dir(cell_id)
        try:
            os.rename(staging, target)
        except OSError:  # target exists (a finished twin, or a corrupt one removed by get() meanwhile)
            if self.get(cell_id) is None:
                self.remove(cell_id)
                os.rename(staging, target)
            else:
                shutil.rmtree(staging, ignore_errors=True)
        return target

    def add_file(self, cell_id: str, source: Path, name: str) -> Path:
        """Add a file to a published cell (its Comet archive); the caller then rewrites the record to list it."""
        target = self.cell_dir(cell_id) / name
        tmp = target.with_name(f".{name}.tmp")
        shutil.copyfile(source, tmp)
        _read_only(tmp)
        os.replace(tmp, target)
        return target

    def adopt(self, view_dir: str | Path) -> int:
        """Copy into the store the view's finished cells it lacks, if their files verify (a clone that `dvc pull`ed
        its results has them in the view only). Returns how many were adopted."""
        adopted = 0
        for record_path in sorted(Path(view_dir).glob(f"cells/*/{RECORD}")):
            cell = record_path.parent
            record = read_record(cell)
            if record is None or not record.ok or self.cell_dir(cell.name).exists():
                continue
            archive = view_archive(Path(view_dir), cell.name)
            problem = verify(cell, record, {COMET_ARCHIVE: archive})
            if problem:
                log.warning("cell %s in the view is not adopted into the cell store: %s", cell.name, problem)
                continue
            staging = self.staging(cell.name)
            for name in record.files:
                shutil.copyfile(archive if name == COMET_ARCHIVE else cell / name, staging / name)
            write_record(record.shown_in(self.cell_dir(cell.name)), staging)
            self.publish(staging, cell.name)
            adopted += 1
        return adopted


def show(store: CellStore, record: CellRecord, view_dir: Path) -> CellRecord:
    """Copy a stored cell into the view (its files, its record with the view's paths, its Comet archive)."""
    cell_id = record.cell_id
    source, target = store.cell_dir(cell_id), view_dir / "cells" / cell_id
    archive = view_archive(view_dir, cell_id)
    target.mkdir(parents=True, exist_ok=True)
    for name, entry in record.files.items():
        if name == COMET_ARCHIVE:
            archive.parent.mkdir(parents=True, exist_ok=True)
        _copy_unless_same(source / name, archive if name == COMET_ARCHIVE else target / name, entry["size"])
    shown = record.shown_in(target, archive)
    write_record(shown, target)
    return shown


def _open_up(folder: Path) -> None:
    """Give a cell folder stored by an earlier version (mkdtemp's 0700: only its owner could read it) the mode that
    publish gives new ones (the umask's: 0755 under umask 022). Only that mode is changed, and only by its owner."""
    try:
        if DIR_MODE != 0o700 and os.stat(folder).st_mode & 0o777 == 0o700:
            os.chmod(folder, DIR_MODE)
    except PermissionError:  # another user's cell
        pass


def _copy_unless_same(source: Path, target: Path, size: int) -> None:
    """Copy (a new inode, the user's umask, the source's mtime), unless the target is such a copy already: same size
    and mtime, which a re-run's view keeps (an edit in place changes the mtime, and the file is copied again)."""
    stored = os.stat(source)
    try:
        shown = os.stat(target)
        if shown.st_size == size and shown.st_mtime_ns == stored.st_mtime_ns:
            return
    except OSError:
        pass
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, tmp)
    os.utime(tmp, ns=(stored.st_atime_ns, stored.st_mtime_ns))
    os.replace(tmp, target)


def prune(view_dir: Path, keep: set[str]) -> int:
    """Remove the view's cells (and archives) that are not in `keep`; returns how many cells went."""
    removed = 0
    for cell in sorted((view_dir / "cells").glob("*")):
        if cell.is_dir() and cell.name not in keep:
            shutil.rmtree(cell, ignore_errors=True)
            removed += 1
    for archive in (view_dir / "comet").glob("*.zip"):
        if archive.stem not in keep:
            archive.unlink(missing_ok=True)
    return removed


def write_failed(record: CellRecord, view_dir: Path) -> None:
    """A failed cell is shown in the view (the report lists it) and never stored: the next run retries it."""
    cell_dir = view_dir / "cells" / record.cell_id
    write_record(record.shown_in(cell_dir), cell_dir)


_HOST = socket.gethostname().replace("-", "_")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _read_only(path: Path) -> None:
    mode = os.stat(path).st_mode
    os.chmod(path, mode & ~0o222)


class ViewLock:
    """One sweep per view: an exclusive lock on `.<view>.lock` beside the view (released when the process ends,
    however it ends; removed when released normally). A second sweep on the same view stops with one line naming
    the process that holds it."""

    def __init__(self, view_dir: str | Path) -> None:
        self.view = Path(view_dir)
        self.path = self.view.parent / f".{self.view.name}.lock"
        self._file = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            f = open(self.path, "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                f.close()
                raise RunError(f"another sweep ({holder}) is writing the view {str(self.view)!r}; wait for it to "
                               "finish, or give this one its own view with paths.generate=...") from None
            try:
                if os.stat(self.path).st_ino == os.fstat(f.fileno()).st_ino:
                    break  # ours, and still the file at that path (its last holder removes it as it lets go)
            except FileNotFoundError:
                pass
            f.close()
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}, started {_now()}: {' '.join(_argv())}")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            self.path.unlink(missing_ok=True)  # nothing left beside the results
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def _now() -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S")


def _argv() -> list[str]:
    import sys

    return [Path(sys.argv[0]).name, *sys.argv[1:]][:8]

