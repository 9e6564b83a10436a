"""Typed errors of the classifiers package (all are DecafError, so the CLI prints them cleanly)."""

from __future__ import annotations

from typing import ClassVar

from featurizer.errors import DecafError


class ProbeError(DecafError, ValueError):
    """A probe cannot be fitted, evaluated, saved or loaded as asked."""

    http_status: ClassVar[int] = 422


class ProbeMismatchError(ProbeError):
    """Features come from a different backbone, weights, layer or preprocessing than the probe."""

    http_status: ClassVar[int] = 409
