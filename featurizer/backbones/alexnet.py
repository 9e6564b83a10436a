"""AlexNet, DeCAF's network (the default backbone), with DeCAF's tap names.

Facts from torchvision (``torchvision/models/alexnet.py``, ``AlexNet_Weights``): the "one weird
trick" single-tower AlexNet, 61.1 M parameters, smallest input 63x63.

DeCAF's naming (Donahue et al. 2014): DeCAF_n is the n-th layer's output after ReLU (Caffe's blob
convention); the ``*_pre`` taps are before the ReLU (DeCAF's ``*_cudanet_out``). torchvision's
ReLUs run in place: the runtime makes the ones after the first tap out-of-place so ``decaf6_pre``
is not overwritten by the ReLU that makes ``decaf6``.
"""

from __future__ import annotations

from featurizer.backbones import Backbone, Tap, WeightTag, register
from featurizer.backbones._plans import fc_head_taps, features_avgpool_classifier

ALEXNET = register(
    Backbone(
        name="alexnet",
        summary="AlexNet (DeCAF's network): 5 conv + 3 fc layers, 61.1 M parameters",
        builder="torchvision.models.alexnet",
        taps=(
            Tap("decaf5", "flatten", 9216, "pool5: conv5 -> ReLU -> max-pool, flattened 256x6x6"),
            *fc_head_taps("decaf", first_fc=1),
        ),
        default_layers=("decaf6", "decaf7"),
        weight_tags=(
            WeightTag.torchvision("IMAGENET1K_V1", "alexnet-owt-7be5be79.pth", (56.522, 79.066)),
        ),
        default_tag_name="IMAGENET1K_V1",
        plan=features_avgpool_classifier,
        min_input_size=63,
    )
)
