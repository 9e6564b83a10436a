"""Search a store's index: neighbours (row, path, label, cosine score) of query vectors.

:class:`Searcher` is an index loaded with the rows it points to; the service keeps one per store
in a :class:`SearcherCache`. Queries are raw features of the store's layer: the index's own
pre-transform L2-normalises (and PCA-whitens) them exactly as it did the stored vectors.
On a machine with the FAISS GPU build and a CUDA device, exact and IVF indexes search on the GPU.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featurizer.store import FeatureStore
from retrieval.build import apply_search_params
from retrieval.index_files import IndexRecord, find_record, read_index
from retrieval.sources import store_rows

if TYPE_CHECKING:
    import faiss

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Neighbour:
    row: int
    path: str
    label: str | None
    score: float  # cosine similarity (in the PCA space when the index has one)

    def to_dict(self) -> dict[str, Any]:
        return {"row": self.row, "path": self.path, "label": self.label, "score": self.score}


def clamp_k(k: int, rows: int) -> tuple[int, str | None]:
    """``k`` limited to the store's size, with the note that says so when it was."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k <= rows:
        return k, None
    return rows, f"k={k} is above the store's {rows} rows: returning {rows} neighbours"


def to_device(index: faiss.Index) -> faiss.Index:
    """The index on GPU 0 when the FAISS GPU build and a device are present, else unchanged."""
    import faiss

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        return index
    try:
        return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    except RuntimeError as exc:  # HNSW and some codecs have no GPU version
        log.info("searching on the CPU: %s", str(exc).splitlines()[-1] if str(exc) else exc)
        return index


class Searcher:
    """A store's index with the paths and labels of its rows."""

    def __init__(self, store: FeatureStore, record: IndexRecord, index: faiss.Index) -> None:
        self.store = store
        self.record = record
        self.index = index
        self.paths, self.labels = store_rows(store)
        self._lock = threading.Lock()  # one search at a time per index (GPU resources)

    @classmethod
    def open(cls, store_path: str | Path, layer: str | None = None) -> Searcher:
        store = FeatureStore.open(store_path)
        record = find_record(store, layer)
        index = read_index(record)
        apply_search_params(index, _search_params(record))
        return cls(store, record, to_device(index))

    @property
    def layer(self) -> str:
        return self.record.layer

    @property
    def rows(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> list[list[Neighbour]]:
        """The ``k`` nearest rows of each query, best first (k already clamped by the caller)."""
        matrix = np.ascontiguousarray(queries, dtype=np.float32).reshape(len(queries), -1)
        if len(matrix) == 0:
            return []
        with self._lock:
            distances, rows = self.index.search(matrix, k)
        return [self._neighbours(d, r) for d, r in zip(distances, rows, strict=True)]

    def _neighbours(self, distances: np.ndarray, rows: np.ndarray) -> list[Neighbour]:
        return [
            Neighbour(int(row), self.paths[row], self.labels[row], cosine(float(distance)))
            for distance, row in zip(distances, rows, strict=True)
            if row >= 0  # -1: an approximate index found fewer than k
        ]


def cosine(squared_l2: float) -> float:
    """Cosine of two unit vectors from their squared L2 distance (see retrieval.recipe)."""
    return round(1.0 - squared_l2 / 2.0, 6)


def _search_params(record: IndexRecord) -> dict[str, int]:
    recipe = record.recipe
    params = {}
    if recipe.get("nprobe"):
        params["nprobe"] = int(recipe["nprobe"])
    if recipe.get("ef_search"):
        params["efSearch"] = int(recipe["ef_search"])
    return params


class SearcherCache:
    """Loaded searchers by store directory, reloaded when the store or index changed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str | None], tuple[tuple[Any, ...], Searcher]] = {}

    def get(self, store_path: Path, layer: str | None = None) -> Searcher:
        store = FeatureStore.open(store_path)
        record = find_record(store, layer)  # checks the store fingerprint on every request
        stamp = (record.path, record.data.get("built_at"), record.data.get("index_bytes"))
        key = (str(store_path), layer)
        with self._lock:
            cached = self._entries.get(key)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        searcher = Searcher.open(store_path, layer)
        with self._lock:
            self._entries[key] = (stamp, searcher)
        return searcher
