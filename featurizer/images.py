"""Decode untrusted image files into upright 8-bit RGB, refusing what cannot be read safely.

Every input (a path, raw bytes or a PIL image) ends up as a ``PIL.Image.Image`` in mode ``RGB``
with the EXIF orientation applied, or raises a typed error that says what was wrong:

* :class:`~featurizer.errors.ImageDecodeError` - empty file, truncated data, corrupt data, a file
  that is not an image at all, or a file that cannot be read. The message names the file when a
  path was given. Truncated files are *errors*: ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is left at
  its default ``False`` so that a cut-off download never turns silently into grey padding.
* :class:`~featurizer.errors.ImageTooLargeError` - the header announces more than ``max_pixels``
  pixels (decompression-bomb guard). Only the header has been read at that point, so a bomb costs
  a few hundred bytes of I/O. Files are identified through PIL's plugin registry directly rather
  than ``Image.open``, so PIL's own global limit (``Image.MAX_IMAGE_PIXELS``) neither warns nor
  overrides ours, and no warning filter is touched (filters are process-wide and not thread-safe).

Mode rule (what every PIL mode becomes)
---------------------------------------
=====================================  =======================================================
``RGB``                                unchanged
``1``, ``L``                           grey replicated to R, G and B
``I;16`` (and ``I;16B/L/N``)           16-bit grey scaled to 8 bits (``round(v / 257)``),
                                       then replicated
``I`` (32-bit int)                     treated as 16-bit grey (how 16-bit PNG/TIFF decode in
                                       older Pillow): clipped to 0..65535, then as ``I;16``
``F`` (32-bit float)                   treated as 0..1 intensity: clipped, times 255, rounded
``LA``, ``La``, ``RGBA``, ``RGBa``,    alpha-composited onto white (transparent pixels
``PA``, and any image carrying a       become white, as browsers and viewers show them)
``transparency`` key (``P``, ``L``
or ``RGB`` with a tRNS colour key)
``P`` without transparency             palette expanded to RGB
``CMYK``, ``YCbCr``, ``LAB``, ``HSV``  PIL's own conversion to RGB (no ICC colour management)
=====================================  =======================================================

Animated GIF/WebP/PNG and multi-page TIFF give their first frame.

Reduced-scale JPEG decoding (``min_short_side``)
------------------------------------------------
libjpeg can decode a JPEG at 1/2, 1/4 or 1/8 scale straight from the DCT coefficients
(``Image.draft``), 2-3x cheaper than a full decode followed by a large downscale (measured
below). The decoded short side is kept at least ``DRAFT_SAFETY_FACTOR`` (= 2) times
``min_short_side`` so that the later antialiased bilinear resize to ``min_short_side`` still does
a real >= 2x reduction and owns the final filtering.

Measured with ``benchmarks/draft_fidelity.py --repeats 7`` (2-core CPU shared with other jobs,
load average ~11, so wall times are noisy: the speed-up uses this process's CPU time; Pillow 13.0
/ libjpeg-turbo). Photos: the two scikit-learn sample photos upscaled to 2500x1700 / 1700x2500,
china again at 1600x1067 (the chosen rule's edge: 1/2 scale leaves just over 2 x 256), and two
synthetic 2560x1920 worst cases (fine texture, sharp-edged blocks), all JPEG quality 90. Target
shorter side 256, centre crop 224; |d| in uint8 levels vs the full-decode crop, max over photos
and mean of per-photo means; cos = worst cosine similarity of decaf6 / decaf7 features to the
full decode's, random weights (a PROXY: pretrained weights cannot be downloaded on the measuring
machine; rerun with ``--weights PATH`` where they are).

==========================  =========  ======  ========  ======  =======  ========  ========
rule                        divisors   cpu ms  speed-up  max|d|  mean|d|  cos6 min  cos7 min
==========================  =========  ======  ========  ======  =======  ========  ========
full decode (reference)     1/1/1/1/1  30.0    1.00x     0       0.000    1         1
full + reducing_gap=2       1/1/1/1/1  44.3    0.68x     7       0.534    0.99996   0.99997
draft, no box correction    2/2/2/2/2  16.0    1.87x     34      0.712    0.99972   0.99986
short >= 1x target          4/4/4/4/4  10.6    2.83x     31      1.344    0.99940   0.99968
short >= 1.5x target        4/4/2/4/4  10.9    2.75x     14      1.007    0.99982   0.99989
short >= 2x target: CHOSEN  2/2/2/2/2  15.0    2.01x     9       0.466    0.99996   0.99997
short >= 3x target          2/2/1/2/2  16.6    1.81x     9       0.358    0.99997   0.99997
==========================  =========  ======  ========  ======  =======  ========  ========

Per photo with the chosen rule, mean (max) |d|: 0.21 (3) and 0.16 (3) on the two large photos,
0.54 (8) at the rule's edge, 0.52 (3) and 0.91 (9) on the synthetic worst cases. Why 2x: with a
>= 2x reduction left for the antialiased resize, the error is that of PIL's own
``reducing_gap=2`` shortcut (0.53 mean, 7 max) for a 2x speed-up; going to 1/4 scale at 1.5x
doubles the error (and 1x triples it, 31 levels max) for only 1.4x more. The "no box correction"
row shows why the draft geometry is recorded (below): resizing the decoded pixels as they are
can round the resized size differently (e.g. 340 instead of 341 px wide) and stretches the
picture by the partial last block when the size is not a multiple of the divisor, which moves
the crop (34 levels max at the rule's edge, 152 on the synthetic images in ``--quick``).

The decoded image records in ``image.info`` (keys ``DRAFT_*_KEY``) the full picture's box in
decoded pixels and the full size, both after EXIF rotation; ``featurizer.preprocess`` resizes
exactly that box to the size a full decode would give.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable
from typing import IO

import numpy as np
from PIL import Image, ImageFile

from featurizer.errors import ImageDecodeError, ImageTooLargeError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DRAFT_SAFETY_FACTOR",
    "ImageSource",
    "decode_image",
    "draft_scale",
    "exif_orientation",
    "pixel_error_message",
    "read_header",
    "read_source",
]

ImageSource = str | os.PathLike[str] | bytes | Image.Image

# Below PIL's own warning threshold (89.5 MP) and far above any camera photo a user would feed
# an AlexNet; a 100-megapixel bomb is refused from its header.
DEFAULT_MAX_PIXELS: int = 80_000_000

# Reduced-scale JPEG decoding keeps the decoded short side >= this many times the resize target
# (measured choice, see the module docstring).
DRAFT_SAFETY_FACTOR: float = 2.0

# A reduced-scale decode records its geometry in ``image.info`` so that the resize in
# featurizer.preprocess maps exactly the same picture area as a full decode would: the full
# picture's box in decoded pixels, the full (upright) size, and the decoded size (the record is
# ignored if the image was resized or cropped since, i.e. its size no longer matches).
DRAFT_BOX_KEY = "decaf.draft_box"
DRAFT_FULL_SIZE_KEY = "decaf.full_size"
DRAFT_DECODED_SIZE_KEY = "decaf.decoded_size"

Box = tuple[float, float, float, float]

_EXIF_ORIENTATION_TAG = 0x0112
_TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
_ALPHA_MODES = frozenset({"LA", "La", "RGBA", "RGBa", "PA"})
_WHITE = (255, 255, 255)
# What PIL raises for damaged data while parsing headers or decoding pixels.
_PIL_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    EOFError,
    ValueError,
    IndexError,
    TypeError,
    KeyError,
    struct.error,
    Image.DecompressionBombError,
)


def decode_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_short_side: int | None = None,
) -> Image.Image:
    """Decode ``source`` into an upright RGB image.

    Args:
        source: a file path, the raw bytes of an image file, or a PIL image (used as given: it is
            never mutated and never re-decoded at reduced scale).
        max_pixels: refuse images whose header announces more pixels than this.
        min_short_side: when given and the file is a JPEG, decode at 1/2, 1/4 or 1/8 scale as long
            as the decoded short side stays >= ``DRAFT_SAFETY_FACTOR * min_short_side``.

    Raises:
        ImageDecodeError: unreadable, empty, truncated, corrupt or non-image input.
        ImageTooLargeError: more than ``max_pixels`` pixels.
    """
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    if isinstance(source, Image.Image):
        name = _describe_pil(source)
        return _finish(source, name, max_pixels)
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        name = f"image bytes ({len(data)} bytes)"
        if not data:
            raise ImageDecodeError(f"{name}: empty input (0 bytes), nothing to decode")
        return _decode_stream(io.BytesIO(data), "", name, max_pixels, min_short_side)
    if isinstance(source, str | os.PathLike):
        return _decode_path(os.fspath(source), max_pixels, min_short_side)
    raise TypeError(f"expected a path, bytes or PIL.Image.Image, got {type(source).__name__}")


def draft_scale(
    width: int, height: int, min_short_side: int, *, safety_factor: float = DRAFT_SAFETY_FACTOR
) -> int:
    """The largest JPEG draft divisor (8, 4, 2 or 1) keeping the short side >= factor x target."""
    short_side = min(width, height)
    needed = safety_factor * min_short_side
    for scale in (8, 4, 2):
        # libjpeg rounds the scaled size up.
        if -(-short_side // scale) >= needed:
            return scale
    return 1


def _decode_path(path: str, max_pixels: int, min_short_side: int | None) -> Image.Image:
    name = repr(path)
    with _open_file(path, name) as fp:
        return _decode_stream(fp, path, name, max_pixels, min_short_side)


def _open_file(path: str, name: str) -> IO[bytes]:
    try:
        fp = open(path, "rb")  # noqa: SIM115 - the caller closes it
    except OSError as exc:
        raise ImageDecodeError(f"{name}: cannot read file: {exc.strerror or exc}") from exc
    if os.fstat(fp.fileno()).st_size == 0:
        fp.close()
        raise ImageDecodeError(f"{name}: empty file (0 bytes), nothing to decode")
    return fp


def read_source(source: str | os.PathLike[str] | bytes) -> tuple[bytes, str]:
    """The encoded bytes of a path or bytes source, and the name errors use for it.

    Same errors as :func:`decode_image` for unreadable and empty input.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        name = f"image bytes ({len(data)} bytes)"
        if not data:
            raise ImageDecodeError(f"{name}: empty input (0 bytes), nothing to decode")
        return data, name
    path = os.fspath(source)
    name = repr(path)
    with _open_file(path, name) as fp:
        try:
            return fp.read(), name
        except OSError as exc:
            raise ImageDecodeError(f"{name}: cannot read file: {exc.strerror or exc}") from exc


