"""Fixtures of the service tests: settings, apps, a real uvicorn server, small images.

One random-weight AlexNet is loaded per test session and shared by every app
(`create_app(settings, featurizer=...)`): loading it is the slow part, and the Featurizer
serialises its forward passes with its own lock, so several apps may use it at once.
"""

from __future__ import annotations

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
from tests.service._service_helpers import LiveServer, jpeg_bytes, run_server


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
