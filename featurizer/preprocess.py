"""Resize / crop an RGB image into the uint8 tensor the backbone expects.

The geometry is torchvision's ``Resize(256)`` + ``CenterCrop(224)`` on a PIL image, reproduced
step for step so that features computed here match the ones a torchvision user would get:

* shorter side -> ``spec.resize``, longer side ``int(resize * long / short)`` (truncated, as
  torchvision does), with PIL's antialiased bilinear filter (what ``Resize`` calls for PIL input);
* centre crop offsets ``int(round((size - crop) / 2))`` (Python's round-half-even, as torchvision).

Measured against ``torchvision.transforms.v2.Compose([Resize(256), CenterCrop(224)])`` on the same
PIL image: identical (max |diff| = 0 levels) - the same PIL call does the resize. That is
asserted in ``tests/featurizer/test_preprocess.py`` (bound: max <= 2, mean <= 0.5 levels). The
only deliberate departure is upstream, in :func:`featurizer.images.decode_image`: large JPEGs are
decoded at reduced scale (measured in ``benchmarks/draft_fidelity.py``, numbers in the docstring
of ``featurizer/images.py``).

PIL's ``reducing_gap`` (a box pre-reduction before the filter) is not used: measured in
``benchmarks/draft_fidelity.py`` on 2500x1700 photos it was slower here (44 vs 30 ms CPU per
image: the extra pass costs more than it saves) and moves pixels by up to 7 levels. Big JPEGs are
made cheap by decoding them small instead (2x less CPU).

The result stays uint8 (4x smaller than float32 to move between processes and to the GPU);
mean/std normalisation happens inside the model, in the model's dtype, on its device.

Ten-crop order: the 4 corners (top-left, top-right, bottom-left, bottom-right) and the centre,
then the horizontal mirrors of those same 5 crops in the same order, i.e.
``out[5 + i] == out[i].flip(-1)``. (torchvision's ``TenCrop`` crops the mirrored *image*, which
gives the same 10 crops up to order and a 1-pixel shift of the mirrored centre; the features are
averaged over the crops, so the order does not matter downstream.)
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from featurizer.images import (
    DEFAULT_MAX_PIXELS,
    DRAFT_BOX_KEY,
    DRAFT_DECODED_SIZE_KEY,
    DRAFT_FULL_SIZE_KEY,
    Box,
    ImageSource,
    decode_image,
)
from featurizer.options import CROP_MODES, CropMode
from featurizer.spec import Interpolation, PreprocessSpec

__all__ = [
    "CROP_MODES",
    "CropMode",
    "PreprocessSpec",
    "load_and_preprocess",
    "preprocess",
    "resize_for_spec",
    "resize_shorter_side",
    "resized_size",
]

# Every name featurizer.spec.INTERPOLATIONS allows (tests/featurizer/test_preprocess.py checks).
_RESAMPLE: dict[Interpolation, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def preprocess(image: Image.Image, spec: PreprocessSpec, crop: CropMode = "center") -> torch.Tensor:
    """Resize per ``spec.resize_mode`` and crop to a uint8 CHW tensor (RGB order).

    Returns ``(3, spec.crop, spec.crop)`` for ``"center"`` and ``(10, 3, spec.crop, spec.crop)``
    for ``"tencrop"`` (order in the module docstring). ``image`` must be RGB: pass files through
    :func:`featurizer.images.decode_image` (or use :func:`load_and_preprocess`).
    """
    if image.mode != "RGB":
        raise ValueError(
            f"preprocess expects an RGB image, got mode {image.mode!r}; "
            "decode it with featurizer.images.decode_image first"
        )
    resized = resize_for_spec(image, spec)
    if crop == "center":
        return _center_crop(resized, spec.crop)
    if crop == "tencrop":
        return _ten_crop(resized, spec.crop)
    raise ValueError(f"unknown crop mode {crop!r}; choose from {list(CROP_MODES)}")


def load_and_preprocess(
    source: ImageSource,
    spec: PreprocessSpec,
    crop: CropMode = "center",
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> torch.Tensor:
    """Decode (reduced-scale for large JPEGs) and preprocess; what workers call per file."""
    image = decode_image(source, max_pixels=max_pixels, min_short_side=spec.resize)
    return preprocess(image, spec, crop)


def resize_for_spec(image: Image.Image, spec: PreprocessSpec) -> Image.Image:
    """The spec's resize: shorter side to ``spec.resize`` or, for ``"stretch"``, both sides."""
    return _resize(image, spec.resize, spec.interpolation, stretch=spec.resize_mode == "stretch")


def resize_shorter_side(
    image: Image.Image, size: int, interpolation: str = "bilinear"
) -> Image.Image:
    """torchvision's ``Resize(size)`` for PIL images: same output size, same PIL filter.

    For a reduced-scale JPEG decode (see :func:`featurizer.images.decode_image`) the output size
    comes from the full picture's size and the resize maps the recorded box, so the geometry is
    the one a full decode would have had, to a fraction of a pixel.
    """
    return _resize(image, size, interpolation, stretch=False)


def _resize(image: Image.Image, size: int, interpolation: str, *, stretch: bool) -> Image.Image:
    draft = _draft_geometry(image)
    if draft is None:
        new_size = resized_size(image.width, image.height, size, stretch=stretch)
        if new_size == image.size:
            return image
        return image.resize(new_size, resample=_RESAMPLE[interpolation])
    full_size, box = draft
    new_size = resized_size(full_size[0], full_size[1], size, stretch=stretch)
    return image.resize(new_size, resample=_RESAMPLE[interpolation], box=box)


def _draft_geometry(image: Image.Image) -> tuple[tuple[int, int], Box] | None:
    info = image.info
    if info.get(DRAFT_DECODED_SIZE_KEY) != image.size:  # absent, or resized/cropped since
        return None
    return info[DRAFT_FULL_SIZE_KEY], info[DRAFT_BOX_KEY]


def resized_size(width: int, height: int, size: int, *, stretch: bool = False) -> tuple[int, int]:
    """Output (width, height) of the spec's resize; shared by every decoder implementation."""
    if stretch:
        return size, size
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def _center_anchor(width: int, height: int, crop: int) -> tuple[int, int]:
    # round() is round-half-even, exactly what torchvision's CenterCrop uses.
    return round((width - crop) / 2.0), round((height - crop) / 2.0)


def _center_crop(image: Image.Image, crop: int) -> torch.Tensor:
    left, top = _center_anchor(image.width, image.height, crop)
    patch = np.asarray(image.crop((left, top, left + crop, top + crop)))  # H, W, 3 (read-only)
    return torch.from_numpy(_hwc_to_chw(patch))


def _ten_crop(image: Image.Image, crop: int) -> torch.Tensor:
    pixels = np.asarray(image)  # H, W, 3
    height, width = pixels.shape[:2]
    left, top = _center_anchor(width, height, crop)
    anchors = [
        (0, 0),
        (0, width - crop),
        (height - crop, 0),
        (height - crop, width - crop),
        (top, left),
    ]
    out = np.empty((10, 3, crop, crop), np.uint8)
    for index, (y, x) in enumerate(anchors):
        out[index] = pixels[y : y + crop, x : x + crop].transpose(2, 0, 1)
        out[5 + index] = out[index][:, :, ::-1]  # horizontal mirror
    return torch.from_numpy(out)


def _hwc_to_chw(pixels: np.ndarray) -> np.ndarray:
    # numpy's single-threaded transpose copy (~0.07 ms for 224x224x3) rather than torch's
    # permute().contiguous(), which was 15x slower on 2 busy cores (intra-op thread overhead).
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))