def read_header(data: bytes, name: str, max_pixels: int) -> ImageFile.ImageFile:
    """Parse only the header of encoded ``data`` (format, mode, size, EXIF); bomb-checked.

    Same errors as :func:`decode_image` for unidentifiable or oversized images.
    """
    return _open_checked_header(io.BytesIO(data), "", name, max_pixels)


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8) :func:`decode_image` applies; 1 when absent or unreadable."""
    method = _exif_transpose_method(image)
    if method is None:
        return 1
    return next(k for k, v in _TRANSPOSE_FOR_ORIENTATION.items() if v is method)


def pixel_error_message(exc: BaseException) -> str:
    """How a failure while decoding pixels is reported (truncated vs corrupt)."""
    return _pixel_error_message(exc)


def _open_checked_header(
    fp: IO[bytes], filename: str, name: str, max_pixels: int
) -> ImageFile.ImageFile:
    """The header only, opened and bomb-checked; every failure an ImageDecodeError naming `name`."""
    try:
        image = _open_header_only(fp, filename)
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"{name}: {exc}") from None
    except _PIL_DECODE_ERRORS as exc:
        damage = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageDecodeError(f"{name}: {damage} image header ({_reason(exc)})") from exc
    _check_pixels(image.size, name, max_pixels)
    return image


def _decode_stream(
    fp: IO[bytes], filename: str, name: str, max_pixels: int, min_short_side: int | None
) -> Image.Image:
    image = _open_checked_header(fp, filename, name, max_pixels)
    full_size = image.size
    draft_box = None
    if min_short_side is not None and image.format in ("JPEG", "MPO"):
        draft_box = _apply_draft(image, min_short_side)
    return _finish(image, name, max_pixels, full_size=full_size, draft_box=draft_box)


def _open_header_only(fp: IO[bytes], filename: str) -> ImageFile.ImageFile:
    """Identify the format and parse the header, like ``Image.open`` without its global limit.

    ``Image.open`` checks ``Image.MAX_IMAGE_PIXELS`` itself: it warns through the warnings module
    between 1x and 2x that limit and raises above it, regardless of the limit the caller wants.
    Going through the plugin registry ourselves applies only ``max_pixels``.
    """
    registry: dict[str, tuple[Callable[..., ImageFile.ImageFile], Callable[..., object] | None]]
    registry = getattr(Image, "OPEN", None)  # type: ignore[assignment]
    formats = getattr(Image, "ID", None)
    if registry is None or formats is None:  # a Pillow without the registry: use its own path
        return Image.open(fp)
    prefix = fp.read(16)
    parse_errors: dict[str, str] = {}
    tried: set[str] = set()
    for load_plugins in (Image.preinit, Image.init):
        load_plugins()
        for fmt in tuple(formats):
            factory, accept = registry[fmt]
            verdict = accept(prefix) if accept is not None else True
            if isinstance(verdict, str) or not verdict or fmt in tried:
                continue
            tried.add(fmt)
            fp.seek(0)
            try:
                return factory(fp, filename)
            except (SyntaxError, IndexError, TypeError, struct.error) as exc:
                # Not this format after all; PIL's open tries the next one too. Remember why
                # when the signature matched (plugins without a signature check try anything).
                if accept is not None:
                    parse_errors[fmt] = _reason(exc)
    if parse_errors:
        reasons = "; ".join(f"{fmt}: {why}" for fmt, why in parse_errors.items())
        raise ImageDecodeError(f"corrupt {' / '.join(parse_errors)} header ({reasons})")
    raise ImageDecodeError(f"not a recognised image format (starts with {prefix[:8]!r})")


def _apply_draft(image: ImageFile.ImageFile, min_short_side: int) -> Box | None:
    """Ask libjpeg for a 1/scale decode; return the full picture's box in decoded pixels."""
    scale = draft_scale(image.width, image.height, min_short_side)
    if scale == 1:
        return None
    # draft() picks the divisor from the requested size; ask for exactly 1/scale.
    configured = image.draft(None, (image.width // scale, image.height // scale))
    if configured is None:
        return None
    # The last decoded row/column covers only part of a scale x scale block when the size is
    # not a multiple of scale: the box (0, 0, w/scale, h/scale) says exactly how much.
    return tuple(float(v) for v in configured[1])  # type: ignore[return-value]


def _finish(
    image: Image.Image,
    name: str,
    max_pixels: int,
    *,
    full_size: tuple[int, int] | None = None,
    draft_box: Box | None = None,
) -> Image.Image:
    _check_pixels(image.size, name, max_pixels)
    try:
        image.load()  # first frame only for animations / multi-page files
        method = _exif_transpose_method(image)
        if draft_box is not None and full_size is not None:
            full_size, draft_box = _orient_geometry(full_size, draft_box, image.size, method)
        if method is not None:
            image = image.transpose(method)
        rgb = _to_rgb(image)
    except ImageDecodeError:
        raise
    except _PIL_DECODE_ERRORS as exc:
        raise ImageDecodeError(f"{name}: {_pixel_error_message(exc)}") from exc
    if draft_box is not None and full_size is not None:
        rgb.info[DRAFT_BOX_KEY] = draft_box
        rgb.info[DRAFT_FULL_SIZE_KEY] = full_size
        rgb.info[DRAFT_DECODED_SIZE_KEY] = rgb.size
    return rgb


def _check_pixels(size: tuple[int, int], name: str, max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"{name}: image has no pixels ({width}x{height})")
    pixels = width * height
    if pixels > max_pixels:
        raise ImageTooLargeError(
            f"{name}: image is {width}x{height} = {pixels / 1e6:.1f} megapixels, above the "
            f"limit of {max_pixels / 1e6:.1f} megapixels (decompression-bomb guard; raise "
            "max_pixels if the source is trusted)"
        )


def _exif_transpose_method(image: Image.Image) -> Image.Transpose | None:
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # broken EXIF must not reject good pixels
        return None
    if not isinstance(orientation, int):
        return None
    return _TRANSPOSE_FOR_ORIENTATION.get(orientation)


def _orient_geometry(
    full_size: tuple[int, int],
    box: Box,
    decoded_size: tuple[int, int],
    method: Image.Transpose | None,
) -> tuple[tuple[int, int], Box]:
    """Carry the draft box and the full size through the EXIF transposition."""
    if method is None:
        return full_size, box
    width, height = decoded_size
    x0, y0, x1, y1 = box
    T = Image.Transpose
    if method is T.FLIP_LEFT_RIGHT:
        return full_size, (width - x1, y0, width - x0, y1)
    if method is T.FLIP_TOP_BOTTOM:
        return full_size, (x0, height - y1, x1, height - y0)
    if method is T.ROTATE_180:
        return full_size, (width - x1, height - y1, width - x0, height - y0)
    swapped = (full_size[1], full_size[0])
    if method is T.TRANSPOSE:  # (x, y) -> (y, x)
        return swapped, (y0, x0, y1, x1)
    if method is T.ROTATE_90:  # counter-clockwise: (x, y) -> (y, width - x)
        return swapped, (y0, width - x1, y1, width - x0)
    if method is T.ROTATE_270:  # clockwise: (x, y) -> (height - y, x)
        return swapped, (height - y1, x0, height - y0, x1)
    # TRANSVERSE: (x, y) -> (height - y, width - x)
    return swapped, (height - y1, width - x1, height - y0, width - x0)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Apply the documented mode rule (module docstring)."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        return _grey_array_to_rgb(_sixteen_bit_to_8(image))
    if mode == "F":
        grey = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0) * 255.0
        return _grey_array_to_rgb(np.rint(grey).astype(np.uint8))
    if mode in _ALPHA_MODES or "transparency" in image.info:
        return _composite_on_white(image.convert("RGBA"))
    return image.convert("RGB")


def _sixteen_bit_to_8(image: Image.Image) -> np.ndarray:
    values = np.asarray(image)
    if values.dtype.byteorder not in ("=", "|"):
        values = values.astype(values.dtype.newbyteorder("="))
    wide = np.clip(values.astype(np.int64), 0, 65535)
    # round(v / 257) maps 0 -> 0 and 65535 -> 255 exactly, in integers.
    return ((wide + 128) // 257).astype(np.uint8)


def _grey_array_to_rgb(grey: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(grey)).convert("RGB")


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGB", rgba.size, _WHITE)
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _describe_pil(image: Image.Image) -> str:
    filename = getattr(image, "filename", "")
    if filename:
        return repr(os.fsdecode(filename))
    return f"PIL image ({image.mode} {image.width}x{image.height})"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _pixel_error_message(exc: BaseException) -> str:
    text = str(exc)
    if "truncated" in text or isinstance(exc, EOFError):
        return f"truncated image data, the file ends early ({_reason(exc)})"
    return f"corrupt image data ({_reason(exc)})"
