"""VGG-16 (configuration D, no batch norm) with the classic fc6/fc7 transfer features.

Facts from torchvision (``torchvision/models/vgg.py``, ``VGG16_Weights``): 138.4 M parameters,
smallest input 32x32. ``IMAGENET1K_FEATURES`` is not offered: torchvision documents that only its
conv trunk holds trained values, so fc6/fc7/logits from it would be meaningless.

Same layout and the same in-place ReLUs as AlexNet, so the same care applies: the runtime makes
the ReLUs after ``pool5`` out-of-place so ``fc6_pre``/``fc7_pre`` stay pre-ReLU.
"""

from __future__ import annotations

from featurizer.backbones import Backbone, Tap, WeightTag, register
from featurizer.backbones._plans import fc_head_taps, features_avgpool_classifier

VGG16 = register(
    Backbone(
        name="vgg16",
        summary="VGG-16: 13 conv + 3 fc layers, 138.4 M parameters",
        builder="torchvision.models.vgg16",
        taps=(
            Tap("pool5", "flatten", 25088, "pool5: last max-pool, flattened 512x7x7"),
            *fc_head_taps("fc", first_fc=0),
        ),
        default_layers=("fc6", "fc7"),
        weight_tags=(
            WeightTag.torchvision("IMAGENET1K_V1", "vgg16-397923af.pth", (71.592, 90.382)),
        ),
        default_tag_name="IMAGENET1K_V1",
        plan=features_avgpool_classifier,
        min_input_size=32,
    )
)
