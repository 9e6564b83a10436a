"""Allowed values of the probe options, declared once: argparse ``choices``, the estimator's
``_parameter_constraints``, pydantic fields and docs all read these.

Protocol names live with the protocols themselves (:mod:`classifiers.registry`). Importable
without numpy, torch or scikit-learn (``decaf --help`` must stay fast).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal, get_args

ClassifierKind = Literal["logreg", "svm"]
CLASSIFIER_KINDS: tuple[ClassifierKind, ...] = get_args(ClassifierKind)

Backend = Literal["auto", "sklearn", "torch"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)

SearchMode = Literal["auto", "kfold", "holdout"]
SEARCH_MODES: tuple[SearchMode, ...] = get_args(SearchMode)

# class_weight also accepts None (every class weighs 1) and a {class: weight} dict.
ClassWeightMode = Literal["balanced"]
CLASS_WEIGHT_MODES: tuple[ClassWeightMode, ...] = get_args(ClassWeightMode)

FloatDtype = Literal["float32", "float64"]
FLOAT_DTYPES: tuple[FloatDtype, ...] = get_args(FloatDtype)

# What a probe's per-class scores are. An SVM's are margins, not probabilities: calling them
# probabilities (a softmax of margins) would suggest a calibration that was never done.
ScoreKind = Literal["probability", "margin"]
SCORE_KINDS: tuple[ScoreKind, ...] = get_args(ScoreKind)

SCORE_KIND_OF: Mapping[ClassifierKind, ScoreKind] = MappingProxyType(
    {"logreg": "probability", "svm": "margin"}
)
SCORE_KIND_DESCRIPTIONS: Mapping[ScoreKind, str] = MappingProxyType(
    {
        "probability": "class probability of the logistic model (scores sum to 1)",
        "margin": "signed SVM margin per class (uncalibrated: rank by it, do not read it as a "
        "probability)",
    }
)
