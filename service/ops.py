"""Operations: liveness/readiness probes, Prometheus metrics, request limits and structured logs.

Routes: `GET /healthz` (the process answers), `GET /readyz` (the model is loaded and the batcher
runs: 200, else 503 with the reason), `GET /metrics` (Prometheus text format). None of them needs
the API key, so orchestrators and scrapers work without secrets; they reveal no user data.

Middlewares are plain ASGI (no BaseHTTPMiddleware) so streaming uploads are not buffered twice
and cancellation reaches the handler:
- `RequestMetricsMiddleware`: one log line and one counter/histogram sample per request, labelled
  with the route *template* (`/v1/jobs/{job_id}`), never the raw path (unbounded cardinality);
- `BodySizeLimitMiddleware`: 413 as soon as the body exceeds its cap, before it is parsed;
- `TimeoutMiddleware`: 504 when a request takes longer than `request_timeout_s`; the handler is
  cancelled, so its images leave the batch queue unprocessed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("service.access")

router = APIRouter(tags=["operations"])

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


# --------------------------------------------------------------------------- metrics
class ServiceMetrics:
    """All service metrics in one registry per app (tests create many apps in one process)."""

    def __init__(self, throughput_window_s: float = 10.0) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "decaf_http_requests",
            "HTTP requests by method, route template and status code",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "decaf_http_request_duration_seconds",
            "HTTP request latency by method and route template",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "decaf_batch_size",
            "Images per forward pass of the micro-batcher",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.forward_seconds = Histogram(
            "decaf_forward_duration_seconds",
            "Duration of one batched forward pass",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "decaf_batch_queue_depth",
            "Images waiting for a forward pass",
            registry=self.registry,
        )
        self.images = Counter(
            "decaf_images",
            "Uploaded images by outcome (ok: features returned, failed: per-image error)",
            ["outcome"],
            registry=self.registry,
        )
        self.images_per_second = Gauge(
            "decaf_images_per_second",
            f"Images through the model per second over the last {throughput_window_s:g} s",
            registry=self.registry,
        )
        self.in_flight_gauge = Gauge(
            "decaf_http_requests_in_flight",
            "HTTP requests being processed",
            registry=self.registry,
        )
        self.in_flight = 0  # plain int too: the batcher reads it from its thread
        self.in_flight_gauge.set_function(lambda: self.in_flight)
        self.model_loaded = Gauge(
            "decaf_model_loaded", "1 when the model is loaded and serving", registry=self.registry
        )
        self._window_s = throughput_window_s
        self._recent: deque[tuple[float, int]] = deque()
        self.images_per_second.set_function(self._throughput)

    def on_batch(self, size: int, seconds: float) -> None:
        """Hook for MicroBatcher: runs in the batcher thread after each forward pass."""
        self.batch_size.observe(size)
        self.forward_seconds.observe(seconds)
        self._recent.append((time.monotonic(), size))

    def _throughput(self) -> float:
        now = time.monotonic()
        while self._recent and self._recent[0][0] < now - self._window_s:
            self._recent.popleft()
        return sum(size for _, size in self._recent) / self._window_s

    def record_images(self, *, ok: int, failed: int) -> None:
        if ok:
            self.images.labels("ok").inc(ok)
        if failed:
            self.images.labels("failed").inc(failed)

    def watch_queue(self, depth: Any) -> None:
        """Let the queue gauge read the batcher's depth at scrape time."""
        self.queue_depth.set_function(depth)


# --------------------------------------------------------------------------- routes
@router.get("/healthz", summary="Liveness: the process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: the model is loaded and the batcher is running")
async def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    batcher = getattr(state, "batcher", None)
    problems: list[str] = []
    if getattr(state, "featurizer", None) is None:
        problems.append("model not loaded")
    if batcher is None or not batcher.running:
        problems.append("batcher not running")
    if problems:
        return JSONResponse(
            {"status": "not ready", "reasons": problems},
            status_code=503,
            headers={"Retry-After": "5"},
        )
    return JSONResponse({"status": "ready", "queue_depth": batcher.queue_depth})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


# --------------------------------------------------------------------------- middlewares
def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class RequestMetricsMiddleware:
    """Count, time and log every HTTP request."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_holder = {"status": 500}
        self.metrics.in_flight += 1

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight -= 1
            seconds = time.perf_counter() - started
            route = _route_template(scope)
            method = scope.get("method", "")
            status = status_holder["status"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(seconds)
            log.info(
                "%s %s %d %.1fms",
                method,
                scope.get("path", ""),
                status,
                seconds * 1000,
                extra={
                    "method": method,
                    "path": scope.get("path", ""),
                    "route": route,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                },
            )


def _error_body(kind: str, message: str) -> bytes:
    return json.dumps({"error": {"type": kind, "message": message}}).encode()


async def _send_error(send: Send, status: int, kind: str, message: str, headers=()) -> None:
    body = _error_body(kind, message)
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


class BodySizeLimitMiddleware:
    """413 for request bodies over `max_bytes`, checked on Content-Length and while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _send_error(send, 413, "ContentTooLarge", self._message())
            return
        received = 0
        response_started = False
        rejected = False

        async def limited_receive() -> Message:
            nonlocal received, rejected
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes and not rejected:
                    rejected = True
                    # Answer now: the form parser would turn any exception raised here into a
                    # generic 400, and whatever the app sends afterwards is dropped below.
                    if not response_started:
                        await _send_error(send, 413, "ContentTooLarge", self._message())
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if rejected:
                return
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        with contextlib.suppress(_BodyTooLarge):
            await self.app(scope, limited_receive, tracking_send)

    def _message(self) -> str:
        return (
            f"request body larger than {self.max_bytes} bytes (DECAF_MAX_UPLOAD_BYTES x "
            "DECAF_MAX_FILES_PER_REQUEST + 1 MiB)"
        )


class TimeoutMiddleware:
    """504 when a request runs longer than `timeout_s`; the handler is cancelled."""

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, receive, tracking_send), self.timeout_s)
        except TimeoutError:
            if response_started:
                raise
            await _send_error(
                send,
                504,
                "Timeout",
                f"the request took longer than {self.timeout_s:g} s (DECAF_REQUEST_TIMEOUT_S)",
            )


# --------------------------------------------------------------------------- logging
_STANDARD_RECORD_KEYS = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, plus any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_RECORD_KEYS and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def setup_logging(*, json_logs: bool = False, level: str = "INFO") -> None:
    """Configure the root logger once (uvicorn's loggers propagate into it)."""
    handler = logging.StreamHandler(sys.stderr)
    if json_logs:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
