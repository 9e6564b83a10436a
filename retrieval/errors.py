"""Typed errors of retrieval: each says what was wrong, with which index or store, and what to do.

Each carries the HTTP status the service answers with (see :class:`featurizer.errors.DecafError`).
"""

from __future__ import annotations

from typing import ClassVar

from featurizer.errors import DecafError


class RetrievalError(DecafError):
    """Base of the retrieval errors (never confused with the builtin ``IndexError``)."""

    http_status: ClassVar[int] = 409


class IndexMissingError(RetrievalError, LookupError):
    """The store has no index (of the requested layer): it must be built first."""

    http_status: ClassVar[int] = 404


class IndexStaleError(RetrievalError):
    """The store changed since the index was built: rebuild it."""

    http_status: ClassVar[int] = 409


class IndexMismatchError(RetrievalError):
    """The index, or the model extracting the queries, belongs to another backbone, weights,
    preprocessing or layer than the store."""

    http_status: ClassVar[int] = 409


class IndexCorruptError(RetrievalError):
    """The index files cannot be read (truncated, overwritten, foreign): rebuild it."""

    http_status: ClassVar[int] = 409


class InvalidIndexOptionError(RetrievalError, ValueError):
    """An index parameter that cannot work with this store (e.g. ``--dim`` above the layer's)."""

    http_status: ClassVar[int] = 422


class IndexBuildCancelled(RetrievalError):
    """The build was asked to stop (a cancelled service job); nothing was written."""

    http_status: ClassVar[int] = 409
