"""Writing files so that nobody ever sees half of one, and what to do when the disk is full.

Every file under an output directory is written under a temporary name beside its target,
flushed to disk, then renamed (:func:`atomic_path`). A temporary name carries the writer's pid
and host (``.{stem}.{pid}@{host}.tmp{suffix}``), so that a later run removes exactly the
leftovers of writers that are gone (:func:`sweep_temporaries`) and never a live writer's file.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .lock import pid_alive

# ".{stem}.{pid}@{host}.tmp{suffix}", and the older ".{stem}.{pid}.tmp{suffix}" (this host).
_TEMPORARY = re.compile(r"^\..+\.(?P<pid>\d+)(?:@(?P<host>[^/@]+?))?\.tmp(?:\.[A-Za-z0-9]+)?$")


# Room kept beyond a file's known size (HDF5 metadata, file-system blocks).
SPACE_MARGIN = 256 * 1024


class DiskFull(OSError):
    """The disk filled up while writing ``path``; the message says how much to free."""

    def __init__(self, path: str | Path, needed_bytes: int = 0):
        self.path = Path(path)
        free = _free_bytes(self.path)
        needed_mb = max(1, round((needed_bytes - free) / 1e6)) if needed_bytes else 0
        how_much = f"free at least {needed_mb} MB" if needed_mb else "free some space"
        super().__init__(errno.ENOSPC, f"disk full writing {self.path} ({free / 1e6:.0f} MB free); "
                                       f"{how_much} and re-run the same command (it resumes)")


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC, including h5py's errors, which carry it only in their text."""
    if isinstance(error, DiskFull) or getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error)
    return "errno = 28" in text or "No space left on device" in text or "Disk quota exceeded" in text


@contextmanager
def quiet_disk_full_cleanup(active: bool = True) -> Iterator[None]:
    """h5py reports failed writes again when its objects are freed ("Can't decrement id ref count");
    after a full disk that is noise, already reported once as :class:`DiskFull`."""
    if not active:
        yield
        return
    previous = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None if is_disk_full(unraisable.exc_value) else previous(unraisable)
    try:
        yield
    finally:
        sys.unraisablehook = previous


def _free_bytes(path: Path) -> int:
    for folder in (path, *path.parents):
        if folder.exists():
            return shutil.disk_usage(folder).free
    return 0


def temporary_name(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.stem}.{os.getpid()}@{socket.gethostname()}.tmp{path.suffix}")


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, *, size_hint: int = 0) -> Iterator[Path]:
    """Yield a temporary path to write; on success it becomes ``path`` (file and folder fsynced).

    With ``size_hint`` (bytes about to be written) a disk without room for them is reported before
    anything is written. On any error the temporary file is removed; a full disk becomes :class:`DiskFull`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if size_hint and _free_bytes(path.parent) < size_hint + SPACE_MARGIN:
        raise DiskFull(path, size_hint + SPACE_MARGIN)   # before writing: a write that fails midway is messier
    tmp = temporary_name(path)
    try:
        yield tmp
        fsync_path(tmp)
        tmp.replace(path)
        fsync_path(path.parent)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if is_disk_full(e) and not (isinstance(e, DiskFull) and e.path == path):
            raise DiskFull(path, size_hint) from e
        raise


@contextmanager
def atomic_dir(path: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it becomes ``path`` (files and parent fsynced).
    An existing ``path`` is replaced, or with ``replace=False`` kept (another writer got there
    first with the same content, e.g. a shared model cache); either way ours is gone after."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    tmp.mkdir()
    try:
        yield tmp
        for item in tmp.rglob("*"):
            if item.is_file():
                fsync_path(item)
        if path.exists():
            if not replace:
                return
            shutil.rmtree(path)
        try:
            os.replace(tmp, path)
        except OSError:
            if replace or not path.exists():
                raise   # with replace=False, a writer that got there first is fine
        fsync_path(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically: readers never see half a file."""
    with atomic_path(path, size_hint=len(text.encode())) as tmp:
        tmp.write_text(text, encoding="utf-8")


def sweep_temporaries(root: str | Path) -> list[Path]:
    """Remove the temporary files under ``root`` left by writers that no longer run on this host."""
    removed = []
    host = socket.gethostname()
    for path in Path(root).rglob(".*.tmp*"):
        match = _TEMPORARY.match(path.name)
        if not match or not path.is_file():
            continue
        if (match["host"] in (None, host)) and not pid_alive(int(match["pid"])):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
