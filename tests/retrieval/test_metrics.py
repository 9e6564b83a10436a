"""mAP and precision@k: against hand computations, and on clustered vectors."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.evaluate import average_precision, evaluate_ranking, precision_at


def test_average_precision_matches_a_hand_computation():
    # relevant at ranks 1, 3 and 6 of 3 relevant: (1/1 + 2/3 + 3/6) / 3
    relevant = np.array([1, 0, 1, 0, 0, 1, 0], dtype=bool)
    assert average_precision(relevant, 3) == pytest.approx((1 + 2 / 3 + 3 / 6) / 3)
    # a relevant row never retrieved counts as precision 0
    assert average_precision(relevant, 4) == pytest.approx((1 + 2 / 3 + 3 / 6) / 4)
    assert precision_at(relevant, 1) == 1.0
    assert precision_at(relevant, 3) == pytest.approx(2 / 3)


def _brute_force(database: np.ndarray):
    unit = database / np.linalg.norm(database, axis=1, keepdims=True)

    def search(queries: np.ndarray, n: int) -> np.ndarray:
        q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        return np.argsort(-(q @ unit.T), axis=1, kind="stable")[:, :n]

    return search


def test_leave_one_out_map_on_a_tiny_hand_checked_layout():
    # Two classes on a line: a0=0°, a1=8°, b0=20°, b1=90° (angles of 2-D unit vectors).
    angles = np.radians([0.0, 8.0, 20.0, 90.0])
    vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    labels = ["a", "a", "b", "b"]
    result = evaluate_ranking(_brute_force(vectors), lambda: iter([vectors]), labels, [1])
    # a0: a1, b0, b1 -> AP 1; a1: a0 (8°), b0 (12°), b1 -> AP 1;
    # b0: a1 (12°), a0 (20°), b1 (70°) -> AP 1/3; b1: b0, a1, a0 -> AP 1.
    assert result["map"] == pytest.approx((1 + 1 + 1 / 3 + 1) / 4)
    assert result["precision_at"]["1"] == pytest.approx(3 / 4)
    assert result["queries"] == 4 and result["map_depth"] is None


def test_separated_clusters_score_one_and_noise_scores_chance():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 32)) * 10
    labels = [str(c) for c in range(5) for _ in range(20)]
    clustered = np.repeat(centres, 20, axis=0) + rng.normal(size=(100, 32))
    parts = lambda: iter([clustered[:37], clustered[37:]])  # noqa: E731 - two parts, streamed
    good = evaluate_ranking(_brute_force(clustered), parts, labels, [1, 5])
    assert good["map"] == pytest.approx(1.0) and good["precision_at"]["5"] == 1.0
    noise = rng.normal(size=(100, 32))
    bad = evaluate_ranking(_brute_force(noise), lambda: iter([noise]), labels, [5])
    assert bad["map"] < 0.4  # chance is ~0.2 (19 of 99 rows relevant)


def test_unlabelled_rows_are_not_queries_and_singletons_are_skipped():
    vectors = np.eye(4, dtype=np.float32) + 0.1
    result = evaluate_ranking(
        _brute_force(vectors), lambda: iter([vectors]), ["a", "a", "b", None], [1]
    )
    assert result["queries"] == 2 and result["skipped_queries"] == 1
