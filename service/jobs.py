"""Background jobs: rows in the database, claimed and run by worker threads of any replica.

A job is a row (service/state.py); the row is the truth. Every server process (a replica, or a
uvicorn worker) runs `settings.job_workers` worker threads that *claim* jobs from the shared
table, so a job submitted to one replica may run on another:

- **Claim**: one conditional UPDATE (`... WHERE status = 'queued'`, or for a takeover
  `WHERE status = 'running' AND attempts = <seen> AND lease_expires_at < now`) moves the row to
  `running` under this replica's `owner` id; the database lets exactly one claimer win. On
  PostgreSQL the candidates are read with `FOR UPDATE SKIP LOCKED`, so replicas polling together
  skip each other's rows instead of queueing on them.
- **Lease**: a claimed job is held until `lease_expires_at` (`DECAF_JOB_LEASE_S`), renewed by a
  heartbeat thread every third of the lease. Every write of a running job (progress, outcome)
  is fenced by `owner` and `attempts`: a replica that lost its lease writes nothing more and
  stops the job at its next stop point.
- **Takeover**: a `running` job whose lease ran out was left by a replica that died (SIGKILL,
  OOM, lost machine); any replica claims it again as a new attempt. With SQLite, every process
  is on one machine and holds a lock file in the data dir for its lifetime
  (`service.job_owners`), so a dead owner is seen at once (the OS released its lock) and a
  restarted server resumes without waiting out the lease.

Handlers must therefore be safe to re-run (extraction resumes from the store's finished parts
under the store's writer lock, which the OS released with the dead process; a probe fit saves
under an id derived from the job). A job that keeps dying with its replica (e.g. killed for
memory) is marked `interrupted` after `max_attempts` starts instead of crash-looping; it is never
dropped.

The manager knows no kinds: the app registers one handler per kind
(`JobManager(handlers={"extraction": ..., "probe_fit": ...})`, see `service.tasks`); a job of any
other kind is refused. A handler receives a `JobContext`: its parameters, progress reporting and
a stop flag it checks between units of work.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from featurizer.errors import DecafError
from service.job_context import CANCEL_POLL_INTERVAL_S, JobContext, JobHandler
from service.job_owners import (
    OwnerLock,
    dead_owners_here,
    new_owner_id,
    refuse_sqlite_shared_between_hosts,
    sweep_dead_owner_files,
)
from service.settings import Settings
from service.state import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    Database,
    DatasetRow,
    JobRow,
    iso,
    utcnow,
)

log = logging.getLogger(__name__)

PROGRESS_WRITE_INTERVAL_S = 0.5
CLAIM_CANDIDATES = 8  # rows looked at per claim attempt (others may win some of them)


class JobError(DecafError):
    """Base of the job errors: a request the job manager cannot carry out."""

    http_status: ClassVar[int] = 400


class UnknownJobKindError(JobError, ValueError):
    """No handler is registered for this job kind."""

    http_status: ClassVar[int] = 422


class JobNotFoundError(JobError, LookupError):
    """No job has this id."""

    http_status: ClassVar[int] = 404


class JobManagerStoppedError(JobError):
    """The server is starting up or shutting down: no new jobs now."""

    http_status: ClassVar[int] = 503


class JobConflictError(JobError):
    """The request conflicts with the job's state (e.g. cancelling a finished job)."""

    http_status: ClassVar[int] = 409


def job_to_dict(row: JobRow) -> dict[str, Any]:
    """The JSON shape of a job in the API."""
    return {
        "id": row.id,
        "kind": row.kind,
        "status": row.status,
        "params": row.params,
        "progress": row.progress or {},
        "result": row.result,
        "error": row.error,
        "note": row.note,
        "cancel_requested": bool(row.cancel_requested),
        "attempts": row.attempts or 0,
        "created_at": iso(row.created_at),
        "started_at": iso(row.started_at),
        "finished_at": iso(row.finished_at),
        "updated_at": iso(row.updated_at),
    }


@dataclasses.dataclass(frozen=True)
class _Claim:
    job_id: str
    kind: str
    params: dict[str, Any]
    attempt: int


