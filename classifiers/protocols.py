"""Running the papers' evaluation protocols with a probe, and their metrics.

The protocols themselves (how rows are split) are registry entries (:mod:`classifiers.registry`,
splitters in :mod:`classifiers.splits`); :func:`make_splits` runs one by name.

Metric: mean per-class accuracy (the papers' number), reported as mean ± std (population std,
ddof=0) over splits, plus overall accuracy, per-class accuracy (mean over splits), the confusion
matrix (summed over splits, rows = true class) and the C chosen in each split.

Few-shot curves (``few_shot_curve``) use *nested* training sets and one fixed test set per split:
for each class the images are shuffled once, training takes the first ``shot`` images and the
test set starts after the largest shot, so every point of the curve is scored on the same images.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import clone

from classifiers.errors import ProbeError
from classifiers.persistence import jsonable
from classifiers.probe import LinearProbe
from classifiers.registry import PROTOCOLS, ProtocolParams, get_protocol
from classifiers.splits import PerClassSplitter, Split, SplitPlan
from featurizer.progress import ProgressBar

__all__ = [
    "PROTOCOLS",
    "ProtocolResult",
    "Split",
    "SplitPlan",
    "SplitResult",
    "evaluate",
    "few_shot_curve",
    "make_splits",
    "run_splits",
    "score_split",
]

ProgressFn = Callable[[int, int], None]


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
        """Mean over splits of the mean per-class accuracy (the papers' number)."""
        return self.spread("mean_class_accuracy")[0]

    @property
    def std(self) -> float:
        """Population std over splits of the mean per-class accuracy."""
        return self.spread("mean_class_accuracy")[1]

    def spread(self, metric: str) -> tuple[float, float]:
        """Mean and population std (ddof=0) of ``metric`` over the splits."""
        values = [getattr(split, metric) for split in self.splits]
        return float(np.mean(values)), float(np.std(values))

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
            "accuracy": dict(zip(("mean", "std"), self.spread("accuracy"), strict=True)),
            "per_class_accuracy": self.per_class_accuracy,
            "confusion": {"classes": self.classes, "matrix": self.confusion.tolist()},
            "chosen_C": self.chosen_C,
            "splits": [s.to_dict() for s in self.splits],
            "notes": self.notes,
        }

    def table(self) -> str:
        overall, overall_std = self.spread("accuracy")
        return (
            f"{self.protocol}: mean per-class accuracy {100 * self.mean:.2f} ± {100 * self.std:.2f}"
            f" (overall {100 * overall:.2f} ± {100 * overall_std:.2f},"
            f" {len(self.splits)} splits, C {', '.join(f'{c:.3g}' for c in self.chosen_C)})"
        )


# ------------------------------------------------------------------ splits
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
) -> SplitPlan:
    """Splits of the registered ``protocol`` with its defaults (caltech101: 30/50, sun397: 50/50).

    Returns ``(splits, notes)``; an unknown protocol or an invalid value is a ProbeError.
    """
    params = ProtocolParams(n_train, max_test, splits, seed, train_fraction, split_file)
    return get_protocol(protocol).splitter(params).split(y, paths)


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
    """Score ``probe`` on each split; ``progress(done, total)`` after each, a bar if asked."""
    results = []
    classes = split_classes(y, split_list)
    with ProgressBar(enabled=show_progress, total=len(split_list), desc=desc) as bar:
        for i, split in enumerate(split_list):
            results.append(score_split(probe, X, y, split, classes))
            if progress is not None:
                progress(i + 1, len(split_list))
            bar.update(1)
            bar.set_postfix(acc=f"{100 * results[-1].mean_class_accuracy:.2f}")
    return results


def evaluate(
    X: np.ndarray,
    y: np.ndarray,
    paths: Sequence[str] | None = None,
    *,
    protocol: str,
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
    """Run the registered ``protocol`` on features ``X`` / labels ``y``; ``progress(done,
    total)`` per split.

    ``n_train``/``max_test`` default to the protocol's own numbers (caltech101 30/50, sun397 50/50).
    """
    y = np.asarray(y, dtype=object)
    entry = get_protocol(protocol)
    protocol_params = ProtocolParams(n_train, max_test, splits, seed, train_fraction, split_file)
    split_list, notes = entry.splitter(protocol_params).split(y, paths)
    results = run_splits(X, y, split_list, probe, progress, protocol, show_progress)
    params = {
        **entry.recorded_params(protocol_params),
        "splits": len(split_list),
        "probe": jsonable(probe.get_params()),
    }
    return ProtocolResult(protocol, params, split_classes(y, split_list), results, notes)


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
    if not shots:
        raise ProbeError("a few-shot curve needs at least one shot count, e.g. 1,5,10")
    reserve = shots[-1]
    curve = []
    total, done = len(shots) * splits, 0
    for shot in shots:
        splitter = PerClassSplitter(
            n_train=shot, max_test=max_test, n_splits=splits, seed=seed, reserve=reserve
        )
        split_list, notes = splitter.split(y, paths)
        results = run_splits(X, y, split_list, probe, None, f"{shot}-shot", show_progress)
        done += len(split_list)
        if progress is not None:
            progress(done, total)
        params = {
            "n_train": shot,
            "max_test": max_test,
            "splits": splits,
            "seed": seed,
            "reserve": reserve,
            "probe": jsonable(probe.get_params()),
        }
        curve.append(
            ProtocolResult("few_shot", params, split_classes(y, split_list), results, notes)
        )
    return curve
