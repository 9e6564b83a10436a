"""The tensor decoder (featurizer.decode_tensor) against the PIL reference (featurizer.preprocess).

Fidelity bounds, asserted on real photographs (scikit-learn's china/flower at 640x427 and
resized to the typical 500x375, grey and EXIF-rotated variants):

- pixels: max |d| <= 2 grey levels, mean <= 0.05 on every 224 crop. Both decoders are
  libjpeg-turbo; the only difference is the resize (PIL's and torch's antialiased bilinear
  round differently): measured max 1, mean 0.002.
- features: worst cosine per AlexNet layer >= 0.9999 (random weights, ten crops of each photo):
  a 1-level rounding difference moves features by ~1e-6; a wrong geometry (a 1-pixel shift,
  a missed EXIF rotation, swapped channels) lands well below (checked: a 1-pixel shift of the
  crop gives 0.995 on decaf5, 0.9994 on the logits).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from featurizer.decode_tensor import prepare_batch_on_device, prepare_image, tensor_decodable
from featurizer.errors import ImageDecodeError, ImageTooLargeError
from featurizer.extractor import Featurizer
from featurizer.images import read_header
from featurizer.preprocess import load_and_preprocess
from featurizer.spec import PreprocessSpec

from .conftest import EXIF_ORIENTATION, ImageFiles, encode, sample_photo, textured_rgb

# torchvision 0.29 marks its image decoders deprecated (TorchCodec is the successor); known.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

SPEC = PreprocessSpec()
SMALL_SPEC = PreprocessSpec(resize=72, crop=64)  # for the tiny conftest images


def jpeg(image: Image.Image, orientation: int = 1, quality: int = 90) -> bytes:
    exif = Image.Exif()
    if orientation != 1:
        exif[EXIF_ORIENTATION] = orientation
    return encode(image, "JPEG", quality=quality, exif=exif)


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    china, flower = sample_photo("china.jpg"), sample_photo("flower.jpg")
    typical = china.resize((500, 375), Image.Resampling.BILINEAR)
    return {
        "china": jpeg(china),
        "flower": jpeg(flower),
        "china_500x375": jpeg(typical),
        "flower_375x500": jpeg(flower.resize((375, 500), Image.Resampling.BILINEAR)),
        "china_grey": jpeg(typical.convert("L")),
        "flower_exif6": jpeg(flower, orientation=6),
        "china_exif8_q75": jpeg(typical, orientation=8, quality=75),
        "flower_progressive_444": encode(
            flower, "JPEG", quality=85, progressive=True, subsampling=0
        ),
    }


def pixel_difference(a: torch.Tensor, b: torch.Tensor) -> tuple[int, float]:
    diff = (a.int() - b.int()).abs()
    return int(diff.max()), float(diff.float().mean())


@pytest.mark.parametrize("crop", ["center", "tencrop"])
def test_real_photos_match_the_pil_path_to_a_grey_level(photos, crop):
    for name, data in photos.items():
        assert tensor_decodable(read_header(data, name, 10**8), SPEC), name
        reference = load_and_preprocess(data, SPEC, crop)
        got = prepare_image(data, SPEC, crop, decoder="tensor")
        assert got.shape == reference.shape and got.dtype == torch.uint8, name
        worst, mean = pixel_difference(got, reference)
        assert worst <= 2 and mean <= 0.05, f"{name}: max {worst}, mean {mean:.4f}"


@pytest.mark.filterwarnings("ignore:USING RANDOM WEIGHTS")
def test_features_per_layer_match_the_pil_path(photos):
    layers = ("decaf5", "decaf6", "decaf7", "logits")
    pil = Featurizer(layers, weights="random", crop="tencrop", decoder="pil", device="cpu")
    tensor = Featurizer(layers, weights="random", crop="tencrop", decoder="tensor", device="cpu")
    sources = list(photos.values())
    views = {
        name: fz.forward(torch.stack([fz.prepare(s) for s in sources]).reshape(-1, 3, 224, 224))
        for name, fz in (("pil", pil), ("tensor", tensor))
    }
    for layer in layers:
        a = views["pil"][layer].astype(np.float64)
        b = views["tensor"][layer].astype(np.float64)
        cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert cosine.min() >= 0.9999, f"{layer}: worst cosine {cosine.min():.6f}"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pil(orientation):
    data = jpeg(textured_rgb((96, 64)), orientation=orientation, quality=95)
    for crop in ("center", "tencrop"):
        reference = load_and_preprocess(data, SMALL_SPEC, crop)
        got = prepare_image(data, SMALL_SPEC, crop, decoder="tensor")
        assert got.shape == reference.shape
        assert pixel_difference(got, reference)[0] <= 2, (orientation, crop)


def test_stretch_resize_mode_matches_pil():
    spec = PreprocessSpec(resize=80, crop=64, resize_mode="stretch")
    data = jpeg(textured_rgb((96, 64)), quality=95)
    assert pixel_difference(prepare_image(data, spec, decoder="tensor"),
                            load_and_preprocess(data, spec))[0] <= 2  # fmt: skip


def test_other_formats_and_modes_go_through_pil_unchanged(image_files: ImageFiles):
    for path in (image_files.cmyk_jpeg(), image_files.mode_png("RGBA"), image_files.png16()):
        expected = load_and_preprocess(path, SMALL_SPEC)
        assert torch.equal(prepare_image(path, SMALL_SPEC, decoder="tensor"), expected), path
        assert not tensor_decodable(read_header(path.read_bytes(), "x", 10**8), SMALL_SPEC)


def test_auto_leaves_large_jpegs_to_pils_reduced_scale_decode():
    large = jpeg(textured_rgb((1200, 1100)), quality=90)
    header = read_header(large, "large", 10**8)
    assert not tensor_decodable(header, SPEC)  # PIL decodes it at 1/2 scale
    assert tensor_decodable(header, SPEC, force=True)
    assert torch.equal(prepare_image(large, SPEC, decoder="auto"), load_and_preprocess(large, SPEC))
    assert not tensor_decodable(header, PreprocessSpec(interpolation="bicubic"), force=True)


def test_truncated_and_corrupt_jpegs_are_decode_errors_naming_the_file(image_files: ImageFiles):
    path = image_files.truncated_jpeg()
    with pytest.raises(ImageDecodeError, match=f"{path.name}.*truncated"):
        prepare_image(path, SMALL_SPEC, decoder="tensor")
    data = encode(textured_rgb((96, 64)), "JPEG", quality=95)
    garbage = data[:400] + bytes(len(data) - 400)
    with pytest.raises(ImageDecodeError, match="image bytes"):
        prepare_image(garbage, SMALL_SPEC, decoder="tensor")
    with pytest.raises(ImageDecodeError, match="empty"):
        prepare_image(image_files.zero_bytes(), SMALL_SPEC, decoder="tensor")


def test_pixel_limit_is_checked_from_the_header_before_decoding():
    data = jpeg(textured_rgb((200, 150)))
    with pytest.raises(ImageTooLargeError, match="200x150"):
        prepare_image(data, SMALL_SPEC, max_pixels=200 * 150 - 1, decoder="tensor")


def test_bad_decoder_name_is_refused():
    with pytest.raises(ValueError, match="decoder must be one of"):
        prepare_image(b"x", SPEC, decoder="opencv")  # type: ignore[arg-type]


def test_batch_preparation_keeps_good_files_and_names_bad_ones(photos, image_files: ImageFiles):
    """The device-decode entry point, run on the CPU here (the gpu test below runs it on CUDA)."""
    good = [photos["china_500x375"], photos["flower_exif6"]]
    sources = [good[0], image_files.truncated_jpeg(), image_files.mode_png("RGBA"), good[1]]
    batch, kept, errors = prepare_batch_on_device(sources, SPEC, device="cpu")
    assert kept == [0, 2, 3] and batch.shape == (3, 3, 224, 224)
    assert len(errors) == 1 and "image 1" in str(errors[0]) and "truncated" in str(errors[0])
    assert torch.equal(batch[0], prepare_image(good[0], SPEC, decoder="tensor"))
    assert torch.equal(batch[1], load_and_preprocess(sources[2], SPEC))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nvjpeg_batch_on_cuda_matches_the_pil_path(photos):
    sources = list(photos.values())
    batch, kept, errors = prepare_batch_on_device(sources, SPEC, device="cuda")
    assert batch.is_cuda and kept == list(range(len(sources))) and not errors
    for index, data in enumerate(sources):
        # nvJPEG's IDCT/upsampling and the float resize may differ from libjpeg-turbo + PIL by
        # a few levels; a geometry or orientation error would differ by far more.
        worst, mean = pixel_difference(batch[index].cpu(), load_and_preprocess(data, SPEC))
        assert worst <= 8 and mean <= 0.5, f"{index}: max {worst}, mean {mean:.3f}"