@dataclasses.dataclass
class _Running:
    ctx: JobContext
    finishing: bool = False  # its outcome is being written: a missing row is no lost lease
    lost: bool = False  # another replica took it over: write nothing more


class JobManager:
    """Claims jobs from the shared table and runs them in worker threads, one job per thread."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        handlers: Mapping[str, JobHandler],
        *,
        max_attempts: int = 3,
        cancel_poll_interval_s: float = CANCEL_POLL_INTERVAL_S,
        owner: str | None = None,
    ) -> None:
        if not handlers:
            raise ValueError("a JobManager needs at least one handler (kind -> function)")
        self.settings = settings
        self.db = db
        self.handlers: dict[str, JobHandler] = dict(handlers)
        self.max_attempts = max_attempts
        self.cancel_poll_interval_s = cancel_poll_interval_s
        self.owner = owner or new_owner_id()
        self.lease_s = float(settings.job_lease_s)
        self.poll_s = float(settings.job_poll_s)
        self._data_dir = Path(settings.data_dir).expanduser().resolve()
        self._lock = threading.RLock()
        self._finished = threading.Condition(self._lock)
        self._running: dict[str, _Running] = {}
        self._threads: list[threading.Thread] = []
        self._heartbeat_thread: threading.Thread | None = None
        self._nudges = threading.Semaphore(0)  # one release per submitted job: wake a worker
        self._stopping = threading.Event()
        self._heartbeat_stop = threading.Event()
        self._started = False
        self._shutting_down = False
        self._liveness = OwnerLock(self._data_dir, self.owner)

    @property
    def kinds(self) -> list[str]:
        return sorted(self.handlers)

    def check_kind(self, kind: str) -> str:
        if kind not in self.handlers:
            raise UnknownJobKindError(f"unknown job kind {kind!r}; this server runs {self.kinds}")
        return kind

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers (they resume jobs a dead replica left) and the lease heartbeat."""
        self._shutting_down = False
        self._stopping.clear()
        self._heartbeat_stop.clear()
        if self.db.backend == "sqlite":
            refuse_sqlite_shared_between_hosts(self._data_dir)
            self._liveness.acquire()  # lets a restarted server see at once that we are gone
            sweep_dead_owner_files(self._data_dir, self.db)
        workers = max(1, int(getattr(self.settings, "job_workers", 1)))
        self._threads = [
            threading.Thread(target=self._work, name=f"decaf-job-{n}", daemon=True)
            for n in range(workers)
        ]
        self._heartbeat_thread = threading.Thread(
            target=self._heartbeat, name="decaf-job-heartbeat", daemon=True
        )
        for thread in [*self._threads, self._heartbeat_thread]:
            thread.start()
        self._started = True
        log.info(
            "job workers started: %d, replica %s, lease %.1fs", workers, self.owner, self.lease_s
        )

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Stop running jobs after their current batch; they go back to the queue, where another
        replica (or the next start) picks them up."""
        with self._lock:
            self._shutting_down = True
            self._started = False
            for entry in self._running.values():
                entry.ctx.stop_event.set()
        self._stopping.set()
        for _ in self._threads:
            self._nudges.release()
        for thread in self._threads:
            thread.join(timeout_s)
        # Leases are renewed until the jobs have stopped: no takeover while we still write.
        self._heartbeat_stop.set()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout_s)
        self._threads, self._heartbeat_thread = [], None
        self._liveness.release()

    # -- claiming ----------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                claim = self._claim_next()
            except Exception:  # a database hiccup must not kill the worker thread
                log.exception("could not claim a job; retrying in %.1fs", self.poll_s)
                claim = None
            if claim is None:
                self._nudges.acquire(timeout=self.poll_s)
            else:
                self._execute(claim)

    def _claim_next(self) -> _Claim | None:
        """Claim the oldest job that is queued or whose replica is gone; None if there is none."""
        if self._shutting_down:
            return None
        with self.db.session() as session:
            now = self.db.now(session)
            dead = self._dead_owners(session, now)
            lease_over = or_(JobRow.lease_expires_at.is_(None), JobRow.lease_expires_at < now)
            if dead:
                lease_over = or_(lease_over, JobRow.owner.in_(dead))
            claimable = or_(JobRow.status == "queued", and_(JobRow.status == "running", lease_over))
            candidates = session.scalars(
                select(JobRow)
                .where(claimable)
                .order_by(JobRow.created_at)
                .limit(CLAIM_CANDIDATES)
                .with_for_update(skip_locked=True)  # PostgreSQL; SQLite serialises writers
            ).all()
            for row in candidates:
                claim = self._claim_row(session, row, now, lease_over)
                if claim is not None:
                    return claim
        return None

    def _dead_owners(self, session: Session, now: datetime) -> list[str]:
        """SQLite only: owners of live-leased jobs whose process is gone (see module doc)."""
        if self.db.backend != "sqlite":
            return []
        owners = session.scalars(
            select(JobRow.owner)
            .where(
                JobRow.status == "running",
                JobRow.owner.is_not(None),
                JobRow.owner != self.owner,
                JobRow.lease_expires_at >= now,
            )
            .distinct()
        ).all()
        return dead_owners_here(self._data_dir, owners)

    def _claim_row(
        self, session: Session, row: JobRow, now: datetime, lease_over: Any
    ) -> _Claim | None:
        """One conditional UPDATE: it changes the row only if nobody else changed it first."""
        seen = [JobRow.id == row.id, JobRow.status == row.status, _same_attempts(row.attempts)]
        if row.status == "running":
            seen.append(lease_over)
        if row.cancel_requested:
            note = "cancelled (the server stopped before the job noticed)"
            self._set(session, seen, status="cancelled", finished_at=now, note=note)
            return None
        attempts = row.attempts or 0
        note = row.note
        if row.status == "running":  # its replica died mid-job
            if attempts >= self.max_attempts:
                error = (
                    f"the server stopped {attempts} times while this job was running; it is "
                    "not resumed automatically to avoid a crash loop. Submit it again to resume "
                    "(finished parts of a store are kept)."
                )
                self._set(session, seen, status="interrupted", finished_at=now, error=error)
                return None
            note = f"resumed after the server stopped unexpectedly during attempt {attempts}"
            if row.owner:
                note += f" (replica {row.owner} stopped renewing its lease; {self.owner} took over)"
        won = self._set(
            session,
            seen,
            status="running",
            owner=self.owner,
            lease_expires_at=now + timedelta(seconds=self.lease_s),
            attempts=attempts + 1,
            started_at=now,
            error=None,
            note=note,
        )
        if not won:
            return None
        return _Claim(row.id, row.kind, dict(row.params or {}), attempts + 1)

    @staticmethod
    def _set(session: Session, where: list[Any], **values: Any) -> bool:
        """UPDATE jobs SET values WHERE all of `where`; True if it changed the row."""
        values.setdefault("updated_at", utcnow())
        if values.get("status") in FINAL_STATUSES:
            values.setdefault("lease_expires_at", None)
        statement = update(JobRow).where(*where).values(**values)
        result = session.execute(statement.execution_options(synchronize_session=False))
        return result.rowcount == 1

    def _fence(self, job_id: str, attempt: int) -> list[Any]:
        """Rows this replica still holds: a taken-over job is written by its new owner only."""
        return [
            JobRow.id == job_id,
            JobRow.status == "running",
            JobRow.owner == self.owner,
            JobRow.attempts == attempt,
        ]

    # -- leases ------------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        interval = self.lease_s / 3
        while not self._heartbeat_stop.wait(interval):
            try:
                self._renew_leases()
            except Exception as exc:  # the lease may run out; that is what it is for
                log.warning("could not renew the leases of running jobs: %s", exc)

    def _renew_leases(self) -> None:
        with self._lock:
            running = [e for e in self._running.values() if not (e.finishing or e.lost)]
        if not running:
            return
        lost = []
        with self.db.session() as session:
            expires = self.db.now(session) + timedelta(seconds=self.lease_s)
            for entry in running:
                fence = self._fence(entry.ctx.job_id, entry.ctx.attempt)
                if not self._set(session, fence, lease_expires_at=expires):
                    lost.append(entry)
        for entry in lost:
            self._lose(entry)

    def _lose(self, entry: _Running) -> None:
        with self._lock:
            if entry.finishing or entry.lost:
                return
            entry.lost = True
            entry.ctx.stop_event.set()
        log.warning(
            "job %s: this replica (%s) no longer holds it (its lease ran out and another replica "
            "took it over); stopping it here without writing anything more",
            entry.ctx.job_id,
            self.owner,
        )

    # -- public API --------------------------------------------------------------------------

    def submit(self, kind: str, params: dict[str, Any], *, dataset: str | None = None) -> dict:
        """Create a queued job (any replica may run it); `dataset` registers the store it writes."""
        self.check_kind(kind)
        if not self._started or self._shutting_down:
            raise JobManagerStoppedError(
                "the job manager is not running (server starting or stopping); retry shortly"
            )
        job_id = uuid.uuid4().hex
        with self.db.session() as session:
            row = JobRow(id=job_id, kind=kind, status="queued", params=params, progress={})
            session.add(row)
            if dataset is not None:
                self._register_dataset(session, dataset, params, job_id)
            session.flush()
            data = job_to_dict(row)
        self._nudges.release()
        return data

    def _register_dataset(self, session: Any, name: str, params: dict, job_id: str) -> None:
        row = session.get(DatasetRow, name)
        if row is None:
            row = DatasetRow(name=name, path=params["out"])
            session.add(row)
        row.path, row.source_root, row.job_id = params["out"], params.get("root"), job_id

    def get(self, job_id: str) -> dict:
        with self.db.session() as session:
            row = session.get(JobRow, job_id)
            if row is None:
                raise JobNotFoundError(f"job {job_id!r} not found (GET /v1/jobs lists them)")
            return job_to_dict(row)

    def list(
        self, *, status: str | None = None, kind: str | None = None, limit: int = 100
    ) -> list[dict]:
        query = select(JobRow).order_by(JobRow.created_at.desc()).limit(limit)
        if status is not None:
            query = query.where(JobRow.status == status)
        if kind is not None:
            query = query.where(JobRow.kind == self.check_kind(kind))
        with self.db.session() as session:
            return [job_to_dict(row) for row in session.scalars(query)]

    def active_job_for_dataset(self, name: str) -> str | None:
        """The queued/running job registered as the writer of dataset `name`, if any."""
        with self.db.session() as session:
            dataset = session.get(DatasetRow, name)
            if dataset is None or dataset.job_id is None:
                return None
            job = session.get(JobRow, dataset.job_id)
            return job.id if job is not None and job.status in ACTIVE_STATUSES else None

    def cancel(self, job_id: str) -> dict:
        """Cancel a queued job at once, or ask a running one (on any replica) to stop after its
        current batch."""
        with self.db.session() as session:
            status = session.scalar(select(JobRow.status).where(JobRow.id == job_id))
            if status is None:
                raise JobNotFoundError(f"job {job_id!r} not found")
            active = [JobRow.id == job_id, JobRow.status.in_(ACTIVE_STATUSES)]
            if not self._set(session, active, cancel_requested=True):
                status = session.scalar(select(JobRow.status).where(JobRow.id == job_id))
                raise JobConflictError(f"job {job_id!r} already finished with status {status!r}")
            # Still queued: nobody runs it, so it is cancelled now (a claim that came first
            # turned it `running`, and the flag reaches the job at its next stop point).
            queued = [JobRow.id == job_id, JobRow.status == "queued"]
            self._set(session, queued, status="cancelled", finished_at=utcnow())
        with self._lock:
            entry = self._running.get(job_id)
            if entry is not None:
                entry.ctx.stop_event.set()
            self._finished.notify_all()
        return self.get(job_id)

    def wait(self, job_id: str, timeout_s: float = 60.0, poll_s: float = 0.5) -> dict:
        """Block until the job reaches a final status (for tests and scripts).

        Woken by jobs finishing in this process; `poll_s` bounds how late a job finished by
        another process sharing the database is seen.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.get(job_id)
            if job["status"] in FINAL_STATUSES:
                return job
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s}s")
            with self._finished:
                self._finished.wait(min(poll_s, remaining))

    # -- execution ---------------------------------------------------------------------------

    def _execute(self, claim: _Claim) -> None:
        ctx = JobContext(
            job_id=claim.job_id,
            kind=claim.kind,
            params=claim.params,
            attempt=claim.attempt,
            settings=self.settings,
            db=self.db,
            stop_event=threading.Event(),
            _report=self._progress_writer(claim.job_id, claim.attempt),
            cancel_poll_interval_s=self.cancel_poll_interval_s,
        )
        entry = _Running(ctx)
        with self._lock:
            self._running[claim.job_id] = entry
            if self._shutting_down:  # claimed just as the server began to stop
                ctx.stop_event.set()
        log.info("job %s (%s) started, attempt %d", ctx.job_id, ctx.kind, ctx.attempt)
        try:
            result = self._handler(ctx.kind)(ctx)
        except Exception as exc:
            self._finish_with_error(entry, exc)
        else:
            self._finish(entry, "succeeded", result=result)
        finally:
            with self._lock:
                self._running.pop(claim.job_id, None)

    def _progress_writer(self, job_id: str, attempt: int) -> Callable[[dict[str, Any], bool], None]:
        last_write = [0.0]

        def write(progress: dict[str, Any], force: bool) -> None:
            now = time.monotonic()
            if not force and now - last_write[0] < PROGRESS_WRITE_INTERVAL_S:
                return
            last_write[0] = now
            with self.db.session() as session:
                held = self._set(session, self._fence(job_id, attempt), progress=dict(progress))
            if not held:
                with self._lock:
                    entry = self._running.get(job_id)
                if entry is not None:
                    self._lose(entry)

        return write

    def _handler(self, kind: str) -> JobHandler:
        handler = self.handlers.get(kind)
        if handler is None:  # e.g. a job recovered from a database another version wrote
            raise UnknownJobKindError(
                f"no handler for job kind {kind!r}; this server runs {self.kinds}"
            )
        return handler

    def _finish_with_error(self, entry: _Running, exc: Exception) -> None:
        ctx = entry.ctx
        if entry.lost:
            log.info("job %s stopped here after another replica took it over", ctx.job_id)
            return
        if ctx.should_stop():
            if self._shutting_down and not self._cancel_requested(ctx.job_id):
                note = (
                    "paused by a server shutdown; another replica, or this server when it "
                    "starts again, resumes it"
                )
                self._finish(entry, "queued", note=note)
            else:
                self._finish(entry, "cancelled", note="cancelled by request")
            return
        if isinstance(exc, DecafError):
            log.warning("job %s failed: %s", ctx.job_id, exc)
            self._finish(entry, "failed", error=str(exc))
        else:
            log.exception("job %s crashed", ctx.job_id)
            self._finish(entry, "failed", error=f"internal error: {type(exc).__name__}: {exc}")

    def _cancel_requested(self, job_id: str) -> bool:
        with self.db.session() as session:
            return bool(session.scalar(select(JobRow.cancel_requested).where(JobRow.id == job_id)))

    def _finish(
        self,
        entry: _Running,
        status: str,
        *,
        result: dict | None = None,
        error: str | None = None,
        note: str | None = None,
    ) -> None:
        ctx = entry.ctx
        with self._lock:
            entry.finishing = True
        now = utcnow()
        values: dict[str, Any] = {"status": status, "lease_expires_at": None}
        values["finished_at"] = now if status in FINAL_STATUSES else None
        if result is not None:
            values["result"] = result
            if "progress" in result:
                values["progress"] = result["progress"]
        if error is not None:
            values["error"] = error
        if note is not None:
            values["note"] = note
        with self.db.session() as session:
            written = self._set(session, self._fence(ctx.job_id, ctx.attempt), **values)
        with self._lock:
            self._finished.notify_all()
        if written:
            log.info("job %s %s", ctx.job_id, status)
        else:
            log.warning(
                "job %s attempt %d ended (%s) after another replica took it over: its outcome "
                "is the one recorded",
                ctx.job_id,
                ctx.attempt,
                status,
            )


def _same_attempts(attempts: int | None) -> Any:
    return JobRow.attempts.is_(None) if attempts is None else JobRow.attempts == attempts
