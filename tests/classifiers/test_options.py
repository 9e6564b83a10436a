"""Allowed values are declared once and every consumer reads them from there."""

from __future__ import annotations

from typing import get_args

from sklearn.utils._param_validation import StrOptions

from classifiers import options
from classifiers.probe import LinearProbe


def test_tuples_are_the_literals():
    pairs = [
        (options.ClassifierKind, options.CLASSIFIER_KINDS),
        (options.Backend, options.BACKENDS),
        (options.SearchMode, options.SEARCH_MODES),
        (options.ClassWeightMode, options.CLASS_WEIGHT_MODES),
        (options.FloatDtype, options.FLOAT_DTYPES),
        (options.ScoreKind, options.SCORE_KINDS),
    ]
    for literal, values in pairs:
        assert get_args(literal) == values


def test_every_classifier_has_a_score_kind_and_every_kind_a_description():
    assert set(options.SCORE_KIND_OF) == set(options.CLASSIFIER_KINDS)
    assert options.SCORE_KIND_OF["logreg"] == "probability"
    assert options.SCORE_KIND_OF["svm"] == "margin"
    assert set(options.SCORE_KIND_DESCRIPTIONS) == set(options.SCORE_KINDS)


def test_estimator_constraints_read_the_declared_values():
    constraints = LinearProbe._parameter_constraints
    expected = {
        "classifier": options.CLASSIFIER_KINDS,
        "backend": options.BACKENDS,
        "search": options.SEARCH_MODES,
        "class_weight": options.CLASS_WEIGHT_MODES,
        "dtype": options.FLOAT_DTYPES,
    }
    for name, values in expected.items():
        (allowed,) = [c for c in constraints[name] if isinstance(c, StrOptions)]
        assert allowed.options == set(values), name
