"""The tensor decoder: JPEGs through ``torchvision.io.decode_jpeg`` and torch's resize.

A second implementation of the same :class:`~featurizer.spec.PreprocessSpec` as
:mod:`featurizer.preprocess` (PIL, the reference): same output size (``resized_size``), same
antialiased bilinear filter, same centre/ten-crop anchors, same EXIF orientation, same mode rule
(grey JPEGs replicated to RGB; CMYK/YCCK JPEGs and every other format go to PIL), same
decompression-bomb check from the header (parsed by PIL, which reads only the markers: 0.03 ms).

:func:`prepare_image` picks the decoder per file (``decoder``, featurizer.options.DECODERS):

* ``pil``: :func:`featurizer.preprocess.load_and_preprocess` for everything.
* ``tensor``: every plain 8-bit JPEG (RGB or grey) through libjpeg-turbo via torchvision,
  decoded at full size, then ``F.interpolate(antialias=True)`` on uint8.
* ``auto`` (default): ``tensor`` for JPEGs that PIL would decode at full size anyway, ``pil`` for
  JPEGs big enough for PIL's reduced-scale (DCT-domain) decode (``featurizer.images.draft_scale``
  > 1, e.g. a 2500x1700 photo at 1/2 scale) and for non-bilinear specs. ``decode_jpeg`` has no
  scaled decoding (torchvision 0.29: no ``scale``/``draft`` argument), so for a large JPEG it pays
  the full-size decode plus a large resize: measured 34-47 ms against PIL's draft path 33-34 ms
  on 2500x1700 photos (1 thread, loaded machine) - no gain, and PIL's draft path is the one
  whose fidelity ``featurizer/images.py`` documents.

Measured (``benchmarks/extract_throughput.py --decode-table``; one thread, CPU time per image,
median, 2-core machine loaded by other jobs): 500x375 photo-like JPEG q90: PIL 3.7 ms, tensor
2.1 ms (0.57x); scikit-learn's china.jpg (640x427): 5.7 vs 3.9 ms. Most of what is left is
libjpeg-turbo's own decode (1.8 ms of the 2.1), the same library PIL uses: the saving is PIL's
resize, crop and copies. Fidelity on the 224 crop: max 1 grey level, mean 0.002;
tests/featurizer/test_decode_tensor.py bounds the worst per-layer feature cosine (>= 0.9999).

``torchvision.io``'s decoders are marked deprecated in torchvision 0.29 in favour of TorchCodec;
they still work, and the PIL path stays the fallback if they go.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from PIL import Image

from featurizer.errors import ImageDecodeError
from featurizer.images import (
    DEFAULT_MAX_PIXELS,
    ImageSource,
    draft_scale,
    exif_orientation,
    pixel_error_message,
    read_header,
    read_source,
)
from featurizer.options import CROP_MODES, DECODERS, CropMode, Decoder
from featurizer.preprocess import load_and_preprocess, resized_size
from featurizer.spec import PreprocessSpec

__all__ = [
    "DECODERS",
    "Decoder",
    "orient",
    "prepare_batch_on_device",
    "prepare_image",
    "preprocess_tensor",
    "tensor_decodable",
]

_JPEG_FORMATS = frozenset({"JPEG", "MPO"})  # MPO: a JPEG with extra frames; the first is decoded
_TENSOR_MODES = frozenset({"RGB", "L"})  # CMYK / YCCK JPEGs keep PIL's conversion

# EXIF orientation -> the same transposition as PIL's (featurizer.images), on (C, H, W).
_ORIENT: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
    1: lambda x: x,
    2: lambda x: x.flip(-1),
    3: lambda x: x.flip(-2, -1),
    4: lambda x: x.flip(-2),
    5: lambda x: x.transpose(-2, -1),
    6: lambda x: x.transpose(-2, -1).flip(-1),
    7: lambda x: x.transpose(-2, -1).flip(-2, -1),
    8: lambda x: x.transpose(-2, -1).flip(-2),
}


def prepare_image(
    source: ImageSource,
    spec: PreprocessSpec,
    crop: CropMode = "center",
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    decoder: Decoder = "auto",
) -> torch.Tensor:
    """Decode + preprocess one image with the chosen decoder; uint8 (3,H,W) or (10,3,H,W)."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {list(DECODERS)}, got {decoder!r}")
    if crop not in CROP_MODES:
        raise ValueError(f"unknown crop mode {crop!r}; choose from {list(CROP_MODES)}")
    if decoder == "pil" or isinstance(source, Image.Image):
        return load_and_preprocess(source, spec, crop, max_pixels=max_pixels)
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    data, name = read_source(source)
    header = read_header(data, name, max_pixels)
    if not tensor_decodable(header, spec, force=decoder == "tensor"):
        # The original source, so that PIL's errors name the file (a second read of a file
        # that is not a plain JPEG: negligible next to its decode).
        return load_and_preprocess(source, spec, crop, max_pixels=max_pixels)
    pixels = decode_jpeg_rgb(data, name)
    return preprocess_tensor(orient(pixels, exif_orientation(header)), spec, crop)


def tensor_decodable(header: Image.Image, spec: PreprocessSpec, *, force: bool = False) -> bool:
    """Whether the tensor path takes this file (module docstring: the ``auto`` rule)."""
    if header.format not in _JPEG_FORMATS or header.mode not in _TENSOR_MODES:
        return False
    if spec.interpolation != "bilinear":  # torch's bicubic/lanczos are not PIL's filters
        return False
    return force or draft_scale(header.width, header.height, spec.resize) == 1


