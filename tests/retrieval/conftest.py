"""Fixtures of the retrieval tests: one store of real photo crops, extracted once per session
with a random-weight AlexNet (decaf5 and decaf7, parts of 8 rows so every read is streamed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.retrieval.photos import write_photo_folder

LAYERS = ("decaf5", "decaf7")


@pytest.fixture(scope="session")
def photo_store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from featurizer.extraction import extract_dataset
    from featurizer.extractor import Featurizer

    base = tmp_path_factory.mktemp("retrieval")
    images = base / "images"
    write_photo_folder(images)
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        featurizer = Featurizer(list(LAYERS), weights="random", device="cpu")
    extract_dataset(images, base / "store", featurizer=featurizer, part_size=8, workers=1)
    return base


@pytest.fixture
def photo_store(photo_store_template: Path, tmp_path: Path) -> Path:
    """A private copy of the photo store (tests build, corrupt and change indexes)."""
    shutil.copytree(photo_store_template / "images", tmp_path / "images")
    shutil.copytree(photo_store_template / "store", tmp_path / "store")
    return tmp_path / "store"
