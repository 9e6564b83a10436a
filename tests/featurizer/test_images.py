"""decode_image: every awkward input becomes upright RGB or a typed error that says why."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile

from featurizer.errors import ImageDecodeError, ImageTooLargeError
from featurizer.images import (
    DEFAULT_MAX_PIXELS,
    DRAFT_BOX_KEY,
    DRAFT_FULL_SIZE_KEY,
    DRAFT_SAFETY_FACTOR,
    _orient_geometry,
    decode_image,
    draft_scale,
)

from .conftest import ImageFiles, encode, png_bomb_bytes, textured_rgb


def header(path) -> tuple[str, int, dict]:
    """(mode, frame count, info) of a file as PIL sees it, file closed again."""
    with Image.open(path) as image:
        return image.mode, getattr(image, "n_frames", 1), dict(image.info)


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image).astype(np.int16)


# --- sources: path, bytes, PIL ------------------------------------------------------------


def test_path_bytes_and_pil_inputs_give_identical_rgb(image_files: ImageFiles) -> None:
    path = image_files.exif_rotated_jpeg(orientation=3, size=(90, 60))
    from_path = decode_image(path)
    from_str = decode_image(str(path))
    from_bytes = decode_image(path.read_bytes())
    with Image.open(path) as opened:
        from_pil = decode_image(opened)  # a raw PIL image: EXIF not applied yet, we apply it
    assert from_path.size == (90, 60)
    for other in (from_str, from_bytes, from_pil):
        assert np.array_equal(pixels(other), pixels(from_path))


def test_path_and_bytes_identical_with_reduced_scale_decode(image_files: ImageFiles) -> None:
    path = image_files.rgb_jpeg("big.jpg", size=(301, 280))
    from_path = decode_image(path, min_short_side=64)
    from_bytes = decode_image(path.read_bytes(), min_short_side=64)
    assert from_path.size == from_bytes.size == (151, 140)
    assert np.array_equal(pixels(from_path), pixels(from_bytes))


def test_pil_input_is_not_mutated(make_rgb) -> None:
    rgba = make_rgb((20, 10)).convert("RGBA")
    before = np.asarray(rgba).copy()
    out = decode_image(rgba)
    assert rgba.mode == "RGBA" and np.array_equal(np.asarray(rgba), before)
    assert out.mode == "RGB" and out.size == (20, 10)


def test_unsupported_source_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="expected a path, bytes or PIL"):
        decode_image(12345)  # type: ignore[arg-type]


# --- the mode rule ----------------------------------------------------------------------------


def test_rgb_jpeg_decodes_to_rgb(image_files: ImageFiles) -> None:
    image = decode_image(image_files.rgb_jpeg(size=(96, 64)))
    assert image.mode == "RGB" and image.size == (96, 64)
    red_marker = pixels(image)[2:10, 2:10]
    assert red_marker[..., 0].min() > 200 and red_marker[..., 1:].max() < 60


def test_grey_l_is_replicated_to_three_channels(image_files: ImageFiles) -> None:
    path = image_files.mode_png("L")
    image = decode_image(path)
    rgb = pixels(image)
    with Image.open(path) as opened:
        grey = np.asarray(opened).astype(np.int16)
    for channel in range(3):
        assert np.array_equal(rgb[..., channel], grey)


def test_grey_with_alpha_la_is_composited_on_white(image_files: ImageFiles) -> None:
    grey = np.full((10, 20), 40, np.uint8)
    alpha = np.zeros((10, 20), np.uint8)
    alpha[:, 10:] = 255  # left half transparent, right half opaque
    la = Image.merge("LA", [Image.fromarray(grey), Image.fromarray(alpha)])
    rgb = pixels(decode_image(image_files.write("la.png", la)))
    assert (rgb[:, :10] == 255).all()
    assert (rgb[:, 10:] == 40).all()


def test_rgba_half_transparent_blends_with_white(image_files: ImageFiles) -> None:
    rgba = Image.new("RGBA", (8, 8), (0, 0, 200, 128))
    rgb = pixels(decode_image(image_files.write("rgba.png", rgba)))
    # 128/255 of the colour over white: R = G = 255 * 127/255, B between 200 and 255.
    assert np.abs(rgb[..., 0] - 127).max() <= 1
    assert np.abs(rgb[..., 1] - 127).max() <= 1
    assert np.abs(rgb[..., 2] - 227).max() <= 1


def test_palette_p_expands_palette_colours(image_files: ImageFiles) -> None:
    source = Image.new("RGB", (12, 6), (10, 200, 30))
    source.paste((250, 5, 100), (6, 0, 12, 6))
    path = image_files.write("p.png", source.convert("P", palette=Image.Palette.ADAPTIVE))
    assert header(path)[0] == "P"
    rgb = pixels(decode_image(path))
    assert (rgb[:, :6] == (10, 200, 30)).all()
    assert (rgb[:, 6:] == (250, 5, 100)).all()


def test_palette_with_transparency_becomes_white_where_transparent(
    image_files: ImageFiles,
) -> None:
    palette_image = Image.new("P", (10, 4), 1)
    palette_image.putpalette([0, 0, 0, 200, 20, 20] + [0] * (256 * 3 - 6))
    palette_image.paste(0, (0, 0, 5, 4))  # index 0 on the left, declared transparent
    path = image_files.write("pt.png", palette_image, "PNG", transparency=0)
    mode, _, info = header(path)
    assert mode == "P" and info.get("transparency") == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's "palette with transparency" warning must not fire
        rgb = pixels(decode_image(path))
    assert (rgb[:, :5] == 255).all()
    assert (rgb[:, 5:] == (200, 20, 20)).all()


def test_cmyk_jpeg_is_converted_to_rgb(image_files: ImageFiles) -> None:
    path = image_files.cmyk_jpeg(size=(64, 48))
    assert header(path)[0] == "CMYK"
    rgb = pixels(decode_image(path))
    expected = pixels(textured_rgb((64, 48)))
    assert rgb.shape == expected.shape
    # JPEG loss on top of the CMYK round trip; a wrong conversion (e.g. inverted) is far off.
    assert np.abs(rgb - expected).mean() < 8


def test_sixteen_bit_png_is_scaled_to_eight_bits(image_files: ImageFiles) -> None:
    values = np.array([[0, 257, 128 * 257, 32_000, 65_535]], np.uint16)
    path = image_files.png16(values=values)
    assert header(path)[0].startswith("I;16")
    rgb = pixels(decode_image(path))
    expected = np.round(values / 257).astype(np.int16)  # 0, 1, 128, 125, 255: not clipped
    for channel in range(3):
        assert np.array_equal(rgb[..., channel], expected)


def test_32_bit_int_and_float_modes(make_rgb) -> None:
    int_image = Image.fromarray(np.array([[0, 65_535, 70_000, -5]], np.int32))
    assert pixels(decode_image(int_image))[0, :, 0].tolist() == [0, 255, 255, 0]
    float_image = Image.fromarray(np.array([[0.0, 0.5, 1.0, 7.0]], np.float32))
    assert pixels(decode_image(float_image))[0, :, 0].tolist() == [0, 128, 255, 255]


def test_animated_gif_gives_its_first_frame(image_files: ImageFiles) -> None:
    path = image_files.animated_gif(frames=3)
    assert header(path)[1] == 3
    assert (pixels(decode_image(path)) == (255, 0, 0)).all()


def test_multipage_tiff_gives_its_first_page(image_files: ImageFiles) -> None:
    path = image_files.multipage_tiff(pages=3)
    image = decode_image(path)
    assert image.size == (40, 30)
    assert (pixels(image) == (0, 100, 200)).all()


# --- EXIF orientation -------------------------------------------------------------------------


def test_exif_orientation_6_gives_the_rotated_size_and_content(image_files: ImageFiles) -> None:
    path = image_files.exif_rotated_jpeg(orientation=6, size=(96, 64))
    image = decode_image(path)
    assert image.size == (64, 96)  # stored landscape, shown portrait
    # Orientation 6 = the camera was turned clockwise: the stored top-left marker is shown
    # at the top-right.
    rgb = pixels(image)
    assert rgb[2:10, -10:-2, 0].min() > 200 and rgb[2:10, -10:-2, 1:].max() < 60
    assert rgb[2:10, 2:10, 0].mean() < 200


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pil_exif_transpose(
    image_files: ImageFiles, orientation: int
) -> None:
    from PIL import ImageOps

    path = image_files.exif_rotated_jpeg(orientation=orientation, size=(30, 20))
    with Image.open(path) as opened:
        expected = ImageOps.exif_transpose(opened).convert("RGB")
    assert np.array_equal(pixels(decode_image(path)), pixels(expected))


# --- bad input: typed errors that name the file -------------------------------------------------


def test_zero_byte_file_is_a_decode_error_naming_the_file(image_files: ImageFiles) -> None:
    path = image_files.zero_bytes("holiday.jpg")
    with pytest.raises(ImageDecodeError, match=r"holiday\.jpg.*empty"):
        decode_image(path)
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"")


def test_truncated_jpeg_is_an_error_not_grey_padding(image_files: ImageFiles) -> None:
    path = image_files.truncated_jpeg("cut.jpg", keep=0.5)
    with pytest.raises(ImageDecodeError, match=r"cut\.jpg.*truncated"):
        decode_image(path)
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(path.read_bytes(), min_short_side=16)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # importing us changed nothing global


def test_jpeg_cut_inside_its_header_is_a_truncation_error() -> None:
    data = encode(textured_rgb((64, 48)), "JPEG")
    with pytest.raises(ImageDecodeError, match="truncated image header"):
        decode_image(data[:30])


def test_text_file_named_jpg_is_not_an_image(image_files: ImageFiles) -> None:
    path = image_files.text_as_jpg("notes.jpg")
    with pytest.raises(ImageDecodeError, match=r"notes\.jpg.*not a recognised image format"):
        decode_image(path)


def test_corrupt_png_data_is_a_decode_error(image_files: ImageFiles) -> None:
    data = bytearray(encode(textured_rgb((64, 48)), "PNG"))
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)  # wreck compressed pixel data (and its CRC)
    path = image_files.write_bytes("wrecked.png", bytes(data))
    with pytest.raises(ImageDecodeError, match=r"wrecked\.png"):
        decode_image(path)


def test_corrupt_jpeg_header_is_a_decode_error(image_files: ImageFiles) -> None:
    data = encode(textured_rgb((64, 48)), "JPEG")
    with pytest.raises(ImageDecodeError, match=r"image bytes.*corrupt JPEG header"):
        decode_image(data[:2] + b"\xff\xc0\x00\x02" + bytes(200))


def test_missing_file_and_directory_are_decode_errors(image_files: ImageFiles) -> None:
    missing = image_files.directory / "nope.jpg"
    with pytest.raises(ImageDecodeError, match=r"nope\.jpg.*cannot read"):
        decode_image(missing)
    image_files.directory.mkdir(parents=True, exist_ok=True)
    with pytest.raises(ImageDecodeError, match="cannot read"):
        decode_image(image_files.directory)


def test_100_megapixel_png_bomb_is_refused_from_its_header(
    image_files: ImageFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = image_files.png_bomb("bomb.png", 10_000, 10_000)
    assert path.stat().st_size < 100_000  # the bomb is small on disk ...

    def no_pixels(self: ImageFile.ImageFile) -> None:
        raise AssertionError("the pixels were decoded")

    # ... and refused without decoding its pixels (checked directly, not by a stopwatch).
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_pixels)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageTooLargeError, match=r"bomb\.png.*10000x10000.*100\.0 megapixels"):
            decode_image(path)
    # PIL's own DecompressionBombWarning (it fires above 89.5 MP in Image.open) never leaks.
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert DEFAULT_MAX_PIXELS < 100_000_000


def test_beyond_pils_own_hard_limit_is_still_our_error() -> None:
    # 200+ MP: Image.open would raise PIL's DecompressionBombError; we raise ours.
    with pytest.raises(ImageTooLargeError, match="megapixels"):
        decode_image(png_bomb_bytes(16_000, 14_000))


def test_pixel_limit_is_configurable(image_files: ImageFiles) -> None:
    path = image_files.rgb_jpeg(size=(40, 30))
    assert decode_image(path, max_pixels=1200).size == (40, 30)
    with pytest.raises(ImageTooLargeError, match="40x30"):
        decode_image(path, max_pixels=1199)
    with pytest.raises(ImageTooLargeError):
        decode_image(Image.new("RGB", (40, 30)), max_pixels=1000)
    with pytest.raises(ValueError, match="positive"):
        decode_image(path, max_pixels=0)


# --- reduced-scale JPEG decoding -------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "target", "expected"),
    [
        ((4000, 3000), 256, 4),  # 750 >= 512, 375 < 512
        ((2500, 1700), 256, 2),
        ((1024, 1024), 256, 2),  # exactly 2x target at 1/2
        ((1023, 2000), 256, 2),  # libjpeg rounds 1023 / 2 up to 512 = 2 x 256
        ((1022, 2000), 256, 1),
        ((1000, 1000), 256, 1),
        ((9000, 8200), 256, 8),
        ((300, 200), 256, 1),
    ],
)
def test_draft_scale_keeps_the_safety_margin(
    size: tuple[int, int], target: int, expected: int
) -> None:
    scale = draft_scale(*size, target)
    assert scale == expected
    assert -(-min(size) // scale) >= min(min(size), DRAFT_SAFETY_FACTOR * target)


def test_large_jpeg_is_decoded_at_reduced_scale_with_its_geometry(
    image_files: ImageFiles,
) -> None:
    path = image_files.rgb_jpeg("large.jpg", size=(601, 300))
    image = decode_image(path, min_short_side=64)
    assert image.size == (301, 150)  # 1/2 scale (1/4 would leave 75 < 2 x 64), rounded up
    assert image.info[DRAFT_FULL_SIZE_KEY] == (601, 300)
    assert image.info[DRAFT_BOX_KEY] == pytest.approx((0, 0, 300.5, 150))
    assert decode_image(path, min_short_side=32).size == (151, 75)  # 1/4 scale
    full = decode_image(path)
    assert full.size == (601, 300) and DRAFT_BOX_KEY not in full.info


def test_reduced_scale_follows_exif_rotation(image_files: ImageFiles) -> None:
    path = image_files.exif_rotated_jpeg(orientation=6, name="big6.jpg", size=(601, 300))
    image = decode_image(path, min_short_side=64)
    assert image.size == (150, 301)
    assert image.info[DRAFT_FULL_SIZE_KEY] == (300, 601)
    assert image.info[DRAFT_BOX_KEY] == pytest.approx((0, 0, 150, 300.5))


def test_no_reduced_scale_for_png_or_small_jpeg(image_files: ImageFiles) -> None:
    png = image_files.write("big.png", textured_rgb((601, 300)), "PNG", compress_level=1)
    assert decode_image(png, min_short_side=64).size == (601, 300)
    small = image_files.rgb_jpeg("small.jpg", size=(600, 254))  # 127 at 1/2 < 2 x 64
    assert decode_image(small, min_short_side=64).size == (600, 254)


@pytest.mark.parametrize("method", list(Image.Transpose))
def test_draft_box_follows_each_transposition(method: Image.Transpose) -> None:
    # Paint the box (integer here, the maths is affine) into an image, transpose the image with
    # PIL, and check that the transformed box bounds exactly the painted area.
    size, box = (7, 4), (0.0, 0.0, 5.0, 3.0)
    marked = np.zeros((4, 7), np.uint8)
    marked[0:3, 0:5] = 255
    turned = np.asarray(Image.fromarray(marked).transpose(method))
    full_size, (x0, y0, x1, y1) = _orient_geometry((70, 40), box, size, method)
    ys, xs = np.nonzero(turned)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
    swaps = turned.shape != marked.shape
    assert full_size == ((40, 70) if swaps else (70, 40))


def test_truncated_large_jpeg_is_an_error_at_reduced_scale_too(image_files: ImageFiles) -> None:
    data = encode(textured_rgb((601, 300)), "JPEG", quality=90)
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(data[: len(data) // 2], min_short_side=64)


def test_encoded_bytes_round_trip_io_helper() -> None:
    # Guard for the fixture itself: png_bomb_bytes is a *valid* PNG header, so the test above
    # exercises the pixel limit, not a parse error.
    with Image.open(io.BytesIO(png_bomb_bytes(100, 50))) as small:
        small.load()
        assert small.size == (100, 50) and small.mode == "1"
