"""Saving and loading probes without pickle, and checking they fit the features they meet.

A saved probe is a directory::

    PROBE/probe.json   classes, estimator parameters, C, provenance (backbone, weights id + sha256,
                       layer, preprocessing incl. crop mode, precision), protocol, metrics, versions
    PROBE/arrays.npz   coef, intercept, mean, scale (float64; read with allow_pickle=False)

Both files are written to temporary names and renamed, so a crash never leaves half a probe.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from classifiers.errors import ProbeError, ProbeMismatchError
from classifiers.probe import LinearProbe

PROBE_FORMAT = "decaf-probe"
PROBE_FORMAT_VERSION = 1
JSON_NAME = "probe.json"
ARRAYS_NAME = "arrays.npz"
ARRAY_KEYS = ("coef", "intercept", "mean", "scale")
# Provenance fields that must agree between a probe and the features it is applied to.
COMPATIBILITY_KEYS = ("backbone", "weights_id", "weights_sha256", "preprocessing")


def provenance_from_manifest(manifest: Mapping[str, Any], layer: str) -> dict[str, Any]:
    """Provenance of features read from a store (``featurizer.read_manifest``) for ``layer``."""
    return _provenance(manifest, layer)


def provenance_from_featurizer(description: Mapping[str, Any], layer: str) -> dict[str, Any]:
    """Provenance of features computed live (``Featurizer.describe()``) for ``layer``."""
    return _provenance(description, layer)


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


def _classes_from_json(values: list[Any], kind: str) -> np.ndarray:
    dtypes = {"int": np.int64, "bool": np.bool_, "float": np.float64, "str": object}
    if kind not in dtypes:
        raise ProbeError(f"unknown class label kind {kind!r} in probe.json")
    return np.array(values, dtype=dtypes[kind])


def _jsonable(value: Any) -> Any:
    """Numpy scalars/arrays inside metrics become plain JSON types."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
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
    params = probe.get_params()
    if params.get("Cs") is not None:
        params["Cs"] = [float(c) for c in params["Cs"]]
    document = {
        "format": PROBE_FORMAT,
        "format_version": PROBE_FORMAT_VERSION,
        "classes": classes,
        "classes_kind": kind,
        "n_features": int(probe.n_features_in_),
        **{key: provenance.get(key) for key in (*COMPATIBILITY_KEYS, "layer", "precision")},
        "provenance": _jsonable(dict(provenance)),
        "estimator": {"class": "LinearProbe", "params": _jsonable(params)},
        "C": float(probe.C_),
        "backend": probe.backend_,
        "cv_results": _jsonable(probe.cv_results_),
        "protocol": _jsonable(dict(protocol)) if protocol is not None else None,
        "metrics": _jsonable(dict(metrics)) if metrics is not None else None,
        "versions": versions(),
    }
    arrays = {
        "coef": probe.coef_,
        "intercept": probe.intercept_,
        "mean": probe.mean_,
        "scale": probe.scale_,
    }
    _atomic_write(out / ARRAYS_NAME, lambda f: np.savez(f, **arrays))
    text = json.dumps(document, indent=2, sort_keys=False, allow_nan=False)
    _atomic_write(out / JSON_NAME, lambda f: f.write(text.encode("utf-8")))
    return out


def _atomic_write(target: Path, write: Any) -> None:
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def load_probe(path: str | Path) -> tuple[LinearProbe, dict[str, Any]]:
    """Read a probe saved by :func:`save_probe`; returns the fitted estimator and its JSON."""
    root = Path(path)
    try:
        meta = json.loads((root / JSON_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ProbeError(f"{root} is not a saved probe: {JSON_NAME} is missing") from exc
    except json.JSONDecodeError as exc:
        raise ProbeError(f"{root / JSON_NAME} is not valid JSON: {exc}") from exc
    if meta.get("format") != PROBE_FORMAT or meta.get("format_version") != PROBE_FORMAT_VERSION:
        raise ProbeError(
            f"{root}: unsupported probe format {meta.get('format')!r} "
            f"version {meta.get('format_version')!r} "
            f"(expected {PROBE_FORMAT} {PROBE_FORMAT_VERSION})"
        )
    arrays = _load_arrays(root / ARRAYS_NAME)
    probe = LinearProbe(**_known_params(meta["estimator"]["params"]))
    probe.classes_ = _classes_from_json(meta["classes"], meta["classes_kind"])
    probe.coef_ = arrays["coef"]
    probe.intercept_ = arrays["intercept"]
    probe.mean_ = arrays["mean"]
    probe.scale_ = arrays["scale"]
    probe.C_ = float(meta["C"])
    probe.cv_results_ = meta.get("cv_results")
    probe.backend_ = meta.get("backend", "sklearn")
    probe.n_iter_ = 1
    probe.n_features_in_ = int(meta["n_features"])
    _check_shapes(probe, root)
    return probe, meta


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ARRAY_KEYS if k not in data.files]
            if missing:
                raise ProbeError(f"{path} lacks arrays {missing}")
            return {k: np.asarray(data[k], dtype=np.float64) for k in ARRAY_KEYS}
    except FileNotFoundError as exc:
        raise ProbeError(f"{path} is missing") from exc
    except (ValueError, OSError) as exc:
        raise ProbeError(f"{path} cannot be read: {exc}") from exc


def _known_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters this version knows (a probe from a newer version may carry more)."""
    known = LinearProbe().get_params()
    return {k: v for k, v in params.items() if k in known}


def _check_shapes(probe: LinearProbe, root: Path) -> None:
    n_classes, d = len(probe.classes_), probe.n_features_in_
    rows = 1 if n_classes == 2 else n_classes
    expected = {"coef": (rows, d), "intercept": (rows,), "mean": (d,), "scale": (d,)}
    actual = {
        "coef": probe.coef_.shape,
        "intercept": probe.intercept_.shape,
        "mean": probe.mean_.shape,
        "scale": probe.scale_.shape,
    }
    for key, shape in expected.items():
        if tuple(actual[key]) != shape:
            raise ProbeError(f"{root}: array {key} has shape {actual[key]}, expected {shape}")


def check_compatible(probe_meta: Mapping[str, Any], features_meta: Mapping[str, Any]) -> None:
    """Refuse features that were not made the way the probe's training features were.

    ``features_meta`` is a store manifest or ``Featurizer.describe()``; either may carry an
    explicit ``layer`` (provenance dicts do), otherwise the probe's layer must be among its
    ``layers`` with the probe's dimension.
    """
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
