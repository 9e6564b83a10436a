"""Forward-plan pieces shared by several families (torch is imported when a plan is built)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from featurizer.backbones import Stage


def unrolled(prefix: str, container: nn.Module) -> list[Stage]:
    """The children of ``container`` as stages named like torchvision's graph (``prefix.i``)."""
    return [(f"{prefix}.{name}", module) for name, module in container.named_children()]


def features_avgpool_classifier(net: nn.Module) -> list[Stage]:
    """torchvision's AlexNet and VGG: ``features`` -> ``avgpool`` -> flatten -> ``classifier``.

    Unrolled module by module so a forward can stop right after any fc layer or ReLU.
    """
    from torch import nn

    return [
        *unrolled("features", net.features),
        ("avgpool", net.avgpool),
        ("flatten", nn.Flatten(1)),
        *unrolled("classifier", net.classifier),
    ]
