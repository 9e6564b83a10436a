"""Background jobs: rows in the database executed by a small thread pool, whatever their kind.

A job is a row (service/state.py) run by a bounded thread pool (`settings.job_workers`). The row
is the truth: a client polls it, and after a crash the next server start finds every job that was
`queued` or `running` and queues it again, so handlers must be safe to re-run (extraction resumes
from the store's finished parts; a probe fit starts over). A job that keeps dying with the server
(e.g. killed for memory) is marked `interrupted` after `max_attempts` starts instead of
crash-looping; it is never dropped.

The manager knows no kinds: the app registers one handler per kind
(`JobManager(handlers={"extraction": ..., "probe_fit": ...})`, see `service.tasks`), and a job of
any other kind is refused. A handler receives a `JobContext`: its parameters, progress reporting
and a stop flag it checks between units of work.

Only one process per data directory recovers jobs (an advisory lock in `data_dir`), so running
the server with several workers never executes a recovered job twice.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import select

from featurizer.errors import DecafError
from service.job_context import CANCEL_POLL_INTERVAL_S, JobContext, JobHandler
from service.process_lock import ProcessLock
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
RECOVERY_RETRY_S = 2.0  # how often a non-owner checks whether the recovery owner is gone


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


class JobManager:
    """Runs jobs in a bounded thread pool and keeps their state in the database."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        handlers: Mapping[str, JobHandler],
        *,
        max_attempts: int = 3,
        cancel_poll_interval_s: float = CANCEL_POLL_INTERVAL_S,
    ) -> None:
        if not handlers:
            raise ValueError("a JobManager needs at least one handler (kind -> function)")
        self.settings = settings
        self.db = db
        self.handlers: dict[str, JobHandler] = dict(handlers)
        self.max_attempts = max_attempts
        self.cancel_poll_interval_s = cancel_poll_interval_s
        self._lock = threading.RLock()
        self._finished = threading.Condition(self._lock)
        self._stops: dict[str, threading.Event] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._shutting_down = False
        self._recovery_lock = ProcessLock(Path(settings.data_dir) / ".jobs.lock")

    @property
    def kinds(self) -> list[str]:
        return sorted(self.handlers)

    def check_kind(self, kind: str) -> str:
        if kind not in self.handlers:
            raise UnknownJobKindError(f"unknown job kind {kind!r}; this server runs {self.kinds}")
        return kind

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker pool and requeue the jobs a previous process left unfinished."""
        workers = max(1, int(getattr(self.settings, "job_workers", 1)))
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decaf-job")
        self._shutting_down = False
        if self._recovery_lock.acquire():
            self._recover()
        else:
            log.info("another server process owns job recovery for %s", self.settings.data_dir)
            threading.Thread(
                target=self._take_over_recovery, name="decaf-job-recovery", daemon=True
            ).start()

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Stop running jobs after their current batch; they resume on the next start."""
        with self._lock:
            self._shutting_down = True
            for event in self._stops.values():
                event.set()
        if self._executor is not None:
            # Queued futures are dropped: their rows stay `queued` and are recovered next time.
            self._executor.shutdown(wait=timeout_s is None, cancel_futures=True)
            self._executor = None
        self._recovery_lock.release()

    def _take_over_recovery(self) -> None:
        """Recover once the process that holds the lock is gone (it may have crashed)."""
        while not self._shutting_down:
            time.sleep(RECOVERY_RETRY_S)
            if self._shutting_down:
                return
            if self._recovery_lock.acquire():
                if self._shutting_down:  # lost the race with shutdown(): nothing to run on
                    self._recovery_lock.release()
                    return
                log.info("took over job recovery for %s", self.settings.data_dir)
                self._recover()
                return

    def _recover(self) -> None:
        resumed: list[str] = []
        with self._lock, self.db.session() as session:
            rows = session.scalars(
                select(JobRow).where(JobRow.status.in_(ACTIVE_STATUSES)).order_by(JobRow.created_at)
            ).all()
            for row in rows:
                self._recover_row(row)
                if row.status == "queued":
                    resumed.append(row.id)
        for job_id in resumed:
            self._schedule(job_id)
        if resumed:
            log.warning("resuming %d job(s) left unfinished by a previous run", len(resumed))

    def _recover_row(self, row: JobRow) -> None:
        now = utcnow()
        row.updated_at = now
        if row.cancel_requested:
            row.status, row.finished_at = "cancelled", now
            row.note = "cancelled (the server stopped before the job noticed)"
            return
        if row.status != "running":
            return  # still queued: simply schedule it again
        if (row.attempts or 0) >= self.max_attempts:
            row.status, row.finished_at = "interrupted", now
            row.error = (
                f"the server stopped {row.attempts} times while this job was running; it is "
                "not resumed automatically to avoid a crash loop. Submit it again to resume "
                "(finished parts of a store are kept)."
            )
            return
        row.status = "queued"
        row.note = f"resumed after the server stopped unexpectedly during attempt {row.attempts}"

    # -- public API --------------------------------------------------------------------------

    def submit(self, kind: str, params: dict[str, Any], *, dataset: str | None = None) -> dict:
        """Create a queued job and schedule it; `dataset` registers the store it writes."""
        self.check_kind(kind)
        if self._executor is None:
            raise JobManagerStoppedError(
                "the job manager is not running (server starting or stopping); retry shortly"
            )
        job_id = uuid.uuid4().hex
        with self._lock, self.db.session() as session:
            row = JobRow(id=job_id, kind=kind, status="queued", params=params, progress={})
            session.add(row)
            if dataset is not None:
                self._register_dataset(session, dataset, params, job_id)
            session.flush()
            data = job_to_dict(row)
        self._schedule(job_id)
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
        """Cancel a queued job at once, or ask a running one to stop after its current batch."""
        with self._lock, self.db.session() as session:
            row = session.get(JobRow, job_id)
            if row is None:
                raise JobNotFoundError(f"job {job_id!r} not found")
            if row.status in FINAL_STATUSES:
                raise JobConflictError(
                    f"job {job_id!r} already finished with status {row.status!r}"
                )
            row.cancel_requested = True
            row.updated_at = utcnow()
            if row.status == "queued":
                row.status, row.finished_at = "cancelled", utcnow()
                self._finished.notify_all()
            event = self._stops.get(job_id)
            if event is not None:
                event.set()
            session.flush()
            return job_to_dict(row)

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

    def _schedule(self, job_id: str) -> None:
        executor = self._executor
        if executor is None or self._shutting_down:
            return  # stays queued in the database; the next start picks it up
        executor.submit(self._run, job_id)

    def _claim(self, job_id: str) -> JobContext | None:
        """Move a queued job to running; None if it was cancelled or we are shutting down."""
        with self._lock, self.db.session() as session:
            row = session.get(JobRow, job_id)
            if row is None or row.status != "queued" or self._shutting_down:
                return None
            now = utcnow()
            row.status, row.started_at, row.updated_at = "running", now, now
            row.attempts = (row.attempts or 0) + 1
            row.error = None
            stop = threading.Event()
            self._stops[job_id] = stop
            return JobContext(
                job_id=job_id,
                kind=row.kind,
                params=dict(row.params),
                attempt=row.attempts,
                settings=self.settings,
                db=self.db,
                stop_event=stop,
                _report=self._progress_writer(job_id),
                cancel_poll_interval_s=self.cancel_poll_interval_s,
            )

    def _progress_writer(self, job_id: str) -> Callable[[dict[str, Any], bool], None]:
        last_write = [0.0]

        def write(progress: dict[str, Any], force: bool) -> None:
            now = time.monotonic()
            if not force and now - last_write[0] < PROGRESS_WRITE_INTERVAL_S:
                return
            last_write[0] = now
            with self.db.session() as session:
                row = session.get(JobRow, job_id)
                if row is not None:
                    row.progress = dict(progress)
                    row.updated_at = utcnow()

        return write

    def _run(self, job_id: str) -> None:
        try:
            ctx = self._claim(job_id)
        except Exception:  # a database hiccup must not kill the worker thread silently
            log.exception("could not start job %s", job_id)
            return
        if ctx is None:
            return
        log.info("job %s (%s) started, attempt %d", job_id, ctx.kind, ctx.attempt)
        try:
            result = self._handler(ctx.kind)(ctx)
        except Exception as exc:
            self._finish_with_error(ctx, exc)
        else:
            self._finish(ctx, "succeeded", result=result)
        finally:
            with self._lock:
                self._stops.pop(job_id, None)

    def _handler(self, kind: str) -> JobHandler:
        handler = self.handlers.get(kind)
        if handler is None:  # e.g. a job recovered from a database another version wrote
            raise UnknownJobKindError(
                f"no handler for job kind {kind!r}; this server runs {self.kinds}"
            )
        return handler

    def _finish_with_error(self, ctx: JobContext, exc: Exception) -> None:
        if ctx.should_stop():
            if self._shutting_down and not self._cancel_requested(ctx.job_id):
                note = "paused by a server shutdown; it resumes when the server starts again"
                self._finish(ctx, "queued", note=note, final=False)
            else:
                self._finish(ctx, "cancelled", note="cancelled by request")
            return
        if isinstance(exc, DecafError):
            log.warning("job %s failed: %s", ctx.job_id, exc)
            self._finish(ctx, "failed", error=str(exc))
        else:
            log.exception("job %s crashed", ctx.job_id)
            self._finish(ctx, "failed", error=f"internal error: {type(exc).__name__}: {exc}")

    def _cancel_requested(self, job_id: str) -> bool:
        with self.db.session() as session:
            row = session.get(JobRow, job_id)
            return bool(row is not None and row.cancel_requested)

    def _finish(
        self,
        ctx: JobContext,
        status: str,
        *,
        result: dict | None = None,
        error: str | None = None,
        note: str | None = None,
        final: bool = True,
    ) -> None:
        with self._lock, self.db.session() as session:
            row = session.get(JobRow, ctx.job_id)
            if row is None:
                return
            now = utcnow()
            row.status, row.updated_at = status, now
            row.finished_at = now if final else None
            if result is not None:
                row.result = result
                row.progress = result.get("progress", row.progress)
            if error is not None:
                row.error = error
            if note is not None:
                row.note = note
            self._finished.notify_all()
        log.info("job %s %s", ctx.job_id, status)
