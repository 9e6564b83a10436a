"""Caffe's files read from the wire: ``.caffemodel`` (``NetParameter``) and ``.binaryproto`` means.

Field numbers are those of ``src/caffe/proto/caffe.proto`` (BVLC/caffe):

- ``NetParameter``: ``name = 1``, ``layers = 2`` (``V1LayerParameter``, the encoding of the 2014
  model-zoo files), ``layer = 100`` (``LayerParameter``, Caffe >= 1.0 rc2).
- ``LayerParameter``: ``name = 1``, ``type = 2`` (a string), ``blobs = 7``.
- ``V1LayerParameter``: ``layer = 1`` (the older V0 message), ``name = 4``, ``type = 5`` (an enum:
  CONVOLUTION = 4, INNER_PRODUCT = 14, ...), ``blobs = 6``.
- ``BlobProto``: ``num/channels/height/width = 1..4`` (the legacy 4-D shape), ``data = 5``
  (float), ``shape = 7`` (``BlobShape``: ``dim = 1``, int64), ``double_data = 8``.

Only what the converter needs is decoded; every other field is skipped by its wire type. A
``.binaryproto`` mean file (``ilsvrc_2012_mean.binaryproto``) is a single ``BlobProto``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featurizer.caffe import wire
from featurizer.errors import WeightsError

_NET_LAYERS_V1, _NET_LAYER = 2, 100
_LAYER_NAME, _LAYER_TYPE, _LAYER_BLOBS = 1, 2, 7
_V1_V0_LAYER, _V1_NAME, _V1_TYPE, _V1_BLOBS = 1, 4, 5, 6
_BLOB_LEGACY_DIMS = (1, 2, 3, 4)  # num, channels, height, width
_BLOB_DATA, _BLOB_SHAPE, _BLOB_DOUBLE_DATA = 5, 7, 8
_SHAPE_DIM = 1

# V1LayerParameter.LayerType values of the layers a CaffeNet-style file holds (caffe.proto).
V1_LAYER_TYPES = {
    3: "Concat",
    4: "Convolution",
    5: "Data",
    6: "Dropout",
    14: "InnerProduct",
    15: "LRN",
    17: "Pooling",
    18: "ReLU",
    20: "Softmax",
    21: "SoftmaxWithLoss",
    1: "Accuracy",
}


class CaffeFormatError(WeightsError):
    """A ``.caffemodel`` or mean file is truncated, corrupt, or lacks what is needed.

    ``layer``: the layer the problem is in, when known (the converter adds its expected shape).
    """

    def __init__(self, message: str, layer: str | None = None) -> None:
        super().__init__(message)
        self.layer = layer


@dataclass(frozen=True)
class CaffeLayer:
    """One layer of a ``.caffemodel``: its name, type and parameter blobs (shapes as stored)."""

    name: str
    type: str
    blobs: tuple[np.ndarray, ...]


@dataclass(frozen=True)
class CaffeModel:
    """The layers of a ``NetParameter`` in file order; ``encoding`` says which field held them."""

    layers: tuple[CaffeLayer, ...]
    encoding: str  # "layer" (LayerParameter) or "layers" (V1LayerParameter)

    def find(self, name: str) -> CaffeLayer | None:
        return next((layer for layer in self.layers if layer.name == name), None)

    def position(self, name: str) -> int | None:
        return next((i for i, layer in enumerate(self.layers) if layer.name == name), None)


def read_caffemodel(path: Path) -> CaffeModel:
    """Parse the ``.caffemodel`` at ``path`` (the whole file is read: ~233 MB for CaffeNet)."""
    return parse_caffemodel(path.read_bytes(), source=str(path))


def parse_caffemodel(data: bytes, source: str) -> CaffeModel:
    by_field: dict[int, list[CaffeLayer]] = {_NET_LAYER: [], _NET_LAYERS_V1: []}
    parsers = {_NET_LAYER: _parse_layer, _NET_LAYERS_V1: _parse_v1_layer}
    try:
        for field in wire.fields(data):
            if field.number in parsers and field.wire_type == wire.LENGTH_DELIMITED:
                by_field[field.number].append(parsers[field.number](field, source))
    except wire.TruncatedError as exc:
        layer = _name_of_partial_layer(exc)
        inside = f" inside layer {layer!r}" if layer else ""
        raise CaffeFormatError(
            f"{source} is truncated{inside} ({exc}). A partly downloaded file is the usual "
            "cause: download it again and compare its sha1 with the model zoo's.",
            layer,
        ) from exc
    except wire.WireFormatError as exc:
        raise CaffeFormatError(
            f"{source} is not a readable .caffemodel (binary NetParameter): {exc}"
        ) from exc
    if by_field[_NET_LAYER] and by_field[_NET_LAYERS_V1]:
        raise CaffeFormatError(f"{source} mixes the 'layer' and the V1 'layers' fields")
    if by_field[_NET_LAYER]:
        return CaffeModel(tuple(by_field[_NET_LAYER]), "layer")
    if by_field[_NET_LAYERS_V1]:
        return CaffeModel(tuple(by_field[_NET_LAYERS_V1]), "layers")
    raise CaffeFormatError(
        f"{source} holds no layers: not a .caffemodel (a binary NetParameter), or an empty one"
    )


def _name_of_partial_layer(error: wire.TruncatedError) -> str | None:
    """The name of the layer a file was cut inside of, read from the bytes that remain."""
    name_field = {_NET_LAYER: _LAYER_NAME, _NET_LAYERS_V1: _V1_NAME}.get(error.number)
    if name_field is None:
        return None
    try:
        for field in wire.fields(error.partial):
            if field.number == name_field and field.wire_type == wire.LENGTH_DELIMITED:
                return wire.text(field)
    except wire.WireFormatError:
        pass  # the cut came before the name
    return None


def _parse_layer(field: wire.Field, source: str) -> CaffeLayer:
    name, kind, blobs = "", "", []
    for inner in _fields_of(field, f"{source}, a layer"):
        if inner.number == _LAYER_NAME:
            name = wire.text(inner)
        elif inner.number == _LAYER_TYPE:
            kind = wire.text(inner)
        elif inner.number == _LAYER_BLOBS:
            blobs.append(inner)
    where = f"{source}, layer {name!r}"
    return CaffeLayer(name, kind, tuple(_parse_blob(b, where, name) for b in blobs))


def _parse_v1_layer(field: wire.Field, source: str) -> CaffeLayer:
    name, kind, blobs = "", "", []
    for inner in _fields_of(field, f"{source}, a layer"):
        if inner.number == _V1_NAME:
            name = wire.text(inner)
        elif inner.number == _V1_TYPE and inner.wire_type == wire.VARINT:
            assert isinstance(inner.value, int)
            kind = V1_LAYER_TYPES.get(inner.value, f"V1 type {inner.value}")
        elif inner.number == _V1_BLOBS:
            blobs.append(inner)
        elif inner.number == _V1_V0_LAYER and inner.wire_type == wire.LENGTH_DELIMITED:
            raise CaffeFormatError(
                f"{source} uses Caffe's V0 layer encoding (before 2014); convert it with Caffe's "
                "upgrade_net_proto_binary tool, or use the model zoo's current file"
            )
    where = f"{source}, layer {name!r}"
    return CaffeLayer(name, kind, tuple(_parse_blob(b, where, name) for b in blobs))


def _fields_of(field: wire.Field, where: str, layer: str | None = None) -> list[wire.Field]:
    if field.wire_type != wire.LENGTH_DELIMITED:
        raise CaffeFormatError(f"{where}: not a message (wire type {field.wire_type})", layer)
    assert isinstance(field.value, memoryview)
    try:
        return list(wire.fields(field.value))
    except wire.WireFormatError as exc:
        raise CaffeFormatError(f"{where}: corrupt ({exc})", layer) from exc


def _parse_blob(field: wire.Field, where: str, layer: str | None) -> np.ndarray:
    """A ``BlobProto`` as an array of its stored shape (float32; ``double_data`` converted)."""
    legacy = dict.fromkeys(_BLOB_LEGACY_DIMS, 0)
    shape: list[int] | None = None
    chunks: list[np.ndarray] = []
    double_chunks: list[np.ndarray] = []
    try:
        for inner in _fields_of(field, where, layer):
            if inner.number == _BLOB_DATA:
                chunks.append(wire.floats(inner, "<f4"))
            elif inner.number == _BLOB_DOUBLE_DATA:
                double_chunks.append(wire.floats(inner, "<f8"))
            elif inner.number == _BLOB_SHAPE:
                shape = [
                    dim
                    for dim_field in _fields_of(inner, where, layer)
                    if dim_field.number == _SHAPE_DIM
                    for dim in wire.varints(dim_field)
                ]
            elif inner.number in legacy and inner.wire_type == wire.VARINT:
                assert isinstance(inner.value, int)
                legacy[inner.number] = inner.value
    except wire.WireFormatError as exc:
        raise CaffeFormatError(f"{where}: corrupt blob ({exc})", layer) from exc
    if chunks and double_chunks:
        raise CaffeFormatError(f"{where}: a blob holds both float and double data", layer)
    values = (
        np.concatenate(double_chunks).astype(np.float32)
        if double_chunks
        else np.concatenate(chunks)
        if chunks
        else np.empty(0, np.float32)
    )
    if shape is None:
        shape = [legacy[i] for i in _BLOB_LEGACY_DIMS]
    if int(np.prod(shape)) != values.size:
        raise CaffeFormatError(
            f"{where}: the blob's shape {tuple(shape)} needs {int(np.prod(shape))} values, the "
            f"file holds {values.size} (truncated or corrupt file)",
            layer,
        )
    return values.reshape(shape)


def read_blob_file(path: Path) -> np.ndarray:
    """A ``.binaryproto`` file (one serialised ``BlobProto``) as an array of its stored shape."""
    data = memoryview(path.read_bytes())
    return _parse_blob(wire.Field(0, wire.LENGTH_DELIMITED, data), str(path), None)
