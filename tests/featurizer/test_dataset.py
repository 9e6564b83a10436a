"""Image-folder scanning, the worker Dataset and the part-aligned batching."""

from __future__ import annotations

import functools
import io
import os
import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image

from featurizer.dataset import (
    DatasetError,
    ImageFileDataset,
    ImageRecord,
    PartBatchSampler,
    PathTable,
    collate_items,
    merge_batches,
    part_batches,
    scan_image_folder,
)
from featurizer.preprocess import PreprocessSpec, load_and_preprocess


def _jpeg_bytes(size: tuple[int, int] = (64, 48), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color=(10, 200, 30) if mode == "RGB" else None).save(buffer, "JPEG")
    return buffer.getvalue()


def _touch(path: Path, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_scan_sorted_with_first_level_labels(tmp_path: Path) -> None:
    for rel in ["b/2.jpg", "a/z.png", "a/sub/deep.jpg", "root.jpg", "a/1.jpg", "c/x.txt"]:
        _touch(tmp_path / rel)
    records = scan_image_folder(tmp_path)
    assert records == [
        ImageRecord("a/1.jpg", "a"),
        ImageRecord("a/sub/deep.jpg", "a"),  # nested files keep the first-level class
        ImageRecord("a/z.png", "a"),
        ImageRecord("b/2.jpg", "b"),
        ImageRecord("c/x.txt", "c"),  # content decides later, never the extension
        ImageRecord("root.jpg", None),
    ]


def test_scan_skips_hidden_files_and_folders(tmp_path: Path) -> None:
    _touch(tmp_path / "a" / "ok.jpg")
    _touch(tmp_path / "a" / ".DS_Store")
    _touch(tmp_path / ".cache" / "x.jpg")
    _touch(tmp_path / "a" / ".thumbs" / "y.jpg")
    assert [r.path for r in scan_image_folder(tmp_path)] == ["a/ok.jpg"]


def test_scan_symlinks_never_leave_the_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    _touch(root / "a" / "real.jpg")
    _touch(outside / "secret.jpg")
    os.symlink(outside / "secret.jpg", root / "a" / "escape.jpg")
    os.symlink(root / "a" / "real.jpg", root / "a" / "alias.jpg")
    os.symlink(outside, root / "linked_dir")
    paths = [r.path for r in scan_image_folder(root)]
    assert paths == ["a/alias.jpg", "a/real.jpg"]


def test_scan_missing_root_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        scan_image_folder(tmp_path / "nope")


def test_path_table_round_trips_unicode_and_pickles() -> None:
    paths = ["a/é.jpg", "b/日本.png", "", "c/x y.jpeg"]
    table = pickle.loads(pickle.dumps(PathTable(paths)))
    assert len(table) == 4
    assert [table[i] for i in range(4)] == paths


def test_dataset_returns_tensors_or_error_strings(tmp_path: Path) -> None:
    _touch(tmp_path / "good.jpg", _jpeg_bytes())
    _touch(tmp_path / "cmyk.jpg", _jpeg_bytes(mode="CMYK"))
    _touch(tmp_path / "empty.jpg", b"")
    _touch(tmp_path / "text.jpg", b"hello, not an image\n")
    _touch(tmp_path / "truncated.jpg", _jpeg_bytes()[:200])
    names = ["good.jpg", "cmyk.jpg", "empty.jpg", "text.jpg", "truncated.jpg", "missing.jpg"]
    spec = PreprocessSpec()
    dataset = ImageFileDataset(tmp_path, names, lambda p: load_and_preprocess(p, spec))
    items = [dataset[i] for i in range(len(dataset))]
    assert [i for i, _ in items] == list(range(6))
    for _, value in items[:2]:
        assert isinstance(value, torch.Tensor)
        assert value.dtype == torch.uint8 and value.shape == (3, 224, 224)
    for _, value in items[2:]:
        assert isinstance(value, str) and value.split(":")[0].endswith("Error"), value
        assert str(tmp_path) not in value  # relative paths: the store stays portable
    assert "empty" in items[2][1] or "0 bytes" in items[2][1]


def test_dataset_lets_programming_errors_propagate(tmp_path: Path) -> None:
    _touch(tmp_path / "a.jpg", _jpeg_bytes())

    def broken(_path: str) -> torch.Tensor:
        raise RuntimeError("bug in preprocessing")

    with pytest.raises(RuntimeError, match="bug"):
        ImageFileDataset(tmp_path, ["a.jpg"], broken)[0]


def test_collate_separates_errors_and_keeps_order() -> None:
    t = [torch.full((3, 4, 4), i, dtype=torch.uint8) for i in range(3)]
    batch = collate_items([(5, t[0]), (6, "ImageDecodeError: bad"), (7, t[2])])
    assert batch.indices == [5, 7]
    assert batch.errors == [(6, "ImageDecodeError: bad")]
    assert batch.images is not None and batch.images.shape == (2, 3, 4, 4)
    assert batch.images[1, 0, 0, 0] == 2
    only_errors = collate_items([(1, "OSError: x")])
    assert only_errors.images is None and only_errors.indices == []


def test_batches_never_straddle_parts_and_start_at_part_start() -> None:
    # parts of 10 records; a resumed run only does parts 1 and 3 (the last one is short).
    ranges = [(10, 20), (30, 35)]
    batches = list(part_batches(ranges, 4))
    assert batches == [[10, 11, 12, 13], [14, 15, 16, 17], [18, 19], [30, 31, 32, 33], [34]]
    sampler = PartBatchSampler(ranges, 4)
    assert len(sampler) == 5
    assert list(sampler) == batches
    assert list(sampler) == batches  # re-iterable


def test_chunks_split_model_batches_and_merge_back() -> None:
    ranges = [(0, 7)]
    sampler = PartBatchSampler(ranges, batch_size=4, chunk_size=3)
    chunks = list(sampler)
    # model batches [0..3] and [4..6], each cut into chunks of <= 3 that never mix batches
    assert chunks == [[0, 1, 2], [3], [4, 5, 6]]
    assert len(sampler) == 3
    image = torch.zeros((3, 2, 2), dtype=torch.uint8)
    decoded = [
        collate_items([(0, image), (1, "OSError: gone"), (2, image + 2)]),
        collate_items([(3, image + 3)]),
    ]
    merged = merge_batches(decoded)
    assert merged.indices == [0, 2, 3] and merged.errors == [(1, "OSError: gone")]
    assert merged.images is not None and merged.images[:, 0, 0, 0].tolist() == [0, 2, 3]
    assert len(merged) == 4
    only_errors = merge_batches([collate_items([(5, "x")]), collate_items([(6, "y")])])
    assert only_errors.images is None and len(only_errors) == 2


def test_dataset_with_the_real_loader_survives_pickling(tmp_path: Path) -> None:
    # Spawned workers (macOS, Windows) receive the dataset pickled: it must not drag a model.
    _touch(tmp_path / "a" / "x.jpg", _jpeg_bytes())
    load = functools.partial(load_and_preprocess, spec=PreprocessSpec(), crop="center")
    dataset = pickle.loads(pickle.dumps(ImageFileDataset(tmp_path, ["a/x.jpg"], load)))
    index, tensor = dataset[0]
    assert index == 0 and isinstance(tensor, torch.Tensor) and tensor.shape == (3, 224, 224)
