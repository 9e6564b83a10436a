"""Image folders: deterministic scanning and a worker-friendly torch Dataset.

An image folder is ImageFolder-style: ``ROOT/<class>/.../<file>`` gives the label ``<class>``;
files directly in ``ROOT`` have no label (``None``). Every regular, non-hidden file counts: the
content decides what is an image, so an unreadable file becomes an ``errors.jsonl`` entry at
extraction time instead of silently disappearing because of its extension.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from featurizer.errors import DecafError

LoadFn = Callable[[str], torch.Tensor]
# What a worker returns for one file: its index and either the tensor or why it failed.
Item = tuple[int, "torch.Tensor | str"]


class DatasetError(DecafError, ValueError):
    """The image folder is missing, empty or unusable as a dataset."""


@dataclass(frozen=True)
class ImageRecord:
    path: str  # POSIX path relative to the root
    label: str | None  # first-level sub-folder name, None for files directly in the root


def scan_image_folder(root: str | Path) -> list[ImageRecord]:
    """List every regular, non-hidden file below ``root``, sorted by relative path.

    Symlinked directories are not descended into (no loops, no escaping the root); a symlinked
    file is kept only when it resolves to a regular file inside the root.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise DatasetError(f"image folder not found or not a directory: {root_path}")
    real_root = os.path.realpath(root_path)
    records: list[ImageRecord] = []
    for dirpath, dirnames, filenames in os.walk(root_path, followlinks=False):
        # Pruning in place stops os.walk from entering hidden folders at all.
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            full = os.path.join(dirpath, name)
            if not _is_regular_file_inside(full, real_root):
                continue
            rel = Path(os.path.relpath(full, root_path)).as_posix()
            records.append(ImageRecord(path=rel, label=_label_of(rel)))
    records.sort(key=lambda r: r.path)
    return records


def _label_of(rel_path: str) -> str | None:
    head, sep, _ = rel_path.partition("/")
    return head if sep else None


def _is_regular_file_inside(path: str, real_root: str) -> bool:
    if not os.path.islink(path):
        return os.path.isfile(path)
    target = os.path.realpath(path)
    inside = os.path.commonpath([target, real_root]) == real_root
    return inside and os.path.isfile(target)


class PathTable:
    """Relative paths packed into one bytes buffer + offsets.

    DataLoader workers are forked; touching a Python list of a million strings in a child
    bumps refcounts and copies every page (memory grows with the dataset). Two numpy
    buffers are never written to, so they stay shared.
    """

    def __init__(self, paths: Sequence[str]) -> None:
        encoded = [p.encode("utf-8") for p in paths]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._data = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> str:
        start, end = self._offsets[index], self._offsets[index + 1]
        return self._data[start:end].tobytes().decode("utf-8")


class ImageFileDataset(Dataset):
    """``dataset[i] -> (i, uint8 tensor)`` or ``(i, "ErrorType: reason")`` for an unreadable file.

    ``load`` turns an absolute path into the model's uint8 input (``load_and_preprocess`` bound
    to a preprocessing config); it must be picklable when workers use the spawn start method.
    """

    def __init__(self, root: str | Path, paths: Sequence[str], load: LoadFn) -> None:
        self.root = str(root)
        self.paths = PathTable(paths)
        self.load = load

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Item:
        relative = self.paths[index]
        path = os.path.join(self.root, relative)
        try:
            return index, self.load(path)
        except (DecafError, OSError) as exc:
            # Decode problems and unreadable files are data, not crashes: report and move on.
            # Anything else is a bug and propagates. The relative path keeps the store portable.
            return index, f"{type(exc).__name__}: {exc}".replace(path, relative)


@dataclass
class CollatedBatch:
    indices: list[int]  # dataset indices of the rows of `images`
    images: torch.Tensor | None  # stacked uint8 tensors, None when every file failed
    errors: list[tuple[int, str]]  # (dataset index, reason)

    def __len__(self) -> int:
        """Files handled (good + failed)."""
        return len(self.indices) + len(self.errors)

    def pin_memory(self) -> CollatedBatch:
        """Called by DataLoader(pin_memory=True): page-locked images copy faster to a GPU."""
        images = None if self.images is None else self.images.pin_memory()
        return CollatedBatch(self.indices, images, self.errors)


def merge_batches(chunks: Sequence[CollatedBatch]) -> CollatedBatch:
    """Concatenate consecutive decoded chunks into one model batch (order kept)."""
    if len(chunks) == 1:
        return chunks[0]
    tensors = [c.images for c in chunks if c.images is not None]
    return CollatedBatch(
        indices=[i for c in chunks for i in c.indices],
        images=torch.cat(tensors) if tensors else None,
        errors=[e for c in chunks for e in c.errors],
    )


def collate_items(items: Sequence[Item]) -> CollatedBatch:
    """Separate good tensors (stacked) from failures, keeping dataset order."""
    good = [(i, x) for i, x in items if isinstance(x, torch.Tensor)]
    errors = [(i, x) for i, x in items if isinstance(x, str)]
    images = torch.stack([x for _, x in good]) if good else None
    return CollatedBatch(indices=[i for i, _ in good], images=images, errors=errors)


def part_batches(part_ranges: Sequence[tuple[int, int]], batch_size: int) -> Iterator[list[int]]:
    """Batches of dataset indices that never straddle a part and start at the part's start.

    Batch composition then depends only on (part, batch_size), so a resumed run feeds the
    model exactly the same batches as an uninterrupted one (identical float results).
    """
    for start, end in part_ranges:
        for lo in range(start, end, batch_size):
            yield list(range(lo, min(lo + batch_size, end)))


class PartBatchSampler:
    """A re-iterable sampler of decode chunks (for ``DataLoader(batch_sampler=)``).

    Each model batch of :func:`part_batches` is cut into chunks of ``chunk_size`` files: the
    DataLoader gives a whole sampler item to one worker, so smaller chunks let several workers
    decode the same model batch (the first batch arrives sooner, work is spread evenly). The
    caller glues the chunks back with :func:`merge_batches`, so model batches are unchanged.
    """

    def __init__(
        self, part_ranges: Sequence[tuple[int, int]], batch_size: int, chunk_size: int | None = None
    ) -> None:
        self.part_ranges = list(part_ranges)
        self.batch_size = batch_size
        self.chunk_size = chunk_size or batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for batch in part_batches(self.part_ranges, self.batch_size):
            for lo in range(0, len(batch), self.chunk_size):
                yield batch[lo : lo + self.chunk_size]

    def __len__(self) -> int:
        return sum(
            -(-len(batch) // self.chunk_size)
            for batch in part_batches(self.part_ranges, self.batch_size)
        )


def init_worker(_worker_id: int) -> None:
    """One intra-op thread per decode worker: parallelism comes from the processes."""
    torch.set_num_threads(1)
