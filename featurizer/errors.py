"""Typed errors of the featurizer: each says what was wrong and, where it can, what to do.

Every error carries the HTTP status the service answers with (``http_status``), so the web layer
renders all of them through one handler and no route maps errors by hand. The CLI derives its
exit status from the same number (:data:`EXIT_STATUSES`, the one table of exit codes; the README
shows it), and prints the message as one line.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
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


class DiskFullError(StoreError):
    """The disk (or quota) filled up while writing; what was written so far is kept."""

    http_status: ClassVar[int] = 507  # Insufficient Storage


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


# --------------------------------------------------------------------------- CLI exit statuses


@dataclass(frozen=True)
class ExitStatus:
    code: int
    meaning: str
    http_statuses: tuple[int, ...] = ()  # the errors' http_status values that exit with it


EXIT_STATUSES: tuple[ExitStatus, ...] = (
    ExitStatus(0, "success"),
    ExitStatus(1, "internal error, a bug: the traceback is printed (please report it)"),
    ExitStatus(2, "usage: unknown command or option, or an option value of the wrong form"),
    ExitStatus(
        3,
        "bad input: an image folder, file, layer, backbone or option value that cannot be used",
        (400, 413, 415, 422),
    ),
    ExitStatus(
        4,
        "conflict: the store is being written by another process, damaged, incomplete or made "
        "with other settings; a probe does not match the features",
        (409,),
    ),
    ExitStatus(5, "not found: the store, probe or file does not exist", (404,)),
    ExitStatus(6, "disk full: free space and rerun the same command (it resumes)", (507,)),
    ExitStatus(
        7,
        "unavailable: the weights cannot be had, or an optional engine (Ray) is not installed",
        (501, 503),
    ),
    ExitStatus(130, "interrupted (Ctrl-C): rerun the same command to resume"),
)
EXIT_INTERNAL, EXIT_USAGE, EXIT_BAD_INPUT, EXIT_CONFLICT = 1, 2, 3, 4
EXIT_NOT_FOUND, EXIT_DISK_FULL, EXIT_UNAVAILABLE, EXIT_INTERRUPTED = 5, 6, 7, 130
_EXIT_OF_HTTP = {status: e.code for e in EXIT_STATUSES for status in e.http_statuses}


def exit_code_of(error: BaseException) -> int:
    """The CLI exit status of an error: from its ``http_status``; OS errors by errno."""
    if isinstance(error, DecafError):
        return _EXIT_OF_HTTP.get(error.http_status, EXIT_BAD_INPUT)
    if isinstance(error, OSError):
        if error.errno in DISK_FULL_ERRNOS:
            return EXIT_DISK_FULL
        if isinstance(error, FileNotFoundError):
            return EXIT_NOT_FOUND
        return EXIT_BAD_INPUT  # permissions, a file where a folder belongs, ...
    return EXIT_INTERNAL


def disk_full(error: OSError, writing: str) -> DiskFullError:
    """The :class:`DiskFullError` for ``error`` raised while writing ``writing``."""
    return DiskFullError(
        f"disk full while writing {writing} ({error.strerror or error}); free space and rerun "
        "the same extraction: it resumes from the parts already written"
    )
