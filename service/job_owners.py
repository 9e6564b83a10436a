"""Who runs a job: owner ids, and which owners on this machine are alive (SQLite).

A job's `owner` is `host:pid:random`, unique per process start. With SQLite every server process
on a data dir shares one machine, so each holds `DATA_DIR/.replicas/<owner>.lock` for its
lifetime (`OwnerLock`, a `ProcessLock`): the kernel drops the lock when the process dies, even on
SIGKILL, so a restarted server sees at once that the owner of a `running` job is gone and resumes
the job without waiting out its lease. Only owners on this host are judged this way: another
machine's locks may not reach us through shared storage, and its jobs wait for their leases.
PostgreSQL replicas rely on leases alone (`service.jobs`).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

from sqlalchemy import select

from featurizer.errors import DecafError
from service.process_lock import ProcessLock
from service.state import Database, JobRow

OWNERS_DIR = ".replicas"  # lock files of the live server processes (SQLite: one machine)


class SharedSQLiteError(DecafError):
    """Another machine's server uses this data dir's SQLite database."""

    http_status: ClassVar[int] = 500


def new_owner_id() -> str:
    """`host:pid:random`: unique per process start, and says in the database who runs a job."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def host_of(owner: str) -> str:
    return owner.split(":", 1)[0]


def owner_lock_path(data_dir: Path, owner: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "._:-" else "_" for ch in owner)
    return data_dir / OWNERS_DIR / f"{safe}.lock"


class OwnerLock:
    """This process's lock file, held while its job manager runs; removed when it stops."""

    def __init__(self, data_dir: Path, owner: str) -> None:
        self._lock = ProcessLock(owner_lock_path(data_dir, owner))

    def acquire(self) -> bool:
        return self._lock.acquire()

    def release(self) -> None:
        if self._lock.held:
            self._lock.path.unlink(missing_ok=True)
            self._lock.release()


def owner_is_dead(data_dir: Path, owner: str) -> bool:
    """True when `owner` ran on this machine and nobody holds its lock file: it is gone.

    A missing file, or an owner on another host, proves nothing: such an owner is waited out
    like any other lease.
    """
    path = owner_lock_path(data_dir, owner)
    if host_of(owner) != socket.gethostname() or not path.exists():
        return False
    probe = ProcessLock(path)
    if not probe.acquire():
        return False
    probe.release()  # the file stays until the owner's jobs are taken over (see the sweep)
    return True


def dead_owners_here(data_dir: Path, owners: Iterable[str | None]) -> list[str]:
    return [owner for owner in owners if owner and owner_is_dead(data_dir, owner)]


def sweep_dead_owner_files(data_dir: Path, db: Database) -> None:
    """Remove the lock files of gone processes that no longer own a running job."""
    folder = data_dir / OWNERS_DIR
    if not folder.is_dir():
        return
    with db.session() as session:
        owning = set(
            session.scalars(select(JobRow.owner).where(JobRow.status == "running").distinct())
        )
    for path in folder.glob("*.lock"):
        owner = path.name.removesuffix(".lock")
        if owner in owning:
            continue
        if host_of(owner) != socket.gethostname() or owner_is_dead(data_dir, owner):
            path.unlink(missing_ok=True)  # a dead process cannot clean up after itself


def refuse_sqlite_shared_between_hosts(data_dir: Path) -> None:
    """SQLite on shared storage, used from two machines, corrupts: refuse to be the second."""
    for path in sorted((data_dir / OWNERS_DIR).glob("*.lock")):
        owner = path.name.removesuffix(".lock")
        if host_of(owner) == socket.gethostname():
            continue
        probe = ProcessLock(path)
        if probe.acquire():  # nobody holds it (or its host's locks do not reach us)
            probe.release()
            continue
        raise SharedSQLiteError(
            f"the data dir {data_dir} is in use by a server on host {host_of(owner)!r} "
            f"(owner {owner}) with the SQLite database: SQLite cannot be shared between "
            "machines. Run several replicas on one PostgreSQL (DECAF_DATABASE_URL, see the "
            "README, 'Several replicas'), or give this server its own DECAF_DATA_DIR"
        )
