"""ResNet-50: the globally average-pooled last stage (``pool``), the classic ResNet feature.

Facts from torchvision (``torchvision/models/resnet.py``, ``ResNet50_Weights``): 25.6 M
parameters. Two checkpoints with their own preprocessing: ``IMAGENET1K_V1`` (the original
recipe, resize 256) and ``IMAGENET1K_V2`` (torchvision's new recipe, +4.7 points top-1, resize
232), which is torchvision's ``DEFAULT`` and so what ``weights="imagenet"`` means here.

No ``layer4`` tap: global-average-pooled ``layer4`` is ``pool`` exactly (``avgpool`` is that
pool; tests/featurizer/backbones/test_resnet.py checks it), and a second name for the same
vector would split stores and probes that are in fact compatible.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featurizer.backbones import Backbone, Stage, Tap, WeightTag, register
from featurizer.spec import PreprocessSpec

if TYPE_CHECKING:
    from torch import nn

_TRUNK = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool")


def resnet_stages(net: nn.Module) -> list[Stage]:
    """Stem, the four residual stages (each one stage: no tap inside them), pool, fc."""
    from torch import nn

    return [
        *((name, getattr(net, name)) for name in _TRUNK),
        ("flatten", nn.Flatten(1)),
        ("fc", net.fc),
    ]


RESNET50 = register(
    Backbone(
        name="resnet50",
        summary="ResNet-50: 16 bottleneck blocks in 4 stages, 25.6 M parameters",
        builder="torchvision.models.resnet50",
        taps=(
            Tap(
                "layer3",
                "layer3",
                1024,
                "stage 3 (conv4_x), globally average-pooled: a mid-level feature",
                reduce="spatial_mean",
            ),
            Tap("pool", "flatten", 2048, "stage 4 globally average-pooled (the fc's input)"),
            Tap("logits", "fc", 1000, "ImageNet class scores (before softmax)"),
        ),
        default_layers=("pool",),
        weight_tags=(
            WeightTag.torchvision("IMAGENET1K_V1", "resnet50-0676ba61.pth", (76.130, 92.862)),
            # The V2 recipe was evaluated at resize 232 (torchvision's ResNet50_Weights).
            WeightTag.torchvision(
                "IMAGENET1K_V2",
                "resnet50-11ad3fa6.pth",
                (80.858, 95.434),
                PreprocessSpec(resize=232),
            ),
        ),
        default_tag_name="IMAGENET1K_V2",
        plan=resnet_stages,
        min_input_size=1,
    )
)
