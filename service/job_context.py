"""What a job handler sees: its parameters, progress reporting and a stop flag.

Handlers (`service.tasks`) depend on this module only, never on the manager that runs them.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from featurizer.errors import DecafError
from service.settings import Settings
from service.state import Database, JobRow

CANCEL_POLL_INTERVAL_S = 1.0


class JobCancelledError(DecafError):
    """Raised inside a handler at a stop point once a cancel (or shutdown) was asked."""

    http_status: ClassVar[int] = 409


@dataclasses.dataclass
class JobContext:
    """What a running job handler may use: its parameters, progress reporting and a stop flag."""

    job_id: str
    kind: str
    params: dict[str, Any]
    attempt: int
    settings: Settings
    db: Database
    stop_event: threading.Event
    _report: Callable[[dict[str, Any], bool], None]
    cancel_poll_interval_s: float = CANCEL_POLL_INTERVAL_S
    _next_db_check: float = 0.0

    def should_stop(self) -> bool:
        """True once a cancel was asked, here or by another server process sharing the DB."""
        if self.stop_event.is_set():
            return True
        now = time.monotonic()
        if now >= self._next_db_check:
            # DELETE may have reached another worker process: its flag is in the database.
            # Read at most once per interval, so such a cancel is seen up to that much later.
            self._next_db_check = now + self.cancel_poll_interval_s
            with self.db.session() as session:
                row = session.get(JobRow, self.job_id)
                if row is not None and row.cancel_requested:
                    self.stop_event.set()
        return self.stop_event.is_set()

    def stop_point(self) -> None:
        """Raise JobCancelledError if the job should stop (call between units of work)."""
        if self.should_stop():
            raise JobCancelledError(f"{self.kind} job {self.job_id} cancelled")

    def report(self, progress: dict[str, Any], *, force: bool = False) -> None:
        """Record progress (done, total, images_per_s, errors, eta_s); writes are throttled."""
        self._report(progress, force)


JobHandler = Callable[[JobContext], dict[str, Any]]
"""Runs one job and returns its result (a JSON-safe dict; its `progress`, if any, is kept)."""
