"""VGG-16 (configuration D, no batch norm) with the classic fc6/fc7 transfer features.

Facts from torchvision (``torchvision/models/vgg.py``, ``VGG16_Weights``): 138.4 M parameters,
smallest input 32x32. ``IMAGENET1K_FEATURES`` is not offered: torchvision documents that only its
conv trunk holds trained values, so fc6/fc7/logits from it would be meaningless.

Same layout and the same in-place ReLUs as AlexNet, so the same care applies: the runtime makes
the ReLUs after ``pool5`` out-of-place so ``fc6_pre``/``fc7_pre`` stay pre-ReLU.
"""

from __future__ import annotations

from featurizer.backbones import Backbone, Tap, WeightTag, register
from featurizer.backbones._plans import features_avgpool_classifier
from featurizer.spec import PreprocessSpec

VGG16 = register(
    Backbone(
        name="vgg16",
        summary="VGG-16: 13 conv + 3 fc layers, 138.4 M parameters",
        builder="torchvision.models.vgg16",
        taps=(
            Tap("pool5", "flatten", 25088, "pool5: last max-pool, flattened 512x7x7"),
            Tap("fc6_pre", "classifier.0", 4096, "fc6 before ReLU"),
            Tap("fc6", "classifier.1", 4096, "fc6 after ReLU"),
            Tap("fc7_pre", "classifier.3", 4096, "fc7 before ReLU"),
            Tap("fc7", "classifier.4", 4096, "fc7 after ReLU"),
            Tap("logits", "classifier.6", 1000, "fc8: ImageNet class scores (before softmax)"),
        ),
        default_layers=("fc6", "fc7"),
        weight_tags=(
            WeightTag(
                name="IMAGENET1K_V1",
                url="https://download.pytorch.org/models/vgg16-397923af.pth",
                preprocess=PreprocessSpec(resize=256, crop=224, interpolation="bilinear"),
                acc1=71.592,
                acc5=90.382,
            ),
        ),
        default_tag_name="IMAGENET1K_V1",
        plan=features_avgpool_classifier,
        min_input_size=32,
    )
)
