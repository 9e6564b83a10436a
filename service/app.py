"""The FastAPI application: `create_app(settings)`, its lifespan, middlewares and routers.

Lifespan (startup → shutdown):
1. load each configured backbone once (in a thread; a missing weights file fails startup with
   the message naming the expected path, rather than a server that answers 503 forever);
2. start one micro-batcher per backbone and the bounded decode pool;
3. open the database and start the job manager with its handlers, which resumes jobs a crash
   interrupted;
and the reverse on shutdown (jobs first, so they stop writing before the database closes).
Errors are rendered by `service.api.errors`, the one place that turns them into HTTP answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from fastapi import FastAPI

from service.api.errors import document_problems, install_error_handlers
from service.api.routes import (
    datasets,
    extractions,
    features,
    health,
    jobs,
    model,
    page,
    probes,
    search,
)
from service.job_context import JobHandler
from service.jobs import JobManager
from service.metrics import ServiceMetrics
from service.middleware import (
    ApiKeyMiddleware,
    BodySizeLimitMiddleware,
    JsonBodyGuardMiddleware,
    RequestMetricsMiddleware,
    TimeoutMiddleware,
    UnexpectedErrorMiddleware,
)
from service.models import ModelPool, load_featurizers, start_pool
from service.probe_store import ProbeStore
from service.settings import Settings, get_settings
from service.state import Database
from service.tasks import extraction, index_build, probe_fit
from service.uploads import UploadLimits, UploadPipeline

if TYPE_CHECKING:
    from featurizer.extractor import Featurizer

log = logging.getLogger(__name__)

MiB = 1024 * 1024
ROUTERS = (health, model, features, extractions, jobs, datasets, search, probes, page)


def job_handlers(settings: Settings, models: ModelPool) -> dict[str, JobHandler]:
    """The job kinds this server runs, each with its handler."""

    def job_featurizer(
        backbone: str, layers: Sequence[str], precision: str, crop: str
    ) -> Featurizer:
        return models.job_featurizer(backbone, layers, precision, crop, settings)

    return {
        extraction.KIND: extraction.extraction_handler(job_featurizer),
        probe_fit.KIND: probe_fit.run_probe_fit,
        index_build.KIND: index_build.run_index_build,
    }


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    metrics: ServiceMetrics = app.state.metrics
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # Whatever started is stopped again, in reverse order, also when a later step fails.
    async with AsyncExitStack() as started:
        featurizers = await asyncio.to_thread(load_featurizers, settings, app.state.preloaded)
        models = start_pool(settings, featurizers, metrics)
        started.callback(models.stop)
        metrics.watch_queue(lambda: models.queue_depth)
        uploads = UploadPipeline(
            UploadLimits(
                settings.max_upload_bytes, settings.max_files_per_request, settings.max_pixels
            ),
            ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decaf-decode"),
            on_images=lambda ok, failed: metrics.record_images(ok=ok, failed=failed),
        )
        started.callback(uploads.close)
        db = Database.from_settings(settings)
        started.callback(db.close)
        job_manager = JobManager(settings, db, handlers=job_handlers(settings, models))
        job_manager.start()
        # Jobs stop first, so they stop writing before the database closes.
        started.push_async_callback(asyncio.to_thread, job_manager.shutdown)
        app.state.models, app.state.uploads, app.state.db = models, uploads, db
        app.state.jobs, app.state.probes = job_manager, ProbeStore(settings, db)
        started.callback(_forget_state, app)
        metrics.model_loaded.set(1)
        started.callback(metrics.model_loaded.set, 0)
        log.info("decaf service ready: %s", ", ".join(repr(m.featurizer) for m in models))
        yield


def _forget_state(app: FastAPI) -> None:
    app.state.models = app.state.uploads = app.state.db = None
    app.state.jobs = app.state.probes = None


def _app_version() -> str:
    try:
        return version("decaf")
    except PackageNotFoundError:  # running from a bare checkout
        return "0+unknown"


def create_app(
    settings: Settings | None = None,
    *,
    featurizer: Featurizer | None = None,
    featurizers: Mapping[str, Featurizer] | None = None,
) -> FastAPI:
    """The decaf HTTP API.

    `featurizer` lets tests and benchmarks share one loaded model (served as the default
    backbone); `featurizers` ({name: featurizer}, default first) replaces the configured list of
    backbones with models already in memory.
    """
    settings = settings or get_settings()
    app = FastAPI(
        title="decaf",
        version=_app_version(),
        description="DeCAF features (AlexNet DeCAF5/6/7 and other backbones), linear probes and "
        "batch extraction. Send `X-API-Key` (or `Authorization: Bearer`) when the server has "
        "DECAF_API_KEY set. Errors are RFC 9457 problem details (application/problem+json).",
        lifespan=lifespan,
    )
    metrics = ServiceMetrics()
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.preloaded = _preloaded(settings, featurizer, featurizers)
    _forget_state(app)

    install_error_handlers(app)
    for module in ROUTERS:
        app.include_router(module.router)
    page.mount_static(app)  # the web page's CSS and JavaScript; the page itself is at `/`
    document_problems(app, api_key=settings.api_key is not None)
    # Added innermost first. From the outside in: metrics/logging (sees every answer) → 500 for
    # the unexpected → API key (before any body byte is read) → body cap → timeout → JSON guard.
    body_cap = settings.max_upload_bytes * settings.max_files_per_request + MiB
    app.add_middleware(JsonBodyGuardMiddleware)
    app.add_middleware(TimeoutMiddleware, timeout_s=settings.request_timeout_s)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=body_cap)
    app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)
    app.add_middleware(UnexpectedErrorMiddleware)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    return app


def _preloaded(
    settings: Settings,
    featurizer: Featurizer | None,
    featurizers: Mapping[str, Featurizer] | None,
) -> dict[str, Featurizer]:
    if featurizer is not None and featurizers:
        raise ValueError("pass either featurizer or featurizers, not both")
    if featurizer is not None:
        return {settings.default_backbone: featurizer}
    return dict(featurizers or {})


def create_app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory service.app:create_app_from_env` (reads DECAF_* vars)."""
    from service.logs import setup_logging

    settings = get_settings()
    setup_logging(json_logs=settings.log_json, level=settings.log_level)
    return create_app(settings)
