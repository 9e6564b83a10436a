"""The web page in a real browser: headless Chromium against a real uvicorn server (random
weights) on 127.0.0.1.

Waiting is event-based: Playwright's `expect(...)` re-checks the page until the condition holds
(or the timeout says the page never got there); no test sleeps.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service._browser import artifacts_dir, find_chromium
from tests.service._service_helpers import LiveServer
from tests.service._state_helpers import CLASS_COLOURS, image_bytes, make_image_tree

playwright_sync = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
expect = playwright_sync.expect

pytestmark = pytest.mark.browser
expect.set_options(timeout=90_000)  # a loaded 2-core machine; failing tests wait this long
API_KEY = "s3cret-key"


def jpeg(name: str, colour: str, seed: int) -> dict[str, Any]:
    return {"name": name, "mimeType": "image/jpeg",
            "buffer": image_bytes(CLASS_COLOURS[colour], seed=seed, size=64)}  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = find_chromium()
    if chromium is None:
        pytest.skip(
            "Chromium cannot be found (looked for $DECAF_CHROMIUM, chromium on PATH, "
            "/usr/bin/chromium): install it with `apt-get install -y chromium` (`make test` "
            "does) to run the browser tests"
        )
    with playwright_sync.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=chromium, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def open_page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """`open_page(server, width=..., height=...)` → a fresh page showing the server's `/`; a
    screenshot of it is saved when the test ends (pass or fail)."""
    contexts: list[tuple[Any, Any]] = []

    def start(server: LiveServer, width: int = 1100, height: int = 900) -> Any:
        context = browser.new_context(viewport={"width": width, "height": height})
        page = context.new_page()
        page.goto(server.base_url + "/")
        contexts.append((context, page))
        return page

    yield start
    for k, (context, page) in enumerate(contexts):
        suffix = f"-{k}" if k else ""
        page.screenshot(path=artifacts_dir() / f"{request.node.name}{suffix}.png", full_page=True)
        context.close()


def wait_until_loaded(page: Any) -> None:
    expect(page.locator("body")).to_have_attribute("data-ready", "true")


def card(page: Any, filename: str) -> Any:
    return page.locator(f'.card[data-filename="{filename}"]')


def test_few_shot_probe_then_features_and_prediction_of_a_photo(serve, open_page) -> None:
    server = serve()
    page = open_page(server)
    expect(page.locator("#model-info")).to_contain_text("alexnet · weights random")
    expect(page.locator("#random-banner")).to_be_visible()
    wait_until_loaded(page)
    # Few-shot: two labelled classes dropped in the browser, fitted by the server.
    classes = page.locator(".fs-class")
    for k, colour in enumerate(("cat", "dog")):
        classes.nth(k).get_by_label(f"Class {k + 1} name").fill(colour)
        files = [jpeg(f"{colour}{i}.jpg", colour, seed=100 * k + i) for i in range(3)]
        classes.nth(k).get_by_label(f"Images of class {k + 1}").set_input_files(files)
    page.get_by_label("Probe name").fill("pets")
    page.get_by_role("button", name="Fit few-shot probe").click()
    expect(page.locator("#fs-status")).to_contain_text("Fitted “pets” on cat, dog")
    expect(page.locator("#probes-table tbody tr")).to_contain_text("pets")
    expect(page.get_by_label("Probe for predictions")).to_have_value(re.compile(".+"))
    # A photo: its thumbnail, the chosen layers' dims and norms, and the probe's ranked classes.
    expect(page.get_by_label("decaf6 (4096)")).to_be_checked()  # the backbone's default
    page.get_by_label("decaf7 (4096)").check()
    page.get_by_label("Drop images here, or choose files").set_input_files(
        [jpeg("photo.jpg", "dog", seed=7)]
    )
    photo = card(page, "photo.jpg")
    rows = photo.locator(".features tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text(re.compile(r"decaf6\s*4096\s*\d+\.\d\d"))
    expect(rows.nth(1)).to_contain_text(re.compile(r"decaf7\s*4096"))
    predictions = photo.locator(".predictions li")
    expect(predictions).to_have_count(2)
    expect(predictions.nth(0).locator(".label")).to_have_text("dog")
    expect(predictions.nth(0).locator(".score")).to_have_text(re.compile(r"\d+\.\d %"))
    assert photo.locator("img.thumb").evaluate("img => img.naturalWidth") == 64
    expect(photo.locator(".card-body > .error")).to_be_empty()


def test_extraction_progress_reaches_100_percent(serve, open_page, tmp_path: Path) -> None:
    make_image_tree(tmp_path / "roots" / "photos", per_class=4)
    server = serve()
    page = open_page(server)
    wait_until_loaded(page)
    page.get_by_label("Data root").fill("photos")
    page.get_by_label("Dataset name").fill("photos")
    page.get_by_label("Layers (comma-separated").fill("decaf6")
    page.get_by_role("button", name="Start extraction").click()
    job = page.locator("#jobs-list .job").first
    expect(job).to_contain_text("extraction → photos")
    expect(job.locator(".job-status")).to_have_text("succeeded")
    expect(job.locator(".job-pct")).to_contain_text("100 %")
    expect(job.locator("progress")).to_have_attribute("value", "100")
    expect(job.get_by_role("button", name="Cancel")).to_be_hidden()
    row = page.locator('#datasets-table tr[data-name="photos"]')
    expect(row).to_contain_text("alexnet · RANDOM weights")
    expect(row).to_contain_text("decaf6 (4096)")
    expect(row.locator("td.num").first).to_have_text("8")
    # A second extraction under the same name is refused, and the page says why, beside the form.
    page.get_by_role("button", name="Start extraction").click()
    expect(page.locator("#extract-error")).to_contain_text("already exists")


def test_a_bad_file_shows_its_error_and_the_others_still_render(serve, open_page) -> None:
    server = serve()
    page = open_page(server, width=390, height=844)  # a phone
    wait_until_loaded(page)
    files = [
        jpeg("good.jpg", "cat", seed=1),
        {"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"these are not pixels"},
        jpeg("also-good.jpg", "dog", seed=2),
    ]
    page.get_by_label("Drop images here, or choose files").set_input_files(files)
    bad = card(page, "notes.jpg")
    expect(bad).to_have_class(re.compile(r"\bfailed\b"))
    expect(bad.locator(".card-body > .error")).to_contain_text("notes.jpg: ")
    expect(bad.locator(".card-body > .error")).to_contain_text("not a recognised image")
    expect(bad.locator(".features")).to_be_hidden()
    for name in ("good.jpg", "also-good.jpg"):
        expect(card(page, name).locator(".features tbody tr")).to_contain_text("decaf6")
        expect(card(page, name).locator(".card-body > .error")).to_be_empty()
    # Usable on a phone: nothing wider than the screen.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_api_key_prompt_then_header_never_url(serve, open_page) -> None:
    server = serve(api_key=API_KEY)
    sent: list[tuple[str, str | None]] = []
    page = open_page(server)
    page.on("request", lambda r: sent.append((r.url, r.headers.get("x-api-key"))))
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    page.get_by_role("textbox", name="API key").fill("wrong-key")
    page.get_by_role("button", name="Use this key").click()
    expect(page.locator("#key-error")).to_contain_text("refused")
    page.get_by_role("textbox", name="API key").fill(API_KEY)
    page.get_by_role("button", name="Use this key").click()
    expect(page.locator("#model-info")).to_contain_text("alexnet")
    expect(dialog).to_be_hidden()
    wait_until_loaded(page)
    assert page.evaluate("sessionStorage.getItem('decaf-api-key')") == API_KEY
    keys = [key for url, key in sent if "/v1/" in url]  # after the first, keyless /v1/model
    assert keys[0] == "wrong-key" and API_KEY in keys, keys
    assert set(keys[keys.index(API_KEY) :]) == {API_KEY}, keys  # every later call has the key
    assert not [url for url, _ in sent if API_KEY in url]
    # Same tab, reloaded: the key is remembered, no prompt.
    page.reload()
    expect(page.locator("#model-info")).to_contain_text("alexnet")
    wait_until_loaded(page)
    expect(dialog).to_be_hidden()


class HeldFeaturizer:
    """The job's real featurizer, except that its first forward pass waits for `release`: the
    test acts while the job is known to be running, however fast or loaded the machine is."""

    def __init__(self, featurizer: Any) -> None:
        self._featurizer = featurizer
        self.holding = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._featurizer, name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self.holding.is_set():
            self.holding.set()
            if not self.release.wait(timeout=120):
                raise RuntimeError("the test never released the held forward pass")
        return self._featurizer.forward(*args, **kwargs)


def test_a_running_extraction_is_cancelled_from_the_page(
    serve, open_page, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.models import ModelPool

    make_image_tree(tmp_path / "roots" / "photos", per_class=4)
    held: list[HeldFeaturizer] = []
    real = ModelPool.job_featurizer

    def held_job_featurizer(self: Any, *args: Any, **kwargs: Any) -> Any:
        held.append(HeldFeaturizer(real(self, *args, **kwargs)))
        return held[-1]

    monkeypatch.setattr(ModelPool, "job_featurizer", held_job_featurizer)
    page = open_page(serve())
    wait_until_loaded(page)
    page.get_by_label("Data root").fill("photos")
    page.get_by_label("Dataset name").fill("photos")
    page.get_by_role("button", name="Start extraction").click()
    job = page.locator("#jobs-list .job").first
    expect(job.locator(".job-status")).to_have_text("running")
    try:
        assert held and held[0].holding.wait(timeout=120), "the job never ran a batch"
        job.get_by_role("button", name="Cancel").click()
        expect(job.locator(".job-status")).to_have_text("running (cancelling…)")
    finally:
        for featurizer in held:
            featurizer.release.set()
    expect(job.locator(".job-status")).to_have_text("cancelled")
    expect(job.get_by_role("button", name="Cancel")).to_be_hidden()


def test_search_shows_neighbour_thumbnails(serve, open_page, tmp_path: Path) -> None:
    make_image_tree(tmp_path / "roots" / "photos", per_class=4, size=48)
    server = serve()
    with httpx.Client(base_url=server.base_url, timeout=60) as api:
        job = api.post("/v1/extractions", json={"root": "photos", "name": "photos",
                                                "layers": ["decaf6"]}).json()  # fmt: skip
        _wait_for_job(api, job["id"])
    page = open_page(server)
    wait_until_loaded(page)
    page.locator("#index-dataset").select_option("photos")
    page.locator("#index-layer").fill("decaf6")
    page.get_by_role("button", name="Build index").click()
    job_row = page.locator("#jobs-list .job").first
    expect(job_row.locator(".job-status")).to_have_text("succeeded")
    expect(page.get_by_label("Neighbours in dataset")).to_contain_text("photos")
    page.get_by_label("Neighbours in dataset").select_option("photos")
    page.get_by_label("Drop images here, or choose files").set_input_files(
        [jpeg("query.jpg", "cat", seed=3)]
    )
    neighbours = card(page, "query.jpg").locator(".neighbours figure")
    expect(neighbours).to_have_count(6)
    expect(neighbours.first.locator("img.loaded")).to_be_visible()
    assert neighbours.first.locator("img").evaluate("img => img.naturalWidth") == 48
    expect(neighbours.first.locator("figcaption")).to_contain_text("cat")


def _wait_for_job(api: httpx.Client, job_id: str) -> dict:
    """The job, once final: GET /v1/jobs/{id} re-asked until then (bounded by pytest-timeout)."""
    while True:
        job = api.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled", "interrupted"):
            assert job["status"] == "succeeded", json.dumps(job)[:2000]
            return job
