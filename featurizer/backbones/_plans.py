"""Forward-plan pieces shared by several families (torch is imported when a plan is built)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from featurizer.backbones import Tap

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


def fc_head_taps(prefix: str, first_fc: int) -> tuple[Tap, ...]:
    """The fc6/fc7/fc8 taps of an AlexNet-style ``classifier`` (Linear, ReLU, Dropout, ...).

    ``prefix`` names them (DeCAF's ``decaf`` for AlexNet, ``fc`` for VGG); ``first_fc`` is fc6's
    index in ``classifier`` (AlexNet starts with a Dropout, VGG with fc6). Pre-ReLU taps are the
    Linear's output, the others its ReLU's.
    """
    fc6, fc7, fc8 = first_fc, first_fc + 3, 6
    return (
        Tap(f"{prefix}6_pre", f"classifier.{fc6}", 4096, "fc6 before ReLU"),
        Tap(f"{prefix}6", f"classifier.{fc6 + 1}", 4096, "fc6 after ReLU"),
        Tap(f"{prefix}7_pre", f"classifier.{fc7}", 4096, "fc7 before ReLU"),
        Tap(f"{prefix}7", f"classifier.{fc7 + 1}", 4096, "fc7 after ReLU"),
        Tap("logits", f"classifier.{fc8}", 1000, "fc8: ImageNet class scores (before softmax)"),
    )
