"""ResNet-50: the shared backbone contract; weight tags with their own preprocessing."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torchvision.models.feature_extraction import create_feature_extractor

from featurizer.extractor import Featurizer
from featurizer.preprocess import preprocess
from featurizer.weights import canonical_state_dict, resolve_weights

from ..conftest import sample_photo
from .contract import (
    BackboneContract,
    assert_matches,
    normalized,
    put_in_cache,
    save_as_published,
    tag_published_at,
    without_zero_tensors,
)


class TestResNet50(BackboneContract):
    NAME = "resnet50"
    IMAGE_SIZE = 64  # adaptive average pool: any size works

    def test_taps_and_defaults(self, record):
        assert record.dims == {"layer3": 1024, "pool": 2048, "logits": 1000}
        assert record.default_layers == ("pool",)
        assert record.tap("layer3").reduce == "spatial_mean"

    def test_pool_is_global_average_pooled_layer4(self, record, reference, full, images):
        # Why there is no separate "layer4" tap: it would be this same vector under another name.
        extractor = create_feature_extractor(reference, return_nodes={"layer4": "layer4"})
        with torch.inference_mode():
            layer4 = extractor(normalized(images, record.default_tag.preprocess))["layer4"]
        assert_matches(full["pool"], layer4.mean(dim=(2, 3)))

    def test_v2_is_the_default_and_resizes_to_232(self, record):
        v1, v2 = record.weight_tag("IMAGENET1K_V1"), record.weight_tag("IMAGENET1K_V2")
        assert record.default_tag is v2
        assert (v1.preprocess.resize, v2.preprocess.resize) == (256, 232)
        assert v1.preprocess.crop == v2.preprocess.crop == 224

    def test_random_weights_carry_the_default_tags_preprocessing(self):
        with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
            featurizer = Featurizer(backbone="resnet50", weights="random")
        assert featurizer.layers == ("pool",)
        assert featurizer.preprocess.resize == 232
        assert featurizer.describe()["layers"] == {"pool": 2048}

    def test_each_tag_loads_its_own_file_with_its_own_preprocessing(
        self, record, weights, torch_home, tmp_path
    ):
        other = without_zero_tensors(resolve_weights("random", record, seed=2))
        published = tmp_path / "published"
        v1_file = save_as_published(weights.state_dict, published, "resnet50-v1")
        v2_file = save_as_published(other.state_dict, published, "resnet50-v2")
        v1 = tag_published_at(record.weight_tag("IMAGENET1K_V1"), v1_file)
        v2 = tag_published_at(record.weight_tag("IMAGENET1K_V2"), v2_file)
        test_record = dataclasses.replace(record, weight_tags=(v1, v2))
        put_in_cache(torch_home, v1_file)
        put_in_cache(torch_home, v2_file)

        default = resolve_weights("imagenet", test_record, download=False)
        chosen = resolve_weights("IMAGENET1K_V1", test_record, download=False)
        by_path = resolve_weights(str(v1_file), test_record)
        assert default.weights_id == "resnet50/IMAGENET1K_V2"
        assert default.preprocess.resize == 232
        assert torch.equal(default.state_dict["fc.weight"], other.state_dict["fc.weight"])
        assert chosen.weights_id == by_path.weights_id == "resnet50/IMAGENET1K_V1"
        assert chosen.preprocess.resize == by_path.preprocess.resize == 256
        assert torch.equal(chosen.state_dict["fc.weight"], weights.state_dict["fc.weight"])

        featurizer = Featurizer(backbone=test_record, weights="IMAGENET1K_V1", download=False)
        photo = sample_photo("china.jpg")
        assert featurizer.describe()["preprocessing"]["resize"] == 256
        assert torch.equal(featurizer.prepare(photo), preprocess(photo, v1.preprocess))
        assert not torch.equal(featurizer.prepare(photo), preprocess(photo, v2.preprocess))

    def test_checkpoints_without_num_batches_tracked_load(self, record):
        # Older torchvision checkpoints predate BatchNorm's counter; torch's load hook adds it
        # (it is never read in eval mode). Meta tensors: names and shapes are what is checked.
        with torch.device("meta"):
            expected = record.build().state_dict()
        legacy = {k: v for k, v in expected.items() if not k.endswith("num_batches_tracked")}
        assert len(legacy) < len(expected)
        assert canonical_state_dict(record, legacy, source="old.pth").keys() == expected.keys()
