"""The one labelled-rows filter."""

from __future__ import annotations

import numpy as np
import pytest

from classifiers import ProbeError
from classifiers.data import labelled_mask, labelled_rows


def test_keeps_labelled_rows_in_order_as_strings():
    X = np.arange(10, dtype=np.float32).reshape(5, 2)
    y = np.array(["cat", None, 3, "dog", None], dtype=object)
    paths = ["cat/a.jpg", "b.jpg", "3/c.jpg", "dog/d.jpg", "e.jpg"]
    rows = labelled_rows(X, y, paths)
    np.testing.assert_array_equal(rows.X, X[[0, 2, 3]])
    assert rows.y.tolist() == ["cat", "3", "dog"] and rows.y.dtype.kind == "U"
    assert rows.paths == ["cat/a.jpg", "3/c.jpg", "dog/d.jpg"]
    assert rows.rows.tolist() == [0, 2, 3] and rows.dropped == 2


def test_paths_are_optional_and_all_labelled_drops_nothing():
    rows = labelled_rows(np.zeros((2, 3)), ["a", "b"])
    assert rows.paths is None and rows.dropped == 0
    assert labelled_mask(np.array(["a", None], dtype=object)).tolist() == [True, False]


def test_no_labels_or_misaligned_inputs_are_clear_errors():
    with pytest.raises(ProbeError, match=r"no labelled images in store s: .*class sub-folders"):
        labelled_rows(np.zeros((2, 3)), [None, None], source="store s")
    with pytest.raises(ProbeError, match="2 feature rows, 3 labels"):
        labelled_rows(np.zeros((2, 3)), ["a", "b", "c"])
    with pytest.raises(ProbeError, match="and 1 paths"):
        labelled_rows(np.zeros((2, 3)), ["a", "b"], ["a/x.jpg"])
