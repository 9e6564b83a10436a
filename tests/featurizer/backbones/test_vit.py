"""ViT-B/16: the shared backbone contract; the class token; the fixed 224 input; int8 coverage."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from .contract import BackboneContract, run


class TestVitB16(BackboneContract):
    NAME = "vit_b_16"
    IMAGE_SIZE = 224  # the position embedding fixes the input size
    FIDELITY_CROPS = (4, 9)  # centre crop and its mirror of each photo: 4 views at 17 GFLOPs each

    def test_taps_and_defaults(self, record):
        assert record.dims == {"cls": 768, "logits": 1000}
        assert record.tap("cls").reduce == "class_token"
        assert record.default_layers == ("cls",)
        assert record.input_size == record.min_input_size == 224

    def test_other_input_sizes_are_refused(self, backbone):
        images = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
        with pytest.raises(AssertionError, match="224"):  # torchvision's own check
            run(backbone, images, ["cls"])

    def test_swag_linear_tag_has_its_own_preprocessing(self, record):
        swag = record.weight_tag("IMAGENET1K_SWAG_LINEAR_V1")
        assert (swag.preprocess.resize, swag.preprocess.interpolation) == (224, "bicubic")
        assert record.default_tag.preprocess.resize == 256
        assert "NC" in swag.license

    def test_int8_leaves_attention_out_proj_in_fp32(self, record, weights):
        from featurizer.backbone import build_backbone

        model = build_backbone(record, weights)
        model.set_precision("int8", torch.device("cpu"))
        block = model.net.encoder.layers[0]
        assert [block.mlp[i]._get_name() for i in (0, 3)] == ["DynamicQuantizedLinear"] * 2
        assert model.net.heads.head._get_name() == "DynamicQuantizedLinear"
        assert not any(type(m) is nn.Linear for m in model.net.modules())
        attention = block.self_attention
        assert type(attention.out_proj).__name__ == "NonDynamicallyQuantizableLinear"
        assert attention.out_proj.weight.dtype == attention.in_proj_weight.dtype == torch.float32
