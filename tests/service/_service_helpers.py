"""Helpers shared by the service tests and the load benchmark: images and a real server."""

from __future__ import annotations

import io
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI
from PIL import Image


# --------------------------------------------------------------------------- images
def jpeg_bytes(seed: int = 0, size: tuple[int, int] = (72, 96), quality: int = 90) -> bytes:
    """A small noisy JPEG; different seeds give clearly different images (and features)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=3)
    pixels = np.clip(base + rng.normal(0, 40, (size[0], size[1], 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def png_bytes(seed: int = 0, size: tuple[int, int] = (64, 64), mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[0], size[1], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------- errors
def problem(response: Any, status: int | None = None, type_: str | None = None) -> dict[str, Any]:
    """The RFC 9457 body of an error response, its shape checked strictly; returns the body.

    Every error answer is `application/problem+json` with `type`, `title`, `status` (equal to
    the HTTP status) and `detail`; `type` is `/problems/<name>` or `about:blank`.
    """
    assert response.headers["content-type"].startswith("application/problem+json"), (
        response.status_code,
        response.headers.get("content-type"),
        response.text,
    )
    body = response.json()
    assert {"type", "title", "status", "detail"} <= set(body), body
    assert body["status"] == response.status_code, body
    assert isinstance(body["title"], str) and body["title"], body
    assert isinstance(body["detail"], str) and body["detail"], body
    assert body["type"] == "about:blank" or body["type"].startswith("/problems/"), body
    if status is not None:
        assert response.status_code == status, (status, body)
    if type_ is not None:
        assert body["type"] == type_, (type_, body)
    return body


# --------------------------------------------------------------------------- real server
@dataclass
class LiveServer:
    app: FastAPI
    base_url: str

    @property
    def batcher(self) -> Any:
        """The default backbone's micro-batcher."""
        return self.app.state.models.default.batcher


def stop_server_process(process: subprocess.Popen, timeout_s: float) -> None:
    """SIGTERM a `decaf serve` child (a graceful shutdown), SIGKILL it if it does not exit."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def run_server(app: FastAPI, timeout_s: float = 60.0) -> Iterator[LiveServer]:
    """Serve `app` with a real uvicorn server on a free loopback port, in a background thread."""
    import uvicorn

    sock = _free_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start (see the log above)")
        time.sleep(0.02)
    try:
        yield LiveServer(app=app, base_url=f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
