"""FastAPI dependencies, and nothing else: settings, models, database, jobs, uploads, probes, key.

`require_api_key` runs through `service.api.routing.KeyCheckedRoute`, before the body is read.

Everything lives on `app.state` (set by the lifespan in `service.app`); routes receive it through
the `Annotated[..., Depends()]` aliases below, so tests can build an app with any settings and
nothing is a module-level global. Before the lifespan has run (or after it ended) a dependency
answers 503 with Retry-After instead of failing obscurely.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, Request

from service.errors import ApiKeyError, NotReadyError
from service.jobs import JobManager
from service.metrics import ServiceMetrics
from service.models import ModelPool
from service.probe_store import ProbeStore
from service.settings import Settings
from service.state import Database
from service.uploads import UploadPipeline


def _state(request: Request, name: str, what: str) -> Any:
    value = getattr(request.app.state, name, None)
    if value is None:
        raise NotReadyError(
            f"the {what} is not ready (server starting or stopping); retry when /readyz answers 200"
        )
    return value


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


def get_models(request: Request) -> ModelPool:
    return _state(request, "models", "model")


def get_db(request: Request) -> Database:
    return _state(request, "db", "database")


def get_jobs(request: Request) -> JobManager:
    return _state(request, "jobs", "job manager")


def get_uploads(request: Request) -> UploadPipeline:
    return _state(request, "uploads", "upload pipeline")


def get_probes(request: Request) -> ProbeStore:
    return _state(request, "probes", "probe store")


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
ModelsDep = Annotated[ModelPool, Depends(get_models)]
DbDep = Annotated[Database, Depends(get_db)]
JobsDep = Annotated[JobManager, Depends(get_jobs)]
UploadsDep = Annotated[UploadPipeline, Depends(get_uploads)]
ProbesDep = Annotated[ProbeStore, Depends(get_probes)]


def _presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def require_api_key(request: Request) -> None:
    """Accept `X-API-Key: KEY` or `Authorization: Bearer KEY` when DECAF_API_KEY is set."""
    expected = request.app.state.settings.api_key
    if expected is None:
        return
    presented = _presented_key(request)
    # compare_digest: the time taken must not reveal how much of the key matched.
    if presented is None or not hmac.compare_digest(
        presented.encode("utf-8"), expected.get_secret_value().encode("utf-8")
    ):
        raise ApiKeyError(
            "missing or invalid API key: send 'X-API-Key: <key>' or 'Authorization: Bearer <key>'"
        )
