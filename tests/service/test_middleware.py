"""The plain-ASGI middlewares, driven message by message: who may answer, and when.

The HTTP-level behaviour (401 before the body, 413 while streaming, 504) is tested through a real
server in test_auth, test_uploads and test_ops; here each middleware meets an app that misbehaves
in a way a real route rarely does on demand: it raises after its response started, or keeps
sending after a middleware answered for it.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.types import Message, Receive, Scope, Send

from service.metrics import ServiceMetrics
from service.middleware import (
    BodySizeLimitMiddleware,
    RequestMetricsMiddleware,
    TimeoutMiddleware,
    TrackedSend,
    UnexpectedErrorMiddleware,
)


def _scope(headers: list[tuple[bytes, bytes]] | None = None) -> Scope:
    return {"type": "http", "method": "POST", "path": "/v1/x", "headers": headers or []}


def _chunks(*bodies: bytes) -> Receive:
    pending = [
        {"type": "http.request", "body": body, "more_body": index < len(bodies) - 1}
        for index, body in enumerate(bodies)
    ]

    async def receive() -> Message:
        return pending.pop(0)

    return receive


def _run(middleware, scope: Scope, receive: Receive | None = None) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(middleware(scope, receive or _chunks(b""), send))
    return sent


def _statuses(sent: list[Message]) -> list[int]:
    return [message["status"] for message in sent if message["type"] == "http.response.start"]


async def _start(send: Send, status: int) -> None:
    await send({"type": "http.response.start", "status": status, "headers": []})


def test_tracked_send_remembers_the_status_and_drops_messages_once_muted():
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def scenario() -> TrackedSend:
        tracked = TrackedSend(send)
        assert not tracked.started
        await _start(tracked, 201)
        tracked.muted = True
        await tracked({"type": "http.response.body", "body": b"dropped"})
        return tracked

    tracked = asyncio.run(scenario())
    assert tracked.started and tracked.status == 201
    assert sent == [{"type": "http.response.start", "status": 201, "headers": []}]


def test_an_exception_before_the_response_becomes_a_500_problem():
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    sent = _run(UnexpectedErrorMiddleware(app), _scope())
    assert _statuses(sent) == [500]
    assert json.loads(sent[-1]["body"])["status"] == 500


def test_an_exception_after_the_response_started_is_re_raised_not_answered_twice():
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await _start(send, 200)
        raise RuntimeError("boom mid-body")

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    with pytest.raises(RuntimeError, match="mid-body"):
        asyncio.run(UnexpectedErrorMiddleware(app)(_scope(), _chunks(b""), send))
    assert _statuses(sent) == [200]


def test_the_app_cannot_answer_after_the_body_cap_refused_the_request():
    # Starlette's form parser turns an exception from receive() into its own 400; that answer
    # must never follow the 413 already sent.
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            while (await receive()).get("more_body"):
                pass
        except Exception:
            await _start(send, 400)
            await send({"type": "http.response.body", "body": b"parse error"})

    sent = _run(BodySizeLimitMiddleware(app, max_bytes=8), _scope(), _chunks(b"12345", b"67890"))
    assert _statuses(sent) == [413]
    assert (b"connection", b"close") in sent[0]["headers"]


def test_a_body_under_the_cap_reaches_the_app_untouched():
    received: list[bytes] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            received.append(message["body"])
            if not message.get("more_body"):
                break
        await _start(send, 200)

    sent = _run(BodySizeLimitMiddleware(app, max_bytes=10), _scope(), _chunks(b"12345", b"67890"))
    assert received == [b"12345", b"67890"] and _statuses(sent) == [200]


def test_a_timeout_before_the_response_is_a_504_and_after_it_is_re_raised():
    async def silent(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.Event().wait()  # never set

    async def started(scope: Scope, receive: Receive, send: Send) -> None:
        await _start(send, 200)
        await asyncio.Event().wait()  # never set

    assert _statuses(_run(TimeoutMiddleware(silent, timeout_s=0.01), _scope())) == [504]
    with pytest.raises(TimeoutError):
        _run(TimeoutMiddleware(started, timeout_s=0.01), _scope())


def _requests_with_status(metrics: ServiceMetrics, status: str) -> float:
    value = metrics.registry.get_sample_value(
        "decaf_http_requests_total", {"method": "POST", "route": "unmatched", "status": status}
    )
    return value or 0.0


def test_metrics_count_the_status_sent_and_a_500_when_nothing_was():
    metrics = ServiceMetrics()

    async def teapot(scope: Scope, receive: Receive, send: Send) -> None:
        await _start(send, 418)

    async def raises(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("no response at all")

    _run(RequestMetricsMiddleware(teapot, metrics), _scope())
    with pytest.raises(RuntimeError):
        _run(RequestMetricsMiddleware(raises, metrics), _scope())
    assert _requests_with_status(metrics, "418") == 1
    assert _requests_with_status(metrics, "500") == 1
    assert metrics.in_flight == 0
