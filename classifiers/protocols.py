"""The papers' evaluation protocols for linear probes, and their metrics.

Protocols (all seeded and reproducible; splits are index arrays into the feature matrix):

* ``caltech101``: per class, ``n_train`` random training images (default 30) and the rest as
  test images, capped at ``max_test`` per class (default 50); ``splits`` random splits.
* ``sun397``: the same with 50 train / 50 test per class (``n_train``/``max_test`` default 50).
* ``stratified``: per class, round(``train_fraction`` * count) training images (at least one,
  leaving at least one for test), the rest test; ``splits`` random splits.
* ``predefined``: a split file lists train/test paths, e.g. the official split files.
  JSON: ``{"train": [...], "test": [...]}`` or
  ``{"splits": [{"train": [...], "test": [...]}, ...]}``;
  text: one ``train PATH`` or ``test PATH`` per line (``#`` comments and blank lines ignored).

Rule for small classes (documented, tested): a class with fewer than ``n_train + 1`` images trains
on all but one image and tests on that one, with a warning; a class with a single image cannot be
both trained and tested and is dropped, with a warning. Unlabelled rows (label ``None``) are
ignored.

Metric: mean per-class accuracy (the papers' number), reported as mean ± std (population std,
ddof=0) over splits, plus overall accuracy, per-class accuracy (mean over splits), the confusion
matrix (summed over splits, rows = true class) and the C chosen in each split.

Few-shot curves (``few_shot_curve``) use *nested* training sets and one fixed test set per split:
for each class the images are shuffled once, training takes the first ``shot`` images and the
test set starts after the largest shot, so every point of the curve is scored on the same images.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sklearn.base import clone

from classifiers.errors import ProbeError
from classifiers.probe import LinearProbe

Protocol = Literal["caltech101", "sun397", "stratified", "predefined"]
PROTOCOLS: tuple[str, ...] = ("caltech101", "sun397", "stratified", "predefined")
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Split:
    """Row indices of one train/test split (disjoint, sorted)."""

    train: np.ndarray
    test: np.ndarray


@dataclass
class SplitResult:
    mean_class_accuracy: float
    accuracy: float
    per_class_accuracy: dict[str, float]
    confusion: np.ndarray
    C: float
    n_train: int
    n_test: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean_class_accuracy": self.mean_class_accuracy,
            "accuracy": self.accuracy,
            "per_class_accuracy": self.per_class_accuracy,
            "confusion": self.confusion.tolist(),
            "C": self.C,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "seconds": self.seconds,
        }


@dataclass
class ProtocolResult:
    """Results of one protocol run; ``to_dict()`` is JSON-safe, ``table()`` is one text line."""

    protocol: str
    params: dict[str, Any]
    classes: list[str]
    splits: list[SplitResult]
    notes: list[str] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return float(np.mean([s.mean_class_accuracy for s in self.splits]))

    @property
    def std(self) -> float:
        return float(np.std([s.mean_class_accuracy for s in self.splits]))

    @property
    def accuracy_mean(self) -> float:
        return float(np.mean([s.accuracy for s in self.splits]))

    @property
    def accuracy_std(self) -> float:
        return float(np.std([s.accuracy for s in self.splits]))

    @property
    def per_class_accuracy(self) -> dict[str, float]:
        return {
            c: float(
                np.mean([s.per_class_accuracy[c] for s in self.splits if c in s.per_class_accuracy])
            )
            for c in self.classes
            if any(c in s.per_class_accuracy for s in self.splits)
        }

    @property
    def confusion(self) -> np.ndarray:
        return np.sum([s.confusion for s in self.splits], axis=0)

    @property
    def chosen_C(self) -> list[float]:
        return [s.C for s in self.splits]

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "params": self.params,
            "metric": "mean_per_class_accuracy",
            "mean_class_accuracy": {"mean": self.mean, "std": self.std},
            "accuracy": {"mean": self.accuracy_mean, "std": self.accuracy_std},
            "per_class_accuracy": self.per_class_accuracy,
            "confusion": {"classes": self.classes, "matrix": self.confusion.tolist()},
            "chosen_C": self.chosen_C,
            "splits": [s.to_dict() for s in self.splits],
            "notes": self.notes,
        }

    def table(self) -> str:
        return (
            f"{self.protocol}: mean per-class accuracy {100 * self.mean:.2f} ± {100 * self.std:.2f}"
            f" (overall {100 * self.accuracy_mean:.2f} ± {100 * self.accuracy_std:.2f},"
            f" {len(self.splits)} splits, C {', '.join(f'{c:.3g}' for c in self.chosen_C)})"
        )


# ------------------------------------------------------------------ splits
def _labelled(y: np.ndarray) -> tuple[np.ndarray, list[str]]:
    mask = np.array([label is not None for label in y], dtype=bool)
    notes = []
    if not mask.all():
        notes.append(f"ignored {int((~mask).sum())} unlabelled rows")
    return np.flatnonzero(mask), notes


def _class_members(y: np.ndarray, rows: np.ndarray) -> dict[Any, np.ndarray]:
    labels = y[rows]
    return {c: rows[labels == c] for c in sorted(set(labels.tolist()))}


def per_class_splits(
    y: np.ndarray,
    *,
    n_train: int,
    max_test: int | None,
    splits: int,
    seed: int,
    reserve: int | None = None,
) -> tuple[list[Split], list[str]]:
    """Random per-class splits: ``n_train`` train, test from position ``reserve`` (default
    ``n_train``) on, capped at ``max_test``. Small classes follow the module's documented rule."""
    if n_train < 1:
        raise ProbeError(f"n_train must be at least 1, got {n_train}")
    y = np.asarray(y, dtype=object)
    rows, notes = _labelled(y)
    reserve = n_train if reserve is None else reserve
    members = _class_members(y, rows)
    notes += _small_class_notes(members, reserve)
    generators = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(splits)]
    result = []
    for rng in generators:
        train, test = [], []
        for idx in members.values():
            if len(idx) < 2:
                continue
            perm = rng.permutation(idx)
            start = min(reserve, len(idx) - 1)
            train.append(perm[: min(n_train, start)])
            stop = len(idx) if max_test is None else start + max_test
            test.append(perm[start:stop])
        result.append(Split(np.sort(np.concatenate(train)), np.sort(np.concatenate(test))))
    _warn(notes)
    return result, notes


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


