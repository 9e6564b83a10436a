"""Plain-ASGI middlewares: everything decided before a route sees the request.

Plain ASGI (no BaseHTTPMiddleware) so streaming uploads are not buffered twice and cancellation
reaches the handler. From the outside in (see `service.app`):
- `RequestMetricsMiddleware`: one log line and one counter/histogram sample per request, labelled
  with the route *template* (`/v1/jobs/{job_id}`), never the raw path (unbounded cardinality);
- `UnexpectedErrorMiddleware`: an exception no handler rendered becomes a 500 problem *response*
  (logged with its traceback), so the server keeps the keep-alive connection open;
- `ApiKeyMiddleware`: 401 for every `/v1` request without the key, before a byte of the body is
  read (FastAPI reads and spools the body before it solves a route's dependencies);
- `BodySizeLimitMiddleware`: 413 as soon as the body exceeds its cap: on Content-Length before
  reading, else while streaming;
- `TimeoutMiddleware`: 504 when a request takes longer than `request_timeout_s`; the handler is
  cancelled, so its images leave the batch queue unprocessed;
- `JsonBodyGuardMiddleware`: a JSON body is read (at most `MAX_JSON_BODY_BYTES`), its nesting
  depth bounded and its syntax checked before any route parses it: 413 / 400, never a
  RecursionError.
A refusal that leaves an unread body behind says `Connection: close`: the server does not read
(and discard) the rest of a large body just to keep the connection. Every refusal is a typed
error rendered by `service.problems`, like every other error.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import time
from itertools import accumulate
from typing import ClassVar

from pydantic import SecretStr
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from featurizer.errors import DecafError
from service.errors import ApiKeyError, MalformedBodyError
from service.metrics import ServiceMetrics
from service.problems import PROBLEM_MEDIA_TYPE, Problem, http_problem, problem_from_error

log = logging.getLogger("service.access")
error_log = logging.getLogger(__name__)

MiB = 1024 * 1024
# The JSON bodies of this API are a few hundred bytes; 1 MiB leaves room and bounds the memory a
# request may make the server parse into Python objects.
MAX_JSON_BODY_BYTES = 1 * MiB
# Deep enough for any request of this API (ProbeFromDataset nests 2 levels); CPython's json
# raises RecursionError near 1,000 levels, which would otherwise escape as a 500.
MAX_JSON_DEPTH = 32
API_PREFIX = "/v1"


class RequestTooLargeError(DecafError):
    """The whole request body is over the server's cap."""

    http_status: ClassVar[int] = 413


class RequestTimeoutError(DecafError):
    """The request took longer than DECAF_REQUEST_TIMEOUT_S."""

    http_status: ClassVar[int] = 504


