"""Small fake copies of the official distributions, in their real layouts, and a local HTTP
server that serves them with Range support (and can cut a transfer short on purpose)."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from classifiers.datasets.sources import DatasetSource, Digest, RemoteFile


def jpeg_bytes(seed: int, size: int = 64) -> bytes:
    """A small real JPEG whose colour depends on the seed's class, with noise per image."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def caltech_tree(root: Path, classes: dict[str, int], size: int = 64) -> Path:
    """``root/101_ObjectCategories/<class>/image_NNNN.jpg``, class colours apart (learnable)."""
    images = root / "101_ObjectCategories"
    for c, (name, count) in enumerate(sorted(classes.items())):
        folder = images / name
        folder.mkdir(parents=True)
        for i in range(1, count + 1):
            (folder / f"image_{i:04d}.jpg").write_bytes(_class_jpeg(c, i, size))
    return images


def _class_jpeg(class_index: int, i: int, size: int) -> bytes:
    rng = np.random.default_rng(1000 * class_index + i)
    base = np.zeros((size, size, 3), dtype=np.float32)
    base[..., class_index % 3] = 200.0  # each class its own dominant channel / pattern
    base[: size // 2, :, (class_index + 1) % 3] += 40.0 * (class_index // 3)
    pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        for name, data in members.items():
            zipped.writestr(name, data)
    return buffer.getvalue()


def caltech_members(classes: dict[str, int]) -> dict[str, bytes]:
    return {
        f"101_ObjectCategories/{name}/image_{i:04d}.jpg": jpeg_bytes(100 * c + i)
        for c, (name, count) in enumerate(sorted(classes.items()))
        for i in range(1, count + 1)
    }


def caltech_zip(classes: dict[str, int]) -> tuple[bytes, bytes]:
    """(``caltech-101.zip``, its inner ``101_ObjectCategories.tar.gz``) as CaltechDATA nests."""
    inner = tar_gz(caltech_members(classes))
    outer = zip_bytes(
        {
            "caltech-101/101_ObjectCategories.tar.gz": inner,
            "caltech-101/Annotations.tar": b"not needed here",
            "caltech-101/show_annotation.m": b"% matlab",
        }
    )
    return outer, inner


SUN_CLASSES = ("a/abbey", "b/bakery/shop", "c/campus")


def sun_archives(per_class: int = 4) -> tuple[bytes, bytes]:
    """(``SUN397.tar.gz``, ``Partitions.zip``): two partitions of per_class/2 train and test."""
    members = {
        "SUN397/ClassName.txt": "".join(f"/{c}\n" for c in SUN_CLASSES).encode(),
        "SUN397/README.txt": b"SUN397 fake",
    }
    names = {
        c: [f"{c}/sun_{c.replace('/', '')}{i:03d}.jpg" for i in range(per_class)]
        for c in SUN_CLASSES
    }
    for c_index, c in enumerate(SUN_CLASSES):
        for i, path in enumerate(names[c]):
            members[f"SUN397/{path}"] = _class_jpeg(c_index, i, 64)
    half = per_class // 2
    partitions = {"Partitions/ClassName.txt": members["SUN397/ClassName.txt"]}
    for number in (1, 2):
        rotated = {c: names[c][number - 1 :] + names[c][: number - 1] for c in SUN_CLASSES}
        train = "".join(f"/{p}\n" for c in SUN_CLASSES for p in rotated[c][:half])
        test = "".join(f"/{p}\n" for c in SUN_CLASSES for p in rotated[c][half:])
        partitions[f"Partitions/Training_{number:02d}.txt"] = train.encode()
        partitions[f"Partitions/Testing_{number:02d}.txt"] = test.encode()
    return tar_gz(members), zip_bytes(partitions)


def sha256(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest(), "the test that made it")


def caltech_source(base_url: str, outer: bytes, inner: bytes) -> DatasetSource:
    """A Caltech-101 record whose URL and checksums are those of the test's fake archives."""
    return DatasetSource(
        name="caltech101",
        title="Caltech-101 (test copy)",
        folder="caltech101",
        homepage=base_url,
        files=(
            RemoteFile(
                filename="caltech-101.zip",
                url=f"{base_url}/caltech-101.zip",
                digests=(sha256(outer),),
                yields="101_ObjectCategories",
                nested="101_ObjectCategories.tar.gz",
                nested_digests=(sha256(inner),),
            ),
        ),
        images="101_ObjectCategories",
        approx_images=0,
    )


def sun_source(base_url: str, images: bytes, partitions: bytes) -> DatasetSource:
    return DatasetSource(
        name="sun397",
        title="SUN-397 (test copy)",
        folder="sun397",
        homepage=base_url,
        files=(
            RemoteFile(
                "SUN397.tar.gz",
                f"{base_url}/SUN397.tar.gz",
                (sha256(images),),
                yields="SUN397",
                marker="ClassName.txt",
            ),
            RemoteFile(
                "Partitions.zip",
                f"{base_url}/Partitions.zip",
                (sha256(partitions),),
                yields="Partitions",
                marker="Training_01.txt",
                loose=True,
            ),
        ),
        images="SUN397",
        approx_images=0,
    )


@dataclass
class FileServer:
    """What the test server serves and what it saw."""

    base_url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    cut_after: dict[str, int] = field(default_factory=dict)  # first GET stops after N bytes
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range)
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextmanager
def serve(files: dict[str, bytes]) -> Iterator[FileServer]:
    """A threaded HTTP server on 127.0.0.1 (port 0) serving ``files`` with Range support."""
    state = FileServer(files=dict(files))

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            name = self.path.lstrip("/")
            with state.lock:
                state.requests.append((name, self.headers.get("Range")))
                cut = state.cut_after.pop(name, None)
            data = state.files.get(name)
            if data is None:
                self.send_error(404)
                return
            start = _range_start(self.headers.get("Range"))
            if start is not None and start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = data if start is None else data[start:]
            self.send_response(200 if start is None else 206)
            if start is not None:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if cut is not None:  # announce everything, send part, hang up
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _range_start(header: str | None) -> int | None:
    if not header or not header.startswith("bytes="):
        return None
    return int(header[len("bytes=") :].split("-", 1)[0])
