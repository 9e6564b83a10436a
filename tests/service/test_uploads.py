"""Hostile and broken uploads against a real uvicorn server: clear 4xx, and the server goes on."""

from __future__ import annotations

import struct
import zlib

import httpx
import pytest

from tests.service._service_helpers import jpeg_bytes, problem

UPLOAD_LIMIT = 60_000  # bytes per file in these tests
MAX_FILES = 4


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's calling card).

    The IDAT holds a few compressed rows only: a decoder that trusts the header and allocates
    first is the bug this guards against; ours must refuse on the pixel count alone.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\x00" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture
def server(serve):
    return serve(max_upload_bytes=UPLOAD_LIMIT, max_files_per_request=MAX_FILES)


def post(server, *items, **kwargs) -> httpx.Response:
    files = [("images", item) for item in items]
    return httpx.post(f"{server.base_url}/v1/features", files=files, timeout=60, **kwargs)


def assert_still_serving(server) -> None:
    response = post(server, ("ok.jpg", jpeg_bytes(7), "image/jpeg"))
    assert response.status_code == 200, response.text
    assert len(response.json()["results"][0]["features"]["decaf6"]) == 4096


DECODE = "/problems/image-decode"
UNSUPPORTED = "/problems/unsupported-content-type"


@pytest.mark.parametrize(
    ("name", "data", "content_type", "status", "needle", "kind"),
    [
        ("zero.jpg", b"", "image/jpeg", 422, "empty", DECODE),
        ("truncated.jpg", jpeg_bytes(1)[:300], "image/jpeg", 422, "truncated", DECODE),
        (
            "text.jpg",
            b"this is plain text, not a JPEG\n" * 10,
            "image/jpeg",
            422,
            "not a recognised",
            DECODE,
        ),
        (
            "bomb.png",
            png_header_only(10_000, 10_000),
            "image/png",
            413,
            "pixel",
            "/problems/image-too-large",
        ),
        (
            "big.jpg",
            b"\xff\xd8" + b"\x00" * (UPLOAD_LIMIT + 10),
            "image/jpeg",
            413,
            "too large",
            "/problems/file-too-large",
        ),
        ("notes.txt", b"hello", "text/plain", 415, "unsupported content type", UNSUPPORTED),
        ("page.html", b"<html></html>", "text/html", 415, "unsupported content type", UNSUPPORTED),
    ],
)
def test_bad_single_upload_gets_clear_4xx_and_server_keeps_serving(
    server, name, data, content_type, status, needle, kind
):
    response = post(server, (name, data, content_type))
    body = problem(response, status, kind)
    assert needle in body["detail"].lower() and name in body["detail"]
    [error] = body["errors"]
    assert error["index"] == 0 and error["filename"] == name
    assert error["type"] == kind and error["status"] == status
    assert needle in error["detail"].lower()
    assert_still_serving(server)


def test_bad_files_among_good_ones_are_reported_per_image(server):
    response = post(
        server,
        ("good1.jpg", jpeg_bytes(1), "image/jpeg"),
        ("bomb.png", png_header_only(10_000, 10_000), "image/png"),
        ("zero.jpg", b"", "image/jpeg"),
        ("good2.jpg", jpeg_bytes(2), "image/jpeg"),
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["error"] is None for r in results] == [True, False, False, True]
    assert [r["features"] is None for r in results] == [False, True, True, False]
    assert "pixel" in results[1]["error"].lower()
    assert [r["error_type"] for r in results] == [
        None,
        "/problems/image-too-large",
        "/problems/image-decode",
        None,
    ]


def test_too_many_files_is_413(server):
    items = [(f"{i}.jpg", jpeg_bytes(i), "image/jpeg") for i in range(MAX_FILES + 1)]
    response = post(server, *items)
    body = problem(response, 413, "/problems/too-many-files")
    assert "too many files" in body["detail"]
    assert_still_serving(server)


def test_body_over_the_request_cap_is_413_before_parsing(server):
    cap = UPLOAD_LIMIT * MAX_FILES + 1024 * 1024
    huge = b"\xff\xd8" + b"\x00" * (cap + 1)
    response = post(server, ("huge.jpg", huge, "image/jpeg"))
    body = problem(response, 413, "/problems/request-too-large")
    assert "request body larger than" in body["detail"]
    assert_still_serving(server)


def test_streamed_body_without_content_length_is_capped_too(server):
    cap = UPLOAD_LIMIT * MAX_FILES + 1024 * 1024
    boundary = "decafboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="x.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()

    def chunks():
        yield head
        for _ in range(cap // 65536 + 2):
            yield b"\x00" * 65536

    response = httpx.post(
        f"{server.base_url}/v1/features",
        content=chunks(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout=60,
    )
    problem(response, 413, "/problems/request-too-large")
    assert_still_serving(server)


def test_not_multipart_is_422(server):
    response = httpx.post(f"{server.base_url}/v1/features", json={"images": ["a.jpg"]}, timeout=30)
    body = problem(response, 422, "/problems/invalid-request")
    assert "images" in body["detail"]
    assert_still_serving(server)


def test_unicode_filename_survives_npz_headers(server):
    response = post(
        server,
        ("café ☕.jpg", jpeg_bytes(3), "image/jpeg"),
        ("bad é.jpg", b"", "image/jpeg"),
        headers={"Accept": "application/x-npz"},
    )
    assert response.status_code == 200
    import io
    import json

    import numpy as np

    assert json.loads(response.headers["X-Decaf-Filenames"]) == ["café ☕.jpg"]
    with np.load(io.BytesIO(response.content), allow_pickle=False) as npz:
        assert list(npz["filenames"]) == ["café ☕.jpg"]
        assert list(npz["failed_filenames"]) == ["bad é.jpg"]
