"""Persistent state of the service: jobs, feature stores and probes (SQLAlchemy 2.x).

SQLite is the default (a file inside `DECAF_DATA_DIR`), opened in WAL mode so the job threads
and the request handlers (and `--workers N` processes on one machine) can write concurrently.
PostgreSQL (`DECAF_DATABASE_URL=postgresql+psycopg://...`, the `postgres` extra) is what several
replicas share; the test suite runs the state, job, dataset and probe tests on both. The models use
portable column types only. Large things never go into the database: stores live under
`data_dir/datasets/<name>/` and probes under `data_dir/probes/<id>/`; the tables only index them.

The schema is created on open and only ever grows: a column added by a later version is added to
an existing table (nullable, no default to backfill), so an older database opens as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Integer,
    String,
    Text,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.schema import CreateColumn

log = logging.getLogger(__name__)

# `interrupted`: stopped by repeated server crashes; submitting the job again resumes it.
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]
JOB_STATUSES: tuple[JobStatus, ...] = get_args(JobStatus)
ACTIVE_STATUSES: tuple[JobStatus, ...] = ("queued", "running")
FINAL_STATUSES: tuple[JobStatus, ...] = ("succeeded", "failed", "cancelled", "interrupted")
SCHEMA_LOCK_KEY = 0x_DECAF  # PostgreSQL advisory lock held while the schema is created


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime | None) -> str | None:
    """ISO-8601 in UTC; SQLite hands back naive datetimes, which we always stored as UTC."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()


class Base(DeclarativeBase):
    pass


class JobRow(Base):
    """One background job; `kind` names its handler (see `service.tasks`)."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)  # a JobStatus
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Human-readable history worth showing (e.g. "resumed after a server restart").
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The replica running the job and until when it holds it; renewed by that replica's
    # heartbeat. Another replica may take a `running` job over once its lease has expired.
    owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DatasetRow(Base):
    """A feature store under `data_dir/datasets/<name>/` and the job that produced it."""

    __tablename__ = "datasets"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    source_root: Mapped[str | None] = mapped_column(Text, nullable=True)
    job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ProbeRow(Base):
    """A saved linear probe under `data_dir/probes/<id>/` (arrays + JSON, no pickle)."""

    __tablename__ = "probes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    source: Mapped[str] = mapped_column(String(16))  # "dataset" | "upload"
    dataset: Mapped[str | None] = mapped_column(String(128), nullable=True)
    layer: Mapped[str] = mapped_column(String(32))
    classifier: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(Text)
    classes: Mapped[list[str]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    provenance: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers proceed while a job thread writes; busy_timeout makes concurrent writers
    # wait instead of failing with "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def create_db_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets its directory created, WAL and cross-thread use."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _add_missing_columns(connection: Connection) -> None:
    """Add the columns a newer version declares to tables an older version created."""
    inspector = inspect(connection)
    for table in Base.metadata.sorted_tables:
        if not inspector.has_table(table.name):
            continue
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable:
                raise RuntimeError(
                    f"cannot add NOT NULL column {table.name}.{column.name} to an existing table"
                )
            ddl = CreateColumn(column).compile(dialect=connection.dialect)
            log.info("adding column %s.%s to the database", table.name, column.name)
            connection.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {ddl}"))


class Database:
    """Engine + session factory; tables (and columns added since) are created on open."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_db_engine(url)
        with self.engine.begin() as connection:
            if self.backend == "postgresql":
                # Replicas starting together: one creates the schema, the others wait for it
                # (PostgreSQL's DDL is transactional; the lock ends with the transaction).
                connection.execute(select(func.pg_advisory_xact_lock(SCHEMA_LOCK_KEY)))
            Base.metadata.create_all(connection)
            _add_missing_columns(connection)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def backend(self) -> str:
        """The SQLAlchemy backend name: "sqlite", "postgresql", ..."""
        return self.engine.dialect.name

    def now(self, session: Session) -> datetime:
        """The current time in UTC by the database's clock where it has one worth trusting.

        Leases are compared against this time by every replica, so with a server database
        (PostgreSQL) the replicas' own clocks may drift apart without a replica taking over a
        job that is still alive. SQLite lives on one machine: its clock is everyone's.
        """
        if self.backend == "sqlite":
            return utcnow()
        moment = session.scalar(select(func.now()))
        if not isinstance(moment, datetime):  # pragma: no cover - exotic drivers
            return utcnow()
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

    @classmethod
    def from_settings(cls, settings: Any) -> Database:
        """Open the database named by `settings` and create the data directories."""
        data_dir = Path(settings.data_dir)
        for sub in ("datasets", "probes"):
            (data_dir / sub).mkdir(parents=True, exist_ok=True)
        return cls(settings.resolved_database_url)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success and rolled back on any exception."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def close(self) -> None:
        self.engine.dispose()
