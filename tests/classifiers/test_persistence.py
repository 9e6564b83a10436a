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


def test_score_kind_is_saved(tmp_path, data):
    X, y = data
    for classifier, kind in (("logreg", "probability"), ("svm", "margin")):
        probe = LinearProbe(classifier=classifier, C=1.0, backend="sklearn").fit(X, y)
        _, meta = load_probe(save_probe(probe, tmp_path / classifier, provenance={"layer": "x"}))
        assert meta["score_kind"] == kind


def test_backbone_mismatch_names_both_backbones(tmp_path, data):
    X, y = data
    probe = LinearProbe(C=1.0).fit(X, y)
    provenance = provenance_from_manifest({**MANIFEST, "backbone": "resnet50"}, "decaf6")
    _, meta = load_probe(save_probe(probe, tmp_path / "p", provenance=provenance))
    with pytest.raises(ProbeMismatchError, match="probe has 'resnet50', features have 'alexnet'"):
        check_compatible(meta, MANIFEST)


class TypedManifest:
    """Stands in for the store's typed manifest: a record that says itself with to_dict()."""

    def to_dict(self) -> dict:
        return dict(MANIFEST)


def test_typed_manifests_are_accepted(tmp_path, data):
    X, y = data
    provenance = provenance_from_manifest(TypedManifest(), "decaf6")
    assert provenance == provenance_from_manifest(MANIFEST, "decaf6")
    probe = LinearProbe(C=1.0).fit(X, y)
    _, meta = load_probe(save_probe(probe, tmp_path / "p", provenance=provenance))
    check_compatible(meta, TypedManifest())


def _edit_json(out, change):
    document = json.loads((out / "probe.json").read_text())
    change(document)
    (out / "probe.json").write_text(json.dumps(document))


def _edit_arrays(out, change):
    with np.load(out / "arrays.npz", allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    change(arrays)
    np.savez(out / "arrays.npz", **arrays)


def _truncate_arrays(out):
    blob = (out / "arrays.npz").read_bytes()
    (out / "arrays.npz").write_bytes(blob[: len(blob) // 2])


TAMPERINGS = {
    "class dropped": (
        lambda out: _edit_json(out, lambda d: d["classes"].pop()),
        "array coef has shape",
    ),
    "duplicate class": (
        lambda out: _edit_json(out, lambda d: d["classes"].__setitem__(1, d["classes"][0])),
        "duplicates",
    ),
    "class of another kind": (
        lambda out: _edit_json(out, lambda d: d["classes"].__setitem__(0, 7)),
        "must all be str labels",
    ),
    "classes missing": (lambda out: _edit_json(out, lambda d: d.pop("classes")), "'classes'"),
    "C missing": (lambda out: _edit_json(out, lambda d: d.pop("C")), "'C' must be"),
    "n_features as text": (
        lambda out: _edit_json(out, lambda d: d.__setitem__("n_features", "64")),
        "'n_features'",
    ),
    "estimator missing": (
        lambda out: _edit_json(out, lambda d: d.pop("estimator")),
        "'estimator.params'",
    ),
    "invalid parameter": (
        lambda out: _edit_json(
            out, lambda d: d["estimator"]["params"].__setitem__("classifier", "tree")
        ),
        "estimator parameters are not valid",
    ),
    "not an object": (
        lambda out: (out / "probe.json").write_text("[1, 2]"),
        "expected a JSON object",
    ),
    "NaN coefficients": (
        lambda out: _edit_arrays(out, lambda a: a["coef"].__setitem__((0, 0), np.nan)),
        "coef holds NaN",
    ),
    "infinite mean": (
        lambda out: _edit_arrays(out, lambda a: a["mean"].__setitem__(3, np.inf)),
        "mean holds NaN or infinite",
    ),
    "zero scale": (
        lambda out: _edit_arrays(out, lambda a: a["scale"].__setitem__(0, 0.0)),
        "scale must be positive",
    ),
    "wrong shape": (
        lambda out: _edit_arrays(out, lambda a: a.__setitem__("mean", np.zeros(63))),
        r"array mean has shape \(63,\), expected \(64,\)",
    ),
    "missing array": (lambda out: _edit_arrays(out, lambda a: a.pop("scale")), "lacks arrays"),
    "truncated npz": (_truncate_arrays, "cannot be read"),
    "npz not a zip": (
        lambda out: (out / "arrays.npz").write_bytes(b"PK\x03\x04 not really"),
        "cannot be read",
    ),
    "npz deleted": (lambda out: (out / "arrays.npz").unlink(), "missing"),
    # Shapes and values still plausible: only the checksums recorded at save catch these.
    "class renamed": (
        lambda out: _edit_json(out, lambda d: d["classes"].__setitem__(0, "renamed")),
        r"classes changed since the probe was saved \(sha256 mismatch\)",
    ),
    "coefficient edited": (
        lambda out: _edit_arrays(out, lambda a: a["coef"].__setitem__((0, 0), a["coef"][0, 0] + 1)),
        r"coef changed since the probe was saved",
    ),
    "arrays of another probe": (
        lambda out: _edit_arrays(out, lambda a: a.update(mean=a["mean"][::-1].copy())),
        r"mean changed since the probe was saved",
    ),
    "checksums emptied": (
        lambda out: _edit_json(out, lambda d: d.__setitem__("checksums", {})),
        r"'checksums' must give a sha256 for each of coef, intercept, mean, scale, classes",
    ),
}


@pytest.mark.parametrize("tampering", list(TAMPERINGS))
def test_tampered_probe_files_are_clear_errors(tmp_path, data, tampering):
    X, y = data
    out = save_probe(LinearProbe(C=1.0).fit(X, y), tmp_path / "p", provenance={"layer": "x"})
    tamper, message = TAMPERINGS[tampering]
    tamper(out)
    with pytest.raises(ProbeError, match=message):
        load_probe(out)


def test_probe_saved_before_checksums_still_loads(tmp_path, data):
    """Probes written before checksums were recorded pass the structural checks alone."""
    X, y = data
    probe = LinearProbe(C=1.0).fit(X, y)
    out = save_probe(probe, tmp_path / "p", provenance={"layer": "x"})
    _edit_json(out, lambda d: d.pop("checksums"))
    loaded, _ = load_probe(out)
    np.testing.assert_array_equal(loaded.predict(X), probe.predict(X))
    _edit_arrays(out, lambda a: a["coef"].__setitem__((0, 0), np.nan))
    with pytest.raises(ProbeError, match="coef holds NaN"):
        load_probe(out)


def test_saved_probe_records_a_checksum_of_every_array_and_the_classes(tmp_path, data):
    X, y = data
    out = save_probe(LinearProbe(C=1.0).fit(X, y), tmp_path / "p", provenance={"layer": "x"})
    checksums = json.loads((out / "probe.json").read_text())["checksums"]
    assert sorted(checksums) == sorted(["coef", "intercept", "mean", "scale", "classes"])
    assert all(len(value) == 64 for value in checksums.values())
