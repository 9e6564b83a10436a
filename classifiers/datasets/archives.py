"""Extracting an official archive so that nothing lands outside its target and nothing
half-extracted ever carries a final name.

Every archive is extracted into a fresh temporary folder beside the target and the wanted folder
is renamed into place only when extraction finished: an interrupted or failed extraction leaves at
most a ``.extracting-*`` folder, which the next run removes. Tar members go through tarfile's
``data`` filter (no absolute paths, no ``..``, no links out of the tree, no device files); zip
members are checked before anything is written, and one bad name refuses the whole archive.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from classifiers.datasets.errors import ArchiveError

TEMP_PREFIX = ".extracting-"


def extract_archive(archive: Path, into: Path) -> None:
    """Extract a ``.tar``, ``.tar.gz``/``.tgz`` or ``.zip`` file into the folder ``into``."""
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, into)
        else:
            with tarfile.open(archive) as tar:
                tar.extractall(into, filter="data")
    except tarfile.FilterError as exc:
        raise ArchiveError(
            f"{archive} has a member that would be written outside the target folder or is not "
            f"a plain file ({exc}); refusing to extract it. Use the official archive."
        ) from exc
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError) as exc:
        raise ArchiveError(
            f"{archive} is damaged or not an archive ({type(exc).__name__}: {exc}); delete it "
            "and rerun to fetch it again, or put an intact copy there"
        ) from exc


def _extract_zip(archive: Path, into: Path) -> None:
    with zipfile.ZipFile(archive) as zipped:
        unsafe = [name for name in zipped.namelist() if not _safe_member(name)]
        if unsafe:
            raise ArchiveError(
                f"{archive} has members that would be written outside the target folder "
                f"({', '.join(unsafe[:3])}); refusing to extract it. Use the official archive."
            )
        bad = zipped.testzip()  # reads every member: a damaged one fails here, not half-way
        if bad is not None:
            raise ArchiveError(f"{archive}: member {bad} is damaged; delete the file and rerun")
        zipped.extractall(into)


def _safe_member(name: str) -> bool:
    path = PurePosixPath(name.replace("\\", "/"))
    drive = ":" in path.parts[0] if path.parts else False
    return bool(path.parts) and not path.is_absolute() and ".." not in path.parts and not drive


@contextmanager
def staging_folder(parent: Path) -> Iterator[Path]:
    """A temporary folder inside ``parent`` (same file system, so a rename is atomic), removed
    on exit whatever happened. Leftovers of a killed run are removed first."""
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(TEMP_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def find_folder(tree: Path, name: str, marker: str | None = None) -> Path | None:
    """The shallowest folder below ``tree`` called ``name`` (holding ``marker`` when given); with
    a ``marker`` and no such folder, the shallowest folder holding the marker (archives that put
    their files at the top level)."""
    candidates = [p for p in tree.rglob(name) if p.is_dir() and not p.is_symlink()]
    if marker is not None:
        candidates = [p for p in candidates if (p / marker).is_file()]
        if not candidates:
            candidates = [p.parent for p in tree.rglob(marker) if p.is_file()]
    return min(candidates, key=lambda p: (len(p.parts), str(p)), default=None)


def find_file(tree: Path, name: str) -> Path | None:
    """The shallowest regular file below ``tree`` called ``name``."""
    found = [p for p in tree.rglob(name) if p.is_file() and not p.is_symlink()]
    return min(found, key=lambda p: (len(p.parts), str(p)), default=None)
