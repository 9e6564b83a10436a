"""The torch and scikit-learn engines solve the same problem: same predictions, same minimiser."""

from __future__ import annotations

import numpy as np
import pytest

from classifiers import LinearProbe
from classifiers.engines import dropout_copies


@pytest.mark.parametrize("classifier", ["logreg", "svm"])
def test_torch_matches_sklearn_predictions_on_separable_problem(separable, classifier):
    Xtr, ytr, Xte, yte = separable
    preds = {
        backend: LinearProbe(classifier=classifier, C=0.1, backend=backend, max_iter=500)
        .fit(Xtr, ytr)
        .predict(Xte)
        for backend in ("torch", "sklearn")
    }
    assert np.mean(preds["torch"] == preds["sklearn"]) >= 0.99
    assert np.mean(preds["torch"] == yte) > 0.9


@pytest.mark.parametrize("classifier", ["logreg", "svm"])
def test_torch_accuracy_within_half_a_point_of_sklearn_on_digits(digits_split, classifier):
    Xtr, Xte, ytr, yte = digits_split
    scores = {
        backend: LinearProbe(classifier=classifier, C=0.05, backend=backend, max_iter=500)
        .fit(Xtr, ytr)
        .score(Xte, yte)
        for backend in ("torch", "sklearn")
    }
    assert abs(scores["torch"] - scores["sklearn"]) <= 0.005 + 1e-9, scores
    assert scores["torch"] > 0.9


def test_float64_torch_close_to_sklearn_logreg_coefficients(separable):
    Xtr, ytr, _, _ = separable
    ours = LinearProbe(C=0.01, backend="torch", dtype="float64", max_iter=1000, tol=1e-8)
    ref = LinearProbe(C=0.01, backend="sklearn", max_iter=1000, tol=1e-8)
    ours.fit(Xtr, ytr)
    ref.fit(Xtr, ytr)
    # Same objective (unpenalised intercept, multinomial loss): same minimiser.
    np.testing.assert_allclose(ours.coef_, ref.coef_, atol=2e-3, rtol=0)


def test_dropout_copies_zero_features_and_keep_the_expected_value():
    X = np.ones((200, 50), dtype=np.float32)
    noisy, y, sw = dropout_copies(X, np.arange(200), None, 0.25, 3, seed=0)
    assert noisy.shape == (600, 50) and y.tolist() == list(range(200)) * 3 and sw is None
    assert set(np.unique(noisy).tolist()) == {0.0, np.float32(1 / 0.75)}
    assert abs(float(noisy.mean()) - 1.0) < 0.02
