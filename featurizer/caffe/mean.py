"""Caffe's mean image (``ilsvrc_2012_mean.binaryproto`` / ``.npy``), applied as pycaffe applied it.

The file is the ILSVRC-2012 training-set mean, 3 x 256 x 256, BGR, 0-255. What
``caffe.Classifier(mean=...)`` did with it (BVLC/caffe ``python/caffe/pycaffe.py``,
``_Net_set_mean(mode='elementwise')``, the 2014 pycaffe DeCAF-era code): a mean whose size differs
from the input blob's is resized to the input size, 227 x 227, with ``caffe.io.resize_image``
(``skimage.transform.resize``, ``order=1``: bilinear on pixel centres, no antialiasing), and that
one 227 x 227 mean is subtracted from every crop - the centre, the corners and the mirrored ones
alike. (Caffe's C++ data layer crops the mean at the crop's position instead; that is training-
time behaviour, not what the feature-extraction path did.) Later pycaffe (``caffe.io.Transformer``)
refuses a mean of another size, which is why its examples fall back to the per-channel mean.

Here the resize is torch's bilinear interpolation with ``align_corners=False`` and no antialias:
the same sampling positions, ``(i + 0.5) * 256 / 227 - 0.5``, all inside the 256-pixel image, so
skimage's edge mode never matters. ``tests/featurizer/caffe/test_mean.py`` checks it against an
independent NumPy bilinear resize.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from featurizer.caffe.caffemodel import CaffeFormatError, read_blob_file
from featurizer.digests import sha256_of_file
from featurizer.errors import WeightsError

MEAN_IMAGE_SUFFIXES = (".binaryproto", ".npy")


@dataclass(frozen=True)
class MeanImage:
    """A mean image resized to the network input: (3, size, size) float32, 0-255, BGR."""

    pixels: torch.Tensor
    sha256: str  # of the file read: the mean's identity in manifests and probes
    source: str


def load_mean_image(path: str | Path, size: int) -> MeanImage:
    """Read a ``.binaryproto`` or ``.npy`` mean image and resize it to ``size`` x ``size``."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise WeightsError(f"mean image file does not exist: {file.resolve()}")
    array = _read(file)
    pixels = resize_mean(_as_chw(array, file), size)
    return MeanImage(pixels, sha256_of_file(file), str(file.resolve()))


def resize_mean(mean: np.ndarray, size: int) -> torch.Tensor:
    """``caffe.io.resize_image(mean.transpose(1, 2, 0), (size, size))`` for a 3 x H x W mean."""
    tensor = torch.from_numpy(np.ascontiguousarray(mean, dtype=np.float32))[None]
    if tensor.shape[-2:] == (size, size):
        return tensor[0].clone()
    resized = F.interpolate(
        tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=False
    )
    return resized[0]


def _read(file: Path) -> np.ndarray:
    suffix = file.suffix.lower()
    if suffix == ".npy":
        try:
            return np.load(file, allow_pickle=False)  # never unpickle a user's file
        except ValueError as exc:
            raise WeightsError(
                f"{file} is not a plain .npy array (pickled data is refused): {exc}"
            ) from exc
    if suffix == ".binaryproto":
        try:
            return read_blob_file(file)
        except CaffeFormatError as exc:
            raise WeightsError(f"{file} is not a readable mean .binaryproto: {exc}") from exc
    raise WeightsError(
        f"mean image {file}: unknown format {suffix!r}; give Caffe's ilsvrc_2012_mean.binaryproto "
        f"or its .npy conversion ({', '.join(MEAN_IMAGE_SUFFIXES)})"
    )


def _as_chw(array: np.ndarray, file: Path) -> np.ndarray:
    shape = array.shape
    while array.ndim > 3 and array.shape[0] == 1:  # a binaryproto blob is 1 x 3 x H x W
        array = array[0]
    if array.ndim != 3 or array.shape[0] != 3 or min(array.shape[1:]) < 1:
        raise WeightsError(
            f"mean image {file} has shape {shape}; expected 3 x H x W (BGR, e.g. 3 x 256 x 256 "
            "as in ilsvrc_2012_mean)"
        )
    if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
        raise WeightsError(f"mean image {file} holds non-numeric, NaN or infinite values")
    if array.min() < 0 or array.max() > 255:
        raise WeightsError(
            f"mean image {file} ranges {array.min():.3g}..{array.max():.3g}; Caffe's means are "
            "0-255 pixel values (is it scaled to 0-1 or already subtracted?)"
        )
    return array
