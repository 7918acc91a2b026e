"""Who may write an output directory: one run at a time, or several shards of one run.

Two runs writing one ``OUT`` at once lose data (each publishes the feature files from its own
view of the parts), so every writer holds a lock on ``OUT/.lock``:

- a whole run (and ``m3ed merge``) holds it **exclusively**;
- a shard (``--shard I/N``) holds it **shared** with the other shards, plus an exclusive lock of
  its own index (``OUT/.locks/shard-I-of-N``), because shards write disjoint dialogues. What all
  shards write (the manifest) is written under :meth:`OutputLock.critical`, and publishing is
  left to ``m3ed merge``, which takes the lock exclusively.

The locks are ``flock`` locks: the kernel releases them when a process dies, so a lock is never
stale. Beside each lock a holder file (``OUT/.locks/{host}-{pid}.json``) says who holds it, for
the error message; holder files of processes that are gone from this host are removed. (``flock``
reaches across machines on NFSv4 and CephFS; on Lustre mount with ``-o flock``.)
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .files import DiskFull, pid_alive


class LockError(RuntimeError):
    """Another process writes this output directory; the message names it and says what to do."""


class OutputLock:
    """``with OutputLock(out): ...`` (exclusive) or ``OutputLock(out, shard="1/4")`` (shared)."""

    def __init__(self, root: str | Path, *, shard: str | None = None, command: str | None = None):
        self.root = Path(root)
        self.shard = shard
        self.command = command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
        self.locks_dir = self.root / ".locks"
        self.holder_path = self.locks_dir / f"{socket.gethostname()}-{os.getpid()}.json"
        self._files: list = []

    @property
    def mode(self) -> str:
        return "shared" if self.shard else "exclusive"

    def acquire(self) -> "OutputLock":
        self.locks_dir.mkdir(parents=True, exist_ok=True)
        self._remove_dead_holders()
        main = self._flock(self.root / ".lock", fcntl.LOCK_SH if self.shard else fcntl.LOCK_EX)
        if main is None:
            raise LockError(self._conflict("another run writes it"))
        self._files.append(main)
        if self.shard:
            index = self.shard.replace("/", "-of-")
            own = self._flock(self.locks_dir / f"shard-{index}", fcntl.LOCK_EX)
            if own is None:
                self.release()
                raise LockError(self._conflict(f"shard {self.shard} is already running"))
            self._files.append(own)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "mode": self.mode, "shard": self.shard,
                  "command": self.command, "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        try:
            self.holder_path.write_text(json.dumps(holder) + "\n", encoding="utf-8")
        except OSError as e:
            self.release()   # removes the holder file, however little of it was written
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(self.holder_path) from e
            raise
        return self

    def release(self) -> None:
        if not self._files:
            return   # never acquired (e.g. a read-only output directory)
        self.holder_path.unlink(missing_ok=True)
        for f in reversed(self._files):
            f.close()  # closing the descriptor releases its flock
        self._files = []

    @contextmanager
    def critical(self, timeout: float = 600.0) -> Iterator[None]:
        """A short section that no other holder runs at the same time (waits up to ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        while (f := self._flock(self.locks_dir / "critical", fcntl.LOCK_EX)) is None:
            if time.monotonic() > deadline:
                raise LockError(self._conflict(f"waited {timeout:.0f} s for another writer's critical section"))
            time.sleep(0.05)
        try:
            yield
        finally:
            f.close()

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # ---- helpers ----------------------------------------------------------------------------
    @staticmethod
    def _flock(path: Path, operation: int):
        """An open file holding ``operation`` on ``path``, or None when another process holds it."""
        f = open(path, "a+")
        try:
            fcntl.flock(f.fileno(), operation | fcntl.LOCK_NB)
        except OSError as e:
            f.close()
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            raise
        return f

    def holders(self) -> list[dict]:
        found = []
        for path in sorted(self.locks_dir.glob("*.json")):
            try:
                found.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, json.JSONDecodeError):
                continue
        return [h for h in found if isinstance(h, dict)
                and (h.get("pid") != os.getpid() or h.get("host") != socket.gethostname())]

    def _remove_dead_holders(self) -> None:
        host = socket.gethostname()
        for path in self.locks_dir.glob("*.json"):
            try:
                holder = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                # Unreadable (e.g. cut short by a full disk): its name still says who wrote it.
                name_host, _, pid = path.stem.rpartition("-")
                holder = {"host": name_host, "pid": int(pid) if pid.isdigit() else 0}
            if not isinstance(holder, dict):
                continue
            if holder.get("host") == host and holder.get("pid") and not pid_alive(int(holder["pid"])):
                path.unlink(missing_ok=True)

    def _conflict(self, what: str) -> str:
        held = "; ".join(f"pid {h.get('pid')} on {h.get('host')} ({h.get('mode')}"
                         + (f" shard {h['shard']}" if h.get("shard") else "") + f", since {h.get('since')}: "
                         f"{h.get('command')})" for h in self.holders()) or "a process that left no holder file"
        return (f"{self.root}: {what} ({held}). Wait for it to finish, or use another --out. "
                f"Shards of one run (--shard I/N) may share an output directory; whole runs may not.")
