"""Saving and loading probes without pickle, and checking they fit the features they meet.

A saved probe is a directory::

    PROBE/probe.json   classes, estimator parameters, C, score kind, provenance (backbone, weights
                       id + sha256, layer, preprocessing incl. crop mode, precision), protocol,
                       metrics, versions
    PROBE/arrays.npz   coef, intercept, mean, scale (float64; read with allow_pickle=False)

Both files are written to temporary names and renamed, so a crash never leaves half a probe.
Loading trusts neither file: every field and array is checked (kind, shape, finite values) and
anything off is a ProbeError naming the file and the field, never a traceback or a probe that
silently predicts nonsense.

``probe.json`` records a sha256 of each array and of the class list (``checksums``), verified on
load: an edited array, a renamed or dropped class, or arrays from another probe are refused even
when their shapes happen to fit. Probes saved before checksums were recorded (no ``checksums``
field) still load: every structural check above applies to them, and saving them again adds the
checksums. A ``checksums`` field that is present but malformed or incomplete is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import zipfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from classifiers.errors import ProbeError, ProbeMismatchError
from classifiers.probe import PARAMETER_NAMES, LinearProbe, make_probe
from featurizer.atomic import atomic_write

PROBE_FORMAT = "decaf-probe"
PROBE_FORMAT_VERSION = 1
JSON_NAME = "probe.json"
ARRAYS_NAME = "arrays.npz"
ARRAY_KEYS = ("coef", "intercept", "mean", "scale")
CHECKSUM_KEYS = (*ARRAY_KEYS, "classes")
# Provenance fields that must agree between a probe and the features it is applied to (the layer
# and its dimension are checked beside them, in check_compatible).
COMPATIBILITY_KEYS = ("backbone", "weights_id", "weights_sha256", "preprocessing")


class SupportsToDict(Protocol):
    """A typed record (e.g. a store manifest) that can say itself as a plain dict."""

    def to_dict(self) -> dict[str, Any]: ...


FeatureMeta = Mapping[str, Any] | SupportsToDict


def provenance_from_manifest(manifest: FeatureMeta, layer: str) -> dict[str, Any]:
    """Provenance of features read from a store (its manifest, a mapping or a typed record with
    ``to_dict()``) for ``layer``."""
    return _provenance(_as_mapping(manifest), layer)


def provenance_from_featurizer(description: FeatureMeta, layer: str) -> dict[str, Any]:
    """Provenance of features computed live (``Featurizer.describe()``) for ``layer``."""
    return _provenance(_as_mapping(description), layer)


def _as_mapping(meta: FeatureMeta) -> Mapping[str, Any]:
    return meta if isinstance(meta, Mapping) else meta.to_dict()


def _provenance(meta: Mapping[str, Any], layer: str) -> dict[str, Any]:
    layers = dict(meta.get("layers") or {})
    if layer not in layers:
        raise ProbeError(f"layer {layer!r} is not in these features; available: {sorted(layers)}")
    return {
        "backbone": meta.get("backbone"),
        "weights_id": meta.get("weights_id"),
        "weights_sha256": meta.get("weights_sha256"),
        "layer": layer,
        "dim": int(layers[layer]),
        "preprocessing": meta.get("preprocessing"),
        "precision": meta.get("precision"),
    }


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("decaf", "torch", "scikit-learn", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _classes_to_json(classes: np.ndarray) -> tuple[list[Any], str]:
    if classes.dtype.kind in "iu":
        return [int(c) for c in classes], "int"
    if classes.dtype.kind == "b":
        return [bool(c) for c in classes], "bool"
    if classes.dtype.kind == "f":
        return [float(c) for c in classes], "float"
    return [str(c) for c in classes], "str"


_CLASS_KINDS: dict[str, tuple[type, Any]] = {
    "int": (int, np.int64),
    "bool": (bool, np.bool_),
    "float": (float, np.float64),
    "str": (str, object),
}


def _classes_from_json(values: list[Any], kind: Any, where: Path) -> np.ndarray:
    if kind not in _CLASS_KINDS:
        raise ProbeError(f"{where}: unknown class label kind {kind!r}")
    python_type, dtype = _CLASS_KINDS[kind]
    # bool is an int in Python; an int label list must not hide a true/false, nor the reverse.
    if not all(type(v) is python_type for v in values):
        raise ProbeError(f"{where}: classes must all be {kind} labels, as classes_kind says")
    if len(set(values)) != len(values):
        raise ProbeError(f"{where}: classes has duplicates; each class must appear once")
    return np.array(values, dtype=dtype)


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars/arrays, tuples and paths turned into plain JSON types."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_probe(
    probe: LinearProbe,
    path: str | Path,
    *,
    provenance: Mapping[str, Any],
    metrics: Mapping[str, Any] | None = None,
    protocol: Mapping[str, Any] | None = None,
) -> Path:
    """Write a fitted probe to directory ``path`` (created; existing files are replaced).

    ``provenance`` is :func:`provenance_from_manifest` / :func:`provenance_from_featurizer` output
    (or any dict with backbone, weights_id, weights_sha256, layer, preprocessing).
    """
    if not hasattr(probe, "coef_"):
        raise ProbeError("cannot save a probe that has not been fitted")
    if "layer" not in provenance:
        raise ProbeError("provenance must name the feature layer the probe was fitted on")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    classes, kind = _classes_to_json(probe.classes_)
    document = {
        "format": PROBE_FORMAT,
        "format_version": PROBE_FORMAT_VERSION,
        "classes": classes,
        "classes_kind": kind,
        "n_features": int(probe.n_features_in_),
        **{key: provenance.get(key) for key in (*COMPATIBILITY_KEYS, "layer", "precision")},
        "provenance": jsonable(dict(provenance)),
        "estimator": {"class": "LinearProbe", "params": jsonable(probe.get_params())},
        "C": float(probe.C_),
        "score_kind": probe.score_kind,
        "backend": probe.backend_,
        "cv_results": jsonable(probe.cv_results_),
        "protocol": jsonable(dict(protocol)) if protocol is not None else None,
        "metrics": jsonable(dict(metrics)) if metrics is not None else None,
        "versions": versions(),
    }
    arrays = {
        "coef": probe.coef_,
        "intercept": probe.intercept_,
        "mean": probe.mean_,
        "scale": probe.scale_,
    }
    document["checksums"] = _checksums(arrays, classes)
    atomic_write(out / ARRAYS_NAME, lambda f: np.savez(f, **arrays))
    text = json.dumps(document, indent=2, sort_keys=False, allow_nan=False)
    atomic_write(out / JSON_NAME, text)
    return out


def load_probe(path: str | Path) -> tuple[LinearProbe, dict[str, Any]]:
    """Read a probe saved by :func:`save_probe`; returns the fitted estimator and its JSON.

    A missing, unreadable or tampered file (fields missing or of the wrong kind, classes that do
    not match the arrays, non-finite or misshapen arrays) is a :class:`ProbeError`.
    """
    root = Path(path)
    meta = _read_document(root / JSON_NAME)
    arrays = _load_arrays(root / ARRAYS_NAME)
    where = root / JSON_NAME
    try:
        probe = make_probe(_known_params(meta["estimator"]["params"]))
    except ProbeError as exc:
        raise ProbeError(f"{where}: estimator parameters are not valid: {exc}") from exc
    probe.classes_ = _classes_from_json(meta["classes"], meta["classes_kind"], where)
    probe.coef_ = arrays["coef"]
    probe.intercept_ = arrays["intercept"]
    probe.mean_ = arrays["mean"]
    probe.scale_ = arrays["scale"]
    probe.C_ = float(meta["C"])
    probe.cv_results_ = meta.get("cv_results")
    probe.backend_ = meta.get("backend", "sklearn")
    probe.n_iter_ = 1
    probe.n_features_in_ = int(meta["n_features"])
    _check_arrays(probe, root)
    _verify_checksums(meta, arrays, root)
    return probe, meta


def _array_sha256(array: np.ndarray) -> str:
    """Of the float64 values as loaded (little-endian, C order) and the shape."""
    values = np.ascontiguousarray(array, dtype="<f8")
    digest = hashlib.sha256(f"{values.shape}".encode())
    digest.update(values.tobytes())
    return digest.hexdigest()


def _checksums(arrays: Mapping[str, np.ndarray], classes: list[Any]) -> dict[str, str]:
    sums = {key: _array_sha256(arrays[key]) for key in ARRAY_KEYS}
    sums["classes"] = hashlib.sha256(json.dumps(classes).encode()).hexdigest()
    return sums


def _verify_checksums(
    meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], root: Path
) -> None:
    """Compare with the checksums recorded at save; older probes without them pass (see the
    module docstring)."""
    if "checksums" not in meta:
        return
    recorded = meta["checksums"]
    if not isinstance(recorded, dict) or not all(
        isinstance(recorded.get(key), str) for key in CHECKSUM_KEYS
    ):
        raise ProbeError(
            f"{root / JSON_NAME}: 'checksums' must give a sha256 for each of "
            f"{', '.join(CHECKSUM_KEYS)}; the file was edited (fit the probe again)"
        )
    actual = _checksums(arrays, meta["classes"])
    changed = [key for key in CHECKSUM_KEYS if recorded[key] != actual[key]]
    if changed:
        raise ProbeError(
            f"{root}: {', '.join(changed)} changed since the probe was saved (sha256 mismatch): "
            "the files were edited, damaged or mixed with another probe's; fit the probe again "
            "or restore its files"
        )


def _read_document(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ProbeError(f"{path.parent} is not a saved probe: {JSON_NAME} is missing") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ProbeError(f"{path} cannot be read: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ProbeError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise ProbeError(f"{path} is not a saved probe: expected a JSON object")
    if meta.get("format") != PROBE_FORMAT or meta.get("format_version") != PROBE_FORMAT_VERSION:
        raise ProbeError(
            f"{path.parent}: unsupported probe format {meta.get('format')!r} "
            f"version {meta.get('format_version')!r} "
            f"(expected {PROBE_FORMAT} {PROBE_FORMAT_VERSION})"
        )
    _check_fields(meta, path)
    return meta


def _check_fields(meta: dict[str, Any], path: Path) -> None:
    """Every field ``load_probe`` reads is present and of the right kind."""
    problems = []
    classes = meta.get("classes")
    if not isinstance(classes, list) or len(classes) < 2:
        problems.append("'classes' must list at least 2 labels")
    n_features = meta.get("n_features")
    if type(n_features) is not int or n_features < 1:
        problems.append("'n_features' must be a positive integer")
    C = meta.get("C")
    if type(C) not in (int, float) or not math.isfinite(C) or C <= 0:
        problems.append("'C' must be a positive number")
    estimator = meta.get("estimator")
    if not isinstance(estimator, dict) or not isinstance(estimator.get("params"), dict):
        problems.append("'estimator.params' must be an object")
    if not isinstance(meta.get("layer"), str):
        problems.append("'layer' must name the feature layer")
    if problems:
        raise ProbeError(
            f"{path} is damaged or was edited: {'; '.join(problems)} "
            "(save the probe again with `decaf probe fit`)"
        )


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ARRAY_KEYS if k not in data.files]
            if missing:
                raise ProbeError(f"{path} lacks arrays {missing}")
            return {k: np.asarray(data[k], dtype=np.float64) for k in ARRAY_KEYS}
    except FileNotFoundError as exc:
        raise ProbeError(f"{path} is missing") from exc
    except (ValueError, TypeError, OSError, EOFError, zipfile.BadZipFile) as exc:
        # A truncated or edited npz fails inside zipfile/numpy with any of these.
        raise ProbeError(f"{path} cannot be read: {exc}") from exc


def _known_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters this version knows (a probe from a newer version may carry more)."""
    return {k: v for k, v in params.items() if k in PARAMETER_NAMES}