def decode_jpeg_rgb(data: bytes, name: str, device: str | torch.device = "cpu") -> torch.Tensor:
    """libjpeg-turbo (CPU) or nvJPEG (CUDA) decode to uint8 (3, H, W) RGB; grey replicated."""
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)  # writable: no torch warning
    try:
        return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as exc:
        raise ImageDecodeError(f"{name}: {pixel_error_message(exc)}") from exc


def orient(pixels: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply EXIF ``orientation`` (1-8) to (C, H, W) pixels, as PIL's transpose would."""
    return _ORIENT.get(orientation, _ORIENT[1])(pixels)


def preprocess_tensor(
    pixels: torch.Tensor, spec: PreprocessSpec, crop: CropMode = "center"
) -> torch.Tensor:
    """uint8 (3, H, W) upright RGB -> the spec's resize and crop, on the tensor's device."""
    height, width = pixels.shape[-2:]
    new_width, new_height = resized_size(
        width, height, spec.resize, stretch=spec.resize_mode == "stretch"
    )
    if (new_width, new_height) != (width, height):
        pixels = _resize(pixels, new_height, new_width)
    if crop == "center":
        top, left = _center_anchor(new_height, new_width, spec.crop)
        return pixels[:, top : top + spec.crop, left : left + spec.crop].contiguous()
    return _ten_crop(pixels, spec.crop)


def _resize(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Antialiased bilinear; uint8 in and out. On CPU torch has a uint8 kernel (the fast path);
    elsewhere the resize runs in float32 and is rounded back (the same filter)."""
    batch = pixels.unsqueeze(0)
    if pixels.device.type != "cpu":
        batch = batch.float()
    out = F.interpolate(
        batch, size=(height, width), mode="bilinear", antialias=True, align_corners=False
    )
    if out.dtype != torch.uint8:
        out = out.round_().clamp_(0, 255).to(torch.uint8)
    return out.squeeze(0)


def prepare_batch_on_device(
    sources: list[ImageSource],
    spec: PreprocessSpec,
    crop: CropMode = "center",
    *,
    device: str | torch.device = "cuda",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[torch.Tensor, list[int], list[ImageDecodeError]]:
    """Decode a batch on ``device`` (nvJPEG, one batched call) and preprocess it there.

    JPEGs the tensor path takes are decoded together on the device; the others (PNG, CMYK, ...)
    through PIL on the CPU and moved. Returns the uint8 batch (on ``device``), the indices of the
    sources it holds, and one ImageDecodeError per source that could not be decoded (its message
    says which), so one bad file does not spoil the batch.
    """
    device = torch.device(device)
    jpegs: list[tuple[int, bytes, int]] = []  # index, data, orientation
    others: dict[int, torch.Tensor] = {}
    errors: list[ImageDecodeError] = []
    for index, source in enumerate(sources):
        try:
            if isinstance(source, Image.Image):
                others[index] = load_and_preprocess(source, spec, crop, max_pixels=max_pixels)
                continue
            data, name = read_source(source)
            header = read_header(data, f"image {index} ({name})", max_pixels)
            if tensor_decodable(header, spec, force=True):
                jpegs.append((index, data, exif_orientation(header)))
            else:
                others[index] = load_and_preprocess(source, spec, crop, max_pixels=max_pixels)
        except ImageDecodeError as exc:
            errors.append(type(exc)(f"image {index}: {exc}"))
    done: dict[int, torch.Tensor] = {i: t.to(device, non_blocking=True) for i, t in others.items()}
    decoded = _decode_many(jpegs, device, errors)
    for (index, _, orientation), pixels in zip(jpegs, decoded, strict=True):
        if pixels is not None:
            done[index] = preprocess_tensor(orient(pixels, orientation), spec, crop)
    order = sorted(done)
    empty = torch.empty((0, 3, spec.crop, spec.crop), dtype=torch.uint8, device=device)
    batch = torch.stack([done[i] for i in order]) if order else empty
    return batch, order, errors


def _decode_many(
    jpegs: list[tuple[int, bytes, int]], device: torch.device, errors: list[ImageDecodeError]
) -> list[torch.Tensor | None]:
    """One batched decode; if the batch fails (one corrupt file), file by file."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not jpegs:
        return []
    encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for _, data, _ in jpegs]
    try:
        return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        pass
    out: list[torch.Tensor | None] = []
    for index, data, _ in jpegs:
        try:
            out.append(decode_jpeg_rgb(data, f"image {index}", device))
        except ImageDecodeError as exc:
            errors.append(exc)
            out.append(None)
    return out


def _center_anchor(height: int, width: int, crop: int) -> tuple[int, int]:
    # round() is round-half-even, as featurizer.preprocess and torchvision's CenterCrop.
    return round((height - crop) / 2.0), round((width - crop) / 2.0)


def _ten_crop(pixels: torch.Tensor, crop: int) -> torch.Tensor:
    """Corners, centre, then their mirrors: featurizer.preprocess's order."""
    height, width = pixels.shape[-2:]
    top, left = _center_anchor(height, width, crop)
    anchors = [(0, 0), (0, width - crop), (height - crop, 0), (height - crop, width - crop)]
    views = [pixels[:, y : y + crop, x : x + crop] for y, x in [*anchors, (top, left)]]
    five = torch.stack(views)
    return torch.cat([five, five.flip(-1)]).contiguous()
