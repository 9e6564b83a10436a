"""The rows a probe can learn from: features whose image has a label.

A store labels each image by its class folder; images directly in the extraction root have no
label (``None``) and can be neither trained nor scored. This is the one place that filters them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from classifiers.errors import ProbeError


@dataclass(frozen=True)
class LabelledRows:
    """The labelled rows of a feature matrix, in their original order.

    ``y`` holds the labels as strings; ``rows`` the positions of the kept rows in the input;
    ``dropped`` how many unlabelled rows were left out; ``paths`` is None when none were given.
    """

    X: np.ndarray
    y: np.ndarray
    paths: list[str] | None
    rows: np.ndarray
    dropped: int


def labelled_mask(y: Sequence[Any] | np.ndarray) -> np.ndarray:
    """True for each row that has a label (not ``None``)."""
    return np.fromiter((label is not None for label in y), dtype=bool, count=len(y))


def labelled_rows(
    X: np.ndarray,
    y: Sequence[Any] | np.ndarray,
    paths: Sequence[str] | None = None,
    *,
    source: str = "the features",
) -> LabelledRows:
    """Keep the rows of ``X`` / ``y`` / ``paths`` that have a label.

    Raises :class:`ProbeError` when no row has one (``source`` names the input in the message).
    """
    y = np.asarray(y, dtype=object)
    if len(X) != len(y) or (paths is not None and len(paths) != len(y)):
        raise ProbeError(
            f"{source}: {len(X)} feature rows, {len(y)} labels"
            + ("" if paths is None else f" and {len(paths)} paths")
            + " — they must have one entry per image"
        )
    keep = labelled_mask(y)
    if not keep.any():
        raise ProbeError(
            f"no labelled images in {source}: a probe learns from images in class "
            "sub-folders (ROOT/<class>/<image>); extract such a folder"
        )
    rows = np.flatnonzero(keep)
    return LabelledRows(
        X=X[rows],
        y=y[rows].astype(str),
        paths=None if paths is None else [paths[i] for i in rows],
        rows=rows,
        dropped=int(len(y) - len(rows)),
    )
