"""The FastAPI application: `create_app(settings)`, its lifespan, and the one error → HTTP map.

Lifespan (startup → shutdown):
1. load the backbone once (in a thread; a missing weights file fails startup with the message
   naming the expected path, rather than a server that answers 503 forever);
2. start the micro-batcher thread and the bounded decode pool;
3. open the database and start the job manager, which resumes jobs a crash interrupted;
and the reverse on shutdown (jobs first, so they stop writing before the database closes).

Every error leaves the server as `{"error": {"type": ..., "message": ...}}` with a status chosen
in `status_for` below; routes raise typed errors and never build error responses themselves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from featurizer.errors import (
    DecafError,
    ImageDecodeError,
    ImageTooLargeError,
    StoreError,
    UnknownLayerError,
    WeightsError,
)
from featurizer.extractor import Featurizer
from service import features, ops
from service.batcher import BatcherStoppedError, MicroBatcher, QueueFullError
from service.deps import ClientDisconnectedError, FileTooLargeError
from service.settings import Settings, get_settings

log = logging.getLogger(__name__)

MiB = 1024 * 1024


# --------------------------------------------------------------------------- model
def build_featurizer(settings: Settings) -> Featurizer:
    """The served featurizer, exactly as configured (weights="random" warns loudly itself)."""
    return Featurizer(
        layers=settings.layers,
        weights=settings.weights,
        backbone=settings.backbone,
        precision=settings.precision,
        device=settings.device,
        crop=settings.crop,
        max_pixels=settings.max_pixels,
    )


def make_job_featurizer(
    settings: Settings, layers: Sequence[str], precision: str, crop: str
) -> Featurizer:
    """Featurizer factory for extraction jobs: the server's weights, the job's options.

    A separate instance, because the served one is owned by the batcher thread.
    """
    return Featurizer(
        layers=layers,
        weights=settings.weights,
        backbone=settings.backbone,
        precision=precision,  # type: ignore[arg-type]
        device=settings.device,
        crop=crop,  # type: ignore[arg-type]
        max_pixels=settings.max_pixels,
    )


# --------------------------------------------------------------------------- errors
def status_for(exc: BaseException) -> int:
    """The HTTP status of a typed error (an explicit `status_code` attribute wins)."""
    explicit = getattr(exc, "status_code", None)
    if isinstance(explicit, int):
        return explicit
    from classifiers.errors import ProbeError, ProbeMismatchError

    table: list[tuple[type[BaseException], int]] = [
        (QueueFullError, 503),
        (BatcherStoppedError, 503),
        (WeightsError, 503),
        (FileTooLargeError, 413),
        (ImageTooLargeError, 413),
        (ImageDecodeError, 422),
        (UnknownLayerError, 422),
        (ProbeMismatchError, 409),
        (ProbeError, 422),
        (StoreError, 409),
        (LookupError, 404),
        (ValueError, 422),
    ]
    for kind, status in table:
        if isinstance(exc, kind):
            return status
    return 400


def error_response(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {"error": {"type": kind, "message": message, **extra}}
    return JSONResponse(jsonable_encoder(body), status_code=status, headers=headers)


async def _decaf_error(request: Request, exc: Exception) -> JSONResponse:
    status = status_for(exc)
    headers = None
    if isinstance(exc, QueueFullError):
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
    elif status == 503:
        headers = {"Retry-After": "5"}
    if isinstance(exc, ClientDisconnectedError):
        log.info("client disconnected from %s before the answer", request.url.path)
    elif status >= 500:
        # A full queue is routine under overload (and counted in /metrics): keep it out of WARN.
        level = logging.INFO if isinstance(exc, QueueFullError) else logging.WARNING
        log.log(level, "%s on %s: %s", type(exc).__name__, request.url.path, exc)
    return error_response(status, type(exc).__name__, str(exc), headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    from http import HTTPStatus

    try:
        kind = HTTPStatus(exc.status_code).phrase.replace(" ", "").replace("-", "")
    except ValueError:
        kind = "HTTPError"
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return error_response(exc.status_code, kind, message, dict(exc.headers or {}))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        f"{'.'.join(str(part) for part in err.get('loc', ()))}: {err.get('msg', 'invalid')}"
        for err in exc.errors()
    ]
    return error_response(
        422,
        "ValidationError",
        "invalid request: " + "; ".join(problems),
        details=[
            {"loc": e.get("loc"), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()
        ],
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "InternalServerError", "internal server error (see server logs)")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DecafError, _decaf_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)


# --------------------------------------------------------------------------- lifespan
@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    metrics: ops.ServiceMetrics = app.state.metrics
    settings.data_dir.mkdir(parents=True, exist_ok=True)

    featurizer = app.state.preloaded_featurizer
    if featurizer is None:
        featurizer = await asyncio.to_thread(build_featurizer, settings)
    batcher = MicroBatcher(
        featurizer,
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        max_decode_wait_ms=settings.max_decode_wait_ms,
        max_queue=settings.max_queue,
        on_batch=metrics.on_batch,
        activity=lambda: metrics.in_flight,
    ).start()
    metrics.watch_queue(lambda: batcher.queue_depth)
    decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decaf-decode")
    app.state.featurizer = featurizer
    app.state.batcher = batcher
    app.state.decode_pool = decode_pool

    db, jobs = _start_state(app, settings)
    metrics.model_loaded.set(1)
    log.info("decaf service ready: %s", featurizer)
    try:
        yield
    finally:
        metrics.model_loaded.set(0)
        if jobs is not None:
            await asyncio.to_thread(jobs.shutdown)
        batcher.stop()
        decode_pool.shutdown(wait=False, cancel_futures=True)
        if db is not None:
            db.close()
        app.state.featurizer = None
        app.state.batcher = None


def _start_state(app: FastAPI, settings: Settings) -> tuple[Any, Any]:
    from service.jobs import JobManager
    from service.state import Database

    db = Database.from_settings(settings)
    jobs = JobManager(settings, db, partial(make_job_featurizer, settings))
    jobs.start()
    app.state.db = db
    app.state.jobs = jobs
    return db, jobs


# --------------------------------------------------------------------------- factory
def _include_routers(app: FastAPI) -> None:
    app.include_router(ops.router)
    app.include_router(features.router)
    try:  # written in parallel by service-state
        from service import datasets, probes
    except ImportError as exc:  # pragma: no cover - only until both modules exist
        log.warning("dataset/probe routes not available: %s", exc)
        return
    app.include_router(datasets.router)
    app.include_router(probes.router)


def create_app(
    settings: Settings | None = None, *, featurizer: Featurizer | None = None
) -> FastAPI:
    """The decaf HTTP API. `featurizer` lets tests and benchmarks share one loaded model."""
    settings = settings or get_settings()
    from importlib.metadata import PackageNotFoundError, version

    try:
        app_version = version("decaf")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        app_version = "0+unknown"
    app = FastAPI(
        title="decaf",
        version=app_version,
        description="DeCAF features (AlexNet DeCAF5/6/7), linear probes and batch extraction. "
        "Send `X-API-Key` (or `Authorization: Bearer`) when the server has DECAF_API_KEY set.",
        lifespan=lifespan,
    )
    metrics = ops.ServiceMetrics()
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.preloaded_featurizer = featurizer
    app.state.featurizer = None
    app.state.batcher = None
    app.state.db = None
    app.state.jobs = None

    install_error_handlers(app)
    _include_routers(app)
    # Added innermost first: body cap → timeout → metrics/logging (outermost, sees 413/504 too).
    body_cap = settings.max_upload_bytes * settings.max_files_per_request + MiB
    app.add_middleware(ops.BodySizeLimitMiddleware, max_bytes=body_cap)
    app.add_middleware(ops.TimeoutMiddleware, timeout_s=settings.request_timeout_s)
    app.add_middleware(ops.RequestMetricsMiddleware, metrics=metrics)
    return app


def create_app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory service.app:create_app_from_env` (reads DECAF_* vars)."""
    settings = get_settings()
    ops.setup_logging(json_logs=settings.log_json, level=settings.log_level)
    return create_app(settings)
