"""Routes: POST /v1/probes (JSON → job, multipart few-shot → probe), GET/DELETE, predict."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.service._service_helpers import problem
from tests.service._state_helpers import (
    API_KEY,
    CLASS_COLOURS,
    error_message,
    image_bytes,
    make_image_tree,
    make_settings,
    running_client,
    wait_for_job,
)

# Every test here runs on SQLite and on PostgreSQL (tests/service/conftest.py).
pytestmark = pytest.mark.usefixtures("state_database")


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory: pytest.TempPathFactory, state_backend: str) -> Path:
    return tmp_path_factory.mktemp(f"probes-{state_backend}")


@pytest.fixture(scope="module")
def api(module_dir: Path, shared_featurizer: Any) -> Iterator[Any]:
    """One server for the module, with a 3-class store `pets` already extracted."""
    settings = make_settings(module_dir)
    make_image_tree(module_dir / "roots" / "pets", classes=("cat", "dog", "owl"), per_class=4)
    with running_client(settings, shared_featurizer) as client:
        job = client.post(
            "/v1/extractions",
            json={"root": "pets", "name": "pets", "layers": ["decaf6", "decaf7"], "batch_size": 8},
        ).json()
        assert wait_for_job(client, job["id"])["status"] == "succeeded"
        yield client


def upload(label: str, seed: int) -> tuple[str, tuple[str, bytes, str]]:
    return (
        "files",
        (f"{label}-{seed}.jpg", image_bytes(CLASS_COLOURS[label], seed=seed), "image/jpeg"),
    )


def few_shot_request(labels: list[str], **fields: str) -> dict[str, Any]:
    files = [upload(label, 100 + i) for i, label in enumerate(labels)]
    return {"files": files, "data": {"labels": json.dumps(labels), **fields}}


# --------------------------------------------------------------------------- from a dataset
def test_fit_from_dataset_as_a_job_then_predict(api: Any) -> None:
    body = {
        "dataset": "pets",
        "layer": "decaf7",
        "classifier": "logreg",
        "C": 1.0,
        "protocol": {"name": "stratified", "splits": 2, "train_fraction": 0.5},
        "name": "pets-probe",
    }
    response = api.post("/v1/probes", json=body)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["kind"] == "probe_fit" and response.headers["location"] == f"/v1/jobs/{job['id']}"
    done = wait_for_job(api, job["id"])
    assert done["status"] == "succeeded", done
    probe_id = done["result"]["probe_id"]

    detail = api.get(f"/v1/probes/{probe_id}").json()
    assert detail["classes"] == ["cat", "dog", "owl"] and detail["num_classes"] == 3
    assert detail["name"] == "pets-probe" and detail["source"] == "dataset"
    assert (
        detail["dataset"] == "pets"
        and detail["layer"] == "decaf7"
        and detail["job_id"] == job["id"]
    )
    assert detail["metrics"]["num_train"] == 12 and detail["metrics"]["C"] == 1.0
    assert detail["backbone"] == "alexnet" and detail["score_kind"] == "probability"
    assert "evaluation" in detail["metrics"]
    provenance = detail["provenance"]
    assert provenance["weights_id"] == "random" and provenance["layer"] == "decaf7"
    assert provenance["backbone"] == "alexnet" and provenance["dim"] == 4096
    assert any(p["id"] == probe_id for p in api.get("/v1/probes").json()["probes"])

    files = [upload("owl", 2), upload("cat", 1), ("files", ("bad.jpg", b"nope", "image/jpeg"))]
    predicted = api.post(f"/v1/probes/{probe_id}/predict", files=files, params={"top_k": 2})
    assert predicted.status_code == 200, predicted.text
    result = predicted.json()
    assert result["probe_id"] == probe_id and result["layer"] == "decaf7"
    assert result["backbone"] == "alexnet" and result["score_kind"] == "probability"
    owl, cat, bad = result["results"]
    for item in (owl, cat):
        scores = [p["score"] for p in item["predictions"]]
        assert len(scores) == 2 and scores == sorted(scores, reverse=True)
        assert 0.0 <= scores[1] <= scores[0] <= 1.0
    # Training images of clearly different colours: the top label is right.
    assert owl["predictions"][0]["label"] == "owl" and cat["predictions"][0]["label"] == "cat"
    assert bad["predictions"] is None and bad["error"] and bad["filename"] == "bad.jpg"
    everything = api.post(
        f"/v1/probes/{probe_id}/predict", files=[upload("dog", 0)], params={"top_k": 50}
    )
    assert len(everything.json()["results"][0]["predictions"]) == 3  # capped at the classes


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"layer": "decaf6"}, "dataset"),
        ({"dataset": "pets", "layer": "fc9"}, "unknown layer"),
        ({"dataset": "pets", "C": -1}, "C"),
        ({"dataset": "pets", "C": "sometimes"}, "C"),
        ({"dataset": "pets", "classifier": "tree"}, "classifier"),
        ({"dataset": "pets", "protocol": {"name": "imagenet"}}, "protocol"),
        ({"dataset": "../etc"}, "dataset"),
        ({"dataset": "pets", "unknown": 1}, "unknown"),
    ],
)
def test_dataset_fit_validation_errors(api: Any, body: dict, fragment: str) -> None:
    response = api.post("/v1/probes", json=body)
    assert response.status_code == 422, response.text
    assert fragment in error_message(response)


def test_dataset_fit_not_found_and_bad_layer(api: Any) -> None:
    missing = api.post("/v1/probes", json={"dataset": "nope"})
    assert missing.status_code == 404 and "not found" in error_message(missing)
    problem(missing, 404, "/problems/dataset-not-found")
    absent = api.post("/v1/probes", json={"dataset": "pets", "layer": "decaf5"})
    assert "available" in problem(absent, 422, "/problems/unknown-layer")["detail"]
    broken = api.post(
        "/v1/probes", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert "invalid JSON" in problem(broken, 400, "/problems/malformed-body")["detail"]
    plain = api.post("/v1/probes", content=b"hello", headers={"content-type": "text/plain"})
    assert plain.status_code == 415 and "multipart/form-data" in error_message(plain)
    problem(plain, 415, "/problems/unsupported-media-type")


# --------------------------------------------------------------------------- few-shot
def test_few_shot_fit_skips_bad_images(api: Any) -> None:
    request = few_shot_request(["cat", "cat", "dog", "dog", "owl", "owl"], name="few", C="1.0")
    request["files"].append(("files", ("broken.jpg", b"\xff\xd8\xff truncated", "image/jpeg")))
    request["data"]["labels"] = json.dumps(["cat", "cat", "dog", "dog", "owl", "owl", "cat"])
    response = api.post("/v1/probes", **request)
    assert response.status_code == 201, response.text
    probe = response.json()
    assert response.headers["location"] == f"/v1/probes/{probe['id']}"
    assert probe["source"] == "upload" and probe["classes"] == ["cat", "dog", "owl"]
    assert probe["metrics"]["num_train"] == 6 and probe["metrics"]["num_skipped"] == 1
    assert [s["filename"] for s in probe["skipped"]] == ["broken.jpg"]
    assert probe["provenance"]["layer"] == "decaf6"  # the default layer
    predicted = api.post(f"/v1/probes/{probe['id']}/predict", files=[upload("dog", 101)])
    assert predicted.json()["results"][0]["predictions"][0]["label"] == "dog"


def test_few_shot_labels_as_repeated_fields(api: Any) -> None:
    files = [upload("cat", 1), upload("dog", 2)]
    response = api.post(
        "/v1/probes", files=files, data={"labels": ["cat", "dog"], "C": "0.5", "layer": "decaf7"}
    )
    assert response.status_code == 201, response.text
    assert response.json()["metrics"]["C"] == 0.5 and response.json()["layer"] == "decaf7"


@pytest.mark.parametrize(
    ("labels", "fields", "status", "fragment"),
    [
        (["cat", "dog", "dog"], {"labels": json.dumps(["cat", "dog"])}, 422, "2 labels"),
        (["cat", "dog"], {"labels": "[not json"}, 422, "not valid JSON"),
        (["cat", "dog"], {"labels": json.dumps(["cat", ""])}, 422, "non-empty"),
        (["cat", "cat"], {}, 422, "at least 2 classes"),
        (["cat", "dog"], {"classifier": "forest"}, 422, "classifier"),
        (["cat", "dog"], {"C": "-3"}, 422, "C"),
        (["cat", "dog"], {"layer": "decaf5"}, 422, "not served"),
        (["cat", "dog"], {"name": "bad name"}, 422, "name"),
    ],
)
def test_few_shot_errors(
    api: Any, labels: list[str], fields: dict, status: int, fragment: str
) -> None:
    request = few_shot_request(labels)
    request["data"].update(fields)
    response = api.post("/v1/probes", **request)
    assert response.status_code == status, response.text
    assert fragment in error_message(response)


def test_few_shot_without_files(api: Any) -> None:
    response = api.post("/v1/probes", data={"labels": "[]"}, files={"other": ("x", b"y")})
    assert response.status_code == 422 and "no images" in error_message(response)


def test_svm_scores_are_margins_not_probabilities(api: Any) -> None:
    request = few_shot_request(["cat", "cat", "dog", "dog", "owl", "owl"], classifier="svm")
    request["data"]["C"] = "1.0"
    created = api.post("/v1/probes", **request)
    assert created.status_code == 201, created.text
    probe = created.json()
    assert probe["classifier"] == "svm" and probe["score_kind"] == "margin"
    listed = {p["id"]: p for p in api.get("/v1/probes").json()["probes"]}
    assert listed[probe["id"]]["score_kind"] == "margin"
    predicted = api.post(
        f"/v1/probes/{probe['id']}/predict", files=[upload("owl", 7)], params={"top_k": 3}
    )
    assert predicted.status_code == 200, predicted.text
    result = predicted.json()
    assert result["score_kind"] == "margin"
    scores = [p["score"] for p in result["results"][0]["predictions"]]
    assert scores == sorted(scores, reverse=True)
    # One-vs-rest margins: the runners-up lie on the wrong side of their hyperplanes. These are
    # not probabilities (they neither sum to 1 nor stay in [0, 1]).
    assert scores[-1] < 0 and abs(sum(scores) - 1.0) > 1e-3
    assert result["results"][0]["predictions"][0]["label"] == "owl"


# --------------------------------------------------------------------------- get / delete
def test_delete_probe(api: Any) -> None:
    created = api.post("/v1/probes", **few_shot_request(["cat", "dog"])).json()
    probe_dir = Path(api.app.state.settings.data_dir).resolve() / "probes" / created["id"]
    assert probe_dir.is_dir()
    assert api.delete(f"/v1/probes/{created['id']}").status_code == 204
    assert not probe_dir.exists()
    assert api.get(f"/v1/probes/{created['id']}").status_code == 404
    assert api.delete(f"/v1/probes/{created['id']}").status_code == 404
    gone = api.post(f"/v1/probes/{created['id']}/predict", files=[upload("cat", 1)])
    assert gone.status_code == 404
    assert all(p["id"] != created["id"] for p in api.get("/v1/probes").json()["probes"])


def test_predict_validation(api: Any) -> None:
    probe = api.post("/v1/probes", **few_shot_request(["cat", "dog"])).json()
    url = f"/v1/probes/{probe['id']}/predict"
    assert api.post(url, files=[upload("cat", 1)], params={"top_k": 0}).status_code == 422
    assert api.post(url, data={"x": "1"}).status_code == 422  # no files
    assert api.get("/v1/probes/" + "0" * 32).status_code == 404
    assert api.get("/v1/probes/unknown").status_code == 422  # not an id (uuid4 hex)


# --------------------------------------------------------------------------- auth
def test_api_key_on_probe_routes(tmp_path: Path, shared_featurizer: Any) -> None:
    settings = make_settings(tmp_path, api_key=API_KEY)
    with running_client(settings, shared_featurizer) as client:
        routes = [
            ("post", "/v1/probes", few_shot_request(["cat", "dog"])),
            ("get", "/v1/probes", {}),
            ("get", "/v1/probes/x", {}),
            ("delete", "/v1/probes/x", {}),
            ("post", "/v1/probes/x/predict", {"files": [upload("cat", 1)]}),
        ]
        for method, path, kwargs in routes:
            assert client.request(method, path, **kwargs).status_code == 401, path
        key = {"X-API-Key": API_KEY}
        created = client.post("/v1/probes", headers=key, **few_shot_request(["cat", "dog"]))
        assert created.status_code == 201, created.text
        probe_id = created.json()["id"]
        assert client.get("/v1/probes", headers=key).json()["probes"][0]["id"] == probe_id
        assert client.get(f"/v1/probes/{probe_id}", headers=key).status_code == 200
        predicted = client.post(
            f"/v1/probes/{probe_id}/predict", headers=key, files=[upload("cat", 1)]
        )
        assert predicted.status_code == 200
        assert client.delete(f"/v1/probes/{probe_id}", headers=key).status_code == 204


# --------------------------------------------------------------------------- OpenAPI
def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def test_openapi_documents_both_probe_bodies(api: Any) -> None:
    spec = api.get("/openapi.json").json()
    body = spec["paths"]["/v1/probes"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert "dataset" in body["application/json"]["schema"]["properties"]
    assert {"files", "labels"} <= set(body["multipart/form-data"]["schema"]["properties"])
    assert "labels" in spec["paths"]["/v1/probes"]["post"]["description"]
    for path in ("/v1/extractions", "/v1/jobs/{job_id}", "/v1/datasets/{name}",
                 "/v1/probes/{probe_id}/predict"):  # fmt: skip
        assert path in spec["paths"], path
    schemas = spec["components"]["schemas"]
    for ref in _refs(spec):
        assert ref.startswith("#/components/schemas/") and ref.split("/")[-1] in schemas, ref


def test_predict_refuses_a_probe_from_other_weights(api: Any) -> None:
    probe = api.post("/v1/probes", **few_shot_request(["cat", "dog"])).json()
    probe_json = (
        Path(api.app.state.settings.data_dir).resolve() / "probes" / probe["id"] / "probe.json"
    )
    document = json.loads(probe_json.read_text())
    document["weights_id"] = "alexnet/IMAGENET1K_V1"  # as if fitted on ImageNet features
    probe_json.write_text(json.dumps(document))
    response = api.post(f"/v1/probes/{probe['id']}/predict", files=[upload("cat", 1)])
    assert response.status_code == 409, response.text
    assert "weights_id" in error_message(response)
