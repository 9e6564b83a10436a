"""The single-writer lock of a store: ``STORE/_lock``, held while a run creates or resumes it.

``fcntl.lockf`` (a POSIX record lock) rather than ``flock``: record locks belong to the process
and are not inherited by ``fork``, so DataLoader workers forked during an extraction never keep
the store locked after the writer died. The kernel drops the lock when the writer exits, even on
SIGKILL, so a crashed run never leaves a stale lock to clean up. The file holds the writer's pid,
for the message a second writer gets.

A record lock is per process: a second open-and-close of the file by the same process would drop
it, and a second lock in the same process would succeed. A process-wide registry of held locks
refuses the second writer first (the service runs several jobs in one process).
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from pathlib import Path

from featurizer.errors import StoreError
from featurizer.store.manifest import LOCK_NAME

_held: set[str] = set()  # real paths of lock files this process holds
_held_mutex = threading.Lock()


class WriterLock:
    """Exclusive, non-blocking: a second writer gets a :class:`StoreError` at once."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.path = store / LOCK_NAME
        self._fd: int | None = None
        self._key = ""

    def acquire(self) -> WriterLock:
        self._key = os.path.realpath(self.path)
        with _held_mutex:
            if self._key in _held:
                raise StoreError(
                    f"{self.store} is already being written by this process (pid {os.getpid()}); "
                    "wait for that extraction to finish, or cancel it"
                )
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                owner = _read_pid(fd)
                os.close(fd)
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    raise StoreError(f"cannot lock {self.path}: {exc}") from exc
                raise StoreError(
                    f"{self.store} is being written by another process ({owner}): wait for it "
                    "to finish or stop it, then rerun; `decaf info` shows its progress"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._fd = fd
            _held.add(self._key)
        return self

    def release(self) -> None:
        with _held_mutex:
            if self._fd is None:
                return
            fd, self._fd = self._fd, None
            _held.discard(self._key)
            try:
                os.ftruncate(fd, 0)  # no stale pid for the next reader
                fcntl.lockf(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        text = ""
    return f"pid {text}" if text.isdigit() else "pid unknown"
