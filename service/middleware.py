"""Plain-ASGI middlewares: request metrics and access log, the request body cap, the timeout.

Plain ASGI (no BaseHTTPMiddleware) so streaming uploads are not buffered twice and cancellation
reaches the handler:
- `RequestMetricsMiddleware`: one log line and one counter/histogram sample per request, labelled
  with the route *template* (`/v1/jobs/{job_id}`), never the raw path (unbounded cardinality);
- `BodySizeLimitMiddleware`: 413 as soon as the body exceeds its cap, before it is parsed;
- `TimeoutMiddleware`: 504 when a request takes longer than `request_timeout_s`; the handler is
  cancelled, so its images leave the batch queue unprocessed.
The two refusals are typed errors rendered by `service.problems`, like every other error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import ClassVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from featurizer.errors import DecafError
from service.metrics import ServiceMetrics
from service.problems import PROBLEM_MEDIA_TYPE, problem_from_error

log = logging.getLogger("service.access")


class RequestTooLargeError(DecafError):
    """The whole request body is over the server's cap."""

    http_status: ClassVar[int] = 413


class RequestTimeoutError(DecafError):
    """The request took longer than DECAF_REQUEST_TIMEOUT_S."""

    http_status: ClassVar[int] = 504


async def send_error(send: Send, error: DecafError) -> None:
    """Answer with `error`'s problem document straight on the ASGI channel."""
    problem = problem_from_error(error)
    body = problem.encode()
    headers = [
        (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        *((name.lower().encode(), value.encode()) for name, value in problem.headers.items()),
    ]
    await send({"type": "http.response.start", "status": problem.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


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
            self._record(scope, status_holder["status"], time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = _route_template(scope)
        method = scope.get("method", "")
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
            await send_error(send, self._error())
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
                        await send_error(send, self._error())
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

    def _error(self) -> RequestTooLargeError:
        return RequestTooLargeError(
            f"request body larger than {self.max_bytes} bytes (DECAF_MAX_UPLOAD_BYTES x "
            "DECAF_MAX_FILES_PER_REQUEST + 1 MiB): send fewer or smaller files per request"
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
            await send_error(
                send,
                RequestTimeoutError(
                    f"the request took longer than {self.timeout_s:g} s "
                    "(DECAF_REQUEST_TIMEOUT_S): send fewer images per request or retry later"
                ),
            )
