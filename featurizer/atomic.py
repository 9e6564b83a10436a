"""Write-then-rename: a file that exists under its final name is complete.

One helper for every file the project writes for others to read (store manifest and parts, saved
probes). The temporary name starts with ``.`` so Parquet readers and image-folder scans skip it,
and carries the process and thread ids so concurrent writers never share one. Atomic against a
crashed or killed process (``os.replace`` is atomic on POSIX); no ``fsync``: a power cut may still
lose the last files, which a resumed extraction rewrites.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

TEMP_MARKER = ".tmp-"


def temp_path_for(final: str | Path) -> Path:
    """The temporary sibling of ``final`` this process and thread write before renaming."""
    path = Path(final)
    return path.with_name(f".{path.name}{TEMP_MARKER}{os.getpid()}-{threading.get_ident()}")


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and TEMP_MARKER in name


def remove_temp_files(directory: str | Path) -> None:
    """Delete leftovers of writes interrupted before their rename (e.g. a killed run)."""
    for entry in Path(directory).glob(f".*{TEMP_MARKER}*"):
        entry.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed to ``final``, else removed.

    For writers that want a path rather than bytes (``pyarrow.parquet.write_table``).
    """
    tmp = temp_path_for(final)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(
    path: str | Path, data: bytes | str | Callable[[BinaryIO], object], *, encoding: str = "utf-8"
) -> None:
    """Write ``data`` (bytes, text, or a function writing to a binary handle) atomically."""
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        if callable(data):
            data(handle)
        else:
            handle.write(data.encode(encoding) if isinstance(data, str) else data)
