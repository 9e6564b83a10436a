"""Typed errors of the dataset files: every one says which file, what was wrong, what to do."""

from __future__ import annotations

from typing import ClassVar

from featurizer.errors import DecafError


class DatasetFileError(DecafError, RuntimeError):
    """A dataset file cannot be found, downloaded, verified or extracted."""

    # The operator must supply or fix the data; nothing a request body can change.
    http_status: ClassVar[int] = 503


class DownloadError(DatasetFileError):
    """The transfer failed (network, server); what arrived is kept for a resumed rerun."""


class ChecksumError(DatasetFileError):
    """A file's bytes do not match the published checksum."""


class ArchiveError(DatasetFileError):
    """An archive is damaged or has a member that would land outside the target folder."""


class DatasetMissingError(DatasetFileError):
    """The dataset is not on disk and cannot be downloaded (offline, or downloads are off)."""
