"""Train/test splits of the evaluation protocols, as splitter objects with ``.split(y, paths)``.

All random splitters are seeded and reproducible; splits are sorted index arrays into the rows.

* :class:`PerClassSplitter`: per class, ``n_train`` random training images and the following
  images as test images, capped at ``max_test`` per class; ``n_splits`` random splits. With
  ``reserve`` > ``n_train`` the test images start after position ``reserve`` of the class's
  shuffle, so training sets of several sizes share one test set (few-shot curves).
* :class:`StratifiedSplitter`: per class, round(``train_fraction`` * count) training images (at
  least one, leaving at least one for test), the rest test.
* :class:`PredefinedSplitter`: a split file lists train/test paths, e.g. the official split files.
  JSON: ``{"train": [...], "test": [...]}`` or
  ``{"splits": [{"train": [...], "test": [...]}, ...]}``;
  text: one ``train PATH`` or ``test PATH`` per line (``#`` comments and blank lines ignored).

Rule for small classes (documented, tested): a class with fewer than ``reserve + 1`` images
trains on all but one image and tests on that one, with a warning; a class with a single image
cannot be both trained and tested and is dropped, with a warning. Unlabelled rows (label
``None``) are ignored by the random splitters and refused by the predefined one.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from classifiers.data import labelled_mask
from classifiers.errors import ProbeError

# (size of a class) -> (end of its training slice, start and end of its test slice) in its shuffle
Cut = Callable[[int], tuple[int, int, int | None]]


@dataclass(frozen=True)
class Split:
    """Row indices of one train/test split (disjoint, sorted)."""

    train: np.ndarray
    test: np.ndarray


class SplitPlan(NamedTuple):
    """The splits of one protocol run and the notes (warnings) about the data it met."""

    splits: list[Split]
    notes: list[str]


@dataclass(frozen=True)
class PerClassSplitter:
    """``n_train`` random training images per class, the next ones (at most ``max_test``) test."""

    n_train: int
    max_test: int | None = None
    n_splits: int = 5
    seed: int = 0
    reserve: int | None = None

    def __post_init__(self) -> None:
        _check_at_least("n_train", self.n_train, 1)
        _check_at_least("n_splits", self.n_splits, 1)
        if self.max_test is not None:
            _check_at_least("max_test", self.max_test, 1)
        if self.reserve is not None:
            _check_at_least("reserve", self.reserve, self.n_train)

    def split(self, y: Sequence[Any] | np.ndarray, paths: Sequence[str] | None = None) -> SplitPlan:
        reserve = self.n_train if self.reserve is None else self.reserve

        def cut(size: int) -> tuple[int, int, int | None]:
            start = min(reserve, size - 1)
            stop = None if self.max_test is None else start + self.max_test
            return min(self.n_train, start), start, stop

        return _random_splits(y, n_splits=self.n_splits, seed=self.seed, reserve=reserve, cut=cut)


@dataclass(frozen=True)
class StratifiedSplitter:
    """round(``train_fraction`` * count) training images per class (at least 1, leaving 1)."""

    train_fraction: float = 0.5
    n_splits: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.train_fraction < 1.0:
            raise ProbeError(f"train_fraction must be in (0, 1), got {self.train_fraction}")
        _check_at_least("n_splits", self.n_splits, 1)

    def split(self, y: Sequence[Any] | np.ndarray, paths: Sequence[str] | None = None) -> SplitPlan:
        def cut(size: int) -> tuple[int, int, int | None]:
            k = min(max(1, round(self.train_fraction * size)), size - 1)
            return k, k, None

        return _random_splits(y, n_splits=self.n_splits, seed=self.seed, reserve=1, cut=cut)


@dataclass(frozen=True)
class PredefinedSplitter:
    """The train/test paths of a split file, mapped onto rows by path."""

    split_file: str | Path

    def split(self, y: Sequence[Any] | np.ndarray, paths: Sequence[str] | None = None) -> SplitPlan:
        if paths is None:
            raise ProbeError(
                "a predefined split maps the split file's paths onto rows: pass the rows' paths"
            )
        labelled = labelled_mask(y)
        index = {str(p): i for i, p in enumerate(paths)}
        return SplitPlan(
            [
                self._rows(number, spec, index, labelled)
                for number, spec in enumerate(read_split_file(self.split_file))
            ],
            [],
        )

    def _rows(
        self, number: int, spec: dict[str, list[str]], index: dict[str, int], labelled: np.ndarray
    ) -> Split:
        where = f"split {number} of {self.split_file}"
        parts = {}
        for kind in ("train", "test"):
            missing = [p for p in spec[kind] if p not in index]
            if missing:
                raise ProbeError(
                    f"{where}: {len(missing)} {kind} paths are not in the features, "
                    f"e.g. {missing[:3]}"
                )
            parts[kind] = np.array(sorted({index[p] for p in spec[kind]}), dtype=np.int64)
            unlabelled = parts[kind][~labelled[parts[kind]]]
            if unlabelled.size:
                raise ProbeError(
                    f"{where}: {unlabelled.size} {kind} images have no label (they are not in a "
                    "class sub-folder); remove them from the split file"
                )
        overlap = np.intersect1d(parts["train"], parts["test"])
        if overlap.size:
            raise ProbeError(f"{where}: {overlap.size} paths in train and test")
        return Split(parts["train"], parts["test"])


def read_split_file(path: str | Path) -> list[dict[str, list[str]]]:
    """Parse a split file (JSON or text, see the module docstring) into train/test path lists."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ProbeError(f"cannot read the split file {path}: {exc}") from exc
    if text.lstrip().startswith(("{", "[")):
        return _json_splits(path, text)
    split: dict[str, list[str]] = {"train": [], "test": []}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        kind, _, item = line.partition(" ")
        if kind not in split or not item.strip():
            raise ProbeError(f"{path}:{number}: expected 'train PATH' or 'test PATH', got {line!r}")
        split[kind].append(item.strip())
    return [split]


