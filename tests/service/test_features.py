"""POST /v1/features and GET /v1/model (in-process client; batching tests use a real server)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from featurizer.decode_tensor import prepare_image
from tests.service._service_helpers import jpeg_bytes, png_bytes, problem


def reference(featurizer, data: bytes, layers, crop: str = "center") -> dict[str, np.ndarray]:
    """Features of one image computed directly with the featurizer (batch of one)."""
    tensor = prepare_image(data, featurizer.preprocess, crop, decoder=featurizer.decoder)
    out = featurizer.forward(torch.stack([tensor]), layers=list(layers))
    return {name: array[0] for name, array in out.items()}


def assert_close(actual, expected) -> None:
    expected = np.asarray(expected, dtype=np.float32)
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(
        np.asarray(actual, np.float32), expected, rtol=1e-5, atol=1e-5 * scale
    )


def files(*items: tuple[str, bytes, str]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", item) for item in items]


def test_single_image_default_layer_matches_featurizer(client, shared_featurizer, image_bytes):
    response = client.post("/v1/features", files=files(("a.jpg", image_bytes[0], "image/jpeg")))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["options"] == {
        "layers": ["decaf6"],
        "crop": "center",
        "normalize": "none",
        "dtype": "float32",
    }
    assert body["model"]["backbone"] == "alexnet"
    assert body["model"]["weights_id"] == "random"
    [result] = body["results"]
    assert result["filename"] == "a.jpg" and result["error"] is None
    assert list(result["features"]) == ["decaf6"]
    assert len(result["features"]["decaf6"]) == 4096
    assert_close(
        result["features"]["decaf6"],
        reference(shared_featurizer, image_bytes[0], ["decaf6"])["decaf6"],
    )


def test_many_images_keep_order_and_one_bad_file_does_not_spoil_others(
    client, shared_featurizer, image_bytes
):
    response = client.post(
        "/v1/features",
        params={"layers": "decaf5,decaf7"},
        files=files(
            ("first.jpg", image_bytes[1], "image/jpeg"),
            ("broken.jpg", b"\xff\xd8\xff\xe0 not really", "image/jpeg"),
            ("third.png", png_bytes(3), "image/png"),
        ),
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["filename"] for r in results] == ["first.jpg", "broken.jpg", "third.png"]
    assert results[1]["features"] is None and results[1]["error"]
    for index, data in ((0, image_bytes[1]), (2, png_bytes(3))):
        expected = reference(shared_featurizer, data, ["decaf5", "decaf7"])
        assert set(results[index]["features"]) == {"decaf5", "decaf7"}
        assert len(results[index]["features"]["decaf5"]) == 9216
        for layer in ("decaf5", "decaf7"):
            assert_close(results[index]["features"][layer], expected[layer])


def test_options_as_form_fields_l2_and_float16(client, shared_featurizer, image_bytes):
    response = client.post(
        "/v1/features",
        data={"layers": "decaf7", "normalize": "l2", "dtype": "float16"},
        files=files(("a.jpg", image_bytes[2], "application/octet-stream")),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["options"]["normalize"] == "l2" and body["options"]["dtype"] == "float16"
    vector = np.array(body["results"][0]["features"]["decaf7"])
    assert vector.shape == (4096,)
    assert abs(np.linalg.norm(vector) - 1.0) < 1e-2
    expected = reference(shared_featurizer, image_bytes[2], ["decaf7"])["decaf7"]
    expected = (expected / np.linalg.norm(expected)).astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(vector, expected, atol=1e-3)
    # float16 values are exactly representable in float16
    assert np.array_equal(vector.astype(np.float16).astype(np.float64), vector)


def test_tencrop_request_matches_tencrop_preprocessing(client, shared_featurizer, image_bytes):
    response = client.post(
        "/v1/features",
        params={"crop": "tencrop", "layers": "decaf6"},
        files=files(("a.jpg", image_bytes[3], "image/jpeg")),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["preprocessing"]["crop_mode"] == "tencrop"
    expected = reference(shared_featurizer, image_bytes[3], ["decaf6"], crop="tencrop")["decaf6"]
    center = reference(shared_featurizer, image_bytes[3], ["decaf6"])["decaf6"]
    assert_close(body["results"][0]["features"]["decaf6"], expected)
    assert not np.allclose(expected, center)  # the crop mode really changed something


def test_layers_all(client, image_bytes):
    response = client.post(
        "/v1/features",
        params={"layers": "all"},
        files=files(("a.jpg", image_bytes[0], "image/jpeg")),
    )
    assert response.status_code == 200
    features = response.json()["results"][0]["features"]
    assert {name: len(v) for name, v in features.items()} == {
        "decaf5": 9216,
        "decaf6_pre": 4096,
        "decaf6": 4096,
        "decaf7_pre": 4096,
        "decaf7": 4096,
        "logits": 1000,
    }
    # fc6 before ReLU has negative entries, after ReLU none: the taps are really different
    assert min(features["decaf6_pre"]) < 0 <= min(features["decaf6"])


def test_npy_response_for_one_layer(client, shared_featurizer, image_bytes):
    response = client.post(
        "/v1/features",
        params={"layers": "decaf7"},
        headers={"Accept": "application/x-npy"},
        files=files(("a.jpg", image_bytes[4], "image/jpeg"), ("b.jpg", b"", "image/jpeg")),
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-npy"
    array = np.load(io.BytesIO(response.content), allow_pickle=False)
    assert array.shape == (1, 4096) and array.dtype == np.float32
    assert_close(array[0], reference(shared_featurizer, image_bytes[4], ["decaf7"])["decaf7"])
    assert json.loads(response.headers["X-Decaf-Filenames"]) == ["a.jpg"]
    [failed] = json.loads(response.headers["X-Decaf-Errors"])
    assert failed["index"] == 1 and failed["filename"] == "b.jpg" and "empty" in failed["detail"]
    assert failed["type"] == "/problems/image-decode" and failed["status"] == 422


def test_npy_with_several_layers_is_406(client, image_bytes):
    response = client.post(
        "/v1/features",
        params={"layers": "decaf6,decaf7"},
        headers={"Accept": "application/x-npy"},
        files=files(("a.jpg", image_bytes[0], "image/jpeg")),
    )
    body = problem(response, 406, "/problems/not-acceptable")
    assert "application/x-npz" in body["detail"]


def test_npz_response_for_several_images_and_layers(client, image_bytes):
    response = client.post(
        "/v1/features",
        params={"layers": "decaf6,decaf7", "format": "npz", "dtype": "float16"},
        files=files(
            ("a.jpg", image_bytes[0], "image/jpeg"),
            ("notes.txt", b"hello", "text/plain"),
            ("c.jpg", image_bytes[1], "image/jpeg"),
        ),
    )
    assert response.status_code == 200, response.text
    with np.load(io.BytesIO(response.content), allow_pickle=False) as npz:
        assert npz["decaf6"].shape == (2, 4096) and npz["decaf6"].dtype == np.float16
        assert npz["decaf7"].shape == (2, 4096)
        assert list(npz["filenames"]) == ["a.jpg", "c.jpg"]
        assert list(npz["failed_filenames"]) == ["notes.txt"]
        assert "unsupported content type" in str(npz["failed_errors"][0])


@pytest.mark.parametrize(
    ("params", "needle", "kind"),
    [
        ({"layers": "decaf9"}, "decaf9", "/problems/unknown-layer"),
        ({"crop": "diagonal"}, "crop must be one of", "/problems/invalid-option"),
        ({"normalize": "l3"}, "normalize must be", "/problems/invalid-option"),
        ({"dtype": "int4"}, "dtype must be", "/problems/invalid-option"),
        ({"format": "xml"}, "format must be", "/problems/invalid-option"),
        ({"backbone": "vgg99"}, "loaded: ['alexnet']", "/problems/unknown-backbone"),
    ],
)
def test_bad_options_are_422_with_a_clear_message(client, image_bytes, params, needle, kind):
    response = client.post(
        "/v1/features", params=params, files=files(("a.jpg", image_bytes[0], "image/jpeg"))
    )
    assert needle in problem(response, 422, kind)["detail"]


def test_layer_not_offered_by_this_server(make_app, image_bytes):
    from fastapi.testclient import TestClient

    with TestClient(make_app(layers=["decaf6"])) as client:
        response = client.post(
            "/v1/features",
            params={"layers": "decaf7"},
            files=files(("a.jpg", image_bytes[0], "image/jpeg")),
        )
        body = problem(response, 422, "/problems/unknown-layer")
        assert "offers ['decaf6']" in body["detail"]
        assert client.get("/v1/model").json()["offered_layers"] == ["decaf6"]


def test_missing_images_field_is_422(client):
    response = client.post("/v1/features", data={"layers": "decaf6"})
    body = problem(response, 422, "/problems/invalid-request")
    assert "images" in body["detail"]
    assert [e["loc"] for e in body["errors"]] == [["body", "images"]]
    assert body["errors"][0]["code"] == "missing" and body["errors"][0]["detail"]


def test_get_model_describes_backbone_layers_and_preprocessing(client):
    response = client.get("/v1/model")
    assert response.status_code == 200
    model = response.json()
    assert model["backbone"] == "alexnet" and model["weights_id"] == "random"
    assert model["layers"]["decaf5"] == 9216 and model["layers"]["logits"] == 1000
    assert model["preprocessing"]["resize"] == 256 and model["preprocessing"]["crop"] == 224
    assert model["default_layers"] == ["decaf6"]
    assert model["crop_modes"] == ["center", "tencrop"]
    assert model["batching"]["max_batch_size"] == 32
    assert model["limits"]["max_upload_bytes"] == 20 * 1024 * 1024


def test_unknown_route_is_404_json(client):
    response = client.get("/v1/does-not-exist")
    body = problem(response, 404, "about:blank")
    assert body["title"] == "Not Found" and "/v1/does-not-exist" in body["detail"]


def test_wrong_method_is_405(client):
    response = client.get("/v1/features")
    body = problem(response, 405, "about:blank")
    assert body["title"] == "Method Not Allowed" and response.headers["Allow"] == "POST, OPTIONS"


def test_openapi_and_docs(client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/v1/features" in spec["paths"] and "/v1/model" in spec["paths"]
    assert "/healthz" in spec["paths"]


def test_model_not_loaded_answers_503(app, image_bytes):
    from fastapi.testclient import TestClient

    client = TestClient(app)  # no `with`: the lifespan (model loading) has not run
    response = client.post("/v1/features", files=files(("a.jpg", image_bytes[0], "image/jpeg")))
    problem(response, 503, "/problems/not-ready")
    assert response.headers["Retry-After"] == "5"
    problem(client.get("/v1/model"), 503, "/problems/not-ready")


def test_distinct_images_give_distinct_features(client, image_bytes):
    response = client.post(
        "/v1/features",
        files=files(
            ("a.jpg", image_bytes[5], "image/jpeg"), ("b.jpg", jpeg_bytes(99), "image/jpeg")
        ),
    )
    first, second = (np.array(r["features"]["decaf6"]) for r in response.json()["results"])
    assert not np.allclose(first, second)