def _warn(notes: list[str]) -> None:
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=3)


def stratified_splits(
    y: np.ndarray, *, train_fraction: float, splits: int, seed: int
) -> tuple[list[Split], list[str]]:
    """Per class round(train_fraction * count) train images (at least 1, leaving 1 for test)."""
    if not 0.0 < train_fraction < 1.0:
        raise ProbeError(f"train_fraction must be in (0, 1), got {train_fraction}")
    y = np.asarray(y, dtype=object)
    rows, notes = _labelled(y)
    members = _class_members(y, rows)
    notes += _small_class_notes(members, 1)
    generators = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(splits)]
    result = []
    for rng in generators:
        train, test = [], []
        for idx in members.values():
            if len(idx) < 2:
                continue
            perm = rng.permutation(idx)
            k = min(max(1, round(train_fraction * len(idx))), len(idx) - 1)
            train.append(perm[:k])
            test.append(perm[k:])
        result.append(Split(np.sort(np.concatenate(train)), np.sort(np.concatenate(test))))
    _warn(notes)
    return result, notes


def read_split_file(path: str | Path) -> list[dict[str, list[str]]]:
    """Parse a split file (JSON or text, see the module docstring) into train/test path lists."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith(("{", "[")):
        data = json.loads(text)
        raw = data["splits"] if isinstance(data, dict) and "splits" in data else data
        raw = raw if isinstance(raw, list) else [raw]
        try:
            return [{"train": list(s["train"]), "test": list(s["test"])} for s in raw]
        except (KeyError, TypeError) as exc:
            raise ProbeError(f"{path}: each split needs 'train' and 'test' path lists") from exc
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


def predefined_splits(paths: Sequence[str], split_file: str | Path) -> list[Split]:
    """Map the paths of a split file onto row indices; unknown paths are an error."""
    index = {str(p): i for i, p in enumerate(paths)}
    result = []
    for number, spec in enumerate(read_split_file(split_file)):
        parts = {}
        for kind in ("train", "test"):
            missing = [p for p in spec[kind] if p not in index]
            if missing:
                raise ProbeError(
                    f"split {number} of {split_file}: {len(missing)} {kind} paths are not in the "
                    f"features, e.g. {missing[:3]}"
                )
            parts[kind] = np.array(sorted({index[p] for p in spec[kind]}), dtype=np.int64)
        overlap = np.intersect1d(parts["train"], parts["test"])
        if overlap.size:
            raise ProbeError(
                f"split {number} of {split_file}: {overlap.size} paths in train and test"
            )
        result.append(Split(parts["train"], parts["test"]))
    return result


def make_splits(
    y: np.ndarray,
    paths: Sequence[str] | None,
    *,
    protocol: str,
    n_train: int | None = None,
    max_test: int | None = None,
    splits: int = 5,
    seed: int = 0,
    train_fraction: float = 0.5,
    split_file: str | Path | None = None,
) -> tuple[list[Split], list[str]]:
    """Splits of one protocol with its defaults (caltech101: 30/50, sun397: 50/50)."""
    if protocol == "caltech101":
        return per_class_splits(
            y,
            n_train=n_train or 30,
            max_test=50 if max_test is None else max_test,
            splits=splits,
            seed=seed,
        )
    if protocol == "sun397":
        return per_class_splits(
            y,
            n_train=n_train or 50,
            max_test=50 if max_test is None else max_test,
            splits=splits,
            seed=seed,
        )
    if protocol == "stratified":
        return stratified_splits(y, train_fraction=train_fraction, splits=splits, seed=seed)
    if protocol == "predefined":
        if split_file is None or paths is None:
            raise ProbeError(
                "protocol 'predefined' needs a split file (--split-file) and the paths"
            )
        return predefined_splits(paths, split_file), []
    raise ProbeError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")


# -------------------------------------------------------------- evaluation
def score_split(
    probe: LinearProbe, X: np.ndarray, y: np.ndarray, split: Split, classes: list[str]
) -> SplitResult:
    """Fit a clone of ``probe`` on the split's training rows and score it on its test rows;
    the confusion matrix is indexed by ``classes`` (rows = true class)."""
    started = time.perf_counter()
    y = np.asarray(y, dtype=object)
    fitted = clone(probe).fit(X[split.train], y[split.train].astype(str))
    truth = y[split.test].astype(str)
    predicted = fitted.predict(X[split.test])
    position = {c: i for i, c in enumerate(classes)}
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, ([position[c] for c in truth], [position[c] for c in predicted]), 1)
    per_class = {c: float(np.mean(predicted[truth == c] == c)) for c in sorted(set(truth.tolist()))}
    return SplitResult(
        mean_class_accuracy=float(np.mean(list(per_class.values()))),
        accuracy=float(np.mean(predicted == truth)),
        per_class_accuracy=per_class,
        confusion=confusion,
        C=float(fitted.C_),
        n_train=len(split.train),
        n_test=len(split.test),
        seconds=time.perf_counter() - started,
    )


def split_classes(y: np.ndarray, split_list: list[Split]) -> list[str]:
    rows = np.concatenate([np.r_[s.train, s.test] for s in split_list])
    return sorted({str(c) for c in y[rows]})


def run_splits(
    X: np.ndarray,
    y: np.ndarray,
    split_list: list[Split],
    probe: LinearProbe,
    progress: ProgressFn | None = None,
    desc: str = "splits",
    show_progress: bool = False,
) -> list[SplitResult]:
    results = []
    classes = split_classes(y, split_list)
    bar = _bar(show_progress, len(split_list), desc)
    for i, split in enumerate(split_list):
        results.append(score_split(probe, X, y, split, classes))
        if progress is not None:
            progress(i + 1, len(split_list))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(acc=f"{100 * results[-1].mean_class_accuracy:.2f}")
    if bar is not None:
        bar.close()
    return results


def _bar(enabled: bool, total: int, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)


def evaluate(
    X: np.ndarray,
    y: np.ndarray,
    paths: Sequence[str] | None = None,
    *,
    protocol: Protocol,
    probe: LinearProbe,
    n_train: int | None = None,
    max_test: int | None = None,
    splits: int = 5,
    seed: int = 0,
    train_fraction: float = 0.5,
    split_file: str | Path | None = None,
    progress: ProgressFn | None = None,
    show_progress: bool = False,
) -> ProtocolResult:
    """Run ``protocol`` on features ``X`` / labels ``y``; ``progress(done, total)`` per split.

    ``n_train``/``max_test`` default to the protocol's own numbers (caltech101 30/50, sun397 50/50).
    """
    y = np.asarray(y, dtype=object)
    split_list, notes = make_splits(
        y,
        paths,
        protocol=protocol,
        n_train=n_train,
        max_test=max_test,
        splits=splits,
        seed=seed,
        train_fraction=train_fraction,
        split_file=split_file,
    )
    results = run_splits(X, y, split_list, probe, progress, protocol, show_progress)
    classes = split_classes(y, split_list)
    params = {
        "n_train": n_train,
        "max_test": max_test,
        "splits": len(split_list),
        "seed": seed,
        "train_fraction": train_fraction if protocol == "stratified" else None,
        "split_file": str(split_file) if split_file is not None else None,
        "probe": _jsonable_params(probe),
    }
    return ProtocolResult(protocol, params, classes, results, notes)


def _jsonable_params(probe: LinearProbe) -> dict[str, Any]:
    params = probe.get_params()
    if params.get("Cs") is not None:
        params["Cs"] = [float(c) for c in params["Cs"]]
    return params


def few_shot_curve(
    X: np.ndarray,
    y: np.ndarray,
    paths: Sequence[str] | None = None,
    *,
    probe: LinearProbe,
    shots: Sequence[int] = (1, 2, 5, 10, 20, 30),
    max_test: int | None = 50,
    splits: int = 5,
    seed: int = 0,
    progress: ProgressFn | None = None,
    show_progress: bool = False,
) -> list[ProtocolResult]:
    """Accuracy vs training images per class, nested training sets, one test set per split."""
    y = np.asarray(y, dtype=object)
    shots = sorted({int(s) for s in shots})
    reserve = shots[-1]
    curve = []
    total, done = len(shots) * splits, 0
    for shot in shots:
        split_list, notes = per_class_splits(
            y, n_train=shot, max_test=max_test, splits=splits, seed=seed, reserve=reserve
        )
        results = run_splits(X, y, split_list, probe, None, f"{shot}-shot", show_progress)
        done += len(split_list)
        if progress is not None:
            progress(done, total)
        classes = split_classes(y, split_list)
        params = {
            "n_train": shot,
            "max_test": max_test,
            "splits": splits,
            "seed": seed,
            "reserve": reserve,
            "probe": _jsonable_params(probe),
        }
        curve.append(ProtocolResult("few_shot", params, classes, results, notes))
    return curve
