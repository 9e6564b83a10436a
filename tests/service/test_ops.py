"""Operations: /healthz, /readyz, /metrics, request timeouts, structured logs, `decaf serve`."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.commands import apply_overrides
from service.logs import JsonFormatter, StderrHandler
from tests.service._service_helpers import _free_socket, jpeg_bytes, problem


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_follows_the_model_and_the_batcher(app):
    idle = TestClient(app)  # lifespan not run: nothing loaded
    response = idle.get("/readyz")
    assert response.status_code == 503
    assert "model not loaded" in response.json()["reasons"]
    assert idle.get("/healthz").status_code == 200  # alive while not ready
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200
        app.state.models.default.batcher.stop()  # e.g. shutting down
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["reasons"] == ["batcher of alexnet not running"]


def test_metrics_count_requests_by_route_template_and_batches(client, image_bytes):
    files = [("images", ("a.jpg", image_bytes[0], "image/jpeg"))]
    assert client.post("/v1/features", files=files).status_code == 200
    assert (
        client.post("/v1/features", files=[("images", ("b.txt", b"x", "text/plain"))]).status_code
        == 415
    )
    client.get("/v1/nope")
    text = client.get("/metrics").text
    assert 'decaf_http_requests_total{method="POST",route="/v1/features",status="200"} 1.0' in text
    assert 'decaf_http_requests_total{method="POST",route="/v1/features",status="415"} 1.0' in text
    assert 'route="unmatched",status="404"' in text  # raw paths never become labels
    assert "decaf_http_request_duration_seconds_bucket" in text
    assert "decaf_batch_size_count 1.0" in text
    assert "decaf_batch_queue_depth 0.0" in text
    assert 'decaf_images_total{outcome="ok"} 1.0' in text
    assert 'decaf_images_total{outcome="failed"} 1.0' in text
    assert "decaf_model_loaded 1.0" in text
    assert "decaf_images_per_second" in text


def test_each_app_has_its_own_metrics_registry(make_app):
    first, second = make_app(), make_app()
    with TestClient(first) as a, TestClient(second) as b:
        a.get("/healthz")
        a.get("/healthz")
        b.get("/healthz")
        assert 'route="/healthz",status="200"} 2.0' in a.get("/metrics").text
        assert 'route="/healthz",status="200"} 1.0' in b.get("/metrics").text


def test_request_timeout_is_504_and_abandoned_images_skip_the_model(serve, shared_featurizer):
    server = serve(request_timeout_s=0.5, max_batch_size=1, max_wait_ms=0)

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:

            def send(seed: int) -> asyncio.Future[httpx.Response]:
                files = [("images", (f"{seed}.jpg", jpeg_bytes(seed), "image/jpeg"))]
                return asyncio.ensure_future(client.post("/v1/features", files=files))

            shared_featurizer._lock.acquire()  # the model is "stuck" on request 1
            try:
                first = send(1)
                deadline = time.monotonic() + 20
                while server.batcher.in_flight != 1:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.01)
                second = send(2)  # waits in the queue, then times out
                responses = await asyncio.gather(first, second)
            finally:
                shared_featurizer._lock.release()
            return responses

    responses = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [504, 504]
    body = problem(responses[1], 504, "/problems/request-timeout")
    assert "DECAF_REQUEST_TIMEOUT_S" in body["detail"]
    deadline = time.monotonic() + 10
    while server.batcher.dropped_cancelled < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.batcher.dropped_cancelled == 1 and server.batcher.images_processed == 1
    assert httpx.get(f"{server.base_url}/healthz").status_code == 200


def test_access_log_is_structured(client, caplog):
    with caplog.at_level(logging.INFO, logger="service.access"):
        client.get("/v1/model")
    [record] = [r for r in caplog.records if r.name == "service.access"]
    assert record.route == "/v1/model" and record.status == 200 and record.method == "GET"
    line = json.loads(JsonFormatter().format(record))
    assert line["logger"] == "service.access" and line["status"] == 200
    assert line["route"] == "/v1/model" and line["duration_ms"] >= 0 and "time" in line


def test_json_formatter_includes_exceptions():
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info()
        )
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "failed here" and "ValueError: boom" in line["exception"]


def test_serve_flags_override_the_environment():
    from service.cli import build_parser

    args = build_parser().parse_args(
        ["serve", "--weights", "random", "--max-batch-size", "4", "--layers", "decaf6,decaf7"]
    )
    environ = {"DECAF_WEIGHTS": "imagenet", "DECAF_MAX_QUEUE": "9"}
    apply_overrides(args, environ)
    assert environ == {
        "DECAF_WEIGHTS": "random",
        "DECAF_MAX_QUEUE": "9",  # not given on the command line: the environment stays
        "DECAF_MAX_BATCH_SIZE": "4",
        "DECAF_LAYERS": "decaf6,decaf7",
    }


def test_settings_from_environment(monkeypatch, tmp_path):
    from service.settings import Settings

    monkeypatch.setenv("DECAF_DATA_ROOTS", f"{tmp_path}/a{os.pathsep}{tmp_path}/b")
    monkeypatch.setenv("DECAF_LAYERS", '["decaf7"]')
    monkeypatch.setenv("DECAF_MAX_WAIT_MS", "7.5")
    monkeypatch.setenv("DECAF_DATA_DIR", str(tmp_path / "d"))
    settings = Settings()
    assert settings.data_roots == [tmp_path / "a", tmp_path / "b"]
    assert settings.layers == ["decaf7"] and settings.max_wait_ms == 7.5
    assert settings.resolved_database_url == f"sqlite:///{tmp_path}/d/decaf.db"


@pytest.mark.slow
def test_decaf_serve_command_runs_uvicorn(tmp_path):
    """The README's command, for real: a subprocess on a free port, stopped with SIGINT."""
    sock = _free_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "DECAF_DATA_DIR": str(tmp_path / "data")}
    command = [
        str(Path(sys.executable).parent / "decaf"),
        "serve",
        "--port",
        str(port),
        "--weights",
        "random",
        "--layers",
        "decaf6,decaf7",
        "--max-batch-size",
        "4",
        "--log-json",
    ]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.2)
        model = httpx.get(f"{base}/v1/model").json()
        assert model["offered_layers"] == ["decaf6", "decaf7"]
        assert model["batching"]["max_batch_size"] == 4
        response = httpx.post(
            f"{base}/v1/features",
            files=[("images", ("a.jpg", jpeg_bytes(0), "image/jpeg"))],
            timeout=60,
        )
        assert response.status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        try:
            _, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
    assert process.returncode == 0, stderr
    json_lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert any(
        line.get("route") == "/v1/features" and line.get("status") == 200 for line in json_lines
    )


