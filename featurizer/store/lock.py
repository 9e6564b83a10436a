"""The single-writer lock of a store: ``STORE/_lock``, held while a run creates or resumes it.

``fcntl.lockf`` (a POSIX record lock) rather than ``flock``: record locks belong to the process
and are not inherited by ``fork``, so DataLoader workers forked during an extraction never keep
the store locked after the writer died. The kernel drops the lock when the writer exits, even on
SIGKILL, so a crashed run never leaves a stale lock to clean up. The file holds who writes (pid,
host, command line, start time, as one JSON object) for the message a second writer gets; the
content is only informative, the lock itself is the kernel's.

A record lock is per process: a second open-and-close of the file by the same process would drop
it, and a second lock in the same process would succeed. A process-wide registry of held locks
refuses the second writer first (the service runs several jobs in one process).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

from featurizer.errors import StoreError
from featurizer.store.manifest import LOCK_NAME

MAX_COMMAND_CHARS = 300  # of the holder's command line, in the lock file and the message


class StoreLockedError(StoreError):
    """Another writer holds the store's lock: refused at once, never waited for."""

    http_status: ClassVar[int] = 409


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
                raise StoreLockedError(
                    f"{self.store} is already being written by this process (pid {os.getpid()}); "
                    "wait for that extraction to finish, or cancel it"
                )
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise StoreError(f"cannot create the writer lock {self.path}: {exc}") from exc
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                owner = _describe_holder(fd)
                os.close(fd)
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    raise StoreError(f"cannot lock {self.path}: {exc}") from exc
                raise StoreLockedError(
                    f"{self.store} is being written by another process ({owner}): wait for it "
                    f"to finish or stop it, then rerun; `decaf info {self.store}` shows its "
                    "progress"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, _holder_record().encode(), 0)
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


def _holder_record() -> str:
    """Who holds the lock, as the JSON line written into the lock file."""
    command = shlex.join(sys.argv) if sys.argv and sys.argv[0] else sys.executable
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command[:MAX_COMMAND_CHARS],
        "started_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    return json.dumps(record, ensure_ascii=False) + "\n"


def read_holder(fd: int) -> dict[str, object]:
    """The holder record of an open lock file ({} when empty or unreadable); an older decaf
    wrote the bare pid."""
    try:
        text = os.pread(fd, 4096, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return {}
    if text.isdigit():
        return {"pid": int(text)}
    try:
        record = json.loads(text)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _describe_holder(fd: int) -> str:
    holder = read_holder(fd)
    pid = holder.get("pid")
    parts = [f"pid {pid}" if isinstance(pid, int) else "pid unknown"]
    if holder.get("host"):
        parts[0] += f" on {holder['host']}"
    if holder.get("command"):
        parts.append(f"`{str(holder['command'])[:MAX_COMMAND_CHARS]}`")
    if holder.get("started_at"):
        parts.append(f"since {holder['started_at']}")
    return ", ".join(parts)
