"""Full-size .caffemodel files in both encodings: loading, the NumPy reference forward on every
tap, the conversion cache, the model-zoo tag (download + sha1), and whole-file errors.

Ground truth is :mod:`.reference` (NumPy, float64, written from Caffe's layer definitions); the
files come from :mod:`.writer` (the protobuf encoding written independently of the reader).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import torch

import featurizer.caffe.convert as convert
from featurizer.backbone import build_backbone
from featurizer.backbones import get_backbone
from featurizer.backbones.caffe import CAFFE_PREPROCESS, ILSVRC_2012_MEAN_BGR
from featurizer.caffe.caffemodel import CaffeFormatError
from featurizer.errors import WeightsError
from featurizer.extractor import Featurizer
from featurizer.preprocess import preprocess
from featurizer.weights import cache_path, resolve_weights

from ..conftest import sample_photo, sample_photo_path, textured_rgb
from . import reference

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:USING RANDOM WEIGHTS")]

NETWORKS = ("caffenet", "bvlc_alexnet")
TOLERANCE = 1e-4  # relative to the largest activation of the tap (fp32 vs float64)


@pytest.fixture(scope="module")
def loaded(caffe_home, caffemodels):
    return {name: resolve_weights(str(path), name) for name, path in caffemodels.items()}


@pytest.fixture(scope="module")
def crops() -> torch.Tensor:
    """Three real-looking 227 crops: two photographs and a textured synthetic image."""
    images = [sample_photo("china.jpg"), sample_photo("flower.jpg"), textured_rgb((320, 240))]
    return torch.stack([preprocess(image, CAFFE_PREPROCESS, "center") for image in images])


def caffe_input(crops: torch.Tensor) -> np.ndarray:
    """Caffe's input blob by hand: BGR, 0-255, minus the BGR mean (float64)."""
    bgr = crops.numpy()[:, ::-1].astype(np.float64)
    return bgr - np.array(ILSVRC_2012_MEAN_BGR).reshape(1, 3, 1, 1)


@pytest.fixture(scope="module")
def models(loaded):
    return {name: build_backbone(name, weights) for name, weights in loaded.items()}


def run_all(model, crops):
    with torch.inference_mode():
        return {k: v.numpy().copy() for k, v in model(crops, model.backbone.tap_names).items()}


@pytest.mark.parametrize("name", NETWORKS)
def test_every_tap_matches_the_numpy_reference(name, models, crops, caffe_params):
    got = run_all(models[name], crops)
    expected = reference.forward(
        caffe_input(crops), caffe_params, lrn_before_pool=name == "bvlc_alexnet"
    )
    assert set(got) == set(expected)
    for tap, want in expected.items():
        scale = max(1.0, float(np.abs(want).max()))
        error = float(np.abs(got[tap] - want).max()) / scale
        print(f"{name} {tap:<11} scale {scale:9.2f}  max error / scale {error:.2e}")
        assert got[tap].shape == want.shape == (len(crops), get_backbone(name).dims[tap])
        assert error <= TOLERANCE, f"{name} {tap}: {error:.2e}"


def test_the_two_layer_orders_give_different_features(models, crops):
    # Same parameters, LRN before or after pooling: the reference comparison above could fail.
    caffenet, alexnet = run_all(models["caffenet"], crops), run_all(models["bvlc_alexnet"], crops)
    for tap in ("decaf5", "decaf7"):
        scale = np.abs(caffenet[tap]).max()
        assert np.abs(caffenet[tap] - alexnet[tap]).max() > 0.05 * scale, tap


def test_both_encodings_load_the_written_parameters_exactly(loaded, caffe_params):
    for weights in loaded.values():
        assert set(weights.state_dict) == {
            f"{layer}.{kind}" for layer in caffe_params for kind in ("weight", "bias")
        }
        for layer, (weight, bias) in caffe_params.items():
            np.testing.assert_array_equal(weights.state_dict[f"{layer}.weight"].numpy(), weight)
            np.testing.assert_array_equal(weights.state_dict[f"{layer}.bias"].numpy(), bias)


def test_provenance_is_the_caffemodel_itself(loaded, caffemodels):
    for name, weights in loaded.items():
        path = caffemodels[name]
        assert weights.weights_id == f"file:{path.name}"
        assert weights.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert weights.source == str(path.resolve())
        assert weights.preprocess == CAFFE_PREPROCESS
        assert weights.mean_image is None


def test_second_load_reads_the_verified_cache(loaded, caffemodels, monkeypatch):
    def no_parsing(path):
        raise AssertionError("the .caffemodel was parsed again")

    monkeypatch.setattr(convert, "read_caffemodel", no_parsing)
    again = resolve_weights(str(caffemodels["caffenet"]), "caffenet")
    cached = convert.cache_path(get_backbone("caffenet"), again.sha256)
    assert (
        cached.is_file()
        and json.loads(cached.with_suffix(".json").read_text())["caffemodel_sha256"] == again.sha256
    )
    for key, tensor in loaded["caffenet"].state_dict.items():
        assert torch.equal(again.state_dict[key], tensor), key


