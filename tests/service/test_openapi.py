"""The OpenAPI document tells the truth (issue 12, item 10): security and 401, the statuses the
edge of the server answers (400/413/422/500/503/504), `minItems` where an empty list is refused,
path patterns that are the ones enforced, and enums where the server accepts a fixed set.

The rules are applied to every /v1 operation by path, so a route added later (here: one added
straight on the app) is described like the others without a word in its own code.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.paths import ID_PATTERN, NAME_PATTERN
from service.problems import PROBLEM_MEDIA_TYPE
from tests.service._service_helpers import jpeg_bytes, problem

KEY = "s3cret-key"
PROBLEM_CONTENT = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}


def _with_a_late_route(app: FastAPI) -> FastAPI:
    @app.post("/v1/test-only/late")
    async def late(body: dict[str, int]) -> dict[str, int]:
        return body

    return app


@pytest.fixture
def keyed_spec(make_app: Any) -> dict[str, Any]:
    with TestClient(_with_a_late_route(make_app(api_key=KEY))) as client:
        return client.get("/openapi.json").json()


@pytest.fixture
def open_spec(client: TestClient) -> dict[str, Any]:
    return client.get("/openapi.json").json()


def v1_operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in spec["paths"].items():
        if path.startswith("/v1/"):
            for method, operation in operations.items():
                yield path, method, operation


def test_security_schemes_and_401_on_every_v1_operation(keyed_spec: dict[str, Any]) -> None:
    schemes = keyed_spec["components"]["securitySchemes"]
    assert schemes["ApiKeyHeader"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "the server's DECAF_API_KEY",
    }
    assert schemes["BearerToken"]["scheme"] == "bearer"
    operations = list(v1_operations(keyed_spec))
    assert ("/v1/test-only/late", "post") in [(p, m) for p, m, _ in operations]
    assert len(operations) >= 14  # 13 of the API, 1 late
    for path, method, operation in operations:
        assert operation["security"] == [{"ApiKeyHeader": []}, {"BearerToken": []}], path
        assert operation["responses"]["401"]["content"] == PROBLEM_CONTENT, (path, method)
    for path in ("/healthz", "/readyz", "/metrics"):
        assert "security" not in keyed_spec["paths"][path]["get"]


def test_without_a_key_no_security_and_no_401_is_claimed(open_spec: dict[str, Any]) -> None:
    # The spec describes this server: one without DECAF_API_KEY never answers 401.
    assert "securitySchemes" not in open_spec.get("components", {})
    for path, method, operation in v1_operations(open_spec):
        assert "security" not in operation and "401" not in operation["responses"], (path, method)


def test_edge_statuses_are_documented_by_what_an_operation_takes(
    keyed_spec: dict[str, Any],
) -> None:
    for path, method, operation in v1_operations(keyed_spec):
        statuses = set(operation["responses"])
        assert {"500", "503", "504"} <= statuses, (path, method)
        takes_body = "requestBody" in operation
        assert takes_body == ({"400", "413"} <= statuses), (path, method)
        validates = takes_body or bool(operation.get("parameters"))
        assert validates == ("422" in statuses), (path, method)
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                assert response["content"] == PROBLEM_CONTENT, (path, method, status)
    schemas = keyed_spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas


def test_probe_fit_documents_400_and_415(keyed_spec: dict[str, Any]) -> None:
    statuses = set(keyed_spec["paths"]["/v1/probes"]["post"]["responses"])
    assert {"201", "202", "400", "404", "409", "413", "415", "422"} <= statuses


def _body_schema(spec: dict[str, Any], path: str, media: str = "multipart/form-data") -> dict:
    schema = spec["paths"][path]["post"]["requestBody"]["content"][media]["schema"]
    ref = schema.get("$ref")
    return spec["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/features", "images"),
        ("/v1/probes", "files"),
        ("/v1/probes/{probe_id}/predict", "files"),
    ],
)
def test_file_arrays_say_min_items_1(open_spec: dict[str, Any], path: str, field: str) -> None:
    schema = _body_schema(open_spec, path)
    assert schema["properties"][field]["minItems"] == 1
    assert field in schema["required"]


def test_empty_file_lists_are_refused_as_documented(client: TestClient) -> None:
    no_images = client.post("/v1/features", data={"layers": "fc7"})
    assert problem(no_images, 422)["errors"][0]["loc"] == ["body", "images"]
    with_one = client.post("/v1/features", files=[("images", ("a.jpg", jpeg_bytes(0)))])
    assert with_one.status_code == 200


def _path_parameter(spec: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    [parameter] = [p for p in spec["paths"][path][method]["parameters"] if p["in"] == "path"]
    return parameter


@pytest.mark.parametrize(
    ("path", "method", "pattern"),
    [
        ("/v1/datasets/{name}", "get", NAME_PATTERN),
        ("/v1/jobs/{job_id}", "get", ID_PATTERN),
        ("/v1/jobs/{job_id}", "delete", ID_PATTERN),
        ("/v1/probes/{probe_id}", "get", ID_PATTERN),
        ("/v1/probes/{probe_id}", "delete", ID_PATTERN),
        ("/v1/probes/{probe_id}/predict", "post", ID_PATTERN),
    ],
)
def test_path_parameters_state_the_pattern_they_enforce(
    open_spec: dict[str, Any], client: TestClient, path: str, method: str, pattern: str
) -> None:
    assert _path_parameter(open_spec, path, method)["schema"]["pattern"] == pattern
    outside = re.sub(r"\{[^}]+\}", "not%20valid!", path)
    refused = client.request(method.upper(), outside)
    assert problem(refused, 422)["errors"][0]["loc"][0] == "path"
    well_formed = re.sub(r"\{[^}]+\}", "0" * 32, path)  # fits both patterns, exists nowhere
    if method != "post":
        assert client.request(method.upper(), well_formed).status_code == 404


def test_ids_the_server_makes_fit_the_pattern(client: TestClient) -> None:
    files = [("files", (f"{i}.jpg", jpeg_bytes(i), "image/jpeg")) for i in range(4)]
    probe = client.post("/v1/probes", files=files, data={"labels": '["a","a","b","b"]'})
    assert probe.status_code == 201, probe.text
    assert re.fullmatch(ID_PATTERN, probe.json()["id"])
    root = client.app.state.settings.data_roots[0] / "tiny" / "cat"  # type: ignore[attr-defined]
    root.mkdir(parents=True)
    (root / "a.jpg").write_bytes(jpeg_bytes(0))
    job = client.post("/v1/extractions", json={"root": "tiny", "name": "tiny"})
    assert job.status_code == 202, job.text
    assert re.fullmatch(ID_PATTERN, job.json()["id"])
    assert client.get(f"/v1/jobs/{job.json()['id']}").status_code == 200


def test_job_kind_is_an_enum(open_spec: dict[str, Any]) -> None:
    [kind] = [p for p in open_spec["paths"]["/v1/jobs"]["get"]["parameters"] if p["name"] == "kind"]
    kinds = {"enum": ["extraction", "index_build", "probe_fit"], "type": "string"}
    assert kinds in kind["schema"]["anyOf"]


def test_ray_only_options_are_stated_in_the_schema(open_spec: dict[str, Any]) -> None:
    schema = open_spec["components"]["schemas"]["ExtractionRequest"]
    assert schema["then"]["properties"]["concurrency"] == {"type": "null"}
    assert schema["if"]["not"]["properties"]["engine"] == {"const": "ray"}
    seed = _body_schema(open_spec, "/v1/probes", "application/json")
    protocol = seed["properties"]["protocol"]["anyOf"][0]["properties"]
    assert protocol["seed"]["minimum"] == 0
