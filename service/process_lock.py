"""A per-process advisory lock on a file: proof that a server process is alive.

With SQLite, every server process on a data directory (uvicorn `--workers N`) holds the lock file
named after its job-owner id for its lifetime (`service.jobs`). The kernel drops the lock when the
process dies, even on SIGKILL, so another process can tell at once that the owner of a `running`
job is gone and resume the job without waiting out its lease. Only SQLite relies on it: all its
processes share one machine's kernel, whereas replicas on other machines (PostgreSQL) may sit on
shared storage whose locks are not shared, and wait for the lease instead.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, ClassVar


class ProcessLock:
    """Advisory, non-blocking lock on a file; released by the OS when the owning process dies.

    POSIX record locks (``lockf``), not ``flock``: a flock is shared with forked children, so
    a killed server's DataLoader workers would keep it for seconds after the kill and the
    restarted server would think it alive and wait out its leases. Record locks belong to one
    process only; within a process the set below makes a second holder fail too.
    """

    _held_here: ClassVar[set[Path]] = set()
    _guard: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.path = path.resolve()
        self._handle: Any = None

    def acquire(self) -> bool:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: single process assumed
            return True
        with self._guard:
            if self.path in self._held_here:
                return False
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+")  # noqa: SIM115 - held open for the process lifetime
            try:
                fcntl.lockf(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                return False
            self._handle = handle
            self._held_here.add(self.path)
            return True

    @property
    def held(self) -> bool:
        return self._handle is not None

    def release(self) -> None:
        with self._guard:
            if self._handle is not None:
                self._handle.close()  # closing the file drops the record lock
                self._handle = None
                self._held_here.discard(self.path)
