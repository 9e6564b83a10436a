"""The feature store: a directory of Parquet parts plus a JSON manifest (format version 1).

Layout::

    STORE/manifest.json          what produced the features (backbone, weights, preprocessing,
                                 layers + dims, ...), counts, classes, parts, complete flag
    STORE/part-00000.parquet     rows: path (string), label (string, null = unlabeled),
    STORE/part-00001.parquet     one fixed_size_list<float32>[dim] column per layer
    STORE/errors.jsonl           one {"path", "label", "error"} object per unreadable file

Part ``k`` holds records ``[k * part_size, (k + 1) * part_size)`` of the sorted file list minus
the files that could not be read; those are kept in the part's Parquet key-value metadata, so
``errors.jsonl`` and the manifest can be rebuilt exactly from the parts after a resumed run.
Every file is written under a temporary name and ``os.replace``'d into place: a part that
exists is complete. pandas, DuckDB, Ray or Spark can read the parts directly.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from featurizer.errors import StoreError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
ERRORS_NAME = "errors.jsonl"
PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
TMP_MARKER = ".tmp-"
# Parquet key-value metadata keys of a part.
META_PART = b"decaf.part"
META_ERRORS = b"decaf.errors"
META_CONFIG = b"decaf.config_sha256"
# snappy: ~3x faster to write than zstd-1 for ~15% more disk (ReLU zeros compress either way).
COMPRESSION = "snappy"

ErrorEntry = dict[str, Any]  # {"path": str, "label": str | None, "error": str}


def part_name(index: int) -> str:
    return f"{PART_PREFIX}{index:05d}{PART_SUFFIX}"


def _temp_name(final: Path) -> Path:
    # Unique per process and thread: concurrent writers never share a temporary file.
    return final.with_name(f".{final.name}{TMP_MARKER}{os.getpid()}-{threading.get_ident()}")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = _temp_name(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def remove_temp_files(store: str | Path) -> None:
    """Delete leftovers of writes interrupted before their rename (e.g. a killed run)."""
    for entry in Path(store).glob(f".*{TMP_MARKER}*"):
        entry.unlink(missing_ok=True)


def clear_store(store: str | Path) -> None:
    """Remove every file this module writes (and only those) from ``store``."""
    root = Path(store)
    if not root.is_dir():
        return
    remove_temp_files(root)
    for entry in root.glob(f"{PART_PREFIX}*{PART_SUFFIX}"):
        entry.unlink()
    for name in (MANIFEST_NAME, ERRORS_NAME):
        (root / name).unlink(missing_ok=True)


def existing_part_files(store: str | Path) -> list[Path]:
    return sorted(Path(store).glob(f"{PART_PREFIX}*{PART_SUFFIX}"))


# --------------------------------------------------------------------------- writing


def features_to_arrow(features: np.ndarray) -> pa.FixedSizeListArray:
    """(N, dim) float array -> fixed_size_list<float32>[dim] without Python objects."""
    matrix = np.ascontiguousarray(features, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"features must be 2-D (N, dim), got shape {matrix.shape}")
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def part_schema(layer_dims: Mapping[str, int]) -> pa.Schema:
    fields = [pa.field("path", pa.string(), nullable=False), pa.field("label", pa.string())]
    fields += [pa.field(name, pa.list_(pa.float32(), dim)) for name, dim in layer_dims.items()]
    return pa.schema(fields)


def write_part(
    store: str | Path,
    index: int,
    *,
    paths: Sequence[str],
    labels: Sequence[str | None],
    features: Mapping[str, np.ndarray],
    layer_dims: Mapping[str, int],
    errors: Sequence[ErrorEntry],
    config_sha256: str,
) -> Path:
    """Write part ``index`` atomically; returns its path."""
    schema = part_schema(layer_dims).with_metadata(
        {
            META_PART: str(index).encode(),
            META_ERRORS: json.dumps(list(errors), ensure_ascii=False, sort_keys=True).encode(),
            META_CONFIG: config_sha256.encode(),
        }
    )
    columns: list[pa.Array] = [pa.array(paths, pa.string()), pa.array(labels, pa.string())]
    for name, dim in layer_dims.items():
        array = features[name]
        if array.shape != (len(paths), dim):
            raise ValueError(f"layer {name}: expected shape {(len(paths), dim)}, got {array.shape}")
        columns.append(features_to_arrow(array))
    table = pa.Table.from_arrays(columns, schema=schema)
    final = Path(store) / part_name(index)
    tmp = _temp_name(final)
    pq.write_table(
        table,
        tmp,
        compression=COMPRESSION,
        use_dictionary=["label"],
        write_statistics=["path", "label"],
    )
    os.replace(tmp, final)
    return final


def write_manifest(store: str | Path, manifest: Mapping[str, Any]) -> None:
    text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    _atomic_write_bytes(Path(store) / MANIFEST_NAME, text.encode("utf-8"))


def write_errors(store: str | Path, errors: Iterable[ErrorEntry]) -> None:
    lines = [json.dumps(e, ensure_ascii=False, sort_keys=True) + "\n" for e in errors]
    _atomic_write_bytes(Path(store) / ERRORS_NAME, "".join(lines).encode("utf-8"))


# --------------------------------------------------------------------------- reading parts


def read_part_info(path: str | Path) -> dict[str, Any]:
    """Footer-only read of a part: rows, part index, errors and config hash."""
    try:
        meta = pq.read_metadata(path)
    except (OSError, pa.ArrowException) as exc:
        raise StoreError(f"damaged feature-store part {path}: {exc}") from exc
    kv = meta.metadata or {}
    try:
        return {
            "file": Path(path).name,
            "rows": meta.num_rows,
            "index": int(kv[META_PART]),
            "errors": json.loads(kv[META_ERRORS]),
            "config_sha256": kv[META_CONFIG].decode(),
        }
    except (KeyError, ValueError) as exc:
        raise StoreError(f"{path} is not a decaf feature-store part (metadata {exc})") from exc


def read_manifest(store: str | Path) -> dict:
    path = Path(store) / MANIFEST_NAME
    if not Path(store).is_dir():
        raise StoreError(f"feature store not found: {store}")
    if not path.is_file():
        raise StoreError(f"{store} is not a feature store (no {MANIFEST_NAME})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read {path}: {exc}") from exc
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise StoreError(
            f"{store}: unsupported store format version {version!r} (this decaf reads "
            f"{FORMAT_VERSION})"
        )
    return manifest


def read_errors(store: str | Path) -> list[ErrorEntry]:
    path = Path(store) / ERRORS_NAME
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_features(
    store: str | Path, layer: str, *, allow_incomplete: bool = False
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Load one layer as ``(X float32 (N, dim) C-contiguous, y object labels, paths)``.

    Reads only the ``path``, ``label`` and ``layer`` columns of each part and copies the
    features straight from Arrow's flat buffer into one preallocated matrix, so peak memory is
    about the size of X plus one part.
    """
    manifest = read_manifest(store)
    if not manifest.get("complete") and not allow_incomplete:
        raise StoreError(
            f"feature store {store} is incomplete (extraction interrupted?): rerun the same "
            "`decaf extract` command to resume it"
        )
    layers = manifest.get("layers", {})
    if layer not in layers:
        raise StoreError(
            f"layer {layer!r} is not in store {store}; available: {', '.join(layers) or 'none'}"
        )
    dim = int(layers[layer])
    parts = manifest.get("parts", [])
    total = sum(int(p["rows"]) for p in parts)
    X = np.empty((total, dim), dtype=np.float32)
    y = np.empty(total, dtype=object)
    paths: list[str] = []
    row = 0
    for part in parts:
        table = _read_part_columns(Path(store) / part["file"], ["path", "label", layer])
        if table.num_rows != int(part["rows"]) or row + table.num_rows > total:
            raise StoreError(
                f"{part['file']} has {table.num_rows} rows, manifest says {part['rows']}"
            )
        _fill_matrix(X, row, table.column(layer), dim)
        y[row : row + table.num_rows] = table.column("label").to_numpy(zero_copy_only=False)
        paths.extend(table.column("path").to_pylist())
        row += table.num_rows
    return X, y, paths