def test_a_damaged_cache_is_converted_again(loaded, caffemodels, caplog):
    record = get_backbone("caffenet")
    cached = convert.cache_path(record, loaded["caffenet"].sha256)
    cached.write_bytes(b"PK\x03\x04 not the converted weights")
    again = resolve_weights(str(caffemodels["caffenet"]), "caffenet")
    assert "converting again" in caplog.text
    assert torch.equal(again.state_dict["fc8.bias"], loaded["caffenet"].state_dict["fc8.bias"])
    sidecar = json.loads(cached.with_suffix(".json").read_text())
    assert sidecar["sha256"] == hashlib.sha256(cached.read_bytes()).hexdigest()


def test_a_caffenet_file_is_refused_for_bvlc_alexnet(caffemodels):
    with pytest.raises(CaffeFormatError, match=r"is a CaffeNet.*--backbone caffenet") as info:
        resolve_weights(str(caffemodels["caffenet"]), "bvlc_alexnet")
    assert info.value.http_status == 503  # a WeightsError: the server cannot serve without it


def test_a_file_cut_inside_a_layer_names_that_layer(caffemodels, tmp_path):
    data = caffemodels["caffenet"].read_bytes()
    cut = tmp_path / "partial.caffemodel"
    cut.write_bytes(data[: len(data) // 2])  # inside fc6: bytes ~9 MB to ~160 MB
    with pytest.raises(CaffeFormatError, match=r"truncated inside layer 'fc6'.*sha1"):
        resolve_weights(str(cut), "caffenet")


def test_the_converted_state_dict_loads_as_a_torch_file(loaded, tmp_path, caffe_home):
    saved = tmp_path / "caffenet.pth"
    torch.save(loaded["caffenet"].state_dict, saved)
    again = resolve_weights(str(saved), "caffenet")
    assert again.preprocess == CAFFE_PREPROCESS
    expected = loaded["caffenet"].state_dict
    assert torch.equal(again.state_dict["conv2.weight"], expected["conv2.weight"])


def test_featurizer_extracts_the_reference_features(caffemodels, crops, caffe_params):
    featurizer = Featurizer(
        ["decaf7", "decaf5"],
        backbone="caffenet",
        weights=str(caffemodels["caffenet"]),
        device="cpu",
        decoder="pil",  # the reference crops come from PIL; the tensor decoder is tested apart
    )
    got = featurizer.extract([sample_photo_path("china.jpg")])
    expected = reference.forward(caffe_input(crops[:1]), caffe_params, lrn_before_pool=False)
    for tap in ("decaf7", "decaf5"):
        scale = float(np.abs(expected[tap]).max())
        assert float(np.abs(got[tap] - expected[tap]).max()) <= TOLERANCE * scale, tap
    description = featurizer.describe()
    assert (
        description["weights_sha256"]
        == resolve_weights(str(caffemodels["caffenet"]), "caffenet").sha256
    )
    assert description["preprocessing"]["channel_order"] == "bgr"


# ----------------------------------------------------------------------- the model zoo's tag


def zoo_record_for(path, name="caffenet"):
    """The record with its BVLC tag pointing at ``path`` (file://) with ``path``'s sha1."""
    record = get_backbone(name)
    sha1 = hashlib.sha1(path.read_bytes()).hexdigest()
    tag = dataclasses.replace(record.default_tag, url=path.as_uri(), sha1=sha1)
    return dataclasses.replace(record, weight_tags=(tag,)), tag


def test_imagenet_downloads_the_zoo_file_and_checks_its_sha1(caffemodels, caffe_home, loaded):
    record, tag = zoo_record_for(caffemodels["caffenet"])
    target = cache_path(tag)
    assert not target.exists()
    weights = resolve_weights("imagenet", record)
    assert target.is_file()
    assert (weights.weights_id, weights.source) == ("caffenet/BVLC", str(target))
    assert weights.sha256 == loaded["caffenet"].sha256
    expected = loaded["caffenet"].state_dict
    assert torch.equal(weights.state_dict["fc6.weight"], expected["fc6.weight"])
    # The same file given by path is recognised by its sha1: same id, same preprocessing.
    by_path = resolve_weights(str(caffemodels["caffenet"]), record)
    assert (by_path.weights_id, by_path.preprocess) == ("caffenet/BVLC", tag.preprocess)
    target.unlink()


def test_a_download_with_the_wrong_sha1_leaves_nothing(caffemodels, caffe_home):
    record, tag = zoo_record_for(caffemodels["caffenet"])
    record = dataclasses.replace(record, weight_tags=(dataclasses.replace(tag, sha1="0" * 40),))
    with pytest.raises(WeightsError, match=r"sha1 .* the publisher gives 0{40}"):
        resolve_weights("imagenet", record)
    target = cache_path(record.default_tag)
    assert not target.exists()
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]