def _check_arrays(probe: LinearProbe, root: Path) -> None:
    """Shapes agree with the classes and feature count; values are finite; scales positive."""
    n_classes, d = len(probe.classes_), probe.n_features_in_
    rows = 1 if n_classes == 2 else n_classes
    expected = {"coef": (rows, d), "intercept": (rows,), "mean": (d,), "scale": (d,)}
    arrays = {
        "coef": probe.coef_,
        "intercept": probe.intercept_,
        "mean": probe.mean_,
        "scale": probe.scale_,
    }
    for key, shape in expected.items():
        if tuple(arrays[key].shape) != shape:
            raise ProbeError(
                f"{root}: array {key} has shape {arrays[key].shape}, expected {shape} for "
                f"{n_classes} classes and {d} features; the probe files do not belong together"
            )
        if not np.isfinite(arrays[key]).all():
            raise ProbeError(f"{root}: array {key} holds NaN or infinite values")
    if (probe.scale_ <= 0).any():
        raise ProbeError(f"{root}: array scale must be positive")


def check_compatible(probe_meta: Mapping[str, Any], features_meta: FeatureMeta) -> None:
    """Refuse features that were not made the way the probe's training features were.

    ``features_meta`` is a store manifest or ``Featurizer.describe()``; either may carry an
    explicit ``layer`` (provenance dicts do), otherwise the probe's layer must be among its
    ``layers`` with the probe's dimension.
    """
    features_meta = _as_mapping(features_meta)
    problems = []
    for key in COMPATIBILITY_KEYS:
        want, got = probe_meta.get(key), features_meta.get(key)
        if _normalise(want) != _normalise(got):
            problems.append(f"{key}: probe has {want!r}, features have {got!r}")
    layer = probe_meta.get("layer")
    if "layer" in features_meta and features_meta["layer"] != layer:
        problems.append(f"layer: probe has {layer!r}, features have {features_meta['layer']!r}")
    layers = features_meta.get("layers")
    if "layer" not in features_meta and isinstance(layers, Mapping):
        if layer not in layers:
            problems.append(f"layer: probe needs {layer!r}, features have {sorted(layers)}")
        elif probe_meta.get("n_features") not in (None, int(layers[layer])):
            problems.append(
                f"dimension of {layer}: probe has {probe_meta['n_features']}, "
                f"features have {layers[layer]}"
            )
    if problems:
        raise ProbeMismatchError(
            "the features do not match the probe (refit the probe on these features, or extract "
            "features with the probe's settings): " + "; ".join(problems)
        )


def _normalise(value: Any) -> Any:
    """JSON round-trip so tuples vs lists and int vs float spellings compare equal."""
    return json.loads(json.dumps(value, sort_keys=True))
