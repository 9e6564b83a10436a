"""Safe resolution of user-given paths and names.

Batch extraction reads directories named by HTTP clients, so a root is accepted only when its
fully resolved form (symlinks followed, `..` collapsed) lies inside one of the configured
`DECAF_DATA_ROOTS`. Relative roots are looked up inside each allowed root in turn, which lets a
client say `{"root": "caltech101"}` without knowing the server's mount points.
Dataset and probe names become directory names, so they are restricted to a safe alphabet.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from featurizer.errors import DecafError
from service.echo import echo

# One definition each, used by the request schemas, the path parameters (and so the OpenAPI
# `pattern`) and `validate_name`.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_NAME_RE = re.compile(NAME_PATTERN)
# Job and probe ids are `uuid.uuid4().hex` (service.jobs, service.probe_store).
ID_PATTERN = r"^[0-9a-f]{32}$"
# Longer than any path the OS accepts (Linux PATH_MAX is 4096 bytes).
MAX_PATH_CHARS = 4096


class ServicePathError(DecafError, ValueError):
    """Base of the path errors below: a path or name the server cannot use."""

    http_status: ClassVar[int] = 400


class PathNotAllowedError(ServicePathError, PermissionError):
    """The path resolves outside every allowed data root (or no root is configured)."""

    http_status: ClassVar[int] = 403


class DataRootNotFoundError(ServicePathError, FileNotFoundError):
    """The path is allowed but does not exist or is not a directory."""

    http_status: ClassVar[int] = 404


class InvalidNameError(ServicePathError):
    """A dataset/probe name that cannot safely be used as a directory name."""

    http_status: ClassVar[int] = 400


def allowed_roots(data_roots: Sequence[Path | str]) -> list[Path]:
    """The configured roots, absolute with symlinks resolved (missing ones are dropped)."""
    roots = []
    for root in data_roots:
        try:
            roots.append(Path(root).expanduser().resolve(strict=True))
        except OSError:
            continue  # a root that does not exist cannot contain anything
    return roots


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def _candidates(user_path: str, roots: Sequence[Path]) -> list[Path]:
    given = Path(user_path).expanduser()
    if given.is_absolute():
        return [given]
    return [root / given for root in roots]


def resolve_data_root(user_path: str, data_roots: Sequence[Path | str]) -> Path:
    """Resolve `user_path` to an existing directory inside one of `data_roots`.

    Raises PathNotAllowedError (outside every root, via `..`, an absolute path or a symlink) and
    DataRootNotFoundError (inside, but missing or not a directory).
    """
    if not user_path or "\x00" in user_path:
        raise ServicePathError("root must be a non-empty path")
    roots = allowed_roots(data_roots)
    if not roots:
        raise PathNotAllowedError(
            "batch extraction is disabled: no data roots are configured; set DECAF_DATA_ROOTS "
            "to the directories the server may read (e.g. DECAF_DATA_ROOTS=/data/images)"
        )
    allowed_text = ", ".join(str(root) for root in roots)
    missing: Path | None = None
    for candidate in _candidates(user_path, roots):
        # Lexical check first, so probing paths outside the roots reveals nothing about them.
        if not _inside(candidate.resolve(strict=False), roots):
            continue
        try:
            resolved = candidate.resolve(strict=True)
        except (OSError, RuntimeError):  # RuntimeError: symlink loop
            missing = missing or candidate
            continue
        # Checked again after following symlinks: a link inside a root may point outside.
        if not _inside(resolved, roots):
            continue
        if not resolved.is_dir():
            raise DataRootNotFoundError(f"root {echo(user_path)} is not a directory")
        return resolved
    if missing is not None:
        raise DataRootNotFoundError(f"root {echo(user_path)} does not exist inside the data roots")
    raise PathNotAllowedError(
        f"root {echo(user_path)} is outside the allowed data roots ({allowed_text}); "
        "paths may not leave them via '..', absolute paths or symlinks"
    )


def validate_name(name: str, what: str = "name") -> str:
    """Return `name` if it is safe as a single directory name, else raise InvalidNameError."""
    if not _NAME_RE.fullmatch(name or ""):
        raise InvalidNameError(
            f"invalid {what} {echo(name)}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name
