"""``PreprocessSpec``: how an RGB image becomes network input, as plain data.

Kept free of torch, numpy and PIL so that the backbone registry (which gives every weight tag its
spec) and ``decaf --help`` import in milliseconds; the code that applies a spec lives in
:mod:`featurizer.preprocess`, which re-exports this class.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

# The resampling filters featurizer.preprocess maps onto PIL's (torchvision's InterpolationMode
# names, lower case).
Interpolation = Literal["nearest", "bilinear", "bicubic", "lanczos"]
INTERPOLATIONS: tuple[Interpolation, ...] = get_args(Interpolation)

# "shorter": torchvision's Resize(int) (shorter side -> resize, aspect kept); "stretch": both sides
# -> resize, aspect lost, as Caffe's ``caffe.io.resize_image`` to 256x256 did for DeCAF.
ResizeMode = Literal["shorter", "stretch"]
RESIZE_MODES: tuple[ResizeMode, ...] = get_args(ResizeMode)

# The channel order the network expects; decoders always produce RGB and the model's input
# normalisation reorders (Caffe networks were trained on OpenCV's BGR).
ChannelOrder = Literal["rgb", "bgr"]
CHANNEL_ORDERS: tuple[ChannelOrder, ...] = get_args(ChannelOrder)

_SHA256 = re.compile(r"[0-9a-f]{64}")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessSpec:
    """How an RGB image becomes network input; part of every manifest and saved probe.

    ``mean``/``std`` are in the 0-1 scale and in the network's channel order (``channel_order``):
    the model computes ``(x / 255 - mean) / std``. Caffe's "0-255 minus the BGR mean" is
    ``mean = bgr_mean / 255``, ``std = 1 / 255``.

    ``mean_image``: the sha256 of a per-pixel mean file (Caffe's ``ilsvrc_2012_mean``) that the
    model subtracts instead of ``mean`` (see :mod:`featurizer.caffe.mean`); None for the
    per-channel mean. Left out of :meth:`to_dict` when None, so the preprocessing recorded in
    stores and probes made before it existed still compares equal.
    """

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    antialias: bool = True
    resize_mode: ResizeMode = "shorter"
    channel_order: ChannelOrder = "rgb"
    mean_image: str | None = None

    def __post_init__(self) -> None:
        # JSON gives lists back; keep the frozen spec hashable and comparable.
        object.__setattr__(self, "mean", _three_floats("mean", self.mean))
        object.__setattr__(self, "std", _three_floats("std", self.std))
        if not 0 < self.crop <= self.resize:
            raise ValueError(f"need 0 < crop <= resize, got crop={self.crop}, resize={self.resize}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"unknown interpolation {self.interpolation!r}; choose from {list(INTERPOLATIONS)}"
            )
        if not self.antialias and self.interpolation != "nearest":
            # PIL (the resize used here and by torchvision on PIL input) always antialiases.
            raise ValueError("antialias=False is not supported: PIL resizing always antialiases")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(
                f"unknown resize_mode {self.resize_mode!r}; choose from {list(RESIZE_MODES)}"
            )
        if self.channel_order not in CHANNEL_ORDERS:
            raise ValueError(
                f"unknown channel_order {self.channel_order!r}; choose from {list(CHANNEL_ORDERS)}"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if self.mean_image is not None and _SHA256.fullmatch(self.mean_image) is None:
            raise ValueError(f"mean_image must be a sha256 (64 hex digits): {self.mean_image!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (tuples become lists)."""
        out = asdict(self)
        out["mean"] = list(self.mean)
        out["std"] = list(self.std)
        if self.mean_image is None:
            del out["mean_image"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        """Inverse of :meth:`to_dict`; unknown keys (e.g. a crop mode stored alongside) ignored."""
        fields = cls.__dataclass_fields__
        return cls(**{key: value for key, value in data.items() if key in fields})


def _three_floats(name: str, values: Any) -> tuple[float, float, float]:
    floats = tuple(float(v) for v in values)
    if len(floats) != 3 or not all(math.isfinite(v) for v in floats):
        raise ValueError(f"{name} must be 3 finite numbers, got {values!r}")
    return floats  # type: ignore[return-value]
