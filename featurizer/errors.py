"""Typed errors of the featurizer: each says what was wrong and, where it can, what to do.

Every error carries the HTTP status the service answers with (``http_status``), so the web layer
renders all of them through one handler and no route maps errors by hand. The CLI ignores it and
prints the message.
"""

from __future__ import annotations

from typing import ClassVar


class DecafError(Exception):
    """Base class of every error this project raises on purpose (a user-caused problem: 400)."""

    http_status: ClassVar[int] = 400


class ImageDecodeError(DecafError, ValueError):
    """The bytes are not a readable image (empty, truncated, corrupt or not an image at all)."""

    http_status: ClassVar[int] = 422


class ImageTooLargeError(ImageDecodeError):
    """The image has more pixels than the configured limit (decompression-bomb guard)."""

    http_status: ClassVar[int] = 413


class WeightsError(DecafError, RuntimeError):
    """Backbone weights cannot be found, downloaded or loaded."""

    # The server cannot do its job until an operator supplies the weights: not the client's fault.
    http_status: ClassVar[int] = 503


class UnknownLayerError(DecafError, ValueError):
    """A requested layer tap does not exist for this backbone."""

    http_status: ClassVar[int] = 422


class UnknownBackboneError(DecafError, ValueError):
    """A requested backbone is not registered (or not loaded by this server)."""

    http_status: ClassVar[int] = 422


class StoreError(DecafError, RuntimeError):
    """A feature store is missing, damaged or incompatible with the requested operation."""

    http_status: ClassVar[int] = 409
