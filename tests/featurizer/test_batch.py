"""Extraction into a store (local engine) with the real (random-weight) AlexNet."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from featurizer.dataset import DatasetError
from featurizer.errors import DecafError, StoreError
from featurizer.extraction import (
    ExtractionCancelled,
    ExtractionProgress,
    ExtractionResult,
    extract_dataset,
)
from featurizer.extractor import Featurizer
from featurizer.store import (
    ERRORS_NAME,
    MANIFEST_NAME,
    FeatureStore,
    Part,
    load_features,
    read_errors,
)
from featurizer.store.parts import write_part_file

BAD_FILES = {
    "a/corrupt.jpg": "truncated JPEG",
    "b/empty.jpg": "zero bytes",
    "c/notes.jpg": "text named .jpg",
}


def _image_bytes(seed: int, fmt: str, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def part_files(store: Path) -> list[Path]:
    return sorted(store.glob("part-*.parquet"))


def build_dataset(root: Path, per_class: int = 4) -> list[str]:
    """Classes a/b/c of JPEG+PNG, one unlabeled root file, a CMYK JPEG and three bad files.

    Returns the relative paths of the good files in sorted order.
    """
    good: list[str] = []
    for c, label in enumerate("abc"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            fmt = "JPEG" if i % 2 else "PNG"
            rel = f"{label}/img{i:02d}.{fmt.lower()}"
            (root / rel).write_bytes(_image_bytes(10 * c + i, fmt))
            good.append(rel)
    (root / "root.jpg").write_bytes(_image_bytes(99, "JPEG"))
    (root / "b" / "cmyk.jpg").write_bytes(_image_bytes(77, "JPEG", mode="CMYK"))
    good += ["root.jpg", "b/cmyk.jpg"]
    (root / "a/corrupt.jpg").write_bytes(_image_bytes(5, "JPEG")[:300])
    (root / "b/empty.jpg").write_bytes(b"")
    (root / "c/notes.jpg").write_text("this is not an image\n")
    return sorted(good)


@pytest.fixture(scope="module")
def featurizer() -> Featurizer:
    with pytest.warns(UserWarning, match="RANDOM"):
        return Featurizer(layers=("decaf6", "decaf7"), weights="random")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("images")
    return root, build_dataset(root)


# One configuration for the shared clean store and every run compared with it.
RUN = {"batch_size": 4, "part_size": 4}


@pytest.fixture(scope="module")
def clean_store(
    featurizer: Featurizer,
    dataset: tuple[Path, list[str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, ExtractionResult, list[ExtractionProgress]]:
    root, _ = dataset
    out = tmp_path_factory.mktemp("clean") / "store"
    seen: list[ExtractionProgress] = []
    result = extract_dataset(
        root, out, featurizer=featurizer, workers=2, progress=seen.append, **RUN
    )
    return out, result, seen


def test_bad_files_are_listed_and_good_ones_extracted(
    featurizer: Featurizer, dataset: tuple[Path, list[str]], clean_store
) -> None:
    root, good = dataset
    out, result, seen = clean_store
    assert result.num_images == len(good) == 14
    assert result.num_errors == 3 and result.resumed_parts == 0

    errors = read_errors(out)
    assert [e["path"] for e in errors] == sorted(BAD_FILES)
    assert all(e["error"].startswith("ImageDecodeError") for e in errors), errors
    assert [e["label"] for e in errors] == ["a", "b", "c"]

    X, y, paths = load_features(out, "decaf7")
    assert paths == good  # CMYK is a good image; the order is sorted paths
    assert list(y) == [None if p == "root.jpg" else p.split("/")[0] for p in good]
    reference = featurizer.extract([str(root / p) for p in good], batch_size=7)
    np.testing.assert_allclose(X, reference["decaf7"], rtol=1e-5, atol=1e-5)
    X6, _, _ = load_features(out, "decaf6")
    np.testing.assert_allclose(X6, reference["decaf6"], rtol=1e-5, atol=1e-5)

    manifest = FeatureStore.open(out).manifest
    assert manifest.complete is True and manifest.format_version == 2
    assert manifest.classes == ("a", "b", "c")
    assert manifest.layers == {"decaf6": 4096, "decaf7": 4096}
    assert manifest.weights_id == "random" and manifest.dtype == "float32"
    assert manifest.backbone == "alexnet" and manifest.engine == "local"
    assert manifest.num_images == 14 and manifest.num_errors == 3
    assert [p.rows + p.errors for p in manifest.parts] == [4, 4, 4, 4, 1]
    assert manifest.source_root == str(root.resolve())
    assert manifest.batch_size == 4 and manifest.device == "cpu" and manifest.ray is None
    assert result.manifest == manifest

    # progress: starts at 0, never goes back, ends at every file handled
    dones = [p.done for p in seen]
    assert dones[0] == 0 and dones == sorted(dones) and dones[-1] == 17
    assert seen[-1].errors == 3 and seen[-1].total == 17 and seen[-1].eta_s == 0


def test_decoding_in_the_main_process_gives_the_same_store(
    featurizer: Featurizer, dataset: tuple[Path, list[str]], clean_store, tmp_path: Path
) -> None:
    root, _ = dataset
    clean, _, _ = clean_store
    extract_dataset(root, tmp_path / "w0", featurizer=featurizer, workers=0, **RUN)
    for part in part_files(clean):
        assert pq.read_table(tmp_path / "w0" / part.name).equals(pq.read_table(part))


def test_cancel_then_resume_equals_clean_run(
    featurizer: Featurizer, dataset: tuple[Path, list[str]], clean_store, tmp_path: Path
) -> None:
    root, _ = dataset
    clean, clean_result, _ = clean_store
    calls = iter(range(100))
    cut = tmp_path / "cut"
    with pytest.raises(ExtractionCancelled, match="resumes"):
        # stop after the 3rd batch (batch == part here): parts 0-2 written
        extract_dataset(
            root, cut, featurizer=featurizer, workers=1, should_stop=lambda: next(calls) >= 2, **RUN
        )
    assert json.loads((cut / MANIFEST_NAME).read_text())["complete"] is False
    assert len(part_files(cut)) == 3
    with pytest.raises(StoreError, match="incomplete"):
        load_features(cut, "decaf6")

    resumed = extract_dataset(root, cut, featurizer=featurizer, workers=1, **RUN)
    assert resumed.resumed_parts == 3 and resumed.num_images == clean_result.num_images
    for part in part_files(clean):
        assert (cut / part.name).read_bytes() == part.read_bytes()
    assert (cut / ERRORS_NAME).read_bytes() == (clean / ERRORS_NAME).read_bytes()

    again = extract_dataset(root, cut, featurizer=featurizer, **RUN)  # complete: nothing to do
    assert again.resumed_parts == 5
    assert again.manifest.finished_at == resumed.manifest.finished_at


@pytest.mark.parametrize(
    ("key", "value"),
    [("layers", {"decaf7": 4096}), ("precision", "bf16"), ("weights_sha256", "0" * 64)],
)
def test_config_mismatch_refused(
    featurizer: Featurizer, dataset: tuple[Path, list[str]], clean_store, tmp_path: Path,
    key: str, value: object,
) -> None:  # fmt: skip
    root, _ = dataset
    out = tmp_path / "store"
    shutil.copytree(clean_store[0], out)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    manifest[key] = value
    manifest["complete"] = False
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=rf"cannot resume.*{key}.*--overwrite"):
        extract_dataset(root, out, featurizer=featurizer, **RUN)


def test_other_part_size_refused_and_overwrite_replaces(
    featurizer: Featurizer, dataset: tuple[Path, list[str]], clean_store, tmp_path: Path
) -> None:
    root, _ = dataset
    out = tmp_path / "store"
    shutil.copytree(clean_store[0], out)
    with pytest.raises(StoreError, match=r"part_size.*--overwrite"):
        extract_dataset(root, out, featurizer=featurizer, part_size=16)
    result = extract_dataset(root, out, featurizer=featurizer, part_size=16, overwrite=True)
    assert result.resumed_parts == 0 and result.num_images == 14
    assert [p.name for p in part_files(out)] == [
        "part-00000.parquet",
        "part-00001.parquet",
    ]


def test_parts_without_manifest_or_foreign_parts_refused(
    featurizer: Featurizer, dataset: tuple[Path, list[str]], clean_store, tmp_path: Path
) -> None:
    root, _ = dataset
    out = tmp_path / "store"
    shutil.copytree(clean_store[0], out)
    (out / MANIFEST_NAME).unlink()
    with pytest.raises(StoreError, match=r"no _manifest\.json.*--overwrite"):
        extract_dataset(root, out, featurizer=featurizer, **RUN)
    shutil.rmtree(out)
    shutil.copytree(clean_store[0], out)
    # a part written under another configuration (e.g. copied in from another store)
    empty = {name: np.zeros((0, 4096), np.float32) for name in ("decaf6", "decaf7")}
    write_part_file(
        out, Part(1, [], [], empty, []), layers={"decaf6": 4096, "decaf7": 4096},
        config_sha256="other",
    )  # fmt: skip
    with pytest.raises(StoreError, match="different configuration"):
        extract_dataset(root, out, featurizer=featurizer, **RUN)


def test_changed_file_list_refuses_resume(tmp_path: Path, featurizer: Featurizer) -> None:
    root = tmp_path / "imgs"
    (root / "x").mkdir(parents=True)
    for i in range(3):
        (root / "x" / f"{i}.png").write_bytes(_image_bytes(i, "PNG"))
    out = tmp_path / "store"
    extract_dataset(root, out, featurizer=featurizer, workers=0)
    (root / "x" / "3.png").write_bytes(_image_bytes(3, "PNG"))
    with pytest.raises(StoreError, match="files"):
        extract_dataset(root, out, featurizer=featurizer, workers=0)


def test_store_inside_image_folder_refused(tmp_path: Path, featurizer: Featurizer) -> None:
    (tmp_path / "a").mkdir()
    with pytest.raises(DatasetError, match="inside the image folder"):
        extract_dataset(tmp_path, tmp_path / "store", featurizer=featurizer)
    with pytest.raises(DatasetError, match="no files"):
        extract_dataset(tmp_path / "a", tmp_path / "store", featurizer=featurizer)


def test_backbone_and_its_default_layers_are_recorded(dataset, tmp_path: Path) -> None:
    """No featurizer given: extract_dataset builds one from backbone/layers/weights."""
    root, good = dataset
    with pytest.warns(UserWarning, match="RANDOM"):
        result = extract_dataset(
            root, tmp_path / "s", backbone="alexnet", weights="random", workers=0, part_size=32
        )
    assert result.num_images == len(good)
    manifest = FeatureStore.open(tmp_path / "s").manifest
    assert manifest.backbone == "alexnet"
    assert manifest.layers == {"decaf6": 4096, "decaf7": 4096}  # the backbone's defaults


def test_unknown_backbone_is_a_clear_error(dataset, tmp_path: Path) -> None:
    root, _ = dataset
    with pytest.raises(DecafError, match=r"'lenet'.*alexnet"):
        extract_dataset(root, tmp_path / "s", backbone="lenet", weights="random")
    assert not (tmp_path / "s").exists()


def test_options_that_do_not_fit_the_engine_are_refused(
    featurizer: Featurizer, dataset, tmp_path: Path
) -> None:
    from featurizer.engines.ray import RayOptions

    root, _ = dataset
    with pytest.raises(ValueError, match="featurizer= is for the local engine"):
        extract_dataset(root, tmp_path / "s", featurizer=featurizer, engine="ray")
    with pytest.raises(ValueError, match="need engine='ray'"):
        extract_dataset(root, tmp_path / "s", featurizer=featurizer, ray=RayOptions())
    with pytest.raises(ValueError, match="engine must be one of local, ray"):
        extract_dataset(root, tmp_path / "s", featurizer=featurizer, engine="spark")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        extract_dataset(root, tmp_path / "s", featurizer=featurizer, batch_size=0)
    assert not (tmp_path / "s").exists()
