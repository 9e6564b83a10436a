"""The wire-format reader and the .caffemodel parser on small messages (fast; no full network)."""

from __future__ import annotations

import numpy as np
import pytest

from featurizer.backbones import get_backbone
from featurizer.caffe import wire
from featurizer.caffe.caffemodel import (
    CaffeFormatError,
    _parse_blob,
    parse_caffemodel,
    read_blob_file,
)
from featurizer.caffe.convert import convert
from featurizer.errors import WeightsError
from featurizer.weights import resolve_weights

from .writer import (
    BlobStyle,
    blob,
    length_delimited,
    net_parameter,
    random_caffe_params,
    string_field,
    varint,
    varint_field,
)

STYLES = [
    BlobStyle(),
    BlobStyle(legacy_shape=True),
    BlobStyle(packed=False),
    BlobStyle(double=True),
    BlobStyle(legacy_shape=True, packed=False, double=True),
]


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**31, 2**63 - 1])
def test_varints_round_trip(value):
    encoded = varint(value)
    assert wire.read_varint(memoryview(encoded), 0) == (value, len(encoded))


def test_truncated_and_overlong_varints_are_errors():
    with pytest.raises(wire.WireFormatError, match="truncated varint"):
        wire.read_varint(memoryview(b"\x80\x80"), 0)
    with pytest.raises(wire.WireFormatError, match="longer than 10"):
        wire.read_varint(memoryview(b"\x80" * 11), 0)


@pytest.mark.parametrize("style", STYLES, ids=repr)
def test_every_blob_encoding_reads_back(style):
    array = np.random.default_rng(0).standard_normal((4, 3, 2, 5)).astype(np.float32)
    message = length_delimited(7, blob(array, style))
    [field] = list(wire.fields(message))
    got = _parse_blob(field, "test", "conv1")
    assert got.shape == array.shape
    np.testing.assert_array_equal(got, array)  # doubles of float32 values convert back exactly


def test_an_unpacked_run_stops_at_another_field():
    # blobs_lr (7) and weight_decay (8) written one value each, then a string: three runs.
    message = b"".join(wire_tag_float(7, v) for v in (1.0, 2.0))
    message += b"".join(wire_tag_float(8, v) for v in (1.0, 0.0, 5.0))
    message += string_field(4, "conv1")
    runs = list(wire.fields(message))
    assert [(f.number, f.count) for f in runs] == [(7, 2), (8, 3), (4, 1)]
    assert wire.floats(runs[1], "<f4").tolist() == [1.0, 0.0, 5.0]
    assert wire.text(runs[2]) == "conv1"


def wire_tag_float(number: int, value: float) -> bytes:
    return varint(number << 3 | 5) + np.float32(value).tobytes()


def test_a_record_longer_than_the_message_is_truncation():
    message = length_delimited(2, b"x" * 10)[:-3]
    with pytest.raises(wire.TruncatedError, match="declares 10 bytes, only 7 remain"):
        list(wire.fields(message))


def test_unknown_wire_types_are_errors():
    with pytest.raises(wire.WireFormatError, match="wire type 3"):
        list(wire.fields(varint(1 << 3 | 3)))


def small_net(**kwargs) -> bytes:
    """conv1 and conv2 at full size, every other layer without blobs (fast to write)."""
    small = random_caffe_params(seed=1, only=("conv1", "conv2"))
    return net_parameter(small, lrn_before_pool=False, **kwargs)


@pytest.mark.parametrize("encoding", ["layer", "layers"])
def test_both_net_encodings_list_every_layer_in_order(encoding):
    model = parse_caffemodel(small_net(encoding=encoding), "test")
    assert model.encoding == encoding
    names = [layer.name for layer in model.layers]
    assert names[:4] == ["conv1", "relu1", "pool1", "norm1"]
    assert model.find("conv1").type == "Convolution"
    assert [b.shape for b in model.find("conv2").blobs] == [(256, 48, 5, 5), (256,)]
    assert model.find("fc6").blobs == ()


