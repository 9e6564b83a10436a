"""Image-folder scanning, the worker Dataset and the part-aligned batching."""

from __future__ import annotations

import functools
import io
import os
import pickle
import socket
from pathlib import Path

import pytest
import torch
from PIL import Image

from featurizer.dataset import (
    DatasetError,
    FolderScan,
    ImageFileDataset,
    ImageRecord,
    PartBatchSampler,
    PathTable,
    collate_items,
    merge_batches,
    part_batches,
    scan_folder,
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


def _skips(scan: FolderScan) -> dict[str, str]:
    return {entry.path: entry.kind for entry in scan.skipped}


def test_scan_follows_symlinked_files_and_folders_like_image_folder(tmp_path: Path) -> None:
    """A split folder made only of links into one pool, as many datasets ship."""
    pool, root = tmp_path / "pool", tmp_path / "train"
    for rel in ["cat/1.jpg", "cat/2.jpg", "dog/3.jpg", "loose.jpg"]:
        _touch(pool / rel)
    root.mkdir()
    os.symlink(pool / "cat", root / "cat")  # a class folder that is a link
    (root / "dog").mkdir()
    os.symlink(pool / "dog" / "3.jpg", root / "dog" / "3.jpg")  # a file that is a link
    os.symlink("../pool/loose.jpg", root / "loose.jpg")  # relative link, outside the root
    scan = scan_folder(root)
    assert scan.records == [
        ImageRecord("cat/1.jpg", "cat"),
        ImageRecord("cat/2.jpg", "cat"),
        ImageRecord("dog/3.jpg", "dog"),
        ImageRecord("loose.jpg", None),
    ]
    assert scan.skipped == []
    assert torchvision_image_folder_paths(root) == ["cat/1.jpg", "cat/2.jpg", "dog/3.jpg"]


def torchvision_image_folder_paths(root: Path) -> list[str]:
    """What torchvision's ImageFolder finds (class folders only, any extension)."""
    from torchvision.datasets.folder import find_classes, make_dataset

    found = make_dataset(str(root), find_classes(str(root))[1], is_valid_file=lambda _: True)
    return sorted(Path(path).relative_to(root).as_posix() for path, _ in found)


def test_scan_records_what_it_passes_over_with_the_reason(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _touch(root / "a" / "ok.jpg")
    os.symlink(tmp_path / "gone.jpg", root / "a" / "dangling.jpg")
    os.mkfifo(root / "a" / "pipe.jpg")  # opening it would block the decoder forever
    os.symlink(root, root / "a" / "back_to_root")  # a loop through an ancestor
    os.symlink(root / "a", root / "a" / "self")
    os.symlink("ping", root / "pong.jpg")  # links pointing at each other
    os.symlink("pong.jpg", root / "ping")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(root / "a" / "sock"))
        scan = scan_folder(root)
    assert [r.path for r in scan.records] == ["a/ok.jpg"]
    assert _skips(scan) == {
        "a/back_to_root": "symlink loop",
        "a/dangling.jpg": "dangling symlink",
        "a/pipe.jpg": "FIFO",
        "a/self": "symlink loop",
        "a/sock": "socket",
        "ping": "symlink loop",
        "pong.jpg": "symlink loop",
    }
    entry = scan.skipped[1].to_error()
    assert entry == {
        "path": "a/dangling.jpg",
        "label": "a",
        "error": f"skipped (dangling symlink): link to {tmp_path / 'gone.jpg'}, which does not "
        "exist",
    }
    assert scan.skip_counts() == {"FIFO": 1, "dangling symlink": 1, "socket": 1, "symlink loop": 4}


def test_scan_without_following_links_records_each_one(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _touch(root / "a" / "real.jpg")
    os.symlink(root / "a" / "real.jpg", root / "a" / "alias.jpg")
    os.symlink(root / "a", root / "b")
    scan = scan_folder(root, follow_symlinks=False)
    assert [r.path for r in scan.records] == ["a/real.jpg"]
    assert _skips(scan) == {"a/alias.jpg": "symlink not followed", "b": "symlink not followed"}


def test_scan_with_allowed_roots_refuses_links_that_leave_them(tmp_path: Path) -> None:
    """The service: a link inside a data root must not lead out of the data roots."""
    data, secret = tmp_path / "data", tmp_path / "secret"
    _touch(data / "set" / "a" / "real.jpg")
    _touch(data / "other" / "shared.jpg")
    _touch(secret / "key.jpg")
    os.symlink(secret / "key.jpg", data / "set" / "a" / "escape.jpg")
    os.symlink(secret, data / "set" / "leak")
    os.symlink(data / "other", data / "set" / "b")  # elsewhere, but inside the data root
    scan = scan_folder(data / "set", allowed_roots=[data])
    assert [r.path for r in scan.records] == ["a/real.jpg", "b/shared.jpg"]
    assert _skips(scan) == {
        "a/escape.jpg": "symlink leaves the data roots",
        "leak": "symlink leaves the data roots",
    }
    assert [r.path for r in scan_folder(data / "set").records] == [
        "a/escape.jpg", "a/real.jpg", "b/shared.jpg", "leak/key.jpg"
    ]  # fmt: skip


def test_a_root_that_is_a_link_and_holds_only_links(tmp_path: Path) -> None:
    _touch(tmp_path / "pool" / "x" / "1.jpg")
    (tmp_path / "links").mkdir()
    os.symlink(tmp_path / "pool" / "x", tmp_path / "links" / "x")
    os.symlink(tmp_path / "links", tmp_path / "root")
    assert scan_image_folder(tmp_path / "root") == [ImageRecord("x/1.jpg", "x")]


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
