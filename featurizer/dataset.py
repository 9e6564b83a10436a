"""Image folders: deterministic scanning and a worker-friendly torch Dataset.

An image folder is ImageFolder-style: ``ROOT/<class>/.../<file>`` gives the label ``<class>``;
files directly in ``ROOT`` have no label (``None``). Every regular, non-hidden file counts: the
content decides what is an image, so an unreadable file becomes an ``_errors.jsonl`` entry at
extraction time instead of silently disappearing because of its extension.

Symbolic links are followed, files and folders alike, as torchvision's ``ImageFolder`` does
(``os.walk(followlinks=True)``): many datasets are trees of links (split folders pointing into
one pool of images). A link back to a folder being scanned (a loop) is not entered. Everything
the scan passes over besides hidden names (``.*``) is a :class:`SkippedEntry` with its reason,
which the store lists in ``_errors.jsonl``: dangling links, loops, FIFOs, sockets and devices
(opening a FIFO would block the reader forever), unreadable folders, links leaving the allowed
roots (the service) and, with ``follow_symlinks=False``, every link.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from featurizer.errors import DecafError
from featurizer.store.manifest import ErrorEntry

LoadFn = Callable[[str], torch.Tensor]
# What a worker returns for one file: its index and either the tensor or why it failed.
Item = tuple[int, "torch.Tensor | str"]


class DatasetError(DecafError, ValueError):
    """The image folder is missing, empty or unusable as a dataset."""


@dataclass(frozen=True)
class ImageRecord:
    path: str  # POSIX path relative to the root
    label: str | None  # first-level sub-folder name, None for files directly in the root


@dataclass(frozen=True)
class SkippedEntry:
    """Something below the root that is not a file to extract, and why."""

    path: str  # POSIX path relative to the root
    label: str | None
    kind: str  # short reason, counted in summaries: "dangling symlink", "FIFO", ...
    detail: str

    def to_error(self) -> ErrorEntry:
        """The ``_errors.jsonl`` entry (``{"path", "label", "error"}``) of this entry."""
        error = f"skipped ({self.kind}): {self.detail}"
        return {"path": self.path, "label": self.label, "error": error}


@dataclass(frozen=True)
class FolderScan:
    records: list[ImageRecord]  # sorted by path
    skipped: list[SkippedEntry] = field(default_factory=list)  # sorted by path

    def skip_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for entry in self.skipped:
            counts[entry.kind] = counts.get(entry.kind, 0) + 1
        return dict(sorted(counts.items()))


_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


def scan_image_folder(
    root: str | Path,
    *,
    follow_symlinks: bool = True,
    allowed_roots: Sequence[str | Path] | None = None,
) -> list[ImageRecord]:
    """The files :func:`scan_folder` finds, without the entries it passed over."""
    return scan_folder(root, follow_symlinks=follow_symlinks, allowed_roots=allowed_roots).records


def scan_folder(
    root: str | Path,
    *,
    follow_symlinks: bool = True,
    allowed_roots: Sequence[str | Path] | None = None,
) -> FolderScan:
    """Every regular, non-hidden file below ``root`` (sorted by relative path), and every entry
    passed over with its reason.

    ``follow_symlinks=False`` skips every symbolic link (each one recorded). ``allowed_roots``
    (the service's data roots): a link whose target lies outside all of them is skipped.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise DatasetError(f"image folder not found or not a directory: {root_path}")
    walk = _Walk(follow_symlinks, allowed_roots)
    try:
        walk.folder(str(root_path), "", (os.path.realpath(root_path),))
    except OSError as exc:
        raise DatasetError(f"cannot read the image folder {root_path}: {exc.strerror}") from exc
    walk.records.sort(key=lambda r: r.path)
    walk.skipped.sort(key=lambda s: s.path)
    return FolderScan(walk.records, walk.skipped)


class _Walk:
    """Depth-first scan with an explicit stack (no recursion limit on deep trees)."""

    def __init__(self, follow: bool, allowed_roots: Sequence[str | Path] | None) -> None:
        self.follow = follow
        self.allowed = (
            None if allowed_roots is None else [os.path.realpath(r) for r in allowed_roots]
        )
        self.records: list[ImageRecord] = []
        self.skipped: list[SkippedEntry] = []

    def folder(self, path: str, rel: str, ancestors: tuple[str, ...]) -> None:
        # ancestors: real paths of the folders from the root down to this one (loop guard).
        stack = [(path, rel, ancestors)]
        first = True
        while stack:
            path, rel, ancestors = stack.pop()
            try:
                with os.scandir(path) as listing:
                    entries = sorted(listing, key=lambda e: e.name)
            except OSError as exc:
                if first:
                    raise
                self._skip(rel, "unreadable folder", f"cannot list it: {exc.strerror or exc}")
                continue
            first = False
            for entry in entries:
                if entry.name.startswith("."):
                    continue  # hidden: .DS_Store, .git, our own temporary files
                child = f"{rel}/{entry.name}" if rel else entry.name
                found = self._entry(entry, child, ancestors)
                if found is not None:
                    stack.append((entry.path, child, (*ancestors, found)))

    def _entry(self, entry: os.DirEntry[str], rel: str, ancestors: tuple[str, ...]) -> str | None:
        """Record a file or a skip; a folder to enter is returned as its real path."""
        try:
            if entry.is_symlink():
                return self._link(entry, rel, ancestors)
            if entry.is_dir(follow_symlinks=False):
                return os.path.join(ancestors[-1], entry.name)
            mode = entry.stat(follow_symlinks=False).st_mode
        except OSError as exc:
            self._skip(rel, "unreadable", f"cannot stat it: {exc.strerror or exc}")
            return None
        return self._file_or_special(mode, rel, "")

    def _link(self, entry: os.DirEntry[str], rel: str, ancestors: tuple[str, ...]) -> str | None:
        target = os.readlink(entry.path)
        if not self.follow:
            self._skip(rel, "symlink not followed", f"link to {target} (--no-follow-symlinks)")
            return None
        real = os.path.realpath(entry.path)
        try:
            mode = os.stat(entry.path).st_mode
        except FileNotFoundError:
            self._skip(rel, "dangling symlink", f"link to {target}, which does not exist")
            return None
        except OSError as exc:  # ELOOP: links pointing at each other
            self._skip(rel, "symlink loop", f"link to {target}: {exc.strerror or exc}")
            return None
        if self.allowed is not None and not any(_inside(real, r) for r in self.allowed):
            self._skip(rel, "symlink leaves the data roots", f"link to {real}")
            return None
        if stat.S_ISDIR(mode):
            if real in ancestors:
                self._skip(rel, "symlink loop", f"link to {target}, a folder that contains it")
                return None
            return real
        return self._file_or_special(mode, rel, f"link to {target}: ")

    def _file_or_special(self, mode: int, rel: str, prefix: str) -> None:
        if stat.S_ISREG(mode):
            self.records.append(ImageRecord(path=rel, label=_label_of(rel)))
            return None
        kind = next((name for test, name in _SPECIAL_KINDS if test(mode)), "not a regular file")
        self._skip(rel, kind, f"{prefix}not a regular file")
        return None

    def _skip(self, rel: str, kind: str, detail: str) -> None:
        self.skipped.append(SkippedEntry(rel, _label_of(rel), kind, detail))


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def _label_of(rel_path: str) -> str | None:
    head, sep, _ = rel_path.partition("/")
    return head if sep else None


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
