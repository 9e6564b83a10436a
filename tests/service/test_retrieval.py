"""Routes: POST/GET /v1/datasets/{name}/index, POST /v1/datasets/{name}/search,
GET /v1/datasets/{name}/images/{row} — end to end through a real server, on photo crops."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.retrieval.photos import ORIGINAL, write_photo_folder
from tests.service._service_helpers import problem, run_server
from tests.service._state_helpers import API_KEY, make_settings, running_client, wait_for_job

KEY = {"X-API-Key": API_KEY}


def extract(client: Any, name: str = "photos") -> None:
    body = {"root": name, "name": name, "layers": ["decaf7"], "batch_size": 8}
    job = client.post("/v1/extractions", json=body, headers=KEY)
    assert job.status_code == 202, job.text
    assert (
        wait_for_job(client, job.json()["id"], timeout_s=300, headers=KEY)["status"] == "succeeded"
    )


def build(client: Any, name: str = "photos", **body: Any) -> dict[str, Any]:
    response = client.post(
        f"/v1/datasets/{name}/index", json={"layer": "decaf7", **body}, headers=KEY
    )
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/v1/jobs/{response.json()['id']}"
    return wait_for_job(client, response.json()["id"], timeout_s=300, headers=KEY)


@pytest.mark.slow
def test_index_search_and_images_end_to_end_through_the_real_server(tmp_path, shared_featurizer):
    from service.app import create_app

    write_photo_folder(tmp_path / "roots" / "photos", per_class=6)
    app = create_app(make_settings(tmp_path, api_key=API_KEY), featurizer=shared_featurizer)
    with run_server(app) as live, httpx.Client(base_url=live.base_url, timeout=120) as client:
        extract(client)
        missing = problem(client.get("/v1/datasets/photos/index", headers=KEY), 404)
        assert "POST /v1/datasets/photos/index" in missing["detail"]
        original = (tmp_path / "roots" / "photos" / ORIGINAL).read_bytes()
        files = [("images", ("q.jpg", original, "image/jpeg"))]
        problem(client.post("/v1/datasets/photos/search", files=files, headers=KEY), 404)

        job = build(client)
        assert job["status"] == "succeeded", job
        assert job["kind"] == "index_build" and job["result"]["index"] == "decaf7-full-flat-exact"
        assert job["progress"]["done"] == job["progress"]["total"] == 14

        record = client.get("/v1/datasets/photos/index", headers=KEY)
        assert record.status_code == 200, record.text
        assert record.json()["layer"] == "decaf7" and record.json()["rows"] == 14
        assert "path" not in record.json()  # no server paths

        problem(client.post("/v1/datasets/photos/search", files=files), 401)
        files.append(("images", ("broken.jpg", b"not a jpeg at all", "image/jpeg")))
        found = client.post(
            "/v1/datasets/photos/search", params={"k": 50}, files=files, headers=KEY
        )
        assert found.status_code == 200, found.text
        answer = found.json()
        assert answer["k"] == 14 and "above the store's 14 rows" in answer["note"]
        first, broken = answer["results"]
        top = first["neighbours"][0]
        assert first["error"] is None and len(first["neighbours"]) == 14
        assert top["path"] == ORIGINAL and top["label"] == "china"
        assert top["score"] == pytest.approx(1.0, abs=1e-3)
        assert broken["filename"] == "broken.jpg" and broken["neighbours"] == []
        assert broken["error"]["status"] == 422 and broken["error"]["type"].startswith("/problems/")

        image = client.get(f"/v1/datasets/photos/images/{top['row']}", headers=KEY)
        assert image.status_code == 200 and image.content == original
        assert image.headers["content-type"] == "image/jpeg"
        problem(client.get("/v1/datasets/photos/images/14", headers=KEY), 404)


@pytest.fixture
def photos_api(tmp_path: Path, shared_featurizer: Any) -> Any:
    write_photo_folder(tmp_path / "roots" / "photos", per_class=4)
    with running_client(make_settings(tmp_path, api_key=API_KEY), shared_featurizer) as client:
        extract(client)
        yield client


def test_bad_index_requests_are_refused_before_a_job_starts(photos_api):
    api = photos_api
    url = "/v1/datasets/photos/index"
    problem(api.post("/v1/datasets/nope/index", json={"layer": "decaf7"}, headers=KEY), 404)
    unknown = problem(api.post(url, json={"layer": "decaf5"}, headers=KEY), 422)
    assert "decaf5" in unknown["detail"]
    problem(api.post(url, json={"layer": "decaf7", "whiten": True}, headers=KEY), 422)
    wide = problem(api.post(url, json={"layer": "decaf7", "dim": 5000}, headers=KEY), 422)
    assert "PCA can only reduce" in wide["detail"]
    problem(api.post(url, json={"layer": "decaf7", "codec": "zip"}, headers=KEY), 422)
    assert api.get("/v1/jobs", params={"kind": "index_build"}, headers=KEY).json()["jobs"] == []


def test_images_outside_the_data_roots_are_not_served(photos_api, tmp_path, shared_featurizer):
    assert photos_api.get("/v1/datasets/photos/images/0", headers=KEY).status_code == 200
    (tmp_path / "elsewhere").mkdir()
    narrowed = make_settings(tmp_path, api_key=API_KEY, data_roots=[tmp_path / "elsewhere"])
    with running_client(narrowed, shared_featurizer) as client:
        problem(client.get("/v1/datasets/photos/images/0", headers=KEY), 403)


@pytest.fixture
def dataset_settings(tmp_path: Path, shared_featurizer: Any) -> Any:
    """Settings whose data dir holds a finished dataset "photos" (extracted directly)."""
    from featurizer.extraction import extract_dataset

    settings = make_settings(tmp_path)
    write_photo_folder(tmp_path / "roots" / "photos", per_class=4)
    out = Path(settings.data_dir) / "datasets" / "photos"
    extract_dataset(tmp_path / "roots" / "photos", out, featurizer=shared_featurizer, part_size=4)
    return settings


def job_context(settings: Any, params: dict[str, Any], *, stop: bool) -> tuple[Any, list]:
    import threading

    from service.job_context import JobContext
    from service.state import Database

    reports: list[dict[str, Any]] = []
    event = threading.Event()
    if stop:
        event.set()
    ctx = JobContext(
        job_id="j1",
        kind="index_build",
        params=params,
        attempt=1,
        settings=settings,
        db=Database.from_settings(settings),  # no job row: only a local cancel stops it
        stop_event=event,
        _report=lambda progress, force: reports.append(dict(progress)),
    )
    return ctx, reports


def test_the_index_job_reports_rows_added_and_stops_when_cancelled(dataset_settings):
    from retrieval.errors import IndexBuildCancelled
    from service.tasks.index_build import run_index_build

    params = {"dataset": "photos", "layer": "decaf7", "codec": "fp16"}
    cancelled, _ = job_context(dataset_settings, params, stop=True)
    with pytest.raises(IndexBuildCancelled):
        run_index_build(cancelled)
    index_dir = Path(dataset_settings.data_dir) / "datasets" / "photos" / "_index"
    assert not list(index_dir.glob("*/index.json"))  # nothing written

    ctx, reports = job_context(dataset_settings, params, stop=False)
    result = run_index_build(ctx)
    assert result["index"] == "decaf7-full-fp16-exact" and result["rows"] == 10
    added = [r["done"] for r in reports if r["step"] == "adding"]
    assert added == [0, 4, 8, 10] and reports[-1] == {"done": 10, "total": 10, "step": "done"}
