"""DecafBackbone, the runtime every record runs on: normalisation, plan checks, precision swaps.

Each backbone's taps are checked against torchvision's graph in tests/featurizer/backbones/.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision

from featurizer.backbone import DecafBackbone, build_backbone
from featurizer.backbones import Tap, get_backbone
from featurizer.errors import WeightsError
from featurizer.spec import PreprocessSpec
from featurizer.weights import resolve_weights

pytestmark = pytest.mark.filterwarnings("ignore:USING RANDOM WEIGHTS")

ALEXNET = get_backbone("alexnet")


@pytest.fixture(scope="module")
def weights():
    return resolve_weights("random", seed=1)


@pytest.fixture(scope="module")
def backbone(weights) -> DecafBackbone:
    return build_backbone(ALEXNET, weights)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=generator)


def test_layer_names_alias_is_derived_from_the_default_record():
    assert ALEXNET.tap_names == ("decaf5", "decaf6_pre", "decaf6", "decaf7_pre", "decaf7", "logits")


def test_normalisation_is_torchvisions_in_channels_last(backbone, images):
    spec = ALEXNET.default_tag.preprocess
    expected = torchvision.transforms.functional.normalize(
        images.float() / 255.0, mean=list(spec.mean), std=list(spec.std)
    )
    got = backbone.normalize(images)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_mean_and_std_come_from_the_weights_preprocessing(weights, images):
    half = PreprocessSpec(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    backbone = build_backbone(ALEXNET, dataclasses.replace(weights, preprocess=half))
    torch.testing.assert_close(
        backbone.normalize(images), images.float() / 127.5 - 1.0, atol=1e-6, rtol=0
    )


def test_bgr_weights_get_their_channels_reversed_before_the_mean(weights, images):
    caffe_like = PreprocessSpec(
        mean=(104 / 255, 117 / 255, 123 / 255), std=(1 / 255,) * 3, channel_order="bgr"
    )
    backbone = build_backbone(ALEXNET, dataclasses.replace(weights, preprocess=caffe_like))
    expected = images.flip(1).float() - torch.tensor([104.0, 117.0, 123.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(backbone.normalize(images), expected, atol=1e-4, rtol=0)


def test_plan_must_reach_every_tap(backbone):
    lost = Tap("lost", "classifier.99", 4096, "a node the plan does not have")
    record = dataclasses.replace(ALEXNET, taps=(*ALEXNET.taps, lost))
    with pytest.raises(RuntimeError, match=r"classifier\.99"):
        DecafBackbone(record, backbone.net)


def test_in_place_modules_before_the_first_tap_keep_running_in_place(backbone):
    first_tap = backbone.depth_of(["decaf5"]) - 1
    before = [stage for _, stage in backbone.stages[:first_tap]]
    assert any(getattr(stage, "inplace", False) for stage in before)  # the conv ReLUs


def test_int8_rebuilds_the_plan_over_the_quantised_modules(weights, images):
    model = build_backbone(ALEXNET, weights)
    model.set_precision("int8", torch.device("cpu"))
    stages = dict(model.stages)
    assert stages["classifier.1"]._get_name() == "DynamicQuantizedLinear"
    assert stages["classifier.1"] is model.net.classifier[1]
    assert not stages["classifier.2"].inplace
    with torch.inference_mode():
        out = model(images, ["decaf6_pre", "decaf6"])
    assert (out["decaf6_pre"] < 0).any()


def test_weights_that_do_not_fit_are_a_weights_error(weights):
    with pytest.raises(WeightsError, match="do not fit vgg16"):
        build_backbone("vgg16", weights)
