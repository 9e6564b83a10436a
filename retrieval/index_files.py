"""An index on disk, beside its store: ``STORE/_index/<name>/index.faiss`` + ``index.json``.

``_index`` starts with ``_``, so every Parquet reader pointed at the store skips it. Both files are
written under a temporary name and renamed (index first, record last): a record that exists
describes an index that exists. The record says what the index was built from (the store's
fingerprint, backbone, weights, preprocessing, layer) and how (the recipe), so an index of a
store that changed since, or of another model, is refused instead of answering wrong neighbours.
FAISS's own serialisation is used for the index (no pickle).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurizer.atomic import atomic_path, atomic_write
from featurizer.store import FeatureStore, Manifest
from retrieval.errors import (
    IndexCorruptError,
    IndexMismatchError,
    IndexMissingError,
    IndexStaleError,
)

if TYPE_CHECKING:
    import faiss

INDEX_DIR = "_index"
INDEX_FILE = "index.faiss"
RECORD_FILE = "index.json"
RECORD_FORMAT = "decaf-retrieval-index"
RECORD_VERSION = 1
# What must match between an index and the store it is used with (besides the fingerprint).
MODEL_KEYS = ("backbone", "weights_id", "weights_sha256", "preprocessing")


def index_root(store_path: str | Path) -> Path:
    return Path(store_path) / INDEX_DIR


def build_command(store_path: str | Path, layer: str | None) -> str:
    return f"decaf index build {store_path} --layer {layer or 'LAYER'}"


@dataclass(frozen=True)
class IndexRecord:
    """The parsed ``index.json``: where the index came from and how it was built."""

    path: Path  # the index directory
    data: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def layer(self) -> str:
        return str(self.data["layer"])

    @property
    def rows(self) -> int:
        return int(self.data["rows"])

    @property
    def recipe(self) -> dict[str, Any]:
        return dict(self.data["recipe"])

    @property
    def index_file(self) -> Path:
        return self.path / INDEX_FILE

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), **self.data}


def model_identity(manifest: Manifest) -> dict[str, Any]:
    return {key: json.loads(json.dumps(getattr(manifest, key))) for key in MODEL_KEYS}


def write_index(directory: Path, index: faiss.Index, data: dict[str, Any]) -> IndexRecord:
    """Write ``index.faiss`` then ``index.json`` (each via a temporary name and a rename)."""
    import faiss

    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / INDEX_FILE) as tmp:
        faiss.write_index(index, str(tmp))
    data = {**data, "index_bytes": os.path.getsize(directory / INDEX_FILE)}
    payload = {"format": RECORD_FORMAT, "format_version": RECORD_VERSION, **data}
    atomic_write(directory / RECORD_FILE, json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return IndexRecord(directory, payload)


def read_record(directory: Path) -> IndexRecord:
    path = directory / RECORD_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise IndexMissingError(f"no index record at {path}") from exc
    except (OSError, ValueError) as exc:
        raise IndexCorruptError(
            f"{path} is not readable JSON ({exc}); {_rebuild_hint(directory)}"
        ) from exc
    required = {"layer", "rows", "recipe", "store_fingerprint", *MODEL_KEYS}
    if (
        not isinstance(data, dict)
        or data.get("format") != RECORD_FORMAT
        or not required <= set(data)
    ):
        raise IndexCorruptError(
            f"{path} is not a decaf index record (missing format or fields); "
            f"{_rebuild_hint(directory)}"
        )
    if data.get("format_version", 0) > RECORD_VERSION:
        raise IndexCorruptError(
            f"{path} was written by a newer decaf (index format {data['format_version']}); "
            "upgrade decaf or rebuild the index"
        )
    return IndexRecord(directory, data)


def _rebuild_hint(directory: Path) -> str:
    return f"rebuild it with `{build_command(directory.parent.parent, None)} --rebuild`"


def list_records(store_path: str | Path) -> list[IndexRecord]:
    """Every index of the store (unreadable records raise IndexCorruptError naming the file)."""
    root = index_root(store_path)
    if not root.is_dir():
        return []
    return [
        read_record(entry)
        for entry in sorted(root.iterdir())
        if entry.is_dir() and not entry.name.startswith(".") and (entry / RECORD_FILE).exists()
    ]


def find_record(store: FeatureStore, layer: str | None = None) -> IndexRecord:
    """The newest index of ``layer`` (any layer when None), checked against the store."""
    records = list_records(store.path)
    matching = [r for r in records if layer is None or r.layer == layer]
    if not matching:
        built = ", ".join(f"{r.name} (layer {r.layer})" for r in records) or "none"
        what = f"of layer {layer!r}" if layer else "at all"
        raise IndexMissingError(
            f"store {store.path} has no index {what} (indexes: {built}); build one with "
            f"`{build_command(store.path, layer)}`"
        )
    record = max(matching, key=lambda r: str(r.data.get("built_at", "")))
    check_record(record, store)
    return record


def check_record(record: IndexRecord, store: FeatureStore) -> None:
    """Refuse an index of another model or layer, or of an older state of the store."""
    manifest = store.manifest
    ours = model_identity(manifest)
    differing = [key for key in MODEL_KEYS if record.data.get(key) != ours[key]]
    if differing or record.layer not in manifest.layers:
        details = (
            ", ".join(
                f"{key}: index {record.data.get(key)!r} vs store {ours[key]!r}" for key in differing
            )
            or f"layer {record.layer!r} is not in the store"
        )
        raise IndexMismatchError(
            f"index {record.path} was built from other features than store {store.path} holds "
            f"({details}); rebuild it with `{build_command(store.path, record.layer)} --rebuild`"
        )
    if record.data["store_fingerprint"] != store.fingerprint():
        raise IndexStaleError(
            f"store {store.path} changed since index {record.name} was built (at "
            f"{record.data.get('built_at')}); rebuild it with "
            f"`{build_command(store.path, record.layer)} --rebuild`"
        )


def read_index(record: IndexRecord) -> faiss.Index:
    """The FAISS index of ``record``; a damaged file is an IndexCorruptError, never a crash."""
    import faiss

    path = record.index_file
    hint = f"rebuild it with `{build_command(record.path.parent.parent, record.layer)} --rebuild`"
    if not path.is_file():
        raise IndexCorruptError(f"index file {path} is missing; {hint}")
    size = path.stat().st_size
    if size != record.data.get("index_bytes"):
        raise IndexCorruptError(
            f"index file {path} has {size} bytes, its record says {record.data.get('index_bytes')}"
            f" (overwritten or truncated); {hint}"
        )
    try:
        index = faiss.read_index(str(path))
    except (RuntimeError, MemoryError) as exc:  # FAISS raises RuntimeError for bad files
        first = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__
        raise IndexCorruptError(f"index file {path} cannot be read ({first}); {hint}") from exc
    if index.ntotal != record.rows or index.d != record.recipe["dim_in"]:
        raise IndexCorruptError(
            f"index file {path} holds {index.ntotal} vectors of {index.d} dimensions, its record "
            f"says {record.rows} of {record.recipe['dim_in']}; {hint}"
        )
    return index
