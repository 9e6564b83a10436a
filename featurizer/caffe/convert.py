"""A ``.caffemodel`` -> the state_dict of :class:`featurizer.caffe.net.CaffeNet`, converted once.

The first load of a file parses it (:mod:`featurizer.caffe.caffemodel`), checks every parameter
layer against the architecture and writes the result as a plain torch state_dict to
``<torch hub dir>/checkpoints/decaf-caffe/<backbone>-<sha256 of the .caffemodel>.pth`` with a
JSON sidecar recording both files' sha256. Later loads read that file with
``torch.load(weights_only=True)`` after checking its hash against the sidecar; a damaged or
foreign cache file is converted again, never trusted. The cache is keyed by the backbone too:
CaffeNet and BVLC AlexNet have identical parameter shapes, and a file's layer order says which
network it belongs to (checked below), so one file never feeds the other network.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from featurizer.atomic import atomic_path, atomic_write
from featurizer.caffe.caffemodel import CaffeFormatError, CaffeModel, read_caffemodel
from featurizer.caffe.net import PARAMETER_LAYERS
from featurizer.digests import sha256_of_file

if TYPE_CHECKING:
    from featurizer.backbones import Backbone

log = logging.getLogger(__name__)

CACHE_FOLDER = "decaf-caffe"
CACHE_FORMAT = 1


def cache_path(record: Backbone, caffemodel_sha256: str) -> Path:
    """Where the converted state_dict of a ``.caffemodel`` with this sha256 is kept."""
    return (
        Path(torch.hub.get_dir())
        / "checkpoints"
        / CACHE_FOLDER
        / f"{record.name}-{caffemodel_sha256}.pth"
    )


def caffemodel_state_dict(record: Backbone, path: Path, sha256: str) -> dict[str, torch.Tensor]:
    """The state_dict of ``record``'s network from the ``.caffemodel`` at ``path`` (whose sha256
    the caller computed), from the conversion cache when it holds a verified copy."""
    cached = cache_path(record, sha256)
    state_dict = _read_cache(cached, sha256)
    if state_dict is not None:
        return state_dict
    log.info("converting %s for %s (once; cached at %s)", path, record.name, cached)
    try:
        model = read_caffemodel(path)
    except CaffeFormatError as exc:  # e.g. truncated inside a layer: say what it should hold
        shapes = expected_shapes(record).get(exc.layer or "")
        if shapes is None:
            raise
        raise CaffeFormatError(
            f"{exc} Layer {exc.layer!r} holds {_describe(shapes)}.", exc.layer
        ) from exc
    state_dict = convert(record, model, str(path))
    _write_cache(cached, state_dict, sha256)
    return state_dict


def expected_shapes(record: Backbone) -> dict[str, dict[str, tuple[int, ...]]]:
    """Caffe layer -> {"weight": shape, "bias": shape} of ``record``'s architecture."""
    with torch.device("meta"):
        expected = record.build().state_dict()
    return {
        name: {kind: tuple(expected[f"{name}.{kind}"].shape) for kind in ("weight", "bias")}
        for name in PARAMETER_LAYERS
    }


def convert(record: Backbone, model: CaffeModel, source: str) -> dict[str, torch.Tensor]:
    """Check ``model`` against ``record``'s architecture and return its state_dict."""
    with torch.device("meta"):
        net = record.build()
    _check_layer_order(record, model, source, lrn_first=bool(net.lrn_before_pool))
    state_dict: dict[str, torch.Tensor] = {}
    for layer_name, shapes in expected_shapes(record).items():
        layer = model.find(layer_name)
        if layer is None:
            present = [layer.name for layer in model.layers if layer.blobs]
            raise CaffeFormatError(
                f"{source} has no layer {layer_name!r} (expected {_describe(shapes)} for "
                f"{record.name}); its layers with parameters: {present}",
                layer_name,
            )
        if len(layer.blobs) != 2:
            raise CaffeFormatError(
                f"{source}: layer {layer_name!r} holds {len(layer.blobs)} blobs, expected 2 "
                f"({_describe(shapes)})",
                layer_name,
            )
        for (kind, shape), blob in zip(shapes.items(), layer.blobs, strict=True):
            state_dict[f"{layer_name}.{kind}"] = _tensor(blob, shape, source, layer_name, kind)
    return state_dict


def _tensor(
    blob: np.ndarray, shape: tuple[int, ...], source: str, layer: str, kind: str
) -> torch.Tensor:
    # Legacy blobs are always 4-D (num, channels, height, width): an fc weight is stored as
    # 1 x 1 x out x in and a bias as 1 x 1 x 1 x out. Leading 1s carry no information.
    if _without_leading_ones(blob.shape) != _without_leading_ones(shape):
        raise CaffeFormatError(
            f"{source}: layer {layer!r} {kind} has shape {_shape(blob.shape)}, expected "
            f"{_shape(shape)} - this .caffemodel is not the network it was given for",
            layer,
        )
    if not np.isfinite(blob).all():
        raise CaffeFormatError(f"{source}: layer {layer!r} {kind} holds NaN or infinity", layer)
    return torch.from_numpy(np.array(blob, dtype=np.float32).reshape(shape))


def _check_layer_order(
    record: Backbone, model: CaffeModel, source: str, *, lrn_first: bool
) -> None:
    # CaffeNet and BVLC AlexNet differ only in where LRN sits; their parameters have identical
    # shapes, so the file's layer order is the one thing that tells them apart.
    norm, pool = model.position("norm1"), model.position("pool1")
    if norm is None or pool is None or (norm < pool) == lrn_first:
        return
    kind = "BVLC AlexNet (norm1 before pool1)" if norm < pool else "CaffeNet (pool1 before norm1)"
    other = "bvlc_alexnet" if norm < pool else "caffenet"
    raise CaffeFormatError(
        f"{source} is a {kind}, not {record.name}: use --backbone {other} with this file",
        "norm1",
    )


def _without_leading_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    dims = list(shape)
    while len(dims) > 1 and dims[0] == 1:
        dims.pop(0)
    return tuple(dims)


def _describe(shapes: dict[str, tuple[int, ...]]) -> str:
    return f"weights {_shape(shapes['weight'])} and bias {_shape(shapes['bias'])}"


def _shape(shape: tuple[int, ...]) -> str:
    return " x ".join(str(d) for d in shape)


def _read_cache(path: Path, sha256: str) -> dict[str, torch.Tensor] | None:
    sidecar = path.with_suffix(".json")
    if not (path.is_file() and sidecar.is_file()):
        return None
    try:
        record = json.loads(sidecar.read_text())
        valid = (
            record.get("format") == CACHE_FORMAT
            and record.get("caffemodel_sha256") == sha256
            and record.get("sha256") == sha256_of_file(path)
        )
        if valid:
            return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        log.warning("ignoring unreadable conversion cache %s: %s", path, exc)
        return None
    log.warning("conversion cache %s does not match its record; converting again", path)
    return None


def _write_cache(path: Path, state_dict: dict[str, torch.Tensor], sha256: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(state_dict, tmp)
        record = {
            "format": CACHE_FORMAT,
            "caffemodel_sha256": sha256,
            "sha256": sha256_of_file(path),
        }
        atomic_write(path.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    except OSError as exc:  # a read-only cache costs a conversion per load, nothing else
        log.warning("could not cache the converted weights at %s: %s", path, exc)
