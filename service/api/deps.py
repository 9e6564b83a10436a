"""FastAPI dependencies, and nothing else: settings, models, database, jobs, uploads, probes.

The API key is checked before any of these, by `service.middleware.ApiKeyMiddleware`, before the
body is read.

Everything lives on `app.state` (set by the lifespan in `service.app`); routes receive it through
the `Annotated[..., Depends()]` aliases below, so tests can build an app with any settings and
nothing is a module-level global. Before the lifespan has run (or after it ended) a dependency
answers 503 with Retry-After instead of failing obscurely.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from service.errors import NotReadyError
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
