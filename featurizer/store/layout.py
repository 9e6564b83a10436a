"""Which files make a store, and what a writer finds in a directory before it starts.

Both layouts are known here: version 2 (``_manifest.json``, ``_errors.jsonl``) and version 1
(``manifest.json``, ``errors.jsonl``, read-only). The version-2 manifest wins when both exist:
it is the commit point of ``decaf store upgrade``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from featurizer.atomic import remove_temp_files
from featurizer.errors import StoreError
from featurizer.store.manifest import (
    DAMAGED_HINT,
    ERRORS_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    RESUME_KEYS,
    V1_ERRORS_NAME,
    V1_MANIFEST_NAME,
    Manifest,
    RunInfo,
    StoreConfig,
    part_name,
)
from featurizer.store.parts import PartFooter, existing_part_files, read_part_footer


class StoreNotFoundError(StoreError):
    """No store at that path (no directory, or no manifest in it)."""

    http_status: ClassVar[int] = 404


def read_manifest_file(path: Path) -> Manifest:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"cannot read {path}: {exc}") from exc
    return Manifest.from_json(text, source=str(path))


def read_manifest_of(root: Path) -> Manifest:
    """The manifest of either layout; the version-2 name wins (it is the upgrade's commit)."""
    if not root.is_dir():
        raise StoreNotFoundError(f"feature store not found: {root}")
    for name, version in ((MANIFEST_NAME, FORMAT_VERSION), (V1_MANIFEST_NAME, 1)):
        path = root / name
        if path.is_file():
            manifest = read_manifest_file(path)
            if manifest.format_version != version:
                raise StoreError(
                    f"{path} says format version {manifest.format_version}, but {name} belongs "
                    f"to version {version}; {DAMAGED_HINT}"
                )
            return manifest
    raise StoreNotFoundError(f"{root} is not a feature store (no {MANIFEST_NAME})")


def writer_start(root: Path, config: StoreConfig, run: RunInfo, mode: str) -> Manifest:
    """The manifest a writer starts from: a new one, or the existing one checked against config."""
    has_v2 = (root / MANIFEST_NAME).is_file()
    if not has_v2 and (root / V1_MANIFEST_NAME).is_file():
        raise StoreError(
            f"{root} is a format-version-1 store, which this decaf only reads: convert it in "
            f"place with `decaf store upgrade {root}` and rerun (or use --overwrite to start "
            "afresh)"
        )
    if has_v2:
        if mode == "create":
            raise StoreError(
                f"{root} already holds a feature store; resume it, or use --overwrite to replace it"
            )
        old = read_manifest_file(root / MANIFEST_NAME)
        _check_same_config(root, old.config, config)
        remove_v1_leftovers(root)
        return old
    if existing_part_files(root):
        raise StoreError(
            f"{root} holds feature-store parts but no {MANIFEST_NAME}; use --overwrite to start "
            "afresh or choose another --out"
        )
    if mode == "resume":
        raise StoreNotFoundError(
            f"nothing to resume: {root} is not a feature store (no {MANIFEST_NAME})"
        )
    return Manifest.new(config, run, created_at=now())


def _check_same_config(root: Path, old: StoreConfig, new: StoreConfig) -> None:
    before, now = old.resume_dict(), new.resume_dict()
    differing = [key for key in RESUME_KEYS if before[key] != now[key]]
    if differing:
        details = "; ".join(
            f"{key}: store has {_short(before[key])}, now {_short(now[key])}" for key in differing
        )
        raise StoreError(
            f"cannot resume {root}: it was made with a different configuration ({details}). "
            "Use --overwrite to replace it, or choose another --out."
        )


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def validated_part(path: Path, config: StoreConfig) -> PartFooter:
    footer = read_part_footer(path)
    if path.name != part_name(footer.index) or not 0 <= footer.index < config.num_parts:
        raise StoreError(f"unexpected part {path.name} in {path.parent}; use --overwrite")
    start, end = config.part_range(footer.index)
    if footer.config_sha256 != config.sha256() or footer.rows + len(footer.errors) != end - start:
        raise StoreError(
            f"{path} was written with a different configuration; use --overwrite to start afresh"
        )
    return footer


def clear_store(store: str | Path) -> None:
    """Remove every file a store consists of (and only those); the lock file stays."""
    root = Path(store)
    if not root.is_dir():
        return
    remove_temp_files(root)
    for part in existing_part_files(root):
        part.unlink()
    for name in (MANIFEST_NAME, ERRORS_NAME, V1_MANIFEST_NAME, V1_ERRORS_NAME):
        (root / name).unlink(missing_ok=True)


def remove_v1_leftovers(root: Path) -> list[str]:
    """Version-1 metadata left beside a version-2 manifest by an interrupted upgrade."""
    removed = []
    if (root / MANIFEST_NAME).is_file():
        for name in (V1_MANIFEST_NAME, V1_ERRORS_NAME):
            if (root / name).exists():
                (root / name).unlink()
                removed.append(name)
    return removed


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
