"""Build a FAISS index from a vector source, streamed; and the store-level ``decaf index build``.

Memory: the training sample (capped at ``recipe.TRAIN_SAMPLE_BYTES``), freed before the vectors
are added, then one part at a time plus the growing index. The whole matrix is never held, let
alone twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featurizer.errors import StoreError
from retrieval.errors import (
    IndexBuildCancelled,
    IndexCorruptError,
    IndexMissingError,
    IndexStaleError,
)
from retrieval.index_files import (
    IndexRecord,
    build_command,
    index_root,
    model_identity,
    read_record,
    write_index,
)
from retrieval.recipe import IndexSpec, Recipe, plan
from retrieval.sources import StoreLayer, VectorSource, sample_rows

if TYPE_CHECKING:
    import faiss

MIN_TRAIN_ROWS = 1000  # for indexes that need training although the recipe asked for none


@dataclass(frozen=True)
class BuildProgress:
    step: str  # "sampling" | "training" | "adding"
    done: int  # rows added so far
    total: int


ProgressFn = Callable[[BuildProgress], None]
StopFn = Callable[[], bool]


def new_index(recipe: Recipe) -> faiss.Index:
    import faiss

    return faiss.index_factory(recipe.dim_in, recipe.factory, faiss.METRIC_L2)


def build_from_source(
    source: VectorSource,
    recipe: Recipe,
    *,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    seed: int = 0,
) -> faiss.Index:
    """Train on a sample of ``source`` (if the index needs it), then add its parts in order."""
    report = progress or (lambda _: None)
    stop = should_stop or (lambda: False)
    index = new_index(recipe)
    train_rows = recipe.train_rows or (0 if index.is_trained else MIN_TRAIN_ROWS)
    if train_rows:
        report(BuildProgress("sampling", 0, source.rows))
        sample = sample_rows(source, train_rows, seed=seed)
        _check_stop(stop)
        report(BuildProgress("training", 0, source.rows))
        train_in_steps(index, sample)
        del sample
    reserve_codes(index, source.rows)
    done = 0
    report(BuildProgress("adding", 0, source.rows))
    for part in source.parts():
        _check_stop(stop)
        index.add(part)
        done += len(part)
        report(BuildProgress("adding", done, source.rows))
    apply_search_params(index, recipe.search_params())
    return index


def train_in_steps(index: faiss.Index, sample: np.ndarray) -> None:
    """Train the pre-transforms and the index on ``sample``, which is consumed.

    ``IndexPreTransform.train`` keeps the input and every transformed copy alive until the end;
    stepping through the chain ourselves normalises in place and frees each stage as soon as the
    next exists, so training holds about one copy of the sample (measured on 20k x 4096 fp16 IVF:
    999 MB peak before, see benchmarks/retrieval.py for after).
    """
    import faiss

    if not hasattr(index, "chain"):
        index.train(sample)
        return
    x = sample
    for position in range(index.chain.size()):
        transform = index.chain.at(position)
        if isinstance(transform, faiss.NormalizationTransform):
            faiss.normalize_L2(x)  # in place: no copy
            continue
        if not transform.is_trained:
            transform.train(x)
        x = transform.apply(x)  # the previous stage is freed when nothing refers to it
    index.index.train(x)
    index.is_trained = True


def reserve_codes(index: faiss.Index, rows: int) -> None:
    """Allocate the code array of a flat-codes index (Flat, SQ, PQ; HNSW's storage) once.

    FAISS grows it with ``std::vector::resize`` as parts arrive; each doubling holds the old and
    the new array at once (measured: 413 MB peak for a 205 MB exact index of 200k x 256). A
    resize to the final size and back to 0 keeps the capacity, so the adds never reallocate.
    """
    import faiss

    inner = faiss.downcast_index(index.index) if hasattr(index, "chain") else index
    storage = getattr(inner, "storage", None)  # HNSW keeps its vectors in a flat index
    if storage is not None:
        inner = faiss.downcast_index(storage)
    codes = getattr(inner, "codes", None)
    if codes is None or inner.ntotal:
        return
    codes.resize(rows * inner.code_size)
    codes.resize(0)


def apply_search_params(index: faiss.Index, params: dict[str, int]) -> None:
    """Set nprobe / efSearch on the index inside any pre-transform (they are not serialised)."""
    if not params:
        return
    import faiss

    faiss.ParameterSpace().set_index_parameters(
        index, ",".join(f"{key}={value}" for key, value in params.items())
    )


def _check_stop(stop: StopFn) -> None:
    if stop():
        raise IndexBuildCancelled("index build cancelled; nothing was written")


@dataclass(frozen=True)
class BuildResult:
    record: IndexRecord
    reused: bool  # an up-to-date index with the same recipe existed and was kept


def build_store_index(
    store_path: str | Path,
    spec: IndexSpec,
    *,
    backbone: str | None = None,
    rebuild: bool = False,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> BuildResult:
    """``decaf index build``: index one layer of a complete store, beside it."""
    source = StoreLayer.open(store_path, spec.layer)
    store = source.store
    manifest = store.manifest
    if backbone is not None and backbone != manifest.backbone:
        raise StoreError(
            f"store {store_path} holds {manifest.backbone} features, not {backbone}: an index "
            "is built from the store's own features (omit --backbone, or index a store "
            f"extracted with {backbone})"
        )
    recipe = plan(spec, source.rows, source.dim)
    directory = index_root(store_path) / recipe.name
    fingerprint = store.fingerprint()
    existing = _existing(directory)
    if existing is not None and not rebuild:
        if existing.data.get("store_fingerprint") == fingerprint:
            return BuildResult(existing, reused=True)
        raise IndexStaleError(
            f"index {directory} was built from an older state of the store; replace it with "
            f"`{build_command(store_path, spec.layer)} --rebuild`"
        )
    started = time.perf_counter()
    index = build_from_source(source, recipe, progress=progress, should_stop=should_stop)
    data: dict[str, Any] = {
        "store_fingerprint": fingerprint,
        "layer": spec.layer,
        **model_identity(manifest),
        "precision": manifest.precision,
        "recipe": recipe.to_dict(),
        "rows": int(index.ntotal),
        "built_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "build_seconds": round(time.perf_counter() - started, 3),
        "faiss_version": _faiss_version(),
    }
    return BuildResult(write_index(directory, index, data), reused=False)


def _existing(directory: Path) -> IndexRecord | None:
    try:
        return read_record(directory)
    except (IndexMissingError, IndexCorruptError):
        return None  # nothing usable there: built afresh


def _faiss_version() -> str:
    import faiss

    return str(getattr(faiss, "__version__", "unknown"))
