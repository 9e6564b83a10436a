"""Where each benchmark dataset's official files come from, as data.

A :class:`DatasetSource` lists the official files (:class:`RemoteFile`) of one dataset: URL, file
name, the checksums published for it (each :class:`Digest` names where it was published), and what
the file yields once extracted (a folder name, possibly from an archive nested inside). Everything
that downloads, verifies or extracts reads these records, so a test can hand in a record for its
own fake archives without touching the real ones.

Checksums (verified against the cited sources, Nov 2026):

- Caltech-101, ``caltech-101.zip`` on CaltechDATA (record 20086, doi:10.22002/D1.20086): md5 as
  torchvision 0.29 records it in ``torchvision/datasets/caltech.py``. No sha256 is published by
  a source we can cite. The zip nests ``caltech-101/101_ObjectCategories.tar.gz``; that inner
  archive's md5 (torchvision's ``caltech.py`` before it moved to CaltechDATA) and sha256
  (torchvision's prototype ``datasets/_builtin/caltech.py``) are checked when a user supplies the
  inner archive on its own. Out of a verified zip it is trusted as part of the zip.
- SUN-397, ``SUN397.tar.gz`` from vision.princeton.edu: md5 from torchvision 0.29
  (``torchvision/datasets/sun397.py``), sha256 from torchvision's prototype
  ``datasets/_builtin/sun397.py``. ``Partitions.zip`` (the ten official 50/50 splits): sha256
  from the same prototype module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, get_args

DigestAlgorithm = Literal["sha256", "md5"]
DIGEST_ALGORITHMS: tuple[DigestAlgorithm, ...] = get_args(DigestAlgorithm)

DatasetName = Literal["caltech101", "sun397"]
DATASET_NAMES: tuple[DatasetName, ...] = get_args(DatasetName)

TORCHVISION_029 = "torchvision 0.29 (torchvision/datasets/{module})"
TORCHVISION_PROTOTYPE = "torchvision prototype datasets (prototype/datasets/_builtin/{})"


@dataclass(frozen=True)
class Digest:
    """One published checksum of a file and where it was published."""

    algorithm: DigestAlgorithm
    hexdigest: str
    source: str

    def __post_init__(self) -> None:
        size = {"sha256": 64, "md5": 32}[self.algorithm]
        if len(self.hexdigest) != size or not all(c in "0123456789abcdef" for c in self.hexdigest):
            raise ValueError(f"{self.algorithm} digest must be {size} lowercase hex characters")


@dataclass(frozen=True)
class RemoteFile:
    """One official file: where to get it, how to check it, what it yields when extracted.

    ``yields`` is the folder the archive holds (e.g. ``101_ObjectCategories``), looked for at
    any depth of the extracted tree. ``nested`` names an archive inside this one that holds
    ``yields`` (Caltech-101's zip holds a tar.gz), with that inner archive's own digests in
    ``nested_digests`` (checked only when a user supplies the inner archive directly).
    ``marker`` is a file that must be inside ``yields`` for it to count (e.g. ``ClassName.txt``).
    ``loose``: the files may sit in a folder of any name (``Partitions.zip`` has no top folder
    we can rely on), found by ``marker``.
    """

    filename: str
    url: str
    digests: tuple[Digest, ...]
    yields: str
    nested: str | None = None
    nested_digests: tuple[Digest, ...] = ()
    marker: str | None = None
    loose: bool = False

    def __post_init__(self) -> None:
        if self.loose and self.marker is None:
            raise ValueError(f"{self.filename}: a loose folder is found by its marker; set one")
        if not self.digests:
            raise ValueError(f"{self.filename}: an official file needs at least one checksum")


@dataclass(frozen=True)
class DatasetSource:
    """One dataset: its official files and the folder (under the data root) that holds them."""

    name: str
    title: str
    folder: str  # sub-folder of the data root for downloads and extractions
    homepage: str
    files: tuple[RemoteFile, ...]
    images: str  # the ``yields`` of the file that holds the images
    approx_images: int  # for messages and time estimates (the README quotes the same numbers)

    def file_yielding(self, name: str) -> RemoteFile:
        return next(f for f in self.files if f.yields == name)


CALTECH101 = DatasetSource(
    name="caltech101",
    title="Caltech-101",
    folder="caltech101",
    homepage="https://data.caltech.edu/records/mzrjq-6wc02",
    files=(
        RemoteFile(
            filename="caltech-101.zip",
            url="https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip",
            digests=(
                Digest(
                    "md5",
                    "3138e1922a9193bfa496528edbbc45d0",
                    TORCHVISION_029.format(module="caltech.py"),
                ),
            ),
            yields="101_ObjectCategories",
            nested="101_ObjectCategories.tar.gz",
            nested_digests=(
                Digest(
                    "sha256",
                    "af6ece2f339791ca20f855943d8b55dd60892c0a25105fcd631ee3d6430f9926",
                    TORCHVISION_PROTOTYPE.format("caltech.py"),
                ),
                Digest(
                    "md5",
                    "b224c7392d521a49829488ab0f1120d9",
                    "torchvision <= 0.23 (torchvision/datasets/caltech.py)",
                ),
            ),
        ),
    ),
    images="101_ObjectCategories",
    approx_images=9146,
)

SUN397 = DatasetSource(
    name="sun397",
    title="SUN-397",
    folder="sun397",
    homepage="https://vision.princeton.edu/projects/2010/SUN/",
    files=(
        RemoteFile(
            filename="SUN397.tar.gz",
            url="http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz",
            digests=(
                Digest(
                    "sha256",
                    "f404130965a7ad77bed5ececc71e720ab50f3cc1e1bb257257610d38f3b928ec",
                    TORCHVISION_PROTOTYPE.format("sun397.py"),
                ),
                Digest(
                    "md5",
                    "8ca2778205c41d23104230ba66911c7a",
                    TORCHVISION_029.format(module="sun397.py"),
                ),
            ),
            yields="SUN397",
            marker="ClassName.txt",
        ),
        RemoteFile(
            filename="Partitions.zip",
            url="https://vision.princeton.edu/projects/2010/SUN/download/Partitions.zip",
            digests=(
                Digest(
                    "sha256",
                    "e3311ea5f812d4cc6faef194688343d1111f6cd6f70f2c62f393c2b8d6ba1ec9",
                    TORCHVISION_PROTOTYPE.format("sun397.py"),
                ),
            ),
            yields="Partitions",
            marker="Training_01.txt",
            loose=True,
        ),
    ),
    images="SUN397",
    approx_images=108754,
)

SOURCES: Mapping[str, DatasetSource] = MappingProxyType({s.name: s for s in (CALTECH101, SUN397)})
assert tuple(SOURCES) == DATASET_NAMES  # one list of names: the Literal and the records agree