def _json_splits(path: str | Path, text: str) -> list[dict[str, list[str]]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProbeError(f"{path} is not valid JSON: {exc}") from exc
    raw = data["splits"] if isinstance(data, dict) and "splits" in data else data
    raw = raw if isinstance(raw, list) else [raw]
    try:
        return [{"train": list(s["train"]), "test": list(s["test"])} for s in raw]
    except (KeyError, TypeError) as exc:
        raise ProbeError(f"{path}: each split needs 'train' and 'test' path lists") from exc


# ------------------------------------------------------------ random splits
def _random_splits(
    y: Sequence[Any] | np.ndarray, *, n_splits: int, seed: int, reserve: int, cut: Cut
) -> SplitPlan:
    """Per split and class: shuffle the class's rows and ``cut`` them into train and test."""
    y = np.asarray(y, dtype=object)
    rows = np.flatnonzero(labelled_mask(y))
    notes = [] if len(rows) == len(y) else [f"ignored {len(y) - len(rows)} unlabelled rows"]
    members = _class_members(y, rows)
    notes += _small_class_notes(members, reserve)
    usable = [idx for idx in members.values() if len(idx) >= 2]
    generators = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n_splits)]
    splits = []
    for rng in generators:
        train, test = [], []
        for idx in usable:
            perm = rng.permutation(idx)
            train_stop, test_start, test_stop = cut(len(idx))
            train.append(perm[:train_stop])
            test.append(perm[test_start:test_stop])
        splits.append(Split(np.sort(np.concatenate(train)), np.sort(np.concatenate(test))))
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=4)
    return SplitPlan(splits, notes)


def _class_members(y: np.ndarray, rows: np.ndarray) -> dict[Any, np.ndarray]:
    labels = y[rows]
    return {c: rows[labels == c] for c in sorted(set(labels.tolist()))}


def _small_class_notes(members: dict[Any, np.ndarray], reserve: int) -> list[str]:
    notes = []
    dropped = [str(c) for c, idx in members.items() if len(idx) < 2]
    short = [str(c) for c, idx in members.items() if 2 <= len(idx) < reserve + 1]
    if dropped:
        notes.append(
            f"dropped {len(dropped)} classes with a single image: {', '.join(dropped[:10])}"
        )
    if short:
        notes.append(
            f"{len(short)} classes have fewer than {reserve + 1} images; they train on all but one "
            f"image and test on the last: {', '.join(short[:10])}"
        )
    if len(members) - len(dropped) < 2:
        raise ProbeError("a protocol needs at least 2 classes with 2 or more labelled images each")
    return notes


def _check_at_least(name: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ProbeError(f"{name} must be at least {minimum}, got {value}")
