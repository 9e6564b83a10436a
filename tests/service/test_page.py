"""The web page at `/`: served from the package, public, offline-safe, every control labelled.

Its behaviour in a real browser is tested in test_page_browser.py.
"""

from __future__ import annotations

import re
import tomllib
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.routes.page import CONTENT_SECURITY_POLICY
from tests.service._service_helpers import problem

REPO = Path(__file__).resolve().parents[2]
STATIC = REPO / "service" / "static"


@pytest.fixture
def keyed_client(make_app) -> TestClient:
    with TestClient(make_app(api_key="s3cret")) as client:
        yield client


def test_page_and_assets_are_served_without_a_key(keyed_client: TestClient) -> None:
    page = keyed_client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert '<script type="module" src="/static/app.js">' in page.text
    script = keyed_client.get("/static/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert keyed_client.get("/static/app.css").headers["content-type"].startswith("text/css")
    # The API itself still wants the key, and the docs stay where they were.
    problem(keyed_client.get("/v1/model"), 401)
    assert keyed_client.get("/docs").status_code == 200
    assert "/" not in keyed_client.get("/openapi.json").json()["paths"]


def test_static_files_cannot_reach_outside_their_folder(keyed_client: TestClient) -> None:
    for path in ("/static/../app.py", "/static/%2e%2e/settings.py", "/static/nope.js"):
        assert keyed_client.get(path).status_code == 404, path


def test_page_fetches_nothing_from_another_origin() -> None:
    for path in STATIC.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"https?://|(src|href)=\"//|url\(\s*['\"]?//", text), path.name
        assert "@import" not in text, path.name


class _Controls(HTMLParser):
    """Form controls of a page and the ids its <label for=...> elements name."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: list[dict[str, str | None]] = []
        self.label_for: set[str] = set()
        self._open_labels = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "label":
            self._open_labels += 1
            if values.get("for"):
                self.label_for.add(values["for"] or "")
        if tag in ("input", "select", "textarea") and values.get("type") != "hidden":
            self.controls.append({**values, "_wrapped": "yes" if self._open_labels else None})

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self._open_labels -= 1


def test_every_control_has_a_label() -> None:
    parser = _Controls()
    parser.feed((STATIC / "index.html").read_text(encoding="utf-8"))
    assert len(parser.controls) > 15
    unlabelled = [
        control
        for control in parser.controls
        if not control["_wrapped"]
        and control.get("id") not in parser.label_for
        and not control.get("aria-label")
    ]
    assert unlabelled == []


def test_every_static_file_is_package_data() -> None:
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["service"]
    for path in STATIC.iterdir():
        assert any(path.relative_to(REPO / "service").match(p) for p in patterns), path.name
