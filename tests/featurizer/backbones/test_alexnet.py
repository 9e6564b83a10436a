"""AlexNet: the shared backbone contract plus DeCAF's names and pre-ReLU values, checked by hand."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .contract import ATOL, BackboneContract, PreReluTaps, normalized, run

DECAF_TAPS = ("decaf5", "decaf6_pre", "decaf6", "decaf7_pre", "decaf7", "logits")


class TestAlexNet(BackboneContract, PreReluTaps):
    NAME = "alexnet"
    IMAGE_SIZE = 64  # torchvision's minimum is 63

    def test_decaf_names_and_dims_are_unchanged(self, record):
        assert record.tap_names == DECAF_TAPS
        assert record.dims == {
            "decaf5": 9216,
            "decaf6_pre": 4096,
            "decaf6": 4096,
            "decaf7_pre": 4096,
            "decaf7": 4096,
            "logits": 1000,
        }
        assert record.tap("decaf5").node == "flatten"
        assert record.default_layers == ("decaf6", "decaf7")

    def test_pre_relu_taps_match_manual_forward(self, record, reference, full, images):
        # Manual forward with out-of-place ops: the pre-ReLU values torchvision's in-place ReLU
        # hides.
        x = normalized(images, record.default_tag.preprocess)
        with torch.inference_mode():
            pool5 = torch.flatten(reference.avgpool(reference.features(x)), 1)
            fc6 = F.linear(pool5, reference.classifier[1].weight, reference.classifier[1].bias)
            fc7 = F.linear(
                F.relu(fc6), reference.classifier[4].weight, reference.classifier[4].bias
            )
        torch.testing.assert_close(full["decaf6_pre"], fc6, atol=ATOL, rtol=0)
        torch.testing.assert_close(full["decaf7_pre"], fc7, atol=ATOL, rtol=0)

    def test_forward_stops_after_the_named_fc_layers(self, backbone, images):
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

    def test_dropout_module_is_in_eval_mode(self, backbone):
        backbone.train()
        assert not backbone.net.classifier[0].training