def test_a_missing_layer_names_it_and_its_expected_shapes():
    model = parse_caffemodel(small_net(skip=("conv3",)), "small.caffemodel")
    expected = r"no layer 'conv3' \(expected weights 384 x 256 x 3 x 3 and bias 384"
    with pytest.raises(CaffeFormatError, match=expected):
        convert(get_backbone("caffenet"), model, "small.caffemodel")


def test_a_wrong_shape_names_the_layer_and_both_shapes():
    params = random_caffe_params(seed=1, only=("conv1", "conv2"))
    weight, bias = params["conv2"]
    wrong = {"conv1": params["conv1"], "conv2": (np.concatenate([weight, weight], 1), bias)}
    model = parse_caffemodel(net_parameter(wrong, lrn_before_pool=False), "grouped.caffemodel")
    with pytest.raises(
        CaffeFormatError,
        match=r"layer 'conv2' weight has shape 256 x 96 x 5 x 5, expected 256 x 48 x 5 x 5",
    ) as info:
        convert(get_backbone("caffenet"), model, "grouped.caffemodel")
    assert info.value.layer == "conv2"


def test_a_layer_without_its_blobs_is_refused():
    model = parse_caffemodel(small_net(), "small.caffemodel")
    with pytest.raises(CaffeFormatError, match=r"'conv3' holds 0 blobs, expected 2 \(weights 384"):
        convert(get_backbone("caffenet"), model, "small.caffemodel")


def test_a_layer_with_one_blob_is_refused():
    params = random_caffe_params(seed=1, only=("conv1", "conv2"))
    model = parse_caffemodel(
        net_parameter({"conv1": params["conv1"][:1]}, lrn_before_pool=False), "one.caffemodel"
    )
    with pytest.raises(CaffeFormatError, match=r"'conv1' holds 1 blobs, expected 2"):
        convert(get_backbone("caffenet"), model, "one.caffemodel")


def test_a_blob_with_fewer_values_than_its_shape_is_refused():
    message = length_delimited(7, length_delimited(1, varint(10))) + length_delimited(
        5, np.zeros(3, np.float32).tobytes()
    )
    data = length_delimited(100, string_field(1, "conv1") + length_delimited(7, message))
    with pytest.raises(CaffeFormatError, match=r"layer 'conv1'.*\(10,\) needs 10 values.* 3"):
        parse_caffemodel(data, "short.caffemodel")


def test_truncated_small_file_names_the_layer(tmp_path, torch_home):
    data = small_net()
    path = tmp_path / "cut.caffemodel"
    path.write_bytes(data[: len(data) - 100_000])  # inside conv2's weights
    expected = r"truncated inside layer 'conv2'.*holds weights 256 x 48 x 5 x 5 and bias 256"
    with pytest.raises(CaffeFormatError, match=expected):
        resolve_weights(str(path), "caffenet")


def test_files_that_are_no_caffemodel_are_clear_errors(tmp_path, torch_home):
    garbage = tmp_path / "garbage.caffemodel"
    garbage.write_bytes(bytes(range(7, 250)) * 10)
    with pytest.raises(CaffeFormatError, match=r"garbage\.caffemodel"):
        resolve_weights(str(garbage), "caffenet")
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    with pytest.raises(CaffeFormatError, match="holds no layers"):
        resolve_weights(str(empty), "caffenet")


def test_v0_files_are_refused_with_the_upgrade_tool_named():
    data = length_delimited(2, length_delimited(1, string_field(1, "conv1")))
    with pytest.raises(CaffeFormatError, match="upgrade_net_proto_binary"):
        parse_caffemodel(data, "v0.caffemodel")


def test_a_caffemodel_for_a_torchvision_backbone_is_refused(tmp_path, torch_home):
    path = tmp_path / "model.caffemodel"
    path.write_bytes(small_net())
    with pytest.raises(WeightsError, match=r"is a Caffe model; alexnet takes torch.*caffenet"):
        resolve_weights(str(path), "alexnet")


def test_a_binaryproto_mean_reads_as_its_blob(tmp_path):
    mean = np.random.default_rng(0).uniform(0, 255, (3, 8, 8)).astype(np.float32)
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(blob(mean, BlobStyle(legacy_shape=True)))
    np.testing.assert_array_equal(read_blob_file(path), mean[None])
    assert varint_field(1, 1)  # the helper writes legacy num = 1 the same way