async def send_problem(send: Send, problem: Problem, *, close: bool = False) -> None:
    """Answer with `problem` straight on the ASGI channel; `close`: end the connection after it
    (a body is left unread)."""
    body = problem.encode()
    headers = [
        (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        *((name.lower().encode(), value.encode()) for name, value in problem.headers.items()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": problem.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, error: DecafError, *, close: bool = False) -> None:
    """Answer with `error`'s problem document straight on the ASGI channel."""
    await send_problem(send, problem_from_error(error), close=close)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value
    return None


def _declared_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    return int(value) if value is not None and value.isdigit() else None


def has_body(scope: Scope) -> bool:
    """Whether the request announces a body (a length above 0, or chunked transfer)."""
    length = _declared_length(scope)
    return (length or 0) > 0 or _header(scope, b"transfer-encoding") is not None


def _is_api(scope: Scope) -> bool:
    path = scope.get("path", "")
    return path == API_PREFIX or path.startswith(API_PREFIX + "/")


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class TrackedSend:
    """`send`, remembering the response's status once it has started.

    A middleware that would answer with an error must check `started` first: once the start
    message has gone out nothing truthful can replace the response. `muted` drops whatever the
    app sends after a middleware has answered for it.
    """

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status: int | None = None
        self.muted = False

    @property
    def started(self) -> bool:
        return self.status is not None

    async def __call__(self, message: Message) -> None:
        if self.muted:
            return
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self._send(message)


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
        tracked = TrackedSend(send)
        self.metrics.in_flight += 1
        try:
            await self.app(scope, receive, tracked)
        finally:
            self.metrics.in_flight -= 1
            # No response at all (the app raised): the client sees the connection drop, a 500.
            status = tracked.status if tracked.status is not None else 500
            self._record(scope, status, time.perf_counter() - started)

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


class UnexpectedErrorMiddleware:
    """An exception that escaped every handler → a 500 problem, logged with its traceback.

    Starlette's own last resort answers and then re-raises, and uvicorn closes the connection
    when an application raises: every client on a keep-alive connection (a pool) would lose it.
    Here the exception ends as an ordinary response. Once the response has started nothing
    truthful can be sent any more, so the exception is re-raised and the connection is dropped.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tracked = TrackedSend(send)
        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            error_log.error(
                "unhandled error on %s %s", scope.get("method"), scope.get("path"), exc_info=exc
            )
            if tracked.started:
                raise
            problem = http_problem(500, "internal server error; the server log has the details")
            await send_problem(send, problem, close=False)


def presented_key(scope: Scope) -> str | None:
    """The key of `X-API-Key: KEY` or `Authorization: Bearer KEY`, if any."""
    key = _header(scope, b"x-api-key")
    if key:
        return key.decode("latin-1")
    scheme, _, token = (_header(scope, b"authorization") or b"").decode("latin-1").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def key_matches(presented: str | None, expected: SecretStr) -> bool:
    # compare_digest: the time taken must not reveal how much of the key matched.
    return presented is not None and hmac.compare_digest(
        presented.encode("utf-8"), expected.get_secret_value().encode("utf-8")
    )


class ApiKeyMiddleware:
    """401 for any `/v1` request without the right key, before its body is read.

    By path prefix, so every `/v1` route is covered, also routes added later; the operations
    routes (/healthz, /readyz, /metrics, /docs, /openapi.json) stay open.
    """

    def __init__(self, app: ASGIApp, api_key: SecretStr | None) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or self.api_key is None
            or not _is_api(scope)
            or key_matches(presented_key(scope), self.api_key)
        ):
            await self.app(scope, receive, send)
            return
        error = ApiKeyError(
            "missing or invalid API key: send 'X-API-Key: <key>' or 'Authorization: Bearer <key>'"
        )
        await send_error(send, error, close=has_body(scope))


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
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            await send_error(send, self._error(), close=True)
            return
        received = 0
        tracked = TrackedSend(send)

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes and not tracked.muted:
                    # Answer now: the form parser would turn any exception raised here into a
                    # generic 400; whatever the app sends afterwards is muted.
                    if not tracked.started:
                        await send_error(send, self._error(), close=True)
                    tracked.muted = True
                    raise _BodyTooLarge
            return message

        with contextlib.suppress(_BodyTooLarge):
            await self.app(scope, limited_receive, tracked)

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
        tracked = TrackedSend(send)
        try:
            await asyncio.wait_for(self.app(scope, receive, tracked), self.timeout_s)
        except TimeoutError:
            if tracked.started:
                raise
            await send_error(
                send,
                RequestTimeoutError(
                    f"the request took longer than {self.timeout_s:g} s "
                    "(DECAF_REQUEST_TIMEOUT_S): send fewer images per request or retry later"
                ),
            )


class _Refused(Exception):
    def __init__(self, error: DecafError, *, body_left: bool) -> None:
        self.error = error
        self.body_left = body_left


def json_depth(text: str) -> int:
    """The nesting depth of a JSON document, without parsing it (and without recursion)."""
    outside_strings = re.sub(r'"(?:[^"\\]|\\.)*"', "", text)
    steps = (1 if bracket in "[{" else -1 for bracket in re.findall(r"[\[\]{}]", outside_strings))
    return max(accumulate(steps, initial=0))


def _is_json(content_type: bytes | None) -> bool:
    # FastAPI reads a body without a content type as JSON, so it is guarded as JSON too.
    if content_type is None:
        return True
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


class JsonBodyGuardMiddleware:
    """Read a JSON request body up front: at most `max_bytes` (413), at most `max_depth` levels
    deep (400) and well-formed (400); then hand it on to the app unchanged.

    One guard for every route, so no route's JSON parser can meet a body that is too deep (a
    RecursionError, then a 500) or too big to hold in memory, and a malformed body is the same
    400 problem everywhere.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int = MAX_JSON_BODY_BYTES,
        max_depth: int = MAX_JSON_DEPTH,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not has_body(scope)
            or not _is_json(_header(scope, b"content-type"))
        ):
            await self.app(scope, receive, send)
            return
        try:
            body, disconnected = await self._read(scope, receive)
            if disconnected:
                return  # nobody to answer
            self._check(body)
        except _Refused as refused:
            await send_error(send, refused.error, close=refused.body_left)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, scope: Scope, receive: Receive) -> tuple[bytes, bool]:
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            raise _Refused(self._too_large(), body_left=True)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"", True
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise _Refused(self._too_large(), body_left=message.get("more_body", False))
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), False

    def _check(self, body: bytes) -> None:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Refused(
                MalformedBodyError(
                    f"invalid JSON body: not UTF-8 ({exc.reason} at byte {exc.start})"
                ),
                body_left=False,
            ) from exc
        depth = json_depth(text)
        if depth > self.max_depth:
            raise _Refused(
                MalformedBodyError(
                    f"JSON body nested {depth} levels deep; at most {self.max_depth} are accepted"
                ),
                body_left=False,
            )
        try:
            json.loads(text)
        except ValueError as exc:
            raise _Refused(
                MalformedBodyError(f"invalid JSON body: {exc}"), body_left=False
            ) from exc

    def _too_large(self) -> RequestTooLargeError:
        return RequestTooLargeError(
            f"JSON body larger than {self.max_bytes} bytes: the requests of this API are small; "
            "send images as multipart/form-data"
        )


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the app the body already read, then whatever comes next
    (a disconnect)."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay
