"""Database: SQLite file in WAL mode by default, any URL via DECAF_DATABASE_URL, safe sessions."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import text

from service.state import Database, JobRow, ProbeRow, iso
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
