"""The classifiers package's allowed values and score semantics, read in one place.

- A probe is a linear SVM or a logistic regression; their scores are not the same thing:
  logistic regression gives class **probabilities**, the SVM signed distances to its hyperplanes,
  **margins** (uncalibrated: they rank classes, they are not probabilities). The API says which
  with `score_kind` and never calls a margin a probability.
- Evaluation protocols come from `classifiers.protocols`; `predefined` needs a split file on the
  server's disk, which a request must not name, so the API offers the others.

TODO(classifiers): use `LinearProbe.score_kind` / `LinearProbe.scores(X)` and the package's
exported classifier and protocol names once they land; only this module changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from classifiers.protocols import PROTOCOLS

if TYPE_CHECKING:
    from classifiers.probe import LinearProbe

ClassifierKind = Literal["logreg", "svm"]
ScoreKind = Literal["probability", "margin"]

SERVICE_PROTOCOLS: tuple[str, ...] = tuple(name for name in PROTOCOLS if name != "predefined")
ServiceProtocol = Literal[SERVICE_PROTOCOLS]  # type: ignore[valid-type]


def score_kind(classifier: str) -> ScoreKind:
    """What a probe of this classifier returns as `score`."""
    return "probability" if classifier == "logreg" else "margin"


def probe_scores(probe: LinearProbe, X: np.ndarray) -> tuple[np.ndarray, ScoreKind]:
    """`(n, n_classes)` scores, higher is better, and what they are."""
    kind = score_kind(probe.classifier)
    if kind == "probability":
        return probe.predict_proba(X), kind
    margins: Any = probe.decision_function(X)
    if margins.ndim == 1:  # binary: one margin, positive for classes_[1]
        margins = np.column_stack([-margins, margins])
    return margins, kind
