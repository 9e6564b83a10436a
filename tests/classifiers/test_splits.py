"""Splitter objects: validation, reuse and the predefined-split edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from classifiers import ProbeError
from classifiers.splits import (
    PerClassSplitter,
    PredefinedSplitter,
    StratifiedSplitter,
    read_split_file,
)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: PerClassSplitter(n_train=0), "n_train must be at least 1"),
        (lambda: PerClassSplitter(n_train=2, n_splits=0), "n_splits must be at least 1"),
        (lambda: PerClassSplitter(n_train=2, max_test=0), "max_test must be at least 1"),
        (lambda: PerClassSplitter(n_train=5, reserve=2), "reserve must be at least 5"),
        (lambda: StratifiedSplitter(train_fraction=0.0), r"train_fraction must be in \(0, 1\)"),
        (lambda: StratifiedSplitter(n_splits=0), "n_splits must be at least 1"),
    ],
)
def test_invalid_parameters_are_clear_errors(make, message):
    with pytest.raises(ProbeError, match=message):
        make()


def test_a_splitter_is_a_reusable_seeded_object():
    y = np.array(["a"] * 6 + ["b"] * 6, dtype=object)
    splitter = PerClassSplitter(n_train=2, max_test=3, n_splits=2, seed=4)
    first, second = splitter.split(y), splitter.split(y)
    for s, t in zip(first.splits, second.splits, strict=True):
        np.testing.assert_array_equal(s.train, t.train)
        np.testing.assert_array_equal(s.test, t.test)
    assert first.notes == []


def test_too_few_classes_is_a_clear_error():
    with pytest.raises(ProbeError, match="at least 2 classes"):
        StratifiedSplitter().split(np.array(["a", "a", "b"], dtype=object))


def test_predefined_needs_paths_and_labelled_rows(tmp_path):
    split_file = tmp_path / "s.txt"
    split_file.write_text("train a/0.jpg\ntest b/0.jpg\ntest loose.jpg\n")
    y = np.array(["a", "b", None], dtype=object)
    with pytest.raises(ProbeError, match="pass the rows' paths"):
        PredefinedSplitter(split_file).split(y)
    with pytest.raises(ProbeError, match="1 test images have no label"):
        PredefinedSplitter(split_file).split(y, ["a/0.jpg", "b/0.jpg", "loose.jpg"])


def test_unreadable_split_files_are_clear_errors(tmp_path):
    with pytest.raises(ProbeError, match="cannot read the split file"):
        read_split_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{broken")
    with pytest.raises(ProbeError, match="not valid JSON"):
        read_split_file(tmp_path / "bad.json")
    (tmp_path / "shape.json").write_text('{"train": ["a"]}')
    with pytest.raises(ProbeError, match="'train' and 'test' path lists"):
        read_split_file(tmp_path / "shape.json")
    (tmp_path / "bad.txt").write_text("validate x.jpg\n")
    with pytest.raises(ProbeError, match=r"bad.txt:1: expected 'train PATH'"):
        read_split_file(tmp_path / "bad.txt")
