"""Parquet parts: what an engine hands the store, how it is written, and footer-only reads.

A part is one Parquet file: ``path`` (string), ``label`` (string, null = unlabeled) and one
``fixed_size_list<float32>[dim]`` column per layer. Its key-value metadata records the part index,
the files of the part that could not be read and the hash of the store configuration, so
``_errors.jsonl`` and the manifest are rebuilt exactly from the parts after a resumed run.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from featurizer.atomic import atomic_path
from featurizer.errors import StoreError
from featurizer.store.manifest import ErrorEntry, part_index, part_name

# Parquet key-value metadata keys of a part.
META_PART = b"decaf.part"
META_ERRORS = b"decaf.errors"
META_CONFIG = b"decaf.config_sha256"
# snappy: ~3x faster to write than zstd-1 for ~15% more disk (ReLU zeros compress either way).
COMPRESSION = "snappy"
NO_LABEL = "<none>"  # how class counts name unlabeled rows


@dataclass
class Part:
    """One complete part as an engine produces it: its rows in record order, and its failures.

    Part ``k`` holds records ``[k * part_size, (k + 1) * part_size)`` of the sorted file list:
    ``rows + len(errors)`` must be exactly that many files.
    """

    index: int
    paths: list[str]
    labels: list[str | None]
    features: dict[str, np.ndarray]  # layer -> (rows, dim) float32
    errors: list[ErrorEntry]

    @property
    def rows(self) -> int:
        return len(self.paths)

    @property
    def files(self) -> int:
        return len(self.paths) + len(self.errors)


@dataclass(frozen=True)
class PartFooter:
    """What a part's Parquet footer says (read without touching the column data)."""

    file: str
    index: int
    rows: int
    errors: list[ErrorEntry]
    config_sha256: str
    schema: pa.Schema


def features_to_arrow(features: np.ndarray) -> pa.FixedSizeListArray:
    """(N, dim) float array -> fixed_size_list<float32>[dim] without Python objects."""
    matrix = np.ascontiguousarray(features, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"features must be 2-D (N, dim), got shape {matrix.shape}")
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def part_schema(layers: Mapping[str, int]) -> pa.Schema:
    fields = [pa.field("path", pa.string(), nullable=False), pa.field("label", pa.string())]
    fields += [pa.field(name, pa.list_(pa.float32(), dim)) for name, dim in layers.items()]
    return pa.schema(fields)


def write_part_file(
    directory: Path, part: Part, *, layers: Mapping[str, int], config_sha256: str
) -> Path:
    """Write ``part`` as ``directory/part-NNNNN.parquet`` atomically; returns its path."""
    if len(part.labels) != len(part.paths):
        raise ValueError(f"part {part.index}: {len(part.paths)} paths, {len(part.labels)} labels")
    schema = part_schema(layers).with_metadata(
        {
            META_PART: str(part.index).encode(),
            META_ERRORS: json.dumps(list(part.errors), ensure_ascii=False, sort_keys=True).encode(),
            META_CONFIG: config_sha256.encode(),
        }
    )
    columns: list[pa.Array] = [
        pa.array(part.paths, pa.string()),
        pa.array(part.labels, pa.string()),
    ]
    for name, dim in layers.items():
        array = part.features[name]
        if array.shape != (part.rows, dim):
            raise ValueError(f"layer {name}: expected shape {(part.rows, dim)}, got {array.shape}")
        columns.append(features_to_arrow(array))
    table = pa.Table.from_arrays(columns, schema=schema)
    final = directory / part_name(part.index)
    with atomic_path(final) as tmp:
        pq.write_table(
            table,
            tmp,
            compression=COMPRESSION,
            use_dictionary=["label"],
            write_statistics=["path", "label"],
        )
    return final


def read_part_footer(path: Path) -> PartFooter:
    """Footer-only read of a part: rows, index, errors, config hash and schema."""
    try:
        meta = pq.read_metadata(path)
        schema = meta.schema.to_arrow_schema()
    except FileNotFoundError as exc:
        raise StoreError(f"feature-store part missing: {path}") from exc
    except (OSError, pa.ArrowException) as exc:
        raise StoreError(f"damaged feature-store part {path}: {exc}") from exc
    kv = meta.metadata or {}
    try:
        errors = json.loads(kv[META_ERRORS])
        index = int(kv[META_PART])
        config = kv[META_CONFIG].decode()
    except (KeyError, ValueError) as exc:
        raise StoreError(f"{path} is not a decaf feature-store part (metadata {exc})") from exc
    if not isinstance(errors, list):
        raise StoreError(f"{path} is not a decaf feature-store part (errors metadata)")
    return PartFooter(path.name, index, meta.num_rows, errors, config, schema)


def layer_problems(footer: PartFooter, layers: Mapping[str, int]) -> list[str]:
    """What is wrong with a part's columns for these layers (from its footer schema alone)."""
    problems = []
    for column in ("path", "label"):
        if footer.schema.get_field_index(column) < 0:
            problems.append(f"{footer.file}: no {column!r} column")
    for name, dim in layers.items():
        index = footer.schema.get_field_index(name)
        if index < 0:
            problems.append(f"{footer.file}: no column for layer {name!r}")
            continue
        kind = footer.schema.field(index).type
        if not _is_feature_type(kind, dim):
            problems.append(
                f"{footer.file}: layer {name!r} holds {_describe(kind)}, the manifest says {dim}"
            )
    return problems


def _describe(kind: pa.DataType) -> str:
    if pa.types.is_fixed_size_list(kind):
        return f"{kind.list_size} x {kind.value_type}"
    return str(kind)


def _is_feature_type(kind: pa.DataType, dim: int) -> bool:
    return (
        pa.types.is_fixed_size_list(kind)
        and kind.list_size == dim
        and pa.types.is_floating(kind.value_type)
    )


def existing_part_files(directory: Path) -> list[Path]:
    """Files named like parts (``part-NNNNN.parquet``) in ``directory``, sorted."""
    return sorted(p for p in directory.iterdir() if part_index(p.name) is not None)


def read_columns(path: Path, columns: list[str]) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns)
    except FileNotFoundError as exc:
        raise StoreError(f"feature-store part missing: {path}") from exc
    except (OSError, pa.ArrowException) as exc:
        raise StoreError(f"cannot read feature-store part {path}: {exc}") from exc


def fill_matrix(X: np.ndarray, start: int, column: pa.ChunkedArray, name: str) -> None:
    """Copy a feature column straight from Arrow's flat buffer into rows of ``X``."""
    dim = X.shape[1]
    if not _is_feature_type(column.type, dim):
        raise StoreError(
            f"layer {name!r} holds {_describe(column.type)}, the manifest says {dim}; "
            "`decaf info` lists the damaged parts"
        )
    row = start
    for chunk in column.chunks:
        if chunk.null_count:
            raise StoreError(f"feature column {name!r} contains nulls")
        # flatten() honours slicing offsets (chunk.values would not); float16 is upcast by numpy.
        flat = chunk.flatten().to_numpy(zero_copy_only=False)
        X[row : row + len(chunk)] = flat.reshape(len(chunk), dim)
        row += len(chunk)


def label_counts(path: Path) -> Counter[str | None]:
    """Rows per label of one part (reads only the label column; None = unlabeled)."""
    labels = read_columns(path, ["label"]).column("label")
    counts: Counter[str | None] = Counter()
    # value_counts stays in Arrow: no Python object per row.
    for entry in pc.value_counts(labels).to_pylist():
        counts[entry["values"]] += entry["counts"]
    return counts