def _read_part_columns(path: Path, columns: list[str]) -> pa.Table:
    if not path.is_file():
        raise StoreError(f"feature-store part missing: {path}")
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as exc:
        raise StoreError(f"cannot read feature-store part {path}: {exc}") from exc


def _fill_matrix(X: np.ndarray, start: int, column: pa.ChunkedArray, dim: int) -> None:
    row = start
    for chunk in column.chunks:
        if chunk.null_count:
            raise StoreError("feature column contains nulls")
        # flatten() honours slicing offsets (chunk.values would not); float16 is upcast by numpy.
        flat = chunk.flatten().to_numpy(zero_copy_only=False)
        X[row : row + len(chunk)] = flat.reshape(len(chunk), dim)
        row += len(chunk)


def class_counts(store: str | Path, manifest: Mapping[str, Any] | None = None) -> dict[str, int]:
    """Rows per label (reads only the label column); unlabeled rows count under ``"<none>"``."""
    manifest = manifest if manifest is not None else read_manifest(store)
    counts: Counter[str] = Counter()
    for part in manifest.get("parts", []):
        labels = _read_part_columns(Path(store) / part["file"], ["label"]).column("label")
        # value_counts stays in Arrow: no Python object per row.
        for entry in pc.value_counts(labels).to_pylist():
            key = "<none>" if entry["values"] is None else entry["values"]
            counts[key] += entry["counts"]
    return dict(sorted(counts.items()))


def disk_size(store: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(store).rglob("*") if p.is_file())


def store_info(store: str | Path) -> dict:
    """Manifest plus what a user asks first: counts per class and size on disk."""
    manifest = read_manifest(store)
    return {
        "store": str(Path(store).resolve()),
        "complete": bool(manifest.get("complete")),
        "num_images": int(manifest.get("num_images", 0)),
        "num_errors": int(manifest.get("num_errors", 0)),
        "class_counts": class_counts(store, manifest),
        "disk_bytes": disk_size(store),
        "manifest": manifest,
    }
