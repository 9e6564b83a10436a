"""A tiny protobuf wire-format writer for Caffe files, written for the tests only.

It encodes by the specification (https://protobuf.dev/programming-guides/encoding/) independently
of ``featurizer.caffe.wire``, so a bug in the reader is not mirrored here. Both encodings of a
network (``layer`` = field 100 with string types, V1 ``layers`` = field 2 with enum types) and
both blob shapes (``BlobShape`` or legacy num/channels/height/width), packed or unpacked floats,
and ``double_data`` can be written.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    return tag(number, 2) + varint(len(payload)) + payload


def varint_field(number: int, value: int) -> bytes:
    return tag(number, 0) + varint(value)


def string_field(number: int, value: str) -> bytes:
    return length_delimited(number, value.encode())


@dataclass(frozen=True)
class BlobStyle:
    legacy_shape: bool = False  # num/channels/height/width instead of BlobShape
    packed: bool = True
    double: bool = False


def blob(array: np.ndarray, style: BlobStyle) -> bytes:
    out = b""
    if style.legacy_shape:
        dims = (1,) * (4 - array.ndim) + array.shape
        for number, dim in zip((1, 2, 3, 4), dims, strict=True):
            out += varint_field(number, dim)
    else:
        out += length_delimited(7, length_delimited(1, b"".join(varint(d) for d in array.shape)))
    number, code = (8, "<d") if style.double else (5, "<f")
    flat = array.astype(np.float64 if style.double else np.float32).reshape(-1)
    if style.packed:
        out += length_delimited(number, flat.tobytes())
    else:  # one record per value, built with numpy (fc6 has 37 M values)
        wire_type, width = (1, 8) if style.double else (5, 4)
        prefix = np.frombuffer(tag(number, wire_type), np.uint8)
        records = np.empty((flat.size, len(prefix) + width), np.uint8)
        records[:, : len(prefix)] = prefix
        records[:, len(prefix) :] = flat.astype(code).view(np.uint8).reshape(-1, width)
        out += records.tobytes()
    return out


# The deploy prototxts' layer sequence (Caffe types; V1 enum values from caffe.proto).
V1_TYPES = {
    "Convolution": 4,
    "ReLU": 18,
    "Pooling": 17,
    "LRN": 15,
    "InnerProduct": 14,
    "Dropout": 6,
    "Softmax": 20,
}


def caffe_layers(lrn_before_pool: bool) -> list[tuple[str, str]]:
    layers = []
    for block in (1, 2):
        layers += [(f"conv{block}", "Convolution"), (f"relu{block}", "ReLU")]
        pair = [(f"norm{block}", "LRN"), (f"pool{block}", "Pooling")]
        layers += pair if lrn_before_pool else pair[::-1]
    for block in (3, 4, 5):
        layers += [(f"conv{block}", "Convolution"), (f"relu{block}", "ReLU")]
    layers.append(("pool5", "Pooling"))
    for block in (6, 7):
        layers += [
            (f"fc{block}", "InnerProduct"),
            (f"relu{block}", "ReLU"),
            (f"drop{block}", "Dropout"),
        ]
    layers += [("fc8", "InnerProduct"), ("prob", "Softmax")]
    return layers


def net_parameter(
    params: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    lrn_before_pool: bool,
    encoding: str = "layer",
    style: BlobStyle = BlobStyle(),
    skip: tuple[str, ...] = (),
) -> bytes:
    """A serialised NetParameter holding ``params`` (layer -> (weight, bias))."""
    out = string_field(1, "CaffeNet")
    for name, kind in caffe_layers(lrn_before_pool):
        if name in skip:
            continue
        blobs = [blob(array, style) for array in params.get(name, ())]
        if encoding == "layer":
            body = string_field(1, name) + string_field(2, kind)
            body += string_field(3, "bottom") + string_field(4, name)
            body += b"".join(length_delimited(7, b) for b in blobs)
            out += length_delimited(100, body)
        else:  # V1LayerParameter: bottom=2, top=3, name=4, type=5 (enum), blobs=6, blobs_lr=7
            body = string_field(2, "bottom") + string_field(3, name) + string_field(4, name)
            body += varint_field(5, V1_TYPES[kind])
            body += b"".join(length_delimited(6, b) for b in blobs)
            if blobs:
                body += b"".join(tag(7, 5) + struct.pack("<f", lr) for lr in (1.0, 2.0))
            out += length_delimited(2, body)
    return out


def write_caffemodel(path: Path, params, **kwargs) -> Path:
    path.write_bytes(net_parameter(params, **kwargs))
    return path


def random_caffe_params(seed: int = 0, only=None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """He-scaled random weights (activations keep the 0-255 input's magnitude, so LRN's
    ``alpha/n * sum x^2`` term is of order 1 and its formula matters), small random biases."""
    from featurizer.caffe.net import CONVOLUTIONS, INNER_PRODUCTS

    rng = np.random.default_rng(seed)
    params = {}
    for name, (fan_in, fan_out, kernel, _, _, group) in CONVOLUTIONS.items():
        if only is not None and name not in only:
            continue
        shape = (fan_out, fan_in // group, kernel, kernel)
        params[name] = _he(rng, shape, fan_in // group * kernel * kernel, fan_out)
    for name, (fan_in, fan_out) in INNER_PRODUCTS.items():
        if only is not None and name not in only:
            continue
        params[name] = _he(rng, (fan_out, fan_in), fan_in, fan_out)
    return params


def _he(rng, shape, fan_in, fan_out):
    weight = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    bias = (rng.standard_normal(fan_out) * 0.5).astype(np.float32)
    return weight, bias
