"""The result documents the plots read, in one shape.

Two producers:
- ``decaf probe eval --json``: ``{"store", "backbone"?, "weights_id"?, "random_weights"?,
  "results": [{"layer", "classifier", "shots", "protocol", "mean_class_accuracy": {"mean",
  "std"}, "confusion": {"classes", "matrix"}, "splits": [{"mean_class_accuracy", ...}], ...}]}``
  (the provenance keys were added later; older files plot without them);
- ``decaf reproduce --json``: ``{"kind": "reproduce", "dataset", "backbone", "weights",
  "random_weights", "rows": [{"backbone", "weights", "layer", "classifier", "dropout",
  "accuracies", "mean", "std", "paper": {"mean", "std", "table", "citation"} | null}]}``.
Accuracies are fractions (0..1) in both.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from classifiers.plots.figure import PlotError, is_random

ResultKind = Literal["eval", "reproduce"]


@dataclass(frozen=True)
class PaperNumber:
    mean: float
    std: float | None
    table: str | None
    citation: str | None


@dataclass(frozen=True)
class Confusion:
    classes: list[str]
    matrix: list[list[int]]  # rows = true class, summed over splits


@dataclass(frozen=True)
class ResultRow:
    layer: str
    classifier: str
    shots: int | None
    dropout: bool
    mean: float
    std: float
    accuracies: list[float]
    confusion: Confusion | None = None
    paper: PaperNumber | None = None

    @property
    def method(self) -> str:
        """The classifier as the plots name it ("svm", "svm + dropout")."""
        return f"{self.classifier} + dropout" if self.dropout else self.classifier


@dataclass(frozen=True)
class ResultDoc:
    kind: ResultKind
    source: str  # the store or dataset the numbers are about
    backbone: str | None
    weights: str | None
    random_weights: bool
    rows: list[ResultRow]

    def num_classes(self) -> int | None:
        for row in self.rows:
            if row.confusion is not None:
                return len(row.confusion.classes)
        return None


def load_result(path: str | Path) -> ResultDoc:
    """Read and parse a result file; a missing, non-JSON or foreign file is a PlotError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PlotError(f"cannot read result file {str(path)!r}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise PlotError(
            f"{str(path)!r} is not JSON ({exc}); write it with `decaf probe eval ... --json > "
            "FILE` or `decaf reproduce ... --json > FILE`"
        ) from exc
    return parse_result(data, source=str(path))


def parse_result(data: Any, *, source: str = "result") -> ResultDoc:
    """The document ``decaf probe eval --json`` or ``decaf reproduce --json`` wrote."""
    try:
        if isinstance(data, Mapping) and data.get("kind") == "reproduce":
            return _reproduce(data)
        if isinstance(data, Mapping) and isinstance(data.get("results"), list):
            return _eval(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise PlotError(f"{source}: malformed result ({type(exc).__name__}: {exc})") from exc
    raise PlotError(
        f"{source} is neither `decaf probe eval --json` output (a 'results' list) nor "
        '`decaf reproduce --json` output ("kind": "reproduce")'
    )


def _eval(data: Mapping[str, Any]) -> ResultDoc:
    rows = [_eval_row(row) for row in data["results"]]
    weights = data.get("weights_id")
    return ResultDoc(
        kind="eval",
        source=str(data.get("store", "")),
        backbone=data.get("backbone"),
        weights=weights,
        random_weights=bool(data.get("random_weights", is_random(weights))),
        rows=rows,
    )


def _eval_row(row: Mapping[str, Any]) -> ResultRow:
    confusion = row.get("confusion")
    probe = (row.get("params") or {}).get("probe") or {}
    return ResultRow(
        layer=str(row["layer"]),
        classifier=str(row["classifier"]),
        shots=None if row.get("shots") is None else int(row["shots"]),
        dropout=float(probe.get("dropout") or 0.0) > 0,
        mean=float(row["mean_class_accuracy"]["mean"]),
        std=float(row["mean_class_accuracy"]["std"]),
        accuracies=[float(s["mean_class_accuracy"]) for s in row.get("splits") or []],
        confusion=None
        if not confusion
        else Confusion([str(c) for c in confusion["classes"]], confusion["matrix"]),
    )


def _reproduce(data: Mapping[str, Any]) -> ResultDoc:
    rows = []
    for row in data["rows"]:
        paper = row.get("paper")
        rows.append(
            ResultRow(
                layer=str(row["layer"]),
                classifier=str(row["classifier"]),
                shots=None,
                dropout=bool(row.get("dropout", False)),
                mean=float(row["mean"]),
                std=float(row.get("std") or 0.0),
                accuracies=[float(a) for a in row.get("accuracies") or []],
                paper=None if not paper else _paper(paper),
            )
        )
    weights = data.get("weights")
    return ResultDoc(
        kind="reproduce",
        source=str(data.get("dataset", "")),
        backbone=data.get("backbone"),
        weights=weights,
        random_weights=bool(data.get("random_weights", is_random(weights))),
        rows=rows,
    )


def _paper(paper: Mapping[str, Any]) -> PaperNumber:
    """Papers print percentages (86.9 ± 0.7); ours are fractions. A mean above 1.5 cannot be a
    fraction of correct answers, so then mean and std are both read as percentages."""
    scale = 0.01 if float(paper["mean"]) > 1.5 else 1.0
    std = paper.get("std")
    return PaperNumber(
        mean=float(paper["mean"]) * scale,
        std=None if std is None else float(std) * scale,
        table=paper.get("table"),
        citation=paper.get("citation"),
    )
