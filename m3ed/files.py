"""Writing files so that nobody ever sees half of one, and what to do when the disk is full.

Every file under an output directory is written under a temporary name beside its target,
flushed to disk, then renamed (:func:`atomic_path`, and built on it :func:`atomic_open`,
:func:`atomic_h5`, :func:`atomic_write_text`; :func:`atomic_dir` for a folder). A full disk, however
the writer reports it, becomes one :class:`DiskFull` naming the target: the temporary is removed,
and an earlier file of that name stays as it was. A temporary name carries the writer's pid
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
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, TYPE_CHECKING, Iterator


if TYPE_CHECKING:
    import h5py

# ".{stem}.{pid}@{host}.tmp{suffix}", and the older ".{stem}.{pid}.tmp{suffix}" (this host).
_TEMPORARY = re.compile(r"^\..+\.(?P<pid>\d+)(?:@(?P<host>[^/@]+?))?\.tmp(?:\.[A-Za-z0-9]+)?$")


# Room kept beyond a file's known size (HDF5 metadata, file-system blocks).
SPACE_MARGIN = 256 * 1024
# Less free space than this after a failed write: the disk is full, whatever the writer said.
NO_ROOM = 64 * 1024


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True


class DiskFull(OSError):
    """The disk filled up while writing ``path``; the message says how much to free."""

    def __init__(self, path: str | Path, needed_bytes: int = 0):
        self.path = Path(path)
        free = _free_bytes(self.path)
        needed_mb = max(1, round((needed_bytes - free) / 1e6)) if needed_bytes else 0
        how_much = f"free at least {needed_mb} MB" if needed_mb else "free some space"
        super().__init__(errno.ENOSPC, f"disk full writing {self.path} ({free / 1e6:.0f} MB free); "
                                       f"{how_much} and re-run the same command (it resumes)")


def is_disk_full(error: BaseException | None) -> bool:
    """ENOSPC or EDQUOT, here or in what caused it; h5py and safetensors carry it only in their text."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, DiskFull) or getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(error)
        if "errno = 28" in text or "No space left on device" in text or "Disk quota exceeded" in text:
            return True
        error = error.__cause__ or error.__context__
    return False


def _out_of_room(error: BaseException, path: Path) -> bool:
    """Whether ``error``, raised while writing ``path``, is a full disk. Some writers lose the errno
    (torch's zip writer: "unexpected pos"; NumPy's tofile: "requested and written"), so an I/O error
    on a disk with no room left counts too. Ask before removing the temporary file that filled it."""
    if is_disk_full(error):
        return True
    return isinstance(error, (OSError, RuntimeError)) and _free_bytes(path) < NO_ROOM


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


def require_room(path: str | Path, size: int) -> None:
    """Raise :class:`DiskFull` naming ``path`` unless its disk has room for ``size`` bytes and the margin
    (checked before writing: a write that fails midway is messier)."""
    if size and _free_bytes(Path(path)) < size + SPACE_MARGIN:
        raise DiskFull(path, size + SPACE_MARGIN)


@contextmanager
def disk_full_names(path: str | Path, size_hint: int = 0) -> Iterator[None]:
    """A full disk met inside becomes :class:`DiskFull` naming ``path``, whatever raised it."""
    path = Path(path)
    try:
        yield
    except BaseException as e:
        if isinstance(e, DiskFull) and e.path == path:
            raise
        if _out_of_room(e, path):
            raise DiskFull(path, size_hint) from e
        raise


def make_folder(path: str | Path) -> Path:
    """``path`` and its parents made (kept if they exist); a full disk becomes :class:`DiskFull` naming it."""
    path = Path(path)
    with disk_full_names(path):
        path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def atomic_path(path: str | Path, *, size_hint: int = 0) -> Iterator[Path]:
    """Yield a temporary path to write; on success it becomes ``path`` (file and folder fsynced).

    With ``size_hint`` (bytes about to be written) a disk without room for them is reported before
    anything is written. On any error the temporary file is removed; a full disk becomes :class:`DiskFull`.
    """
    path = Path(path)
    with disk_full_names(path, size_hint):
        path.parent.mkdir(parents=True, exist_ok=True)
        require_room(path, size_hint)
    tmp = temporary_name(path)
    try:
        yield tmp
        fsync_path(tmp)
        tmp.replace(path)
        fsync_path(path.parent)
    except BaseException as e:
        full = not (isinstance(e, DiskFull) and e.path == path) and _out_of_room(e, path)
        tmp.unlink(missing_ok=True)
        if full:
            raise DiskFull(path, size_hint) from e
        raise


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb", *, size_hint: int = 0) -> Iterator[IO]:
    """Yield a file open under a temporary name; closed, it becomes ``path`` (see :func:`atomic_path`).
    For writers that take a file (``torch.save``, ``savefig``): given a path, some lose the errno."""
    with atomic_path(path, size_hint=size_hint) as tmp, open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
        yield f


@contextmanager
def atomic_h5(path: str | Path, *, size_hint: int = 0) -> Iterator["h5py.File"]:
    """Yield an HDF5 file being written under a temporary name; closed, it becomes ``path``.

    HDF5 writes through a Python file here: a full disk is then a plain ``OSError`` at the write that
    met it. Given a path, HDF5 meets it in its own code and says so late (at close, or as "Can't
    decrement id ref count" when h5py frees an object), after which closing the file can crash.
    """
    import h5py

    with atomic_open(path, "w+b", size_hint=size_hint) as f:
        h5 = h5py.File(f, "w")
        try:
            yield h5
            h5.close()
        except BaseException:
            with suppress(OSError, RuntimeError):   # the error that brought us here is the one to report
                h5.close()
            raise


@contextmanager
def atomic_dir(path: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it becomes ``path`` (files and parent fsynced).
    An existing ``path`` is replaced, or with ``replace=False`` kept (another writer got there
    first with the same content, e.g. a shared model cache); either way ours is gone after.
    A full disk becomes :class:`DiskFull` naming ``path``; an existing ``path`` is then untouched."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with disk_full_names(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
            yield tmp
            readable_as_umask_allows(tmp)
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


def readable_as_umask_allows(folder: Path) -> None:
    """Give everything under ``folder`` the read (and folder search) bits a normally created file gets:
    some writers (safetensors) create 0600 files, and a model cache built by one user must open for others."""
    mask = _umask()
    for item in (folder, *folder.rglob("*")):
        bits = 0o555 if item.is_dir() else 0o444
        item.chmod(item.stat().st_mode | (bits & ~mask))


def _umask() -> int:
    """The process's umask, read without changing it where the system shows it (Linux)."""
    with suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file atomically: readers never see half a file."""
    with atomic_path(path, size_hint=len(data)) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically (UTF-8): readers never see half a file."""
    atomic_write_bytes(path, text.encode("utf-8"))


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
