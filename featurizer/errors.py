"""Typed errors of the featurizer: each says what was wrong and, where it can, what to do."""

from __future__ import annotations


class DecafError(Exception):
    """Base class of every error this project raises on purpose."""


class ImageDecodeError(DecafError, ValueError):
    """The bytes are not a readable image (empty, truncated, corrupt or not an image at all)."""


class ImageTooLargeError(ImageDecodeError):
    """The image has more pixels than the configured limit (decompression-bomb guard)."""


class WeightsError(DecafError, RuntimeError):
    """Backbone weights cannot be found, downloaded or loaded."""


class UnknownLayerError(DecafError, ValueError):
    """A requested layer tap does not exist for this backbone."""


class StoreError(DecafError, RuntimeError):
    """A feature store is missing, damaged or incompatible with the requested operation."""
