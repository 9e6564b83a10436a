"""``decaf store upgrade STORE``: format version 1 -> 2 in place, safe to interrupt.

Version 2 only renames the metadata (``manifest.json`` -> ``_manifest.json``, ``errors.jsonl`` ->
``_errors.jsonl``) and records the engine; the parts are kept as they are (their config hash does
not depend on the format version, so an upgraded incomplete store resumes normally).

Order of the steps, each one a rename or an unlink; the version-2 manifest is the commit point:

1. take the writer lock; validate the version-1 manifest and every listed part's footer;
2. write ``_errors.jsonl`` (a copy of ``errors.jsonl``, if any): the store still opens as
   version 1 (it only looks at ``manifest.json`` while ``_manifest.json`` is absent);
3. write ``_manifest.json`` (version 2): from here the store opens as version 2;
4. remove ``manifest.json`` and ``errors.jsonl``.

A crash before 3 leaves a valid version-1 store; after 3, a valid version-2 store whose
leftovers the next writer or upgrade removes. Rerunning the command is always safe.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from featurizer.atomic import atomic_write, remove_temp_files
from featurizer.errors import StoreError
from featurizer.store.layout import StoreNotFoundError, read_manifest_file, remove_v1_leftovers
from featurizer.store.lock import WriterLock
from featurizer.store.manifest import (
    ERRORS_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    V1_ERRORS_NAME,
    V1_MANIFEST_NAME,
    Manifest,
)
from featurizer.store.store import FeatureStore


@dataclass(frozen=True)
class UpgradeResult:
    path: Path
    from_version: int
    to_version: int
    removed: tuple[str, ...]  # version-1 files removed (leftovers of an interrupted upgrade too)

    @property
    def changed(self) -> bool:
        return self.from_version != self.to_version or bool(self.removed)


def upgrade_store(path: str | Path) -> UpgradeResult:
    """Convert a version-1 store to version 2 in place (a version-2 store: finish or no-op)."""
    root = Path(path)
    if not root.is_dir():
        raise StoreNotFoundError(f"feature store not found: {root}")
    with WriterLock(root):
        remove_temp_files(root)
        if (root / MANIFEST_NAME).is_file():
            current = read_manifest_file(root / MANIFEST_NAME)
            removed = tuple(remove_v1_leftovers(root))
            return UpgradeResult(root, current.format_version, current.format_version, removed)
        if not (root / V1_MANIFEST_NAME).is_file():
            raise StoreError(
                f"{root} is not a feature store (no {MANIFEST_NAME}): nothing to upgrade"
            )
        old = FeatureStore.open(root)  # validates the version-1 manifest
        _check_parts(root, old)
        _copy_errors(root)
        _commit(root, old.manifest)
        removed = tuple(remove_v1_leftovers(root))
    return UpgradeResult(root, old.manifest.format_version, FORMAT_VERSION, removed)


def _check_parts(root: Path, store: FeatureStore) -> None:
    problems = store.problems()
    if problems:
        raise StoreError(
            f"cannot upgrade {root}: " + "; ".join(problems) + ". Re-extract it with "
            "`decaf extract ... --overwrite`"
        )


def _copy_errors(root: Path) -> None:
    source = root / V1_ERRORS_NAME
    if source.is_file():
        atomic_write(root / ERRORS_NAME, source.read_bytes())


def _commit(root: Path, manifest: Manifest) -> None:
    upgraded = dataclasses.replace(manifest, format_version=FORMAT_VERSION)
    atomic_write(root / MANIFEST_NAME, upgraded.to_json())