@pytest.mark.parametrize(
    ("error", "status"),
    [
        ("QueueFullError", 503),
        ("BatcherStoppedError", 503),
        ("WeightsError", 503),
        ("ImageTooLargeError", 413),
        ("FileTooLargeError", 413),
        ("ImageDecodeError", 422),
        ("UnknownLayerError", 422),
        ("ProbeMismatchError", 409),
        ("ProbeError", 422),
        ("StoreError", 409),
        ("ClientDisconnectedError", 499),
        ("DecafError", 400),
    ],
)
def test_every_typed_error_maps_to_one_status(error, status):
    import classifiers.errors
    import featurizer.errors
    import service.batcher
    import service.uploads
    from service.problems import problem_from_error

    modules = (featurizer.errors, classifiers.errors, service.batcher, service.uploads)
    kind = next(getattr(m, error) for m in modules if hasattr(m, error))
    assert kind.http_status == status
    assert problem_from_error(kind("message")).status == status


def test_typed_errors_from_jobs_keep_their_own_status():
    from service.jobs import JobConflictError, JobNotFoundError
    from service.problems import problem_from_error

    assert problem_from_error(JobNotFoundError("x")).status == 404
    assert problem_from_error(JobConflictError("x")).status == 409


def test_log_handler_follows_stderr_after_the_first_stream_closed(monkeypatch) -> None:
    # A CLI main() run in-process once left a handler bound to a stream that was closed later:
    # every later record printed "--- Logging error ---" into someone else's output.
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    handler = StderrHandler()
    first.close()
    monkeypatch.setattr(sys, "stderr", second)
    record = logging.LogRecord("decaf", logging.WARNING, __file__, 1, "still heard", None, None)
    handler.emit(record)
    assert second.getvalue() == "still heard\n"
