"""Routes: POST /v1/extractions, GET/DELETE /v1/jobs[/{id}], GET /v1/datasets[/{name}]."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.service._state_helpers import (
    API_KEY,
    error_message,
    make_image_tree,
    make_settings,
    running_client,
    wait_for_job,
)

# Every test here runs on SQLite and on PostgreSQL (tests/service/conftest.py).
pytestmark = pytest.mark.usefixtures("state_database")


@pytest.fixture
def api(tmp_path: Path, shared_featurizer: Any) -> Iterator[Any]:
    with running_client(make_settings(tmp_path), shared_featurizer) as client:
        client.roots = tmp_path / "roots"  # type: ignore[attr-defined]
        yield client


def extraction(root: str, name: str, **extra: Any) -> dict[str, Any]:
    return {"root": root, "name": name, "layers": ["decaf6"], "batch_size": 8, **extra}


def test_extraction_end_to_end(api: Any) -> None:
    make_image_tree(api.roots / "pets", per_class=4)
    response = api.post("/v1/extractions", json=extraction("pets", "pets"))
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["kind"] == "extraction" and job["status"] in ("queued", "running")
    assert job["params"]["root"] == str((api.roots / "pets").resolve())
    done = wait_for_job(api, job["id"])
    assert done["status"] == "succeeded", done
    assert done["result"]["num_images"] == 8 and done["result"]["dataset"] == "pets"
    progress = done["progress"]
    assert progress["done"] == progress["total"] == 8 and progress["errors"] == 0
    assert {"images_per_s", "eta_s"} <= set(progress)

    listed = api.get("/v1/jobs").json()["jobs"]
    assert [j["id"] for j in listed] == [job["id"]]
    assert api.get("/v1/jobs", params={"status": "failed"}).json()["jobs"] == []
    assert len(api.get("/v1/jobs", params={"kind": "extraction"}).json()["jobs"]) == 1

    datasets = api.get("/v1/datasets").json()["datasets"]
    assert len(datasets) == 1
    summary = datasets[0]
    assert summary["name"] == "pets" and summary["complete"] is True
    assert summary["num_images"] == 8 and summary["num_classes"] == 2
    assert summary["layers"] == {"decaf6": 4096} and summary["job_id"] == job["id"]

    info = api.get("/v1/datasets/pets").json()
    assert info["class_counts"] == {"cat": 4, "dog": 4}
    assert info["complete"] is True and info["job_id"] == job["id"]
    assert info["manifest"]["weights_id"] == "random" and info["disk_bytes"] > 0


def test_second_extraction_with_the_same_name(api: Any) -> None:
    make_image_tree(api.roots / "pets", per_class=1)
    first = api.post("/v1/extractions", json=extraction("pets", "pets")).json()
    wait_for_job(api, first["id"])
    again = api.post("/v1/extractions", json=extraction("pets", "pets"))
    assert again.status_code == 409 and "overwrite" in error_message(again)
    replaced = api.post("/v1/extractions", json=extraction("pets", "pets", overwrite=True))
    assert replaced.status_code == 202
    assert wait_for_job(api, replaced.json()["id"])["status"] == "succeeded"


def test_extraction_busy_name_conflicts(api: Any) -> None:
    make_image_tree(api.roots / "pets", per_class=12)
    first = api.post("/v1/extractions", json=extraction("pets", "pets", part_size=8))
    busy = api.post("/v1/extractions", json=extraction("pets", "pets"))
    assert busy.status_code == 409 and "already being extracted" in error_message(busy)
    # Cancel it while it runs (or while queued): 202 while stopping, 200 once cancelled.
    cancelled = api.delete(f"/v1/jobs/{first.json()['id']}")
    assert cancelled.status_code in (200, 202)
    assert cancelled.json()["cancel_requested"] is True
    final = wait_for_job(api, first.json()["id"])
    assert final["status"] in ("cancelled", "succeeded")  # a fast machine may finish first
    if final["status"] == "cancelled":
        assert final["note"] == "cancelled by request" or final["started_at"] is None


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"name": "x"}, "root"),
        ({"root": "pets"}, "name"),
        ({"root": "pets", "name": "../evil"}, "name"),
        ({"root": "pets", "name": "x", "layers": ["fc9"]}, "unknown layer"),
        ({"root": "pets", "name": "x", "layers": []}, "layers"),
        ({"root": "pets", "name": "x", "crop": "random"}, "crop"),
        ({"root": "pets", "name": "x", "precision": "fp8"}, "precision"),
        ({"root": "pets", "name": "x", "batch_size": 0}, "batch_size"),
        ({"root": "pets", "name": "x", "engine": "spark"}, "engine"),
        ({"root": "pets", "name": "x", "engine": "ray", "concurrency": 0}, "concurrency"),
        ({"root": "pets", "name": "x", "engine": "ray", "num_gpus_per_worker": -1}, "num_gpus"),
        ({"root": "pets", "name": "x", "concurrency": 2}, '"engine": "ray"'),
        ({"root": "pets", "name": "x", "num_gpus_per_worker": 1}, "num_gpus_per_worker"),
        ({"root": "pets", "name": "x", "ray_address": "evil:6379"}, "ray_address"),
        ({"root": "pets", "name": "x", "colour": "red"}, "colour"),
        ({"root": "", "name": "x"}, "root"),
    ],
)
def test_extraction_validation_errors(api: Any, body: dict, fragment: str) -> None:
    response = api.post("/v1/extractions", json=body)
    assert response.status_code == 422, response.text
    assert fragment in error_message(response)


def test_ray_engine_is_accepted_by_the_schema(api: Any) -> None:
    from service.schemas import ExtractionRequest

    request = ExtractionRequest(
        root="pets", name="x", engine="ray", num_gpus_per_worker=0.5, concurrency=2
    )
    assert (request.engine, request.num_gpus_per_worker, request.concurrency) == ("ray", 0.5, 2)
    schema = api.get("/openapi.json").json()["components"]["schemas"]["ExtractionRequest"]
    assert schema["properties"]["engine"]["enum"] == ["local", "ray"]
    assert "ray_address" not in schema["properties"]  # the cluster is the server's choice


def test_ray_engine_without_ray_is_refused_at_submit(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from featurizer.engines import ray as ray_engine

    # What `import ray` does when the extra is not installed.
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(ray_engine.EngineUnavailableError):
        ray_engine.import_ray()
    make_image_tree(api.roots / "pets", per_class=1)
    response = api.post("/v1/extractions", json=extraction("pets", "pets", engine="ray"))
    assert response.status_code == 501, response.text
    message = error_message(response)
    assert ray_engine.INSTALL_HINT in message and "engine" in message
    assert api.get("/v1/jobs").json()["jobs"] == []  # nothing was queued


@pytest.mark.ray
@pytest.mark.slow
def test_ray_engine_job_writes_the_same_store_as_the_local_engine(api: Any) -> None:
    pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from featurizer.store import load_features, read_manifest

    make_image_tree(api.roots / "pets", per_class=4, size=32)  # 8 tiny images
    (api.roots / "pets" / "cat" / "broken.jpg").write_bytes(b"not an image")
    ids = {}
    for engine in ("local", "ray"):
        body = extraction("pets", f"pets-{engine}", engine=engine, part_size=5)
        response = api.post("/v1/extractions", json=body)
        assert response.status_code == 202, response.text
        ids[engine] = response.json()["id"]
    done = {engine: wait_for_job(api, job_id, timeout_s=180) for engine, job_id in ids.items()}
    for engine, job in done.items():
        assert job["status"] == "succeeded", (engine, job)
        assert job["result"]["num_images"] == 8 and job["result"]["num_errors"] == 1
        assert job["progress"]["done"] == job["progress"]["total"] == 9
    assert done["ray"]["params"]["engine"] == "ray"
    info = api.get("/v1/datasets/pets-ray").json()
    assert info["complete"] is True and info["class_counts"] == {"cat": 4, "dog": 4}
    stores = {engine: Path(job["result"]["store"]) for engine, job in done.items()}
    assert read_manifest(stores["ray"])["engine"] == "ray"
    x_local, y_local, paths_local = load_features(stores["local"], "decaf6")
    x_ray, y_ray, paths_ray = load_features(stores["ray"], "decaf6")
    assert paths_ray == paths_local and len(paths_ray) == 8
    assert list(y_ray) == list(y_local)
    assert x_ray.shape == x_local.shape == (8, 4096)
    # Same random weights, same preprocessing: the same features up to float rounding.
    assert float(abs(x_ray - x_local).max()) < 1e-4 and float(abs(x_ray).max()) > 0


def test_extraction_root_must_stay_inside_the_data_roots(api: Any, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    make_image_tree(secret, per_class=1)
    os.symlink(secret, api.roots / "link-out")
    for root in ("../secret", str(secret), "link-out", "/etc", "pets/../../secret"):
        response = api.post("/v1/extractions", json=extraction(root, "steal"))
        assert response.status_code == 403, (root, response.text)
        assert "outside the allowed data roots" in error_message(response)
    missing = api.post("/v1/extractions", json=extraction("nowhere", "x"))
    assert missing.status_code == 404 and "does not exist" in error_message(missing)
    assert api.get("/v1/jobs").json()["jobs"] == []  # nothing was queued


def test_extraction_without_data_roots_is_refused(tmp_path: Path, shared_featurizer: Any) -> None:
    settings = make_settings(tmp_path, data_roots=[])
    with running_client(settings, shared_featurizer) as client:
        response = client.post("/v1/extractions", json=extraction(str(tmp_path), "x"))
    assert response.status_code == 403
    assert "DECAF_DATA_ROOTS" in error_message(response)


def test_not_found_and_conflicts(api: Any) -> None:
    unknown_id = "0" * 32  # well formed (ids are uuid4 hex), but no such job
    assert api.get(f"/v1/jobs/{unknown_id}").status_code == 404
    assert "not found" in error_message(api.get(f"/v1/jobs/{unknown_id}"))
    assert api.delete(f"/v1/jobs/{unknown_id}").status_code == 404
    assert api.get("/v1/jobs/nope").status_code == 422  # not an id: the path pattern refuses it
    assert api.get("/v1/datasets/nope").status_code == 404
    bad = api.get("/v1/datasets/bad name!")
    assert bad.status_code == 422 and "should match pattern" in error_message(bad)
    assert api.get("/v1/jobs", params={"status": "bogus"}).status_code == 422
    assert api.get("/v1/jobs", params={"limit": 0}).status_code == 422
    make_image_tree(api.roots / "one", per_class=1)
    job = api.post("/v1/extractions", json=extraction("one", "one")).json()
    wait_for_job(api, job["id"])
    finished = api.delete(f"/v1/jobs/{job['id']}")
    assert finished.status_code == 409 and "already finished" in error_message(finished)


def test_failed_job_is_reported(api: Any) -> None:
    (api.roots / "empty").mkdir()
    job = api.post("/v1/extractions", json=extraction("empty", "empty")).json()
    failed = wait_for_job(api, job["id"])
    assert failed["status"] == "failed" and "no files" in failed["error"]
    # A store that was never written is not listed as a dataset.
    assert api.get("/v1/datasets").json()["datasets"] == []


ROUTES = [
    ("post", "/v1/extractions"),
    ("get", "/v1/jobs"),
    ("get", "/v1/jobs/some-id"),
    ("delete", "/v1/jobs/some-id"),
    ("get", "/v1/datasets"),
    ("get", "/v1/datasets/some-name"),
]


def test_api_key_protects_every_route(tmp_path: Path, shared_featurizer: Any) -> None:
    settings = make_settings(tmp_path, api_key=API_KEY)
    make_image_tree(tmp_path / "roots" / "pets", per_class=1)
    with running_client(settings, shared_featurizer) as client:
        for method, path in ROUTES:
            kwargs: dict[str, Any] = {}
            if method == "post":
                kwargs["json"] = extraction("pets", "pets")
            missing = client.request(method, path, **kwargs)
            assert missing.status_code == 401, (path, missing.text)
            wrong = client.request(method, path, headers={"X-API-Key": "wrong"}, **kwargs)
            assert wrong.status_code == 401, path
            ok = client.request(method, path, headers={"X-API-Key": API_KEY}, **kwargs)
            assert ok.status_code not in (401, 403), (path, ok.text)
        bearer = client.get("/v1/jobs", headers={"Authorization": f"Bearer {API_KEY}"})
        assert bearer.status_code == 200
        jobs = bearer.json()["jobs"]
        assert len(jobs) == 1  # the authorised POST queued a job
        wait_for_job(client, jobs[0]["id"], headers={"X-API-Key": API_KEY})


def test_no_api_key_configured_means_open(api: Any) -> None:
    assert api.get("/v1/jobs").status_code == 200
    assert api.get("/v1/datasets").status_code == 200
