"""Saving and loading probes: identical predictions, no pickle, mismatch refusal."""

from __future__ import annotations

import json

import numpy as np
import pytest

from classifiers import (
    LinearProbe,
    ProbeError,
    ProbeMismatchError,
    check_compatible,
    load_probe,
    provenance_from_manifest,
    save_probe,
)
from classifiers.synthetic import make_features
from featurizer.errors import DecafError

MANIFEST = {
    "backbone": "alexnet",
    "weights_id": "alexnet/IMAGENET1K_V1",
    "weights_sha256": "7be5be79" + "0" * 56,
    "layers": {"decaf6": 64, "decaf7": 64},
    "preprocessing": {
        "resize": 256,
        "crop": 224,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "interpolation": "bilinear",
        "antialias": True,
        "crop_mode": "center",
    },
    "precision": "fp32",
}


@pytest.fixture(scope="module")
def data():
    X, y = make_features(4, 30, n_features=64, latent_dim=8, seed=5)
    return X, y


@pytest.mark.parametrize("backend", ["torch", "sklearn"])
@pytest.mark.parametrize("classifier", ["logreg", "svm"])
def test_save_load_identical_predictions(tmp_path, data, backend, classifier):
    X, y = data
    probe = LinearProbe(classifier=classifier, C=0.5, backend=backend, l2_normalize=True)
    probe.fit(X, y)
    out = save_probe(
        probe,
        tmp_path / "p",
        provenance=provenance_from_manifest(MANIFEST, "decaf6"),
        metrics={"accuracy": np.float32(0.5)},
    )
    loaded, meta = load_probe(out)
    np.testing.assert_array_equal(loaded.predict(X), probe.predict(X))
    np.testing.assert_array_equal(loaded.decision_function(X), probe.decision_function(X))
    assert loaded.get_params() == probe.get_params()
    assert meta["layer"] == "decaf6" and meta["C"] == 0.5 and meta["backend"] == backend
    assert set(meta["versions"]) >= {"decaf", "torch", "scikit-learn", "numpy"}
    with np.load(out / "arrays.npz", allow_pickle=False) as arrays:
        assert set(arrays.files) == {"coef", "intercept", "mean", "scale"}
    assert not list(out.glob("*.tmp"))


def test_integer_labels_round_trip(tmp_path, data):
    X, _ = data
    y = np.arange(len(X)) % 3
    probe = LinearProbe(C=1.0, backend="sklearn").fit(X, y)
    loaded, _ = load_probe(save_probe(probe, tmp_path / "p", provenance={"layer": "raw"}))
    assert loaded.classes_.dtype.kind == "i"
    np.testing.assert_array_equal(loaded.predict(X), probe.predict(X))


def test_check_compatible_refuses_each_kind_of_mismatch(tmp_path, data):
    X, y = data
    probe = LinearProbe(C=1.0).fit(X, y)
    _, meta = load_probe(
        save_probe(probe, tmp_path / "p", provenance=provenance_from_manifest(MANIFEST, "decaf6"))
    )
    check_compatible(meta, MANIFEST)
    check_compatible(meta, provenance_from_manifest(MANIFEST, "decaf6"))
    changes = {
        "backbone": {"backbone": "resnet18"},
        "weights_id": {"weights_id": "random", "weights_sha256": None},
        "weights_sha256": {"weights_sha256": "f" * 64},
        "preprocessing": {"preprocessing": {**MANIFEST["preprocessing"], "crop_mode": "tencrop"}},
        "layer": {"layers": {"decaf7": 64}},
        "dimension": {"layers": {"decaf6": 4096}},
    }
    for name, change in changes.items():
        with pytest.raises(ProbeMismatchError, match=name):
            check_compatible(meta, {**MANIFEST, **change})
    with pytest.raises(ProbeMismatchError, match="layer"):
        check_compatible(meta, provenance_from_manifest(MANIFEST, "decaf7"))
    assert issubclass(ProbeMismatchError, DecafError)


def test_load_errors_are_clear(tmp_path, data):
    with pytest.raises(ProbeError, match="missing"):
        load_probe(tmp_path)
    X, y = data
    out = save_probe(LinearProbe(C=1.0).fit(X, y), tmp_path / "p", provenance={"layer": "x"})
    document = json.loads((out / "probe.json").read_text())
    document["format_version"] = 99
    (out / "probe.json").write_text(json.dumps(document))
    with pytest.raises(ProbeError, match="unsupported probe format"):
        load_probe(out)
    (out / "probe.json").write_text("{not json")
    with pytest.raises(ProbeError, match="not valid JSON"):
        load_probe(out)
    with pytest.raises(ProbeError, match="not been fitted"):
        save_probe(LinearProbe(), tmp_path / "q", provenance={"layer": "x"})


def test_pickled_arrays_are_refused(tmp_path, data):
    X, y = data
    out = save_probe(LinearProbe(C=1.0).fit(X, y), tmp_path / "p", provenance={"layer": "x"})
    np.savez(
        out / "arrays.npz",
        coef=np.array([object()], dtype=object),
        intercept=np.zeros(4),
        mean=np.zeros(64),
        scale=np.ones(64),
    )
    with pytest.raises(ProbeError, match="cannot be read"):
        load_probe(out)
