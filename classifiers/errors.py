"""Typed errors of the classifiers package (all are DecafError, so the CLI prints them cleanly)."""

from __future__ import annotations

from featurizer.errors import DecafError


class ProbeError(DecafError, ValueError):
    """A probe cannot be fitted, evaluated, saved or loaded as asked."""


class ProbeMismatchError(ProbeError):
    """Features come from a different backbone, weights, layer or preprocessing than the probe."""
