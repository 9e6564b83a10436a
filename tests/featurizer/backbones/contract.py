"""The guarantees every backbone gives, as a test class each family's test module inherits.

A family's tests are then a few lines::

    class TestResNet50(BackboneContract):
        NAME = "resnet50"
        IMAGE_SIZE = 64

plus whatever is special about the family. Everything runs on random weights (seeded), batch 2, at
the smallest input the architecture takes quickly (adaptive pooling lets AlexNet/VGG/ResNet run
at 64 px; ViT needs its 224), with one model per class.

Reference for every tap: torchvision's own graph (``create_feature_extractor``) with in-place
modules made out-of-place in the *reference* - otherwise torchvision's extractor returns the
post-ReLU value for a pre-ReLU node - and the tap's reduction written independently of the
runtime's.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from featurizer.backbone import DecafBackbone, build_backbone
from featurizer.backbones import Backbone, Tap, WeightTag, get_backbone
from featurizer.linear_kernels import OneDnnLinear, onednn_available
from featurizer.preprocess import preprocess
from featurizer.spec import PreprocessSpec
from featurizer.weights import LoadedWeights, resolve_weights, sha256_of_file

from ..conftest import sample_photo

ATOL = 1e-5  # fp32, same weights, same graph: only summation order differs (see assert_matches)
# From tests/featurizer/test_precision.py, whose docstring derives them; asserted on the worst view
# of every tap.
FIDELITY_BOUNDS = {"bf16": 0.999, "int8": 0.995}


# ----------------------------------------------------------------------------- helpers


def normalized(images: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """ImageNet normalisation written independently of the backbone's folded multiply-add
    (channels reversed first for a BGR network: spec.mean/std are in the network's order)."""
    if spec.channel_order == "bgr":
        images = images[:, [2, 1, 0]]
    return torchvision.transforms.functional.normalize(
        images.float() / 255.0, mean=list(spec.mean), std=list(spec.std)
    )


def assert_matches(got: torch.Tensor, expected: torch.Tensor, msg: str = "") -> None:
    """Equal to ATOL in fp32, relative to the activations' scale when that exceeds 1.

    fp32 summation order (channels_last vs NCHW kernels, folded normalisation) moves a value by
    ~1e-6 of the activations' magnitude. Random-weight ResNet-50 (BatchNorm is the identity
    before calibration) reaches |x| = 80 at layer3: measured differences up to 8e-5 (1e-6
    relative), while an identical-layout, identical-input reference differs by exactly 0. Tap
    magnitudes <= 1 (AlexNet, VGG-16, ViT here) keep the plain absolute 1e-5.
    """
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(got, expected, atol=ATOL * scale, rtol=0, msg=msg)


def reduced(tap: Tap, node_output: torch.Tensor) -> torch.Tensor:
    """A tap's reduction, written independently of featurizer.backbone's."""
    if tap.reduce == "spatial_mean":
        return F.adaptive_avg_pool2d(node_output, 1).flatten(1)
    if tap.reduce == "class_token":
        return node_output[:, 0, :]
    return node_output


def without_zero_tensors(weights: LoadedWeights) -> LoadedWeights:
    """Random weights with every all-zero float tensor replaced by small seeded noise.

    torchvision zero-initialises some tensors (ViT's head and class token, biases): a tap computed
    from them would be all zeros and match any reference trivially.
    """
    generator = torch.Generator().manual_seed(2)
    state_dict = {
        key: torch.randn(v.shape, generator=generator) * 0.02
        if v.is_floating_point() and not v.any()
        else v
        for key, v in weights.state_dict.items()
    }
    return dataclasses.replace(weights, state_dict=state_dict)


def reference_network(record: Backbone, weights: LoadedWeights) -> nn.Module:
    """torchvision's network with the same weights (shared, not copied), all modules out-of-place.

    Out-of-place so that a pre-ReLU node reads the pre-ReLU value; NCHW, untouched otherwise.
    """
    with torch.device("meta"):
        net = record.build()
    net.load_state_dict(weights.state_dict, assign=True)
    for module in net.modules():
        if getattr(module, "inplace", False):
            module.inplace = False
    return net.eval()


def run(backbone: DecafBackbone, images: torch.Tensor, layers) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        return {k: v.clone() for k, v in backbone(images, layers).items()}


def save_as_published(state_dict: dict, folder: Path, stem: str) -> Path:
    """Save ``state_dict`` under torchvision's naming: ``<stem>-<sha256 prefix>.pth``."""
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f"{stem}.staging"
    torch.save(state_dict, staging)
    return staging.rename(folder / f"{stem}-{sha256_of_file(staging)[:8]}.pth")


def tag_published_at(tag: WeightTag, path: Path) -> WeightTag:
    """``tag`` as if ``path`` were its published file (url file://..., same preprocessing)."""
    return dataclasses.replace(tag, url=path.as_uri())


def put_in_cache(torch_home: Path, source: Path) -> Path:
    """Where torchvision keeps a downloaded checkpoint; hard-linked, not copied (up to 528 MB)."""
    cached = torch_home / "hub" / "checkpoints" / source.name
    cached.parent.mkdir(parents=True, exist_ok=True)
    os.link(source, cached)
    return cached


def photo_views(size: int, crops: tuple[int, ...]) -> torch.Tensor:
    """Real views: ``crops`` (indices into the ten crops) of scikit-learn's two photographs."""
    spec = PreprocessSpec(resize=size * 8 // 7, crop=size)
    photos = [sample_photo("china.jpg"), sample_photo("flower.jpg")]
    views = torch.stack([preprocess(photo, spec, "tencrop") for photo in photos])
    return views[:, list(crops)].reshape(-1, 3, size, size)


def cosine_per_row(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))


def first_stage_with_linear(backbone: DecafBackbone) -> int:
    for index, (_, stage) in enumerate(backbone.stages):
        if isinstance(stage, nn.Module) and any(isinstance(m, nn.Linear) for m in stage.modules()):
            return index
    return len(backbone.stages)


# ----------------------------------------------------------------------------- the contract


@pytest.mark.filterwarnings("ignore:USING RANDOM WEIGHTS")
class BackboneContract:
    NAME: ClassVar[str]
    IMAGE_SIZE: ClassVar[int]  # smallest input that keeps the tests fast
    FIDELITY_CROPS: ClassVar[tuple[int, ...]] = tuple(range(10))  # of each photo's ten crops

    @pytest.fixture(scope="class")
    @classmethod
    def record(cls) -> Backbone:
        return get_backbone(cls.NAME)

    @pytest.fixture(scope="class")
    @classmethod
    def weights(cls, record) -> LoadedWeights:
        return without_zero_tensors(resolve_weights("random", record, seed=1))

    @pytest.fixture(scope="class")
    @classmethod
    def backbone(cls, record, weights) -> DecafBackbone:
        return build_backbone(record, weights)

    @pytest.fixture(scope="class")
    @classmethod
    def reference(cls, record, weights) -> nn.Module:
        return reference_network(record, weights)

    @pytest.fixture(scope="class")
    @classmethod
    def images(cls) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        shape = (2, 3, cls.IMAGE_SIZE, cls.IMAGE_SIZE)
        return torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)

    @pytest.fixture(scope="class")
    @classmethod
    def full(cls, backbone, images) -> dict[str, torch.Tensor]:
        """Every tap from one pass."""
        return run(backbone, images, backbone.backbone.tap_names)

    # -- the record

    def test_record_matches_torchvision_weights_enum(self, record):
        enum = torchvision.models.get_model_weights(record.name)
        assert record.default_tag_name == enum.DEFAULT.name
        for tag in record.weight_tags:
            published = enum[tag.name]
            assert tag.url == published.url
            assert tag.filename == published.url.rsplit("/", 1)[1]
            assert tag.filename.endswith(f"-{tag.sha256_prefix}.pth")
            metrics = published.meta["_metrics"]["ImageNet-1K"]
            assert (tag.acc1, tag.acc5) == (metrics["acc@1"], metrics["acc@5"])
            transforms = published.transforms()
            spec = tag.preprocess
            assert [spec.resize] == transforms.resize_size
            assert [spec.crop] == transforms.crop_size == [record.input_size]
            assert list(spec.mean) == list(transforms.mean)
            assert list(spec.std) == list(transforms.std)
            assert spec.interpolation == transforms.interpolation.value
            assert (record.min_input_size,) * 2 == tuple(published.meta["min_size"])

    def test_describe_is_json_safe(self, record):
        description = json.loads(json.dumps(record.describe()))
        assert description["name"] == record.name
        assert [tap["name"] for tap in description["taps"]] == list(record.tap_names)
        assert description["default_layers"] == list(record.default_layers)
        assert {w["id"] for w in description["weights"]} == {
            f"{record.name}/{tag.name}" for tag in record.weight_tags
        }

    # -- the taps

    def test_every_tap_matches_torchvision_graph(self, record, full, reference, images):
        extractor = create_feature_extractor(
            reference, return_nodes={tap.node: tap.name for tap in record.taps}
        ).eval()
        with torch.inference_mode():
            nodes = extractor(normalized(images, record.default_tag.preprocess))
        for tap in record.taps:
            expected = reduced(tap, nodes[tap.name])
            assert full[tap.name].shape == expected.shape == (2, tap.dim), tap.name
            assert_matches(full[tap.name], expected, msg=tap.name)

    def test_logits_equal_torchvision_forward(self, record, full, reference, images):
        with torch.inference_mode():
            expected = reference(normalized(images, record.default_tag.preprocess))
        assert_matches(full["logits"], expected)

    def test_single_layer_requests_equal_the_full_pass(self, backbone, images, full):
        for name in backbone.backbone.tap_names:
            alone = run(backbone, images, [name])
            assert list(alone) == [name]
            assert torch.equal(alone[name], full[name]), name

    def test_forward_stops_at_deepest_requested_tap(self, backbone, images):
        calls: list[str] = []
        modules = [(name, s) for name, s in backbone.stages if isinstance(s, nn.Module)]
        handles = [
            stage.register_forward_hook(lambda *_, name=name: calls.append(name))
            for name, stage in modules
        ]
        stage_names = [name for name, _ in backbone.stages]
        try:
            for tap in backbone.backbone.taps:
                calls.clear()
                run(backbone, images[:1], [tap.name])
                depth = stage_names.index(tap.node) + 1
                assert backbone.depth_of([tap.name]) == depth
                expected = [name for name, s in backbone.stages[:depth] if isinstance(s, nn.Module)]
                assert calls == expected, f"{tap.name}: ran {calls[-3:]}, expected {expected[-3:]}"
            first, *_, last = backbone.backbone.taps
            calls.clear()
            run(backbone, images[:1], [last.name, first.name])  # order of the request is free
            assert backbone.depth_of([first.name, last.name]) == stage_names.index(last.node) + 1
        finally:
            for handle in handles:
                handle.remove()

    def test_in_place_modules_after_the_first_tap_are_out_of_place(self, backbone):
        first = min(backbone.depth_of([name]) for name in backbone.taps) - 1
        for _, stage in backbone.stages[first + 1 :]:
            if isinstance(stage, nn.Module):
                assert not any(getattr(m, "inplace", False) for m in stage.modules())

    def test_always_eval_so_dropout_is_off(self, backbone, images):
        backbone.train()
        assert not backbone.training
        assert not any(module.training for module in backbone.modules())
        layers = backbone.backbone.default_layers
        first, second = run(backbone, images[:1], layers), run(backbone, images[:1], layers)
        for name in layers:
            assert torch.equal(first[name], second[name])

    def test_rejects_unknown_layers_and_float_input(self, backbone, images):
        from featurizer.errors import UnknownLayerError

        with pytest.raises(UnknownLayerError, match=f"no_such_tap.*{self.NAME}"):
            run(backbone, images, ["no_such_tap"])
        with pytest.raises(TypeError, match="uint8"):
            run(backbone, images.float(), backbone.backbone.default_layers)

    def test_convolutions_run_channels_last(self, backbone):
        conv = next(m for m in backbone.net.modules() if isinstance(m, nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)

    # -- the loader

    def test_saved_state_dict_loads_from_torchvision_cache_and_from_a_path(
        self, record, weights, full, images, torch_home, tmp_path
    ):
        published = save_as_published(weights.state_dict, tmp_path / "published", record.name)
        tag = tag_published_at(record.default_tag, published)
        test_record = dataclasses.replace(record, weight_tags=(tag,))
        cached = put_in_cache(torch_home, published)

        from_cache = resolve_weights("imagenet", test_record, download=False)
        assert from_cache.source == str(cached)
        assert from_cache.weights_id == f"{record.name}/{tag.name}"
        assert published.name.endswith(f"-{from_cache.sha256[:8]}.pth")
        assert from_cache.preprocess == tag.preprocess
        assert from_cache.state_dict.keys() == weights.state_dict.keys()
        for key, tensor in weights.state_dict.items():
            assert torch.equal(from_cache.state_dict[key], tensor), key
        provenance = (from_cache.weights_id, from_cache.sha256, from_cache.preprocess)
        del from_cache  # VGG-16: 528 MB; keep one loaded copy at a time
        # The same file given explicitly is recognised by its hash: same id, same preprocessing.
        from_path = resolve_weights(str(published), test_record)
        assert from_path.source == str(published.resolve())
        assert (from_path.weights_id, from_path.sha256, from_path.preprocess) == provenance
        loaded = run(build_backbone(test_record, from_path), images, record.default_layers)
        for name in record.default_layers:
            assert torch.equal(loaded[name], full[name]), name

    # -- fp32 fc kernel (featurizer.linear_kernels)

    def test_fp32_onednn_fc_layers_match_the_reference_per_tap(
        self, record, weights, backbone, images, full
    ):
        packed = build_backbone(record, weights)
        packed.set_precision("fp32", torch.device("cpu"))  # auto: oneDNN fc where available
        plain_linears = [m for m in backbone.net.modules() if type(m) is nn.Linear]
        swapped = [m for m in packed.net.modules() if isinstance(m, OneDnnLinear)]
        if onednn_available():
            assert len(swapped) == len(plain_linears) > 0
            assert not any(type(m) is nn.Linear for m in packed.net.modules())
        got = run(packed, images, record.tap_names)
        for name in record.tap_names:
            scale = float(full[name].abs().max())
            difference = float((got[name] - full[name]).abs().max())
            assert difference <= 1e-5 * scale, f"{name}: {difference:.3g} vs scale {scale:.3g}"
        expected_state = backbone.net.state_dict()
        packed_state = packed.net.state_dict()
        assert packed_state.keys() == expected_state.keys()
        for key, tensor in expected_state.items():
            assert torch.equal(packed_state[key], tensor), key

    # -- reduced precision

    @pytest.fixture(scope="class")
    @classmethod
    def views(cls) -> torch.Tensor:
        return photo_views(cls.IMAGE_SIZE, cls.FIDELITY_CROPS)

    @pytest.fixture(scope="class")
    @classmethod
    def fp32_views(cls, backbone, views) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in run(backbone, views, backbone.backbone.tap_names).items()}

    @pytest.mark.parametrize("precision", ["bf16", "int8"])
    def test_reduced_precision_fidelity_per_tap(
        self, precision, record, weights, backbone, views, fp32_views, record_property
    ):
        reduced_model = build_backbone(record, weights)
        reduced_model.set_precision(precision, torch.device("cpu"))
        got = {k: v.float().numpy() for k, v in run(reduced_model, views, record.tap_names).items()}
        worst = {
            name: float(cosine_per_row(fp32_views[name], got[name]).min())
            for name in record.tap_names
        }
        record_property(f"cosine_{record.name}_{precision}", worst)
        print(f"\n{record.name} {precision} vs fp32, worst cosine over {len(views)} views:")
        for name, value in worst.items():
            print(f"  {name:<11} {value:.6f}")
        for name, value in worst.items():
            assert value >= FIDELITY_BOUNDS[precision], f"{precision} {name}: cosine {value:.6f}"
        if precision == "int8":  # taps computed before the first Linear are untouched by int8
            exact_before = first_stage_with_linear(backbone)
            for name in record.tap_names:
                if backbone.depth_of([name]) <= exact_before:
                    np.testing.assert_array_equal(got[name], fp32_views[name], err_msg=name)


class PreReluTaps:
    """For families with ``X_pre``/``X`` tap pairs (an fc layer before and after its ReLU)."""

    @staticmethod
    def pre_relu_pairs(record: Backbone) -> list[tuple[str, str]]:
        names = record.tap_names
        return [(n, n.removesuffix("_pre")) for n in names if n.endswith("_pre")]

    def test_pre_relu_taps_are_not_clobbered(self, record, full):
        pairs = self.pre_relu_pairs(record)
        assert pairs
        for pre, post in pairs:
            # A clobbered pre-ReLU tap would have no negative entries.
            assert (full[pre] < 0).float().mean() > 0.2, pre
            assert torch.equal(full[post], F.relu(full[pre])), post

    def test_clobbering_check_detects_in_place_relu(self, record, weights, images):
        # The checks above are meaningful: with torchvision's in-place ReLU back, the pre-ReLU tap
        # is clobbered.
        pre, post = self.pre_relu_pairs(record)[0]
        broken = build_backbone(record, weights)
        stages = dict(broken.stages)
        stages[record.tap(post).node].inplace = True
        with torch.inference_mode():
            out = broken(images, [pre, post])
        assert (out[pre] >= 0).all()
