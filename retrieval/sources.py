"""Where an index build reads its vectors: part by part, never the whole matrix at once.

A :class:`VectorSource` has a row count, a dimension and an iterator over its parts (float32
matrices, in row order). :class:`StoreLayer` reads one layer of a feature store;
:class:`ArraySource` serves a matrix already in memory (views, no copies). :func:`sample_rows`
draws a uniform training sample in one pass over the parts, so a build reads the source twice
(sample, then add) and holds one part plus the sample.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from featurizer.errors import StoreError
from featurizer.store import FeatureStore
from featurizer.store.parts import read_columns


class VectorSource(Protocol):
    rows: int
    dim: int

    def parts(self) -> Iterator[np.ndarray]:
        """float32 (rows_in_part, dim) matrices whose concatenation is the whole source."""
        ...


@dataclass
class StoreLayer:
    """One layer of a complete feature store, as a vector source."""

    store: FeatureStore
    layer: str

    @classmethod
    def open(cls, path: str | Path, layer: str) -> StoreLayer:
        store = FeatureStore.open(path)
        if not store.manifest.complete:
            raise StoreError(
                f"feature store {path} is incomplete (extraction interrupted?): finish it with "
                "the same `decaf extract` command before indexing it"
            )
        if layer not in store.layers:
            raise StoreError(
                f"layer {layer!r} is not in store {path}; available: {', '.join(store.layers)}"
            )
        return cls(store, layer)

    @property
    def rows(self) -> int:
        return self.store.manifest.num_images

    @property
    def dim(self) -> int:
        return self.store.layers[self.layer]

    def parts(self) -> Iterator[np.ndarray]:
        for X, _, _ in self.store.iter_layer(self.layer, with_meta=False):
            yield X


@dataclass
class ArraySource:
    """A float32 (rows, dim) matrix already in memory, served as views of `part_rows` rows."""

    matrix: np.ndarray
    part_rows: int = 65_536

    @property
    def rows(self) -> int:
        return len(self.matrix)

    @property
    def dim(self) -> int:
        return self.matrix.shape[1]

    def parts(self) -> Iterator[np.ndarray]:
        for start in range(0, self.rows, self.part_rows):
            yield self.matrix[start : start + self.part_rows]


def store_rows(store: FeatureStore) -> tuple[list[str], list[str | None]]:
    """Every row's ``path`` and ``label``, in row order (two small columns, no features)."""
    paths: list[str] = []
    labels: list[str | None] = []
    for entry in store.manifest.parts:
        table = read_columns(store.part_path(entry), ["path", "label"])
        paths.extend(table.column("path").to_pylist())
        labels.extend(table.column("label").to_pylist())
    if len(paths) != store.manifest.num_images:
        raise StoreError(
            f"{store.path}: the parts hold {len(paths)} rows, the manifest says "
            f"{store.manifest.num_images}; `decaf info {store.path}` lists the damaged parts"
        )
    return paths, labels


def sample_rows(source: VectorSource, count: int, *, seed: int = 0) -> np.ndarray:
    """``count`` distinct rows drawn uniformly (sorted row order), in one pass over the parts."""
    count = min(count, source.rows)
    wanted = np.sort(np.random.default_rng(seed).choice(source.rows, size=count, replace=False))
    sample = np.empty((count, source.dim), dtype=np.float32)
    filled, start = 0, 0
    for part in source.parts():
        end = start + len(part)
        lo, hi = np.searchsorted(wanted, [start, end])
        if hi > lo:
            sample[filled : filled + hi - lo] = part[wanted[lo:hi] - start]
            filled += hi - lo
        start = end
        if filled == count:
            break
    if filled != count:
        raise StoreError(f"the source yielded {start} rows, {source.rows} were announced")
    return sample
