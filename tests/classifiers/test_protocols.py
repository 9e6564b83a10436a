"""Protocol splits and evaluation results."""

from __future__ import annotations

import json

import numpy as np
import pytest

from classifiers import LinearProbe, ProbeError, evaluate, few_shot_curve, make_splits
from classifiers.splits import PerClassSplitter
from classifiers.synthetic import make_features


def labels(counts: dict[str, int]) -> np.ndarray:
    return np.array([c for c, n in counts.items() for _ in range(n)], dtype=object)


def per_class(y: np.ndarray, rows: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(y[rows].astype(str), return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))


def test_caltech101_exact_counts_no_overlap_and_seeded():
    y = labels({"a": 40, "b": 31, "c": 100, "d": 90})
    splits, notes = make_splits(y, None, protocol="caltech101", splits=3, seed=7)
    assert notes == [] and len(splits) == 3
    for split in splits:
        assert per_class(y, split.train) == {"a": 30, "b": 30, "c": 30, "d": 30}
        assert per_class(y, split.test) == {"a": 10, "b": 1, "c": 50, "d": 50}
        assert np.intersect1d(split.train, split.test).size == 0
    again, _ = make_splits(y, None, protocol="caltech101", splits=3, seed=7)
    other, _ = make_splits(y, None, protocol="caltech101", splits=3, seed=8)
    for s, t in zip(splits, again, strict=True):
        np.testing.assert_array_equal(s.train, t.train)
        np.testing.assert_array_equal(s.test, t.test)
    assert not np.array_equal(splits[0].train, other[0].train)
    assert not np.array_equal(splits[0].train, splits[1].train)


def test_small_classes_rule_and_unlabelled_rows():
    y = labels({"big": 40, "short": 5, "single": 1})
    y = np.append(y, [None, None])
    with pytest.warns(UserWarning) as caught:
        splits, notes = make_splits(y, None, protocol="caltech101", n_train=30, splits=2)
    messages = " ".join(str(w.message) for w in caught)
    assert "single" in messages and "short" in messages
    assert any("unlabelled" in n for n in notes)
    for split in splits:
        assert per_class(y, split.train) == {"big": 30, "short": 4}
        assert per_class(y, split.test) == {"big": 10, "short": 1}
        unlabelled = {i for i, label in enumerate(y) if label is None}
        assert not unlabelled & (set(split.train) | set(split.test))


def test_sun397_defaults_to_50_50():
    y = labels({"a": 120, "b": 100})
    splits, _ = make_splits(y, None, protocol="sun397", splits=2)
    for split in splits:
        assert per_class(y, split.train) == {"a": 50, "b": 50}
        assert per_class(y, split.test) == {"a": 50, "b": 50}


def test_stratified_fraction():
    y = labels({"a": 10, "b": 3, "c": 2})
    splits, _ = make_splits(y, None, protocol="stratified", train_fraction=0.7, splits=2)
    for split in splits:
        assert per_class(y, split.train) == {"a": 7, "b": 2, "c": 1}
        assert per_class(y, split.test) == {"a": 3, "b": 1, "c": 1}
    with pytest.raises(ProbeError):
        make_splits(y, None, protocol="stratified", train_fraction=1.0)


def test_predefined_json_text_and_errors(tmp_path):
    paths = [f"{c}/{i}.jpg" for c in "ab" for i in range(4)]
    y = np.array([p[0] for p in paths], dtype=object)
    spec = {"splits": [{"train": paths[:2] + paths[4:6], "test": paths[2:4] + paths[6:]}]}
    (tmp_path / "s.json").write_text(json.dumps(spec))
    (tmp_path / "s.txt").write_text(
        "# official split\n"
        + "".join(f"train {p}\n" for p in spec["splits"][0]["train"])
        + "\n"
        + "".join(f"test {p}\n" for p in spec["splits"][0]["test"])
    )
    for name in ("s.json", "s.txt"):
        (split,), _ = make_splits(y, paths, protocol="predefined", split_file=tmp_path / name)
        np.testing.assert_array_equal(split.train, [0, 1, 4, 5])
        np.testing.assert_array_equal(split.test, [2, 3, 6, 7])
    (tmp_path / "bad.txt").write_text("train a/0.jpg\ntest nowhere.jpg\n")
    with pytest.raises(ProbeError, match="not in the features"):
        make_splits(y, paths, protocol="predefined", split_file=tmp_path / "bad.txt")
    (tmp_path / "overlap.txt").write_text("train a/0.jpg\ntest a/0.jpg\n")
    with pytest.raises(ProbeError, match="in train and test"):
        make_splits(y, paths, protocol="predefined", split_file=tmp_path / "overlap.txt")
    with pytest.raises(ProbeError, match="split file"):
        make_splits(y, paths, protocol="predefined")
    with pytest.raises(ProbeError, match="unknown protocol"):
        make_splits(y, paths, protocol="imagenet")


@pytest.fixture(scope="module")
def features():
    X, y = make_features(6, 40, n_features=128, latent_dim=8, separation=1.2, seed=2)
    return X, y


def test_evaluate_reports_everything(features):
    X, y = features
    result = evaluate(
        X,
        y,
        protocol="caltech101",
        probe=LinearProbe(C=0.1),
        n_train=10,
        max_test=20,
        splits=3,
        seed=1,
    )
    data = result.to_dict()
    assert len(data["splits"]) == 3 and len(data["chosen_C"]) == 3
    assert 1 / 6 + 0.2 < data["mean_class_accuracy"]["mean"] < 1.0
    per_split = [s["mean_class_accuracy"] for s in data["splits"]]
    assert data["mean_class_accuracy"]["mean"] == pytest.approx(np.mean(per_split))
    assert data["mean_class_accuracy"]["std"] == pytest.approx(np.std(per_split))
    confusion = np.array(data["confusion"]["matrix"])
    assert confusion.shape == (6, 6) and confusion.sum() == 3 * 6 * 20
    diagonal = np.diag(confusion) / confusion.sum(axis=1)
    np.testing.assert_allclose(diagonal, list(data["per_class_accuracy"].values()))
    json.dumps(data)  # JSON-safe
    assert "±" in result.table()
    same = evaluate(
        X,
        y,
        protocol="caltech101",
        probe=LinearProbe(C=0.1),
        n_train=10,
        max_test=20,
        splits=3,
        seed=1,
    )
    assert same.mean == result.mean


def test_few_shot_curve_nested_and_same_test_set(features):
    X, y = features
    curve = few_shot_curve(
        X, y, probe=LinearProbe(C=0.1), shots=(1, 5, 20), max_test=15, splits=2, seed=0
    )
    assert [r.params["n_train"] for r in curve] == [1, 5, 20]
    for k in range(2):
        tests = [r.splits[k].n_test for r in curve]
        assert tests == [6 * 15] * 3
    assert curve[0].mean < curve[-1].mean
    assert curve[0].mean > 1 / 6


def test_few_shot_train_sets_are_nested():
    y = labels({"a": 30, "b": 30})
    small, _ = make_splits(y, None, protocol="caltech101", n_train=2, splits=1)
    one, _ = PerClassSplitter(n_train=1, max_test=5, n_splits=1, seed=0, reserve=10).split(y)
    ten, _ = PerClassSplitter(n_train=10, max_test=5, n_splits=1, seed=0, reserve=10).split(y)
    assert set(one[0].train) <= set(ten[0].train)
    np.testing.assert_array_equal(one[0].test, ten[0].test)
    assert len(small[0].train) == 4
