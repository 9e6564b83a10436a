"""ViT-B/16: the class token after the final encoder LayerNorm, the standard ViT image feature.

Facts from torchvision (``torchvision/models/vision_transformer.py``, ``ViT_B_16_Weights``):
86.6 M parameters, input exactly 224x224 (the position embedding has 14x14 + 1 entries;
torchvision's ``_process_input`` refuses any other size). ``IMAGENET1K_SWAG_E2E_V1`` is not
offered: it needs a 384-pixel architecture (another position embedding), i.e. another record.
``IMAGENET1K_SWAG_LINEAR_V1`` fits this architecture but carries SWAG's non-commercial licence
and its own preprocessing (bicubic resize straight to 224).

int8 (``featurizer.precision``) quantises the MLP and head Linears; each attention block's
``out_proj`` is a ``NonDynamicallyQuantizableLinear`` (MultiheadAttention calls its weight
directly) and stays fp32, as do the fused q/k/v projections.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featurizer.backbones import Backbone, Stage, Tap, WeightTag, register
from featurizer.backbones._plans import unrolled
from featurizer.spec import PreprocessSpec

if TYPE_CHECKING:
    from torch import Tensor, nn


def vit_stages(net: nn.Module) -> list[Stage]:
    """Patch embedding (+ class token + position embedding), the 12 blocks, LayerNorm, head."""

    def embed(images: Tensor) -> Tensor:
        # torchvision's VisionTransformer.forward and Encoder.forward up to the first block.
        import torch

        patches = net._process_input(images)  # (N, 196, 768); asserts the 224x224 input
        class_token = net.class_token.expand(patches.shape[0], -1, -1)
        tokens = torch.cat([class_token, patches], dim=1)
        return net.encoder.dropout(tokens + net.encoder.pos_embedding)

    def class_token(tokens: Tensor) -> Tensor:
        return tokens[:, 0]

    return [
        ("embed", embed),
        *unrolled("encoder.layers", net.encoder.layers),
        ("encoder.ln", net.encoder.ln),
        ("class_token", class_token),
        *unrolled("heads", net.heads),
    ]


_SWAG_LICENSE = "CC-BY-NC-4.0 (https://github.com/facebookresearch/SWAG/blob/main/LICENSE)"

VIT_B_16 = register(
    Backbone(
        name="vit_b_16",
        summary="ViT-B/16: 12 transformer blocks on 16x16 patches, 86.6 M parameters",
        builder="torchvision.models.vit_b_16",
        taps=(
            Tap(
                "cls",
                "encoder.ln",
                768,
                "class token after the final encoder LayerNorm (the head's input)",
                reduce="class_token",
            ),
            Tap("logits", "heads.head", 1000, "ImageNet class scores (before softmax)"),
        ),
        default_layers=("cls",),
        weight_tags=(
            WeightTag.torchvision("IMAGENET1K_V1", "vit_b_16-c867db91.pth", (81.072, 95.318)),
            WeightTag.torchvision(
                "IMAGENET1K_SWAG_LINEAR_V1",
                "vit_b_16_lc_swag-4e70ced5.pth",
                (81.886, 96.180),
                PreprocessSpec(resize=224, crop=224, interpolation="bicubic"),
                license=_SWAG_LICENSE,
            ),
        ),
        default_tag_name="IMAGENET1K_V1",
        plan=vit_stages,
        min_input_size=224,
    )
)
