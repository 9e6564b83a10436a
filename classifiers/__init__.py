"""Linear probes on DeCAF features and the papers' evaluation protocols.

Public API: :class:`LinearProbe`, :func:`evaluate`, :func:`few_shot_curve`, :func:`save_probe`,
:func:`load_probe`, :func:`check_compatible`, and the typed errors.
"""

from classifiers.errors import ProbeError, ProbeMismatchError
from classifiers.persistence import (
    check_compatible,
    load_probe,
    provenance_from_featurizer,
    provenance_from_manifest,
    save_probe,
)
from classifiers.probe import LinearProbe, mean_per_class_accuracy
from classifiers.protocols import (
    PROTOCOLS,
    ProtocolResult,
    Split,
    SplitResult,
    evaluate,
    few_shot_curve,
    make_splits,
)

__all__ = [
    "PROTOCOLS",
    "LinearProbe",
    "ProbeError",
    "ProbeMismatchError",
    "ProtocolResult",
    "Split",
    "SplitResult",
    "check_compatible",
    "evaluate",
    "few_shot_curve",
    "load_probe",
    "make_splits",
    "mean_per_class_accuracy",
    "provenance_from_featurizer",
    "provenance_from_manifest",
    "save_probe",
]
