"""Downloading an official file: resumable, verified, never mistaken for complete when it is not.

The bytes go to ``<name>.part`` next to the destination. A rerun after an interruption asks the
server for the rest (``Range: bytes=N-``); a server that answers 200 instead of 206 sends the whole
file again and the partial file is restarted. Only a transfer that delivered every byte the server
announced is renamed to its final name, and only a file whose checksums match is used
(:func:`verify_file`).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from classifiers.datasets.errors import ChecksumError, DownloadError
from classifiers.datasets.sources import Digest
from featurizer.progress import ProgressBar

CHUNK_BYTES = 1 << 20
USER_AGENT = "decaf-reproduce/0.1 (dataset download)"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def download(url: str, dest: Path, *, progress: bool = False, timeout: float = 60.0) -> Path:
    """Fetch ``url`` into ``dest``, resuming ``dest.part`` when one exists; returns ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = partial_path(dest)
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            _receive(response, part, have, url, progress)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the partial file is whole
            pass
        else:
            raise DownloadError(f"downloading {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except (OSError, http.client.HTTPException) as exc:  # URLError, reset, timeout, cut body
        kept = part.stat().st_size if part.exists() else 0
        raise DownloadError(
            f"downloading {url} failed after {kept} bytes ({type(exc).__name__}: {exc}); "
            f"the partial file {part} is kept and a rerun resumes it"
        ) from exc
    part.replace(dest)
    return dest


def partial_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _receive(
    response: http.client.HTTPResponse, part: Path, have: int, url: str, progress: bool
) -> None:
    start = _resume_offset(response, have, url)
    length = response.headers.get("Content-Length")
    total = start + int(length) if length is not None else None
    mode = "ab" if start else "wb"
    done = start
    with (
        open(part, mode) as out,
        ProgressBar(enabled=progress, desc=Path(part.name).stem, unit="MiB") as bar,
    ):
        if start:
            out.truncate(start)
        while chunk := response.read(CHUNK_BYTES):
            out.write(chunk)
            done += len(chunk)
            bar.advance_to(done >> 20, total=None if total is None else total >> 20)
        out.flush()
        os.fsync(out.fileno())
    if total is not None and done != total:
        raise DownloadError(
            f"downloading {url} stopped at {done} of {total} bytes; the partial file {part} is "
            "kept and a rerun resumes it"
        )


def _resume_offset(response: http.client.HTTPResponse, have: int, url: str) -> int:
    """Where the body starts in the file: ``have`` for a 206 that continues it, else 0."""
    if response.status != 206:
        return 0  # the server sent the whole file (it ignored or does not support Range)
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    if match is None or int(match[1]) != have:
        raise DownloadError(
            f"{url}: the server answered the range request from byte {have} with "
            f"{response.headers.get('Content-Range')!r}; delete the partial file and rerun"
        )
    return have


def file_digests(path: Path, algorithms: Iterable[str]) -> dict[str, str]:
    """The hex digests of ``path`` for each algorithm, in one pass over the file."""
    hashes = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            for digest in hashes.values():
                digest.update(chunk)
    return {name: digest.hexdigest() for name, digest in hashes.items()}


def verify_file(path: Path, digests: Iterable[Digest]) -> None:
    """Raise :class:`ChecksumError` unless ``path`` matches every published digest."""
    expected = list(digests)
    actual = file_digests(path, {d.algorithm for d in expected})
    wrong = [d for d in expected if actual[d.algorithm] != d.hexdigest]
    if wrong:
        details = "; ".join(
            f"{d.algorithm} {actual[d.algorithm]}, expected {d.hexdigest} (published by {d.source})"
            for d in wrong
        )
        raise ChecksumError(f"{path} is not the official file: {details}")
