"""Getting a dataset onto disk: the user's copy first, a verified download otherwise.

For each official file of a :class:`~classifiers.datasets.sources.DatasetSource`, in order:

1. an extracted folder the user already has: ``DATA/<yields>`` (``DATA/101_ObjectCategories``),
   ``DATA/<any>/<yields>`` (``DATA/caltech-101/101_ObjectCategories``), ``DATA`` itself when it
   is that folder, or the folder we extracted before (``DATA/<dataset>/<yields>``);
2. the official archive in ``DATA`` or ``DATA/<dataset>`` (or the nested inner archive, e.g.
   ``101_ObjectCategories.tar.gz``), verified against its published checksums, then extracted;
3. otherwise a download into ``DATA/<dataset>/`` (resumable), verified, then extracted.

Offline, or with downloads turned off, a missing file is a :class:`DatasetMissingError` naming
the file, its checksum, its URL and the folder to put it in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from classifiers.datasets.archives import extract_archive, find_file, find_folder, staging_folder
from classifiers.datasets.download import download, partial_path, verify_file
from classifiers.datasets.errors import (
    ArchiveError,
    ChecksumError,
    DatasetMissingError,
    DownloadError,
)
from classifiers.datasets.sources import SOURCES, DatasetSource, Digest, RemoteFile

DATA_DIR_ENV = "DECAF_DATA_DIR"


@dataclass(frozen=True)
class PreparedDataset:
    """A dataset on disk: the folder each official file yields (``folders[yields]``)."""

    source: DatasetSource
    folders: dict[str, Path]

    @property
    def images(self) -> Path:
        return self.folders[self.source.images]


def default_data_dir() -> Path:
    """``$DECAF_DATA_DIR``, else ``~/.cache/decaf/datasets``."""
    configured = os.environ.get(DATA_DIR_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "decaf" / "datasets"


def prepare_dataset(
    source: DatasetSource | str,
    data_dir: str | Path | None = None,
    *,
    allow_download: bool = True,
    progress: bool = False,
) -> PreparedDataset:
    """Every official file of ``source`` on disk, extracted; see the module docstring."""
    record = SOURCES[source] if isinstance(source, str) else source
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    folders = {
        remote.yields: _ensure(record, remote, root, allow_download, progress)
        for remote in record.files
    }
    return PreparedDataset(record, folders)


def _ensure(
    source: DatasetSource, remote: RemoteFile, root: Path, allow_download: bool, progress: bool
) -> Path:
    home = root / source.folder
    found = existing_folder(root, home, remote)
    if found is not None:
        return found
    local = _local_archive(root, home, remote)
    if local is not None:
        archive, digests = local
        verify_file(archive, digests)  # the user's file: a mismatch keeps it and says so
    else:
        archive = _fetch(source, remote, root, home, allow_download, progress)
    target = home / remote.yields
    _extract_into(archive, remote, target)
    return target


def existing_folder(root: Path, home: Path, remote: RemoteFile) -> Path | None:
    """An already extracted folder for ``remote`` (see the module docstring), or None."""
    candidates = [root] if root.name == remote.yields else []
    candidates += [root / remote.yields, home / remote.yields]
    if root.is_dir():
        candidates += sorted(child / remote.yields for child in root.iterdir() if child.is_dir())
    if remote.loose:
        candidates += [root, home]
    return next((c for c in candidates if _looks_extracted(c, remote)), None)


def _looks_extracted(folder: Path, remote: RemoteFile) -> bool:
    if not folder.is_dir():
        return False
    if remote.marker is not None:
        return (folder / remote.marker).is_file()
    return any(child.is_dir() for child in folder.iterdir())  # an image tree has class folders


def _local_archive(
    root: Path, home: Path, remote: RemoteFile
) -> tuple[Path, tuple[Digest, ...]] | None:
    for folder in (root, home):
        if (folder / remote.filename).is_file():
            return folder / remote.filename, remote.digests
    if remote.nested is not None:
        for folder in (root, home):
            if (folder / remote.nested).is_file():
                return folder / remote.nested, remote.nested_digests
    return None


def _fetch(
    source: DatasetSource,
    remote: RemoteFile,
    root: Path,
    home: Path,
    allow_download: bool,
    progress: bool,
) -> Path:
    dest = home / remote.filename
    if not allow_download:
        raise DatasetMissingError(missing_message(source, remote, root, "downloads are off"))
    try:
        download(remote.url, dest, progress=progress)
    except DownloadError as exc:
        raise DatasetMissingError(missing_message(source, remote, root, str(exc))) from exc
    try:
        verify_file(dest, remote.digests)
    except ChecksumError as exc:
        dest.unlink()  # our own download, not the user's file: a rerun fetches it afresh
        raise ChecksumError(f"{exc}. The download was deleted; rerun to fetch it again.") from exc
    return dest


def missing_message(source: DatasetSource, remote: RemoteFile, root: Path, why: str) -> str:
    checksum = ", ".join(f"{d.algorithm} {d.hexdigest}" for d in remote.digests)
    part = partial_path(root / source.folder / remote.filename)
    resume = f" A partial download in {part} resumes on the next run." if part.exists() else ""
    return (
        f"{source.title} is not on disk and could not be downloaded ({why}). Put the official "
        f"file {remote.filename} ({checksum}; from {remote.url}) or its extracted folder "
        f"{remote.yields}/ into {root}, then rerun (or pass --data-dir where it is).{resume}"
    )


def _extract_into(archive: Path, remote: RemoteFile, target: Path) -> None:
    """Extract ``archive`` in a staging folder, then rename the wanted folder to ``target``."""
    with staging_folder(target.parent) as stage:
        extract_archive(archive, stage / "outer")
        found = _wanted_folder(stage / "outer", remote)
        if found is None and remote.nested is not None:
            inner = find_file(stage / "outer", remote.nested)
            if inner is not None:
                extract_archive(inner, stage / "inner")
                found = _wanted_folder(stage / "inner", remote)
        if found is None:
            raise ArchiveError(
                f"{archive} does not contain the folder {remote.yields}/"
                + (f" with {remote.marker}" if remote.marker else "")
                + "; it is not the official archive. Delete it and rerun."
            )
        found.rename(target)


def _wanted_folder(tree: Path, remote: RemoteFile) -> Path | None:
    if remote.loose:
        return find_folder(tree, remote.yields, remote.marker)
    found = find_folder(tree, remote.yields)
    if found is not None and remote.marker is not None and not (found / remote.marker).is_file():
        return None
    return found
