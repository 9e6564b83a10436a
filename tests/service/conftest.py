"""Fixtures of the service tests: settings, apps, a real uvicorn server, small images, databases.

One random-weight AlexNet is loaded per test session and shared by every app
(`create_app(settings, featurizer=...)`): loading it is the slow part, and the Featurizer
serialises its forward passes with its own lock, so several apps may use it at once.

State backends: a module marked `pytest.mark.usefixtures("state_database")` runs every test twice,
on SQLite and on a real PostgreSQL (one server per session, a fresh database per test; module
fixtures get one of their own). The backend reaches `Settings` through `DECAF_DATABASE_URL`,
exactly as a deployment configures it. Without PostgreSQL's binaries the PostgreSQL runs are
skipped, unless `DECAF_TEST_REQUIRE_POSTGRES=1` (set by `make test`) makes that an error.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from featurizer.backbones import get_backbone
from featurizer.extractor import Featurizer
from service.app import create_app
from service.settings import Settings
from tests.service._postgres import PostgresServer, PostgresUnavailableError
from tests.service._service_helpers import LiveServer, jpeg_bytes, run_server

STATE_BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def image_bytes() -> list[bytes]:
    """Eight small, distinct JPEGs."""
    return [jpeg_bytes(seed) for seed in range(8)]


# --------------------------------------------------------------------------- model / settings
@pytest.fixture(scope="session")
def shared_featurizer() -> Featurizer:
    return Featurizer(layers=get_backbone("alexnet").tap_names, weights="random")


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(tmp_path: Path) -> SettingsFactory:
    """Settings(weights="random", data under tmp_path) with keyword overrides."""

    def factory(**overrides: Any) -> Settings:
        roots = tmp_path / "roots"
        roots.mkdir(exist_ok=True)
        values: dict[str, Any] = {
            "weights": "random",
            "data_dir": tmp_path / "data",
            "data_roots": [roots],
            "max_wait_ms": 2,
            "decode_threads": 2,
        }
        values.update(overrides)
        return Settings(**values)

    return factory


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings()


AppFactory = Callable[..., FastAPI]


@pytest.fixture
def make_app(make_settings: SettingsFactory, shared_featurizer: Featurizer) -> AppFactory:
    """create_app with the shared model; keyword arguments override settings."""

    def factory(**overrides: Any) -> FastAPI:
        return create_app(make_settings(**overrides), featurizer=shared_featurizer)

    return factory


@pytest.fixture
def app(make_app: AppFactory) -> FastAPI:
    return make_app()


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    """In-process client with the lifespan run (model, batcher, database, jobs)."""
    with TestClient(app) as test_client:
        yield test_client


# --------------------------------------------------------------------------- real server
@pytest.fixture
def serve(make_app: AppFactory) -> Iterator[Callable[..., LiveServer]]:
    """`serve(**settings_overrides)` → a running LiveServer, stopped after the test."""
    stack: list[Any] = []

    def start(**overrides: Any) -> LiveServer:
        manager = run_server(make_app(**overrides))
        live = manager.__enter__()
        stack.append(manager)
        return live

    yield start
    while stack:
        stack.pop().__exit__(None, None, None)


@pytest.fixture
def live_server(serve: Callable[..., LiveServer]) -> LiveServer:
    """A real server with default test settings."""
    return serve()


# --------------------------------------------------------------------------- state backends
@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (see tests/service/_postgres.py)."""
    try:
        server = PostgresServer().start()
    except PostgresUnavailableError as exc:
        if os.environ.get("DECAF_TEST_REQUIRE_POSTGRES") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()


def _use_database(mp: pytest.MonkeyPatch, backend: str, request: pytest.FixtureRequest) -> None:
    if backend == "sqlite":
        mp.delenv("DECAF_DATABASE_URL", raising=False)  # the default: SQLite in the data dir
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        mp.setenv("DECAF_DATABASE_URL", server.database())


@pytest.fixture(scope="module", params=STATE_BACKENDS)
def state_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """The module's backend, with a database for its module-scoped fixtures."""
    with pytest.MonkeyPatch.context() as mp:
        _use_database(mp, request.param, request)
        yield request.param


@pytest.fixture
def state_database(state_backend: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database of the module's backend for this test; its backend name."""
    if state_backend != "sqlite" and request.node.get_closest_marker("ray"):
        # The Ray engine differs in how parts are computed, not in what reaches the database:
        # its ~1 min run once (SQLite) is enough; the local engine's jobs cover PostgreSQL.
        pytest.skip("Ray engine job: run on SQLite only")
    with pytest.MonkeyPatch.context() as mp:
        _use_database(mp, state_backend, request)
        yield state_backend


@pytest.fixture(autouse=True)
def _sqlite_unless_parametrised(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tests that do not ask for `state_database` get the default SQLite, whatever the
    environment or a module-scoped `state_backend` of a neighbouring test set."""
    if "state_database" in request.fixturenames:
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("DECAF_DATABASE_URL", raising=False)
        yield
