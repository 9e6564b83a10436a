"""Database: SQLite file in WAL mode by default, PostgreSQL via DECAF_DATABASE_URL, safe sessions,
and a schema that grows in place."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, select, text

from service.state import Database, JobRow, ProbeRow, create_db_engine, iso, utcnow
from tests.service._state_helpers import make_settings


def test_default_database_is_sqlite_in_wal_mode(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    db = Database.from_settings(settings)
    try:
        assert (tmp_path / "data" / "decaf.db").is_file()
        assert (tmp_path / "data" / "datasets").is_dir() and (tmp_path / "data" / "probes").is_dir()
        with db.session() as session:
            assert session.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    finally:
        db.close()


def test_database_url_setting_is_honoured(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/elsewhere/state.db"
    db = Database.from_settings(make_settings(tmp_path, database_url=url))
    try:
        assert (tmp_path / "elsewhere" / "state.db").is_file()
        assert not (tmp_path / "data" / "decaf.db").exists()
    finally:
        db.close()


def test_rows_survive_reopening_and_times_are_utc(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    db = Database.from_settings(settings)
    with db.session() as session:
        session.add(JobRow(id="j1", kind="extraction", status="queued", params={"a": [1, 2]}))
        session.add(
            ProbeRow(
                id="p1",
                name="n",
                source="upload",
                layer="decaf6",
                classifier="svm",
                path="/x",
                classes=["a", "b"],
                metrics={"C": 1.0},
                provenance={},
            )
        )
    db.close()
    again = Database.from_settings(settings)
    try:
        with again.session() as session:
            job = session.get(JobRow, "j1")
            assert job.params == {"a": [1, 2]} and job.progress == {}
            assert iso(job.created_at).endswith("+00:00")
            assert session.get(ProbeRow, "p1").classes == ["a", "b"]
    finally:
        again.close()


def test_session_rolls_back_on_error(tmp_path: Path) -> None:
    db = Database.from_settings(make_settings(tmp_path))
    try:
        with pytest.raises(RuntimeError), db.session() as session:
            session.add(JobRow(id="lost", kind="extraction", status="queued", params={}))
            session.flush()
            raise RuntimeError("boom")
        with db.session() as session:
            assert session.get(JobRow, "lost") is None
    finally:
        db.close()


def test_concurrent_writers_from_threads(tmp_path: Path) -> None:
    # Job threads and request handlers write at once: WAL + busy timeout, no "locked" errors.
    db = Database.from_settings(make_settings(tmp_path))
    errors: list[BaseException] = []

    def writer(prefix: str) -> None:
        try:
            for i in range(25):
                with db.session() as session:
                    session.add(
                        JobRow(id=f"{prefix}{i}", kind="extraction", status="queued", params={})
                    )
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"t{n}-",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        with db.session() as session:
            assert session.query(JobRow).count() == 100
    finally:
        db.close()


# --------------------------------------------------------------------------- both backends
@pytest.mark.usefixtures("state_database")
def test_an_older_database_gains_the_new_columns(tmp_path: Path) -> None:
    # A database made before jobs had leases: opening it adds the columns, keeping the rows.
    url = make_settings(tmp_path).resolved_database_url
    old = create_db_engine(url)  # makes the SQLite file's folder
    with old.begin() as connection:
        connection.execute(
            text(
                "CREATE TABLE jobs (id VARCHAR(64) PRIMARY KEY, kind VARCHAR(32), "
                "status VARCHAR(16), params JSON, progress JSON, result JSON, error TEXT, "
                "note TEXT, cancel_requested BOOLEAN, attempts INTEGER, "
                "created_at TIMESTAMP, started_at TIMESTAMP, finished_at TIMESTAMP, "
                "updated_at TIMESTAMP)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO jobs (id, kind, status, params, progress, cancel_requested, "
                "attempts) VALUES ('old', 'extraction', 'queued', '{}', '{}', false, 0)"
            )
        )
    old.dispose()
    db = Database(url)
    try:
        columns = {column["name"] for column in inspect(db.engine).get_columns("jobs")}
        assert {"owner", "lease_expires_at"} <= columns
        with db.session() as session:
            job = session.get(JobRow, "old")
            assert job.status == "queued" and job.owner is None and job.lease_expires_at is None
    finally:
        db.close()


@pytest.mark.usefixtures("state_database")
def test_database_clock_and_lease_comparisons(tmp_path: Path) -> None:
    # Leases are compared against the database's clock: the stored time reads back in UTC and
    # orders correctly against it on either backend.
    db = Database(make_settings(tmp_path).resolved_database_url)
    try:
        with db.session() as session:
            now = db.now(session)
            assert now.tzinfo is not None and abs(now - utcnow()) < timedelta(minutes=5)
            session.add(
                JobRow(
                    id="leased",
                    kind="extraction",
                    status="running",
                    params={},
                    lease_expires_at=now + timedelta(seconds=30),
                )
            )
        with db.session() as session:
            later = db.now(session) + timedelta(minutes=1)
            held = select(JobRow.id).where(JobRow.lease_expires_at > utcnow())
            expired = select(JobRow.id).where(JobRow.lease_expires_at < later)
            assert session.scalars(held).all() == ["leased"]
            assert session.scalars(expired).all() == ["leased"]
            assert iso(session.get(JobRow, "leased").lease_expires_at).endswith("+00:00")
    finally:
        db.close()


def test_postgres_rows_survive_reopening_and_concurrent_writers(
    tmp_path: Path, postgres_server: Any
) -> None:
    # `DECAF_DATABASE_URL` for PostgreSQL, tested: the same session guarantees as SQLite.
    url = postgres_server.database()
    settings = make_settings(tmp_path, database_url=url)
    db = Database.from_settings(settings)
    assert db.backend == "postgresql" and not (tmp_path / "data" / "decaf.db").exists()
    errors: list[BaseException] = []

    def writer(prefix: str) -> None:
        try:
            for i in range(10):
                with db.session() as session:
                    session.add(JobRow(id=f"{prefix}{i}", kind="k", status="queued", params={}))
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"t{n}-",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    db.close()
    again = Database.from_settings(settings)  # tables exist: opened as they are
    try:
        assert errors == []
        with again.session() as session:
            assert session.query(JobRow).count() == 40
    finally:
        again.close()
