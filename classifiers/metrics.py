"""The papers' metric: mean per-class accuracy (every class counts the same, whatever its size)."""

from __future__ import annotations

import numpy as np


def mean_per_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean over the classes present in ``y_true`` of the fraction predicted correctly."""
    classes = np.unique(y_true)
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in classes]))
