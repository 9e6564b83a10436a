"""Several backbones in one server: each loaded once with its own micro-batcher, picked per request.

Only AlexNet exists on this branch, so a second backbone, `alexnet_twin`, is registered for these
tests only: the same architecture under another name, served with other layers. Everything else is
real (real featurizers, batchers, jobs, probes); routing is checked on each backbone's batcher.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from featurizer.extractor import Featurizer
from service.app import create_app
from service.settings import Settings
from tests.service._service_helpers import problem
from tests.service._state_helpers import (
    CLASS_COLOURS,
    image_bytes,
    make_image_tree,
    make_settings,
    wait_for_job,
)

TWIN = "alexnet_twin"
TWIN_LAYERS = ("decaf5", "decaf7")


@pytest.fixture(scope="module")
def twin_registered() -> Iterator[None]:
    """Register `alexnet_twin` (AlexNet's record under another name) for this module only.

    A second real backbone (ResNet-50, ViT) would cost seconds per test on 2 cores; a renamed
    AlexNet exercises the same routing with the cheapest real model.
    """
    from featurizer import backbones

    twin = dataclasses.replace(backbones.get_backbone("alexnet"), name=TWIN)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(backbones._REGISTRY, TWIN, twin)
        yield


@pytest.fixture(scope="module")
def twin(twin_registered: None) -> Featurizer:
    return Featurizer(layers=TWIN_LAYERS, weights="random", backbone=TWIN)


@pytest.fixture
def two(tmp_path: Path, shared_featurizer: Featurizer, twin: Featurizer) -> Iterator[TestClient]:
    """A server with alexnet (default, layers decaf6+decaf7) and the twin."""
    make_image_tree(tmp_path / "roots" / "pets", per_class=3)
    app = create_app(
        make_settings(tmp_path), featurizers={"alexnet": shared_featurizer, TWIN: twin}
    )
    with TestClient(app) as client:
        yield client


def batchers(client: TestClient) -> dict[str, Any]:
    return {model.name: model.batcher for model in client.app.state.models}


def upload(label: str, seed: int, field: str = "files") -> tuple[str, tuple[str, bytes, str]]:
    data = image_bytes(CLASS_COLOURS[label], seed=seed)
    return (field, (f"{label}-{seed}.jpg", data, "image/jpeg"))


# --------------------------------------------------------------------------- settings
def test_settings_list_backbones_default_first(twin_registered: None, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, backbones=f"{TWIN},alexnet,{TWIN}")
    assert settings.served_backbones == (TWIN, "alexnet") and settings.default_backbone == TWIN
    single = make_settings(tmp_path, backbone=TWIN)
    assert single.served_backbones == (TWIN,)
    assert make_settings(tmp_path, backbone="alexnet", backbones=["alexnet", TWIN]).backbones


def test_settings_refuse_unknown_or_contradicting_backbones(
    twin_registered: None, tmp_path: Path
) -> None:
    with pytest.raises(ValidationError, match=r"unknown backbone\(s\) \['vgg99'\]"):
        make_settings(tmp_path, backbones="alexnet,vgg99")
    with pytest.raises(ValidationError, match="disagrees with DECAF_BACKBONES"):
        make_settings(tmp_path, backbone="alexnet", backbones=[TWIN, "alexnet"])


def test_backbones_from_the_environment(
    twin_registered: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DECAF_BACKBONES", f"alexnet,{TWIN}")
    assert Settings().served_backbones == ("alexnet", TWIN)


# --------------------------------------------------------------------------- /v1/model
def test_model_lists_every_backbone_and_keeps_the_default_on_top(two: TestClient) -> None:
    model = two.get("/v1/model").json()
    assert model["default_backbone"] == "alexnet" and model["backbone"] == "alexnet"
    assert model["layers"] == {"decaf6": 4096, "decaf7": 4096}  # DECAF_LAYERS of the default
    assert model["offered_layers"] == ["decaf6", "decaf7"] and model["default_layers"] == ["decaf6"]
    default, other = model["backbones"]
    assert default["backbone"] == "alexnet" and default["layers"] == model["layers"]
    assert other["backbone"] == TWIN and other["weights_id"] == "random"
    assert other["layers"] == {"decaf5": 9216, "decaf7": 4096}  # all of the twin's own layers
    assert other["default_layers"] == ["decaf7"]  # its first default tap that it serves
    assert other["preprocessing"]["crop"] == 224 and other["device"] == "cpu"
    assert other["precision"] == "fp32"


# --------------------------------------------------------------------------- features
def test_backbone_query_routes_to_that_backbones_batcher(two: TestClient) -> None:
    files = [upload("cat", 1, "images")]
    response = two.post("/v1/features", params={"backbone": TWIN}, files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["backbone"] == TWIN
    assert body["options"]["layers"] == ["decaf7"]  # the twin's default layer
    assert len(body["results"][0]["features"]["decaf7"]) == 4096
    used = batchers(two)
    assert used[TWIN].images_processed == 1 and used["alexnet"].images_processed == 0

    as_form = two.post("/v1/features", data={"backbone": TWIN, "layers": "decaf5"}, files=files)
    assert as_form.json()["model"]["backbone"] == TWIN
    assert len(as_form.json()["results"][0]["features"]["decaf5"]) == 9216
    default = two.post("/v1/features", files=files)
    assert default.json()["model"]["backbone"] == "alexnet"
    assert used["alexnet"].images_processed == 1 and used[TWIN].images_processed == 2


def test_unknown_backbone_and_layers_of_another_backbone_are_refused(two: TestClient) -> None:
    files = [upload("cat", 1, "images")]
    unknown = two.post("/v1/features", params={"backbone": "resnet50"}, files=files)
    detail = problem(unknown, 422, "/problems/unknown-backbone")["detail"]
    assert "'resnet50'" in detail and f"loaded: ['alexnet', '{TWIN}']" in detail
    # decaf6 exists on the architecture, but the twin does not serve it.
    wrong = two.post("/v1/features", params={"backbone": TWIN, "layers": "decaf6"}, files=files)
    detail = problem(wrong, 422, "/problems/unknown-layer")["detail"]
    assert f"backbone {TWIN} on this server offers ['decaf5', 'decaf7']" in detail
    assert all(b.images_processed == 0 for b in batchers(two).values())


# --------------------------------------------------------------------------- probes
def test_few_shot_probe_on_a_backbone_predicts_through_it(two: TestClient) -> None:
    files = [upload(label, seed) for seed, label in enumerate(["cat", "cat", "dog", "dog"])]
    labels = json.dumps(["cat", "cat", "dog", "dog"])
    created = two.post(
        "/v1/probes", files=files, data={"labels": labels, "backbone": TWIN, "C": "1.0"}
    )
    assert created.status_code == 201, created.text
    probe = created.json()
    assert probe["backbone"] == TWIN and probe["layer"] == "decaf7"
    assert probe["provenance"]["backbone"] == TWIN
    before = {name: b.images_processed for name, b in batchers(two).items()}
    predicted = two.post(f"/v1/probes/{probe['id']}/predict", files=[upload("dog", 9)])
    assert predicted.status_code == 200, predicted.text
    assert predicted.json()["backbone"] == TWIN
    after = {name: b.images_processed for name, b in batchers(two).items()}
    assert after[TWIN] == before[TWIN] + 1 and after["alexnet"] == before["alexnet"]


def test_a_probe_refuses_a_server_without_its_backbone(
    tmp_path: Path, shared_featurizer: Featurizer, twin: Featurizer
) -> None:
    settings = make_settings(tmp_path, layers=None)  # each serves all its layers
    files = [upload(label, seed) for seed, label in enumerate(["cat", "dog"])]
    with TestClient(create_app(settings, featurizers={TWIN: twin})) as client:
        created = client.post("/v1/probes", files=files, data={"labels": '["cat", "dog"]'})
        assert created.status_code == 201, created.text
        probe_id = created.json()["id"]
    with TestClient(create_app(settings, featurizer=shared_featurizer)) as client:
        refused = client.post(f"/v1/probes/{probe_id}/predict", files=[upload("cat", 3)])
        detail = problem(refused, 409, "/problems/probe-mismatch")["detail"]
        assert f"fitted on {TWIN} features" in detail and "loaded: ['alexnet']" in detail
        assert client.app.state.models.default.batcher.images_processed == 0


def test_extraction_and_dataset_fit_on_a_backbone(two: TestClient) -> None:
    body = {"root": "pets", "name": "pets-twin", "backbone": TWIN, "batch_size": 8}
    submitted = two.post("/v1/extractions", json=body)
    assert submitted.status_code == 202, submitted.text
    job = wait_for_job(two, submitted.json()["id"])
    assert job["status"] == "succeeded", job
    assert job["params"]["backbone"] == TWIN and job["params"]["layers"] == ["decaf6", "decaf7"]
    info = two.get("/v1/datasets/pets-twin").json()
    assert info["manifest"]["backbone"] == TWIN

    # Without a backbone the fit means the server's default, and the store holds twin features.
    mismatch = two.post("/v1/probes", json={"dataset": "pets-twin", "layer": "decaf7"})
    detail = problem(mismatch, 409, "/problems/probe-mismatch")["detail"]
    assert f"holds {TWIN} features, not alexnet" in detail
    fit = two.post("/v1/probes", json={"dataset": "pets-twin", "backbone": TWIN, "C": 1.0})
    assert fit.status_code == 202, fit.text
    done = wait_for_job(two, fit.json()["id"])
    assert done["status"] == "succeeded", done
    probe = two.get(f"/v1/probes/{done['result']['probe_id']}").json()
    assert probe["backbone"] == TWIN and probe["layer"] == "decaf7"


def test_extraction_validates_layers_against_the_chosen_backbone(two: TestClient) -> None:
    body = {"root": "pets", "name": "x", "backbone": TWIN, "layers": ["pool9"]}
    refused = two.post("/v1/extractions", json=body)
    detail = problem(refused, 422, "/problems/unknown-layer")["detail"]
    assert f"for backbone {TWIN}" in detail and "decaf6" in detail  # any tap, served or not
    unknown = two.post("/v1/extractions", json={**body, "backbone": "vgg99", "layers": None})
    problem(unknown, 422, "/problems/unknown-backbone")
    assert two.get("/v1/jobs").json()["jobs"] == []


def test_a_server_builds_every_configured_backbone(twin_registered: None, tmp_path: Path) -> None:
    """The real loading path: backbones from the settings, none preloaded."""
    settings = make_settings(tmp_path, backbones=[TWIN], layers=["decaf7"])
    with TestClient(create_app(settings)) as client:
        model = client.get("/v1/model").json()
        assert [b["backbone"] for b in model["backbones"]] == [TWIN]
        assert model["layers"] == {"decaf7": 4096}
        response = client.post("/v1/features", files=[upload("cat", 2, "images")])
        assert response.json()["model"]["backbone"] == TWIN
