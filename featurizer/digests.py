"""File digests: sha256 (the identity of every file decaf reads) and sha1 (what Caffe's model zoo
publishes), computed in one read."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["digests_of_file", "sha256_of_file"]


def digests_of_file(path: Path, chunk_size: int = 1 << 20) -> tuple[str, str]:
    """(sha256, sha1) of a file in one read: sha256 is our identity, sha1 what Caffe's model zoo
    publishes."""
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            sha256.update(chunk)
            sha1.update(chunk)
    return sha256.hexdigest(), sha1.hexdigest()


def sha256_of_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
