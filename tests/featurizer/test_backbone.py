"""Layer taps of DecafBackbone against torchvision's own AlexNet graph (random weights, fp32)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

from featurizer.backbone import ALEXNET_TAPS, LAYER_NAMES, DecafBackbone, build_backbone
from featurizer.errors import UnknownLayerError
from featurizer.weights import BACKBONES, resolve_weights

pytestmark = pytest.mark.filterwarnings("ignore:USING RANDOM WEIGHTS")

SPEC = BACKBONES["alexnet"]
ATOL = 1e-5


@pytest.fixture(scope="module")
def weights():
    return resolve_weights("random", seed=1)


@pytest.fixture(scope="module")
def backbone(weights) -> DecafBackbone:
    return build_backbone(SPEC, weights)


@pytest.fixture(scope="module")
def reference(weights) -> torch.nn.Module:
    """torchvision's AlexNet with the same weights, untouched (NCHW, in-place ReLUs)."""
    net = torchvision.models.alexnet(weights=None)
    net.load_state_dict(weights.state_dict)
    return net.eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8, generator=generator)


@pytest.fixture(scope="module")
def full(backbone, images) -> dict[str, torch.Tensor]:
    """Every tap from one pass."""
    return run(backbone, images, LAYER_NAMES)


def normalized(images: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation written independently of the backbone's folded multiply-add."""
    return torchvision.transforms.functional.normalize(
        images.float() / 255.0, mean=list(SPEC.preprocess.mean), std=list(SPEC.preprocess.std)
    )


def run(backbone: DecafBackbone, images: torch.Tensor, layers) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        return {k: v.clone() for k, v in backbone(images, layers).items()}


def test_taps_are_declared_as_data_for_every_layer_name():
    assert tuple(tap.name for tap in ALEXNET_TAPS) == LAYER_NAMES
    assert {tap.name: tap.dim for tap in ALEXNET_TAPS} == SPEC.layer_dims


def test_post_relu_taps_match_torchvision_graph(full, reference, images):
    # Post-ReLU and final nodes are safe to read from torchvision's FX graph.
    nodes = {"flatten": "decaf5", "classifier.2": "decaf6", "classifier.5": "decaf7"}
    nodes["classifier.6"] = "logits"
    extractor = create_feature_extractor(reference, return_nodes=nodes).eval()
    with torch.inference_mode():
        expected = extractor(normalized(images))
        expected_logits = reference(normalized(images))
    got = full
    for name in expected:
        assert got[name].shape == (2, SPEC.layer_dims[name])
        torch.testing.assert_close(got[name], expected[name], atol=ATOL, rtol=0, msg=name)
    torch.testing.assert_close(got["logits"], expected_logits, atol=ATOL, rtol=0)


def test_pre_relu_taps_match_manual_forward_and_are_not_clobbered(full, reference, images):
    # Manual forward with out-of-place ops: the pre-ReLU values torchvision's in-place ReLU hides.
    with torch.inference_mode():
        pool5 = torch.flatten(reference.avgpool(reference.features(normalized(images))), 1)
        fc6 = F.linear(pool5, reference.classifier[1].weight, reference.classifier[1].bias)
        fc7 = F.linear(F.relu(fc6), reference.classifier[4].weight, reference.classifier[4].bias)
    got = full
    torch.testing.assert_close(got["decaf6_pre"], fc6, atol=ATOL, rtol=0)
    torch.testing.assert_close(got["decaf7_pre"], fc7, atol=ATOL, rtol=0)
    # A clobbered pre-ReLU tap would have no negative entries.
    assert (got["decaf6_pre"] < 0).float().mean() > 0.2
    assert (got["decaf7_pre"] < 0).float().mean() > 0.2
    assert torch.equal(got["decaf6"], F.relu(got["decaf6_pre"]))
    assert torch.equal(got["decaf7"], F.relu(got["decaf7_pre"]))


def test_clobbering_check_detects_in_place_relu(weights, images):
    # The check above is meaningful: with torchvision's in-place ReLU back, decaf6_pre is clobbered.
    broken = build_backbone(SPEC, weights)
    broken.net.classifier[2].inplace = True
    with torch.inference_mode():
        out = broken(images, ["decaf6_pre", "decaf6"])
    assert (out["decaf6_pre"] >= 0).all()


def test_single_layer_requests_equal_the_full_pass(backbone, images, full):
    for name in LAYER_NAMES:
        alone = run(backbone, images, [name])
        assert list(alone) == [name]
        assert torch.equal(alone[name], full[name]), name


def test_forward_stops_at_deepest_requested_layer(backbone, images):
    calls: list[str] = []
    handles = [
        module.register_forward_hook(lambda *_, name=name: calls.append(name))
        for name, module in backbone.net.named_modules()
        if name.startswith(("features.", "classifier."))
    ]
    try:
        run(backbone, images[:1], ["decaf5"])
        assert calls and not any(name.startswith("classifier.") for name in calls)
        calls.clear()
        run(backbone, images[:1], ["decaf6_pre", "decaf5"])
        assert calls[-1] == "classifier.1"
        calls.clear()
        run(backbone, images[:1], ["decaf7"])
        assert calls[-1] == "classifier.5" and "classifier.6" not in calls
    finally:
        for handle in handles:
            handle.remove()


def test_always_eval_so_dropout_is_off(backbone, images):
    backbone.train()
    assert not backbone.training and not backbone.net.classifier[0].training
    first = run(backbone, images[:1], ["decaf7"])["decaf7"]
    second = run(backbone, images[:1], ["decaf7"])["decaf7"]
    assert torch.equal(first, second)


def test_rejects_unknown_layers_and_float_input(backbone, images):
    with pytest.raises(UnknownLayerError, match="decaf8"):
        run(backbone, images, ["decaf8"])
    with pytest.raises(TypeError, match="uint8"):
        run(backbone, images.float(), ["decaf5"])


def test_convolutions_run_channels_last(backbone):
    conv1 = backbone.net.features[0].weight
    assert conv1.is_contiguous(memory_format=torch.channels_last)
