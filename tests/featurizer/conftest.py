"""Shared image-making fixtures for featurizer tests: small real files of every awkward kind.

Use the ``image_files`` fixture (an :class:`ImageFiles` writing into ``tmp_path``) or the
``make_rgb`` fixture (deterministic textured RGB images). Everything is tiny and made in
milliseconds; the "bomb" is a valid 1-bit PNG whose 10000x10000 pixels compress to ~12 KB.
"""

from __future__ import annotations

import importlib.util
import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

EXIF_ORIENTATION = 0x0112


def textured_rgb(size: tuple[int, int] = (96, 64), seed: int = 0) -> Image.Image:
    """A deterministic RGB image with gradients, edges and noise (so shifts and flips show)."""
    width, height = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack(
        [
            255 * x / max(width - 1, 1),
            255 * y / max(height - 1, 1),
            127 + 100 * np.sin(x / 7.0) * np.cos(y / 5.0),
        ],
        axis=-1,
    )
    noise = rng.normal(0.0, 20.0, base.shape)
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    pixels[: height // 4, : width // 4] = (255, 0, 0)  # a red top-left marker
    return Image.fromarray(pixels)


def encode(image: Image.Image, fmt: str, **save_kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_kwargs)
    return buffer.getvalue()


def png_bomb_bytes(width: int = 10_000, height: int = 10_000) -> bytes:
    """A valid all-black 1-bit greyscale PNG of width x height, written chunk by chunk.

    A 100-megapixel image costs ~12 KB on disk and ~30 ms to make: the point of a bomb.
    """
    row = b"\x00" + bytes((width + 7) // 8)  # filter byte "none" + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, greyscale
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def sample_photo_path(name: str = "china.jpg") -> Path:
    """A real photo shipped inside scikit-learn (china.jpg or flower.jpg, 640x427), found
    without importing sklearn.datasets (slow to import)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-learn is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "images" / name
    if not path.is_file():
        pytest.skip(f"scikit-learn sample image {name} not found")
    return path


def sample_photo(name: str = "china.jpg") -> Image.Image:
    with Image.open(sample_photo_path(name)) as image:
        return image.convert("RGB")


class ImageFiles:
    """Writes small image files (good and bad) into one directory and returns their paths."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def write_bytes(self, name: str, data: bytes) -> Path:
        path = self.directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def write(self, name: str, image: Image.Image, fmt: str | None = None, **kw: object) -> Path:
        fmt = fmt or Image.registered_extensions()[Path(name).suffix.lower()]
        return self.write_bytes(name, encode(image, fmt, **kw))

    def rgb_jpeg(
        self, name: str = "rgb.jpg", size: tuple[int, int] = (96, 64), seed: int = 0
    ) -> Path:
        return self.write(name, textured_rgb(size, seed), "JPEG", quality=95)

    def mode_png(
        self, mode: str, name: str | None = None, size: tuple[int, int] = (64, 48)
    ) -> Path:
        """A PNG in ``mode`` (L, LA, RGBA, P, ...) converted from the textured image."""
        return self.write(name or f"{mode.lower()}.png", textured_rgb(size).convert(mode), "PNG")

    def exif_rotated_jpeg(
        self,
        orientation: int = 6,
        name: str | None = None,
        size: tuple[int, int] = (96, 64),
        seed: int = 0,
    ) -> Path:
        """A JPEG stored as ``size`` whose EXIF says how to turn it upright."""
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = orientation
        name = name or f"exif{orientation}.jpg"
        return self.write(name, textured_rgb(size, seed), "JPEG", quality=95, exif=exif)

    def cmyk_jpeg(self, name: str = "cmyk.jpg", size: tuple[int, int] = (64, 48)) -> Path:
        return self.write(name, textured_rgb(size).convert("CMYK"), "JPEG", quality=95)

    def png16(self, name: str = "grey16.png", values: np.ndarray | None = None) -> Path:
        """A 16-bit greyscale PNG (opens as I;16); default: a 0..65535 ramp, 32x16."""
        if values is None:
            values = np.linspace(0, 65535, 32 * 16).round().astype(np.uint16).reshape(16, 32)
        return self.write(name, Image.fromarray(values.astype(np.uint16)), "PNG")

    def truncated_jpeg(self, name: str = "truncated.jpg", keep: float = 0.5) -> Path:
        data = encode(textured_rgb((96, 64)), "JPEG", quality=95)
        return self.write_bytes(name, data[: int(len(data) * keep)])

    def zero_bytes(self, name: str = "empty.jpg") -> Path:
        return self.write_bytes(name, b"")

    def text_as_jpg(self, name: str = "notes.jpg") -> Path:
        return self.write_bytes(name, b"this is a shopping list, not a picture\n" * 4)

    def png_bomb(self, name: str = "bomb.png", width: int = 10_000, height: int = 10_000) -> Path:
        return self.write_bytes(name, png_bomb_bytes(width, height))

    def animated_gif(self, name: str = "anim.gif", frames: int = 3) -> Path:
        colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
        images = [Image.new("RGB", (40, 30), colours[i % len(colours)]) for i in range(frames)]
        buffer = io.BytesIO()
        images[0].save(buffer, "GIF", save_all=True, append_images=images[1:], duration=50)
        return self.write_bytes(name, buffer.getvalue())

    def multipage_tiff(self, name: str = "pages.tiff", pages: int = 3) -> Path:
        images = [Image.new("RGB", (40 + 10 * i, 30), (60 * i, 100, 200)) for i in range(pages)]
        buffer = io.BytesIO()
        images[0].save(buffer, "TIFF", save_all=True, append_images=images[1:])
        return self.write_bytes(name, buffer.getvalue())


@pytest.fixture
def image_files(tmp_path: Path) -> ImageFiles:
    """Factory for small image files (good and bad) under this test's tmp_path."""
    return ImageFiles(tmp_path / "images")


@pytest.fixture
def photo() -> Image.Image:
    """scikit-learn's china.jpg (640x427 RGB), a real photo for fidelity checks."""
    return sample_photo("china.jpg")


@pytest.fixture
def make_rgb() -> Callable[..., Image.Image]:
    """``make_rgb(size=(w, h), seed=0)`` -> deterministic textured RGB PIL image."""
    return textured_rgb


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TORCH_HOME (torch.hub.get_dir() re-reads it on every call), no DECAF_WEIGHTS."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.delenv("DECAF_WEIGHTS", raising=False)
    return home
