"""LinearProbe behaviour beyond the generic scikit-learn contract."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from classifiers import LinearProbe, ProbeError
from classifiers.probe import PARAMETER_NAMES, make_probe, mean_per_class_accuracy, stratified_folds
from classifiers.synthetic import make_features
from featurizer.errors import DecafError


def test_auto_C_cross_validates_over_grid(digits_split):
    Xtr, _, ytr, _ = digits_split
    probe = LinearProbe(Cs=(1e-4, 1e-2, 1.0, 100.0), backend="torch").fit(Xtr, ytr)
    results = probe.cv_results_
    assert results["n_folds"] == 3 and results["search"] == "kfold"
    assert results["Cs"][int(np.argmax(results["mean_score"]))] == probe.C_
    # the coarse grid plus at least one refinement point between grid values
    assert set(results["Cs"]) - {1e-4, 1e-2, 1.0, 100.0}
    assert max(results["mean_score"]) > 0.9


def test_holdout_search_and_fallback_for_tiny_classes(digits_split):
    Xtr, _, ytr, _ = digits_split
    probe = LinearProbe(Cs=(0.01, 1.0), search="holdout").fit(Xtr, ytr)
    assert probe.cv_results_["n_folds"] == 1 and probe.cv_results_["search"] == "holdout"
    one_each = np.r_[[np.flatnonzero(ytr == c)[0] for c in range(10)]]
    with pytest.warns(UserWarning, match="at least 2 training samples per class"):
        tiny = LinearProbe().fit(Xtr[one_each], ytr[one_each])
    assert tiny.C_ == 1.0 and tiny.cv_results_ is None


def test_stratified_folds_balance_classes():
    y = np.repeat(np.arange(4), [10, 9, 3, 7])
    folds = stratified_folds(y, 3, seed=0)
    for c in range(4):
        counts = np.bincount(folds[y == c], minlength=3)
        assert counts.max() - counts.min() <= 1
    np.testing.assert_array_equal(folds, stratified_folds(y, 3, seed=0))


def test_dropout_is_seeded_augmentation(separable):
    Xtr, ytr, Xte, yte = separable
    plain = LinearProbe(C=1.0, backend="torch").fit(Xtr, ytr)
    a = LinearProbe(C=1.0, backend="torch", dropout=0.5, random_state=3).fit(Xtr, ytr)
    b = LinearProbe(C=1.0, backend="torch", dropout=0.5, random_state=3).fit(Xtr, ytr)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    assert not np.allclose(a.coef_, plain.coef_)
    assert a.score(Xte, yte) > 0.9
    sk = LinearProbe(C=1.0, backend="sklearn", dropout=0.5, random_state=3).fit(Xtr, ytr)
    assert np.mean(sk.predict(Xte) == a.predict(Xte)) > 0.95


def test_l2_normalize_makes_probe_scale_invariant_per_sample(separable):
    Xtr, ytr, Xte, _ = separable
    probe = LinearProbe(C=0.1, l2_normalize=True, backend="torch").fit(Xtr, ytr)
    scales = np.random.default_rng(0).uniform(0.1, 10, size=(len(Xte), 1)).astype(np.float32)
    np.testing.assert_array_equal(probe.predict(Xte), probe.predict(Xte * scales))


def test_balanced_class_weight_helps_the_minority_class():
    X, y = make_features(
        2, np.array([400, 25]), n_features=64, latent_dim=8, separation=0.6, noise=1.0, seed=4
    )
    rows = np.random.default_rng(0).permutation(len(y))
    X, y = X[rows], y[rows]
    plain = LinearProbe(C=1.0, backend="torch").fit(X, y)
    balanced = LinearProbe(C=1.0, backend="torch", class_weight="balanced").fit(X, y)
    minority = y == "class001"
    assert np.mean(balanced.predict(X[minority]) == "class001") > np.mean(
        plain.predict(X[minority]) == "class001"
    )
    assert mean_per_class_accuracy(y, balanced.predict(X)) > mean_per_class_accuracy(
        y, plain.predict(X)
    )


def test_binary_shapes_and_probabilities(separable):
    Xtr, ytr, Xte, _ = separable
    keep = np.isin(ytr, ["class000", "class001"])
    for backend in ("torch", "sklearn"):
        for classifier in ("logreg", "svm"):
            probe = LinearProbe(classifier=classifier, C=1.0, backend=backend)
            probe.fit(Xtr[keep], ytr[keep])
            assert probe.coef_.shape == (1, Xtr.shape[1])
            assert probe.decision_function(Xte).shape == (len(Xte),)
            proba = probe.predict_proba(Xte)
            np.testing.assert_allclose(proba.sum(axis=1), 1.0)
            np.testing.assert_array_equal(probe.classes_[proba.argmax(1)], probe.predict(Xte))


def test_works_in_pipeline_and_grid_search(digits_split):
    Xtr, Xte, ytr, yte = digits_split
    pipe = make_pipeline(FunctionTransformer(np.sqrt), LinearProbe(C=0.1, backend="sklearn"))
    search = GridSearchCV(pipe, {"linearprobe__classifier": ["logreg", "svm"]}, cv=2)
    search.fit(Xtr, ytr)
    assert search.score(Xte, yte) > 0.9


def test_clear_errors():
    X = np.random.default_rng(0).random((10, 3))
    with pytest.raises(ValueError, match="at least 2 classes"):
        LinearProbe(C=1.0).fit(X, np.zeros(10))
    with pytest.raises(ValueError, match="classifier"):
        LinearProbe(classifier="tree").fit(X, np.arange(10) % 2)
    with pytest.raises(ValueError, match="dropout"):
        LinearProbe(dropout=1.0).fit(X, np.arange(10) % 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LinearProbe(C=1.0).fit(X, np.arange(10) % 2)


def test_parameters_are_keyword_only():
    with pytest.raises(TypeError):
        LinearProbe("svm")


def test_one_class_is_a_probe_error():
    with pytest.raises(ProbeError, match="at least 2 classes") as caught:
        LinearProbe(C=1.0).fit(np.zeros((4, 2)), ["a"] * 4)
    assert isinstance(caught.value, DecafError) and caught.value.http_status == 422


def test_make_probe_defaults_options_and_unknown_keys():
    assert make_probe({}).get_params() == LinearProbe().get_params()
    probe = make_probe({"classifier": "svm", "C": 0.5, "l2_normalize": True})
    assert (probe.classifier, probe.C, probe.l2_normalize) == ("svm", 0.5, True)
    with pytest.raises(ProbeError, match=r"unknown probe option\(s\) \['layer'\]; .* classifier"):
        make_probe({"layer": "decaf6", "classifier": "svm"})


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"classifier": "tree"}, "classifier"),
        ({"C": -1.0}, "'C'"),
        ({"C": "best"}, "'C'"),
        ({"cv": 1}, "cv"),
        ({"class_weight": "even"}, "class_weight"),
        ({"backend": "jax"}, "backend"),
        ({"Cs": [0.1, -1.0]}, "Cs must be positive"),
    ],
)
def test_make_probe_invalid_values_are_probe_errors(options, name):
    with pytest.raises(ProbeError, match=name):
        make_probe(options)


def test_parameter_names_cover_every_parameter():
    assert set(PARAMETER_NAMES) == set(LinearProbe().get_params())


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize(("classifier", "kind"), [("logreg", "probability"), ("svm", "margin")])
def test_scores_and_score_kind(separable, classifier, kind, n_classes):
    Xtr, ytr, Xte, _ = separable
    keep = np.isin(ytr, [f"class{c:03d}" for c in range(n_classes)])
    probe = LinearProbe(classifier=classifier, C=0.1, backend="sklearn").fit(Xtr[keep], ytr[keep])
    assert probe.score_kind == kind
    scores = probe.scores(Xte)
    assert scores.shape == (len(Xte), n_classes)
    np.testing.assert_array_equal(probe.classes_[scores.argmax(1)], probe.predict(Xte))
    if kind == "probability":
        np.testing.assert_allclose(scores, probe.predict_proba(Xte))
    elif n_classes == 2:
        margin = probe.decision_function(Xte)
        np.testing.assert_allclose(scores, np.column_stack([-margin, margin]))
    else:
        np.testing.assert_allclose(scores, probe.decision_function(Xte))
        assert (scores < 0).any()  # margins, not probabilities


def test_score_kind_of_an_unknown_classifier_is_a_clear_error():
    with pytest.raises(ProbeError, match="classifier must be one of logreg, svm"):
        _ = LinearProbe(classifier="tree").score_kind
