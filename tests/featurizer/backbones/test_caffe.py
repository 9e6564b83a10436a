"""CaffeNet and BVLC AlexNet: the shared backbone contract, adapted to our own torch module.

The contract's graph comparison traces :class:`featurizer.caffe.net.CaffeNet` with torchvision's
``create_feature_extractor`` (its node names are Caffe's layer names), which checks the plan and
the taps; the ground truth for the arithmetic is the NumPy forward in
``tests/featurizer/caffe/test_caffemodel.py``. The record test checks the model zoo's facts
(BVLC/caffe ``models/*/readme.md``) instead of torchvision's ``Weights`` enum, and the loader test
goes through the zoo tag's sha1 instead of a sha256-prefixed file name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re

import pytest
import torch
from torch import nn

from featurizer.backbone import build_backbone
from featurizer.backbones.caffe import CAFFE_PREPROCESS
from featurizer.weights import cache_path, resolve_weights

from .contract import BackboneContract, PreReluTaps, put_in_cache, run

ZOO = {
    "caffenet": (
        "http://dl.caffe.berkeleyvision.org/bvlc_reference_caffenet.caffemodel",
        "4c8d77deb20ea792f84eb5e6d0a11ca0a8660a46",
        (57.4, 80.4),
    ),
    "bvlc_alexnet": (
        "http://dl.caffe.berkeleyvision.org/bvlc_alexnet.caffemodel",
        "9116a64c0fbe4459d18f4bb6b56d647b63920377",
        (57.1, 80.2),
    ),
}


class CaffeContract(BackboneContract, PreReluTaps):
    IMAGE_SIZE = 227  # fc6 takes exactly 256 x 6 x 6
    FIDELITY_CROPS = (4, 9)  # the centre crop and its mirror of each photo
    LRN_BEFORE_POOL: bool

    def test_record_matches_torchvision_weights_enum(self, record):
        # No torchvision enum here: the model zoo's readme is the source.
        url, sha1, accuracy = ZOO[record.name]
        [tag] = record.weight_tags
        assert (tag.name, tag.url, tag.sha1, (tag.acc1, tag.acc5)) == ("BVLC", url, sha1, accuracy)
        assert tag.sha256_prefix is None
        assert tag.preprocess == CAFFE_PREPROCESS
        assert record.default_tag is tag
        assert record.tap_names == (
            "decaf5",
            "decaf6_pre",
            "decaf6",
            "decaf7_pre",
            "decaf7",
            "logits",
        )
        assert record.default_layers == ("decaf6", "decaf7")

    def test_layer_order_and_layer_parameters(self, backbone):
        names = [name for name, _ in backbone.stages]
        norm, pool = names.index("norm1"), names.index("pool1")
        assert (norm < pool) == self.LRN_BEFORE_POOL
        assert (names.index("norm2") < names.index("pool2")) == self.LRN_BEFORE_POOL
        net = backbone.net
        groups = {n: m.groups for n, m in net.named_children() if isinstance(m, nn.Conv2d)}
        assert groups == {"conv1": 1, "conv2": 2, "conv3": 1, "conv4": 2, "conv5": 2}
        assert (net.conv1.stride, net.conv2.padding, net.conv5.padding) == ((4, 4), (2, 2), (1, 1))
        lrn = net.norm1
        assert (lrn.size, lrn.alpha, lrn.beta, lrn.k) == (5, 1e-4, 0.75, 1.0)
        assert all(
            m.ceil_mode and m.kernel_size == 3 and m.stride == 2
            for m in net.children()
            if isinstance(m, nn.MaxPool2d)
        )
        assert not any(isinstance(m, nn.Dropout) for m in net.modules())

    def test_saved_state_dict_loads_from_torchvision_cache_and_from_a_path(
        self, record, weights, full, images, torch_home, tmp_path
    ):
        # A converted state_dict saved with torch.save, published under the zoo's file name and
        # recognised by its sha1 (the .caffemodel route is tests/featurizer/caffe's).
        published = tmp_path / "published" / record.default_tag.filename
        published.parent.mkdir()
        torch.save(weights.state_dict, published)
        sha1 = hashlib.sha1(published.read_bytes()).hexdigest()
        tag = dataclasses.replace(record.default_tag, url=published.as_uri(), sha1=sha1)
        test_record = dataclasses.replace(record, weight_tags=(tag,))
        cached = put_in_cache(torch_home, published)
        assert cached == cache_path(tag)

        from_cache = resolve_weights("imagenet", test_record, download=False)
        assert (from_cache.source, from_cache.weights_id) == (str(cached), f"{record.name}/BVLC")
        from_path = resolve_weights(str(published), test_record)
        assert (from_path.weights_id, from_path.sha256) == (
            from_cache.weights_id,
            from_cache.sha256,
        )
        loaded = run(build_backbone(test_record, from_path), images, record.default_layers)
        for name in record.default_layers:
            assert torch.equal(loaded[name], full[name]), name

    def test_imagenet_without_the_file_says_where_to_get_it(self, record, torch_home):
        url, sha1, _ = ZOO[record.name]
        expected = rf"--weights PATH.*{re.escape(url)}, sha1 {sha1}"
        with pytest.raises(Exception, match=expected) as info:
            resolve_weights("imagenet", record, download=False)
        assert type(info.value).__name__ == "WeightsError"

    def test_fc6_fixes_the_input_size(self, backbone):
        # Caffe's ceil rounding maps 224 to the same 6x6 pool5 as 227; 180 gives 5x5.
        assert run(backbone, torch.zeros(1, 3, 224, 224, dtype=torch.uint8), ["decaf6"])
        with pytest.raises(RuntimeError, match="6400 and 9216"):
            run(backbone, torch.zeros(1, 3, 180, 180, dtype=torch.uint8), ["decaf6"])


class TestCaffeNet(CaffeContract):
    NAME = "caffenet"
    LRN_BEFORE_POOL = False


class TestBvlcAlexNet(CaffeContract):
    NAME = "bvlc_alexnet"
    LRN_BEFORE_POOL = True
