"""One error path: every error leaves the server as RFC 9457 problem+json, described truthfully.

Covers each family (a typed DecafError, request validation, Starlette's 404/405, an unexpected
exception), the status every DecafError subclass carries, and the OpenAPI description.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import classifiers
import featurizer
import service
from classifiers.errors import ProbeError, ProbeMismatchError
from featurizer.errors import DecafError, ImageDecodeError, UnknownLayerError
from service.batcher import QueueFullError
from service.problems import PROBLEM_MEDIA_TYPE, problem_from_error, problem_title, problem_type
from tests.service._service_helpers import LiveServer, problem, run_server

JSON = {"Content-Type": "application/json"}


def _import_every_module() -> None:
    """The service and what it may raise from (some modules are only imported lazily)."""
    for package in (service, featurizer, classifiers):
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
            importlib.import_module(info.name)


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def decaf_error_classes() -> list[type[DecafError]]:
    _import_every_module()
    return sorted(set(_subclasses(DecafError)) | {DecafError}, key=lambda c: c.__qualname__)


# --------------------------------------------------------------------------- statuses
def test_every_decaf_error_reachable_from_the_service_carries_an_http_status() -> None:
    classes = decaf_error_classes()
    assert len(classes) > 30  # the walk really found the service's errors
    for cls in classes:
        status = cls.http_status
        assert isinstance(status, int) and 400 <= status <= 599, cls
        if cls.__module__.startswith("service."):
            # Declared on the class itself: a service error never inherits its status by accident.
            assert "http_status" in vars(cls), f"{cls.__module__}.{cls.__qualname__}"


def test_problem_types_are_distinct_per_error_class() -> None:
    types: dict[str, type] = {}
    for cls in decaf_error_classes():
        kind = problem_type(cls)
        assert kind not in types, (cls, types.get(kind))
        types[kind] = cls


def test_problem_type_and_title_come_from_the_class() -> None:
    assert problem_type(ImageDecodeError) == "/problems/image-decode"
    assert problem_type(UnknownLayerError) == "/problems/unknown-layer"
    assert problem_type(ProbeMismatchError) == "/problems/probe-mismatch"
    assert problem_type(DecafError) == "/problems/decaf"
    assert problem_title(ImageDecodeError) == "Image decode error"
    assert problem_title(QueueFullError) == "Batch queue full"  # a class's own title wins


def test_probe_error_has_one_status_everywhere() -> None:
    assert problem_from_error(ProbeError("x")).status == ProbeError.http_status == 422
    assert problem_from_error(ProbeMismatchError("x")).status == 409


def test_queue_full_keeps_its_retry_after_and_other_503s_get_one() -> None:
    assert problem_from_error(QueueFullError("full", retry_after=7.4)).headers == {
        "Retry-After": "7"
    }
    from service.errors import NotReadyError

    assert problem_from_error(NotReadyError("starting")).headers == {"Retry-After": "5"}


# --------------------------------------------------------------------------- each family over HTTP
@pytest.fixture
def raising_app(make_app: Any) -> FastAPI:
    """The real app plus test-only routes that raise (they exist in this test only)."""
    app = make_app()

    @app.get("/v1/test-only/unexpected")
    async def unexpected() -> None:
        raise RuntimeError("secret internals: /etc/decaf/password")

    @app.get("/v1/test-only/typed")
    async def typed() -> None:
        raise QueueFullError("the batch queue is full (1 images waiting); retry later", 3.0)

    @app.get("/v1/test-only/probe")
    async def probe_error() -> None:
        raise ProbeError("the probe cannot do that")

    return app


def test_unexpected_exception_is_a_500_problem_without_internals(
    raising_app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.ERROR, logger="service.middleware"),
        TestClient(raising_app, raise_server_exceptions=True) as client,
    ):
        # raise_server_exceptions=True: the exception ends as a response, it does not escape
        # the app (which is what makes uvicorn drop the connection).
        response = client.get("/v1/test-only/unexpected")
    body = problem(response, 500, "about:blank")
    assert body["title"] == "Internal Server Error"
    assert "secret" not in response.text and "Traceback" not in response.text
    assert "server log" in body["detail"]
    [record] = [r for r in caplog.records if r.name == "service.middleware"]
    assert record.exc_info is not None and "/v1/test-only/unexpected" in record.getMessage()


def test_typed_error_raised_in_a_route_is_rendered_with_its_headers(raising_app: FastAPI) -> None:
    with TestClient(raising_app) as client:
        queue_full = client.get("/v1/test-only/typed")
        probe_error = client.get("/v1/test-only/probe")
    body = problem(queue_full, 503, "/problems/queue-full")
    assert body["detail"].startswith("the batch queue is full")
    assert queue_full.headers["Retry-After"] == "3"
    assert problem(probe_error, 422, "/problems/probe")["detail"] == "the probe cannot do that"


def test_validation_error_lists_every_invalid_field(client: TestClient) -> None:
    response = client.get("/v1/jobs", params={"status": "bogus", "limit": 0})
    body = problem(response, 422, "/problems/invalid-request")
    assert body["title"] == "Invalid request"
    assert sorted(tuple(e["loc"]) for e in body["errors"]) == [
        ("query", "limit"),
        ("query", "status"),
    ]
    assert all(e["detail"] and e["code"] for e in body["errors"])
    assert "query.status" in body["detail"] and "query.limit" in body["detail"]


def test_route_not_found_and_method_not_allowed(client: TestClient) -> None:
    missing = problem(client.get("/nowhere"), 404, "about:blank")
    assert missing["title"] == "Not Found" and "/docs" in missing["detail"]
    wrong = client.put("/v1/model")
    assert problem(wrong, 405, "about:blank")["title"] == "Method Not Allowed"
    assert wrong.headers["Allow"] == "GET, OPTIONS"


@pytest.mark.parametrize(
    ("path", "allow"),
    [
        ("/v1/jobs/" + "0" * 32, "GET, DELETE, OPTIONS"),
        ("/v1/probes/" + "0" * 32, "GET, DELETE, OPTIONS"),
        ("/v1/probes", "GET, POST, OPTIONS"),
        ("/v1/model", "GET, OPTIONS"),
    ],
)
def test_allow_lists_every_method_of_the_path(client: TestClient, path: str, allow: str) -> None:
    # Starlette named only the first route's methods (`Allow: GET` where DELETE works too).
    options = client.options(path)
    assert options.status_code == 204 and options.headers["Allow"] == allow
    assert options.content == b""
    wrong = client.put(path)
    problem(wrong, 405, "about:blank")
    assert wrong.headers["Allow"] == allow


def test_unknown_job_and_unknown_kind(client: TestClient) -> None:
    problem(client.get("/v1/jobs/" + "0" * 32), 404, "/problems/job-not-found")
    # Not an id at all: refused by the pattern the OpenAPI states.
    problem(client.get("/v1/jobs/nope"), 422, "/problems/invalid-request")
    unknown = client.get("/v1/jobs", params={"kind": "mining"})
    detail = problem(unknown, 422, "/problems/invalid-request")["detail"]
    assert "'extraction', 'index_build' or 'probe_fit'" in detail


# --------------------------------------------------------------------------- validated at the edge
def _post_json(client: TestClient, path: str, text: str) -> Any:
    return client.post(path, content=text.encode(), headers={"Content-Type": "application/json"})


@pytest.mark.parametrize(
    ("path", "text", "field"),
    [
        ("/v1/probes", '{"dataset": "pets", "C": Infinity}', "C"),
        ("/v1/probes", '{"dataset": "pets", "C": 1e999}', "C"),  # parses to inf
        ("/v1/probes", '{"dataset": "pets", "C": NaN}', "C"),
        ("/v1/probes", '{"dataset": "pets", "C": 1e300}', "C"),
        ("/v1/probes", '{"dataset": "pets", "protocol": {"seed": -1}}', "seed"),
        ("/v1/probes", '{"dataset": "pets", "protocol": {"seed": 18446744073709551616}}', "seed"),
        ("/v1/probes", '{"dataset": "pets", "protocol": {"n_train": 1e30}}', "n_train"),
        (
            "/v1/probes",
            '{"dataset": "pets", "protocol": {"train_fraction": NaN}}',
            "train_fraction",
        ),
        ("/v1/extractions", '{"root": "r", "name": "n", "layers": [""]}', "layers"),
        (
            "/v1/extractions",
            '{"root": "r", "name": "n", "engine": "ray", "num_gpus_per_worker": Infinity}',
            "num_gpus_per_worker",
        ),
    ],
)
def test_values_that_would_fail_later_are_refused_on_arrival(
    client: TestClient, path: str, text: str, field: str
) -> None:
    # Before: `C: Infinity` or a negative seed were accepted (202) and the job failed later with
    # "internal error". The store "pets" need not exist: the request is refused before that.
    body = problem(_post_json(client, path, text), 422, "/problems/invalid-request")
    assert any(field in err["loc"] for err in body["errors"]), body


@pytest.mark.parametrize("path", ["/v1/probes", "/v1/extractions", "/v1/model"])
def test_deeply_nested_json_is_a_400_not_a_500(client: TestClient, path: str) -> None:
    deep = _post_json(client, path, "[" * 100_000 + "]" * 100_000)
    detail = problem(deep, 400, "/problems/malformed-body")["detail"]
    assert "nested 100000 levels deep; at most 32" in detail
    # A deep string is no nesting at all.
    flat = _post_json(client, path, '{"root": "' + "[{" * 1000 + '", "name": "n"}')
    assert flat.status_code != 400 or "nested" not in flat.text


@pytest.mark.parametrize("path", ["/v1/probes", "/v1/extractions"])
def test_malformed_json_is_the_same_400_on_every_route(client: TestClient, path: str) -> None:
    # FastAPI's own parser said 422 on one route, the probe route 400: one answer now.
    for text in ("{not json", '{"a": 1', "\xff"):
        detail = problem(_post_json(client, path, text), 400, "/problems/malformed-body")["detail"]
        assert detail.startswith("invalid JSON body")


def test_json_body_over_its_cap_is_413(client: TestClient) -> None:
    # Images travel as multipart; a JSON request of this API is a few hundred bytes.
    root = "a" * 10 * 2**20
    big = client.post("/v1/extractions", json={"root": root, "name": "n"})
    body = problem(big, 413, "/problems/request-too-large")
    assert len(big.content) < 1000 and "1048576 bytes" in body["detail"]


def test_echoed_values_are_shortened(client: TestClient) -> None:
    root = "a" * 4000  # a path as long as the OS allows: the 404 quotes its start only
    missing = client.post("/v1/extractions", json={"root": root, "name": "n"})
    detail = problem(missing, 404, "/problems/data-root-not-found")["detail"]
    assert f"'{'a' * 200}'… (4000 characters)" in detail and len(detail) < 400
    too_long = client.post("/v1/extractions", json={"root": "a" * 5000, "name": "n"})
    assert len(problem(too_long, 422, "/problems/invalid-request")["detail"]) < 400
    key = "k" * 100_000  # an unknown field's *name* is echoed in `loc`
    unknown_field = client.post("/v1/extractions", json={"root": "r", "name": "n", key: 1})
    body = problem(unknown_field, 422, "/problems/invalid-request")
    assert len(unknown_field.content) < 2000
    assert body["errors"][0]["loc"] == ["body", "k" * 200 + "…"]


# --------------------------------------------------------------------------- keep-alive
@pytest.fixture
def raising_server(raising_app: FastAPI) -> Iterator[LiveServer]:
    with run_server(raising_app) as server:
        yield server


def _local_port(response: httpx.Response) -> int:
    return response.extensions["network_stream"].get_extra_info("client_addr")[1]


def test_keep_alive_connection_survives_error_answers(raising_server: LiveServer) -> None:
    # Two requests on one pooled connection: the second reuses it (same client port) after a
    # 500 (before: uvicorn closed it, since the app re-raised), a 404, a 422 and a 400.
    with httpx.Client(base_url=raising_server.base_url) as http:
        first = http.get("/v1/model")
        for method, path, kwargs in [
            ("GET", "/v1/test-only/unexpected", {}),
            ("GET", "/v1/no-such-route", {}),
            ("GET", "/v1/jobs", {"params": {"limit": 0}}),
            ("POST", "/v1/extractions", {"content": b"{", "headers": JSON}),
            ("GET", "/v1/test-only/typed", {}),
        ]:
            failed = http.request(method, path, **kwargs)
            assert failed.status_code >= 400 and "connection" not in failed.headers, path
            after = http.get("/v1/model")
            assert after.status_code == 200
            assert _local_port(failed) == _local_port(after) == _local_port(first), path


# --------------------------------------------------------------------------- OpenAPI
def _error_responses(spec: dict) -> Iterator[tuple[str, str, str, dict]]:
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status.isdigit() and int(status) >= 400:
                    yield path, method, status, response


def test_openapi_describes_every_error_as_a_problem(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    problem_schema = spec["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail"} <= set(problem_schema["required"])
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # FastAPI's own shape
    seen = 0
    for path, method, status, response in _error_responses(spec):
        if (path, status) == ("/readyz", "503"):
            continue  # a readiness report, not an error (see Readiness)
        assert response["content"] == {
            PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}
        }, (path, method, status)
        seen += 1
    assert seen > 40
    for path, operations in spec["paths"].items():
        if path.startswith("/v1"):
            for method, operation in operations.items():
                assert {"500", "503", "504"} <= set(operation["responses"]), (path, method)


def test_openapi_documents_the_statuses_routes_raise(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]

    def statuses(path: str, method: str) -> set[str]:
        return set(paths[path][method]["responses"])

    assert {"406", "413", "415", "503"} <= statuses("/v1/features", "post")
    assert {"403", "404", "409", "501"} <= statuses("/v1/extractions", "post")
    assert {"404", "409"} <= statuses("/v1/jobs/{job_id}", "delete")
    assert {"404", "409"} <= statuses("/v1/probes/{probe_id}/predict", "post")
