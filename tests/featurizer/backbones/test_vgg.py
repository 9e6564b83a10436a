"""VGG-16: the shared backbone contract (same layout and in-place ReLUs as AlexNet)."""

from __future__ import annotations

from .contract import BackboneContract, PreReluTaps


class TestVgg16(BackboneContract, PreReluTaps):
    NAME = "vgg16"
    IMAGE_SIZE = 64  # adaptive pooling: fc6 still sees 512x7x7 (replicated 2x2)

    def test_taps_and_defaults(self, record):
        assert record.dims == {
            "pool5": 25088,
            "fc6_pre": 4096,
            "fc6": 4096,
            "fc7_pre": 4096,
            "fc7": 4096,
            "logits": 1000,
        }
        assert record.default_layers == ("fc6", "fc7")
        assert [tag.name for tag in record.weight_tags] == ["IMAGENET1K_V1"]
