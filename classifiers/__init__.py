"""Linear probes on DeCAF features and the papers' evaluation protocols.

Public API: :class:`LinearProbe`, :func:`make_probe`, :func:`evaluate`, :func:`few_shot_curve`,
:func:`save_probe`, :func:`load_probe`, :func:`check_compatible`, the protocol registry and the
typed errors. Names are imported on first use (PEP 562): ``import classifiers`` loads neither
scikit-learn nor torch, so ``decaf --help`` stays fast.
"""

from __future__ import annotations

from featurizer.lazy import lazy_exports

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "ProbeError": "classifiers.errors",
    "ProbeMismatchError": "classifiers.errors",
    "check_compatible": "classifiers.persistence",
    "load_probe": "classifiers.persistence",
    "provenance_from_featurizer": "classifiers.persistence",
    "provenance_from_manifest": "classifiers.persistence",
    "save_probe": "classifiers.persistence",
    "LinearProbe": "classifiers.probe",
    "make_probe": "classifiers.probe",
    "mean_per_class_accuracy": "classifiers.probe",
    "LabelledRows": "classifiers.data",
    "labelled_rows": "classifiers.data",
    "PROTOCOLS": "classifiers.registry",
    "PROTOCOL_NAMES": "classifiers.registry",
    "get_protocol": "classifiers.registry",
    "ProtocolResult": "classifiers.protocols",
    "SplitResult": "classifiers.protocols",
    "evaluate": "classifiers.protocols",
    "few_shot_curve": "classifiers.protocols",
    "make_splits": "classifiers.protocols",
    "Split": "classifiers.splits",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
