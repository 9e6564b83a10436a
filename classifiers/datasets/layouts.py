"""How each dataset names its classes and its official splits, read from its own files.

- Caltech-101 (``101_ObjectCategories/<class>/image_NNNN.jpg``): the class is the first folder;
  all 102 folders count, ``BACKGROUND_Google`` included (the DeCAF protocol: 101 classes plus a
  background class).
- SUN-397 (``SUN397/<letter>/<class>[/<sub>]/sun_*.jpg``): the class is the whole folder path
  below the root (``a/abbey``, ``a/apartment_building/outdoor``), as ``ClassName.txt`` lists it
  (``/a/abbey``). The official partitions ``Training_NN.txt`` / ``Testing_NN.txt`` (NN = 01..10)
  list image paths in the same form, 50 per class each.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from classifiers.datasets.errors import DatasetFileError

SUN397_PARTITIONS = 10


def class_of(dataset: str, path: str) -> str:
    """The class of an image from its path relative to the image root (POSIX separators)."""
    if dataset == "sun397":
        return posixpath.dirname(path)
    return path.split("/", 1)[0]


def classes_of(dataset: str, paths: Sequence[str]) -> list[str]:
    return [class_of(dataset, path) for path in paths]


@dataclass(frozen=True)
class Partition:
    """One official train/test partition: image paths relative to the image root."""

    number: int
    train: list[str]
    test: list[str]


def read_partition(folder: Path, number: int) -> Partition:
    """``Training_NN.txt`` and ``Testing_NN.txt`` of the SUN-397 partitions folder."""
    if not 1 <= number <= SUN397_PARTITIONS:
        raise ValueError(f"SUN-397 has partitions 1..{SUN397_PARTITIONS}, not {number}")
    lists = {}
    for kind, stem in (("train", "Training"), ("test", "Testing")):
        file = folder / f"{stem}_{number:02d}.txt"
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise DatasetFileError(
                f"cannot read the SUN-397 partition file {file} ({exc}); the Partitions folder "
                "must hold Training_01.txt ... Testing_10.txt from the official Partitions.zip"
            ) from exc
        lists[kind] = [line.strip().lstrip("/") for line in lines if line.strip()]
    return Partition(number, lists["train"], lists["test"])


def read_class_names(folder: Path) -> list[str]:
    """SUN-397's ``ClassName.txt``: ``/a/abbey`` -> ``a/abbey``."""
    file = folder / "ClassName.txt"
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DatasetFileError(f"cannot read {file} ({exc})") from exc
    return [line.strip().lstrip("/") for line in lines if line.strip()]
