"""Optional API key (DECAF_API_KEY): required on every /v1 route, never on the ops routes."""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.service._service_helpers import jpeg_bytes, problem

KEY = "s3cret-key"


@pytest.fixture
def keyed_client(make_app):
    with TestClient(make_app(api_key=KEY)) as client:
        yield client


def v1_routes(client) -> list[tuple[str, str]]:
    """(method, path with placeholders filled) for every /v1 operation in the OpenAPI spec."""
    spec = client.get("/openapi.json").json()
    return [
        (method.upper(), re.sub(r"\{[^}]+\}", "some-id", path))
        for path, operations in spec["paths"].items()
        if path.startswith("/v1")
        for method in operations
    ]


def test_every_v1_route_requires_the_key(keyed_client):
    routes = v1_routes(keyed_client)
    assert ("POST", "/v1/features") in routes and ("GET", "/v1/model") in routes
    for method, path in routes:
        response = keyed_client.request(method, path)
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        body = problem(response, 401, "/problems/api-key")
        assert "API key" in body["detail"] and body["title"] == "Missing or invalid API key"


@pytest.mark.parametrize(
    "headers",
    [{"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}],
)
def test_wrong_key_is_401(keyed_client, headers):
    assert keyed_client.get("/v1/model", headers=headers).status_code == 401


@pytest.mark.parametrize("headers", [{"X-API-Key": KEY}, {"Authorization": f"Bearer {KEY}"}])
def test_right_key_in_either_header_is_accepted(keyed_client, headers):
    assert keyed_client.get("/v1/model", headers=headers).status_code == 200
    response = keyed_client.post(
        "/v1/features",
        headers=headers,
        files=[("images", ("a.jpg", jpeg_bytes(0), "image/jpeg"))],
    )
    assert response.status_code == 200


def test_ops_routes_need_no_key(keyed_client):
    for path in ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"):
        assert keyed_client.get(path).status_code == 200, path


def test_without_a_configured_key_v1_is_open(client):
    assert client.get("/v1/model").status_code == 200


def test_empty_key_setting_means_no_key(make_settings):
    assert make_settings(api_key="").api_key is None
    assert make_settings(api_key=" ").api_key is None


def test_key_over_real_http(serve):
    server = serve(api_key=KEY)
    url = f"{server.base_url}/v1/model"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"X-API-Key": KEY}).status_code == 200
    assert httpx.get(f"{server.base_url}/healthz").status_code == 200


def test_key_is_checked_before_the_body_is_read(keyed_client):
    # A body the form parser would reject (400): a 401 proves it was never parsed. Same for a
    # JSON body that is not JSON.
    broken_multipart = keyed_client.post(
        "/v1/features",
        content=b"--nope\r\nnot a multipart body at all",
        headers={"Content-Type": "multipart/form-data; boundary=decafboundary"},
    )
    problem(broken_multipart, 401, "/problems/api-key")
    broken_json = keyed_client.post(
        "/v1/extractions", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    problem(broken_json, 401, "/problems/api-key")
    with_key = keyed_client.post(
        "/v1/extractions",
        content=b"{not json",
        headers={"Content-Type": "application/json", "X-API-Key": KEY},
    )
    assert with_key.status_code == 422  # now the body is read, and refused
