"""Retrieval quality with labels as relevance: leave-one-out mAP and precision@k.

Every labelled row queries the index; its own row is removed from the ranking; a result is
relevant when it has the query's label. Average precision of one query with ``R`` relevant rows
ranked ``r_1 < r_2 < ...`` (1-based) is ``sum_i (i / r_i) / R``; mAP is its mean over the queries
with at least one relevant row. Stores of up to :data:`FULL_RANKING_MAX_ROWS` rows are ranked in
full (exact AP); above, the ranking stops at :data:`TRUNCATED_DEPTH` and AP divides by
``min(R, depth)`` (reported as ``mAP@depth``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featurizer.errors import StoreError
from retrieval.recipe import IndexSpec

FULL_RANKING_MAX_ROWS = 20_000
TRUNCATED_DEPTH = 1000
QUERY_BATCH = 256


def average_precision(relevant: np.ndarray, n_relevant: int) -> float:
    """AP of one ranking: ``relevant`` is a boolean vector in rank order (self removed)."""
    if n_relevant <= 0:
        raise ValueError("average precision needs at least one relevant item")
    hits = np.flatnonzero(relevant)
    if len(hits) == 0:
        return 0.0
    precisions = np.arange(1, len(hits) + 1) / (hits + 1)
    return float(precisions.sum() / n_relevant)


def precision_at(relevant: np.ndarray, k: int) -> float:
    return float(np.mean(relevant[:k])) if k <= len(relevant) else float(np.sum(relevant) / k)


@dataclass
class RetrievalScores:
    """Accumulates per-query AP and P@k; ``result()`` gives the means."""

    ks: Sequence[int]
    depth: int | None  # None: full ranking
    ap: list[float] = field(default_factory=list)
    p_at: dict[int, list[float]] = field(default_factory=dict)
    skipped: int = 0  # labelled queries without any other row of their class

    def add(self, relevant: np.ndarray, n_relevant: int) -> None:
        if n_relevant == 0:
            self.skipped += 1
            return
        denominator = n_relevant if self.depth is None else min(n_relevant, self.depth)
        self.ap.append(average_precision(relevant, denominator))
        for k in self.ks:
            self.p_at.setdefault(k, []).append(precision_at(relevant, k))

    def result(self) -> dict[str, Any]:
        return {
            "map": float(np.mean(self.ap)) if self.ap else float("nan"),
            "map_depth": self.depth,
            "precision_at": {str(k): float(np.mean(v)) for k, v in sorted(self.p_at.items())},
            "queries": len(self.ap),
            "skipped_queries": self.skipped,
        }


def evaluate_ranking(
    search: Callable[[np.ndarray, int], np.ndarray],
    vectors: Callable[[], Any],
    labels: Sequence[str | None],
    ks: Sequence[int],
    *,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Leave-one-out mAP and P@k.

    ``search(queries, n)`` returns the row ids of the ``n`` nearest rows per query (-1 for none);
    ``vectors()`` yields the store's vectors part by part, in row order.
    """
    total = len(labels)
    codes = {label: code for code, label in enumerate(sorted({x for x in labels if x is not None}))}
    label_array = np.array([-1 if x is None else codes[x] for x in labels], dtype=np.int64)
    counts: dict[int, int] = {}
    for code in label_array[label_array != -1].tolist():
        counts[code] = counts.get(code, 0) + 1
    full = total - 1 <= FULL_RANKING_MAX_ROWS
    depth = total - 1 if full else min(TRUNCATED_DEPTH, total - 1)
    scores = RetrievalScores(ks=list(ks), depth=None if full else depth)
    start = 0
    for part in vectors():
        for offset in range(0, len(part), QUERY_BATCH):
            batch = part[offset : offset + QUERY_BATCH]
            rows = np.arange(start + offset, start + offset + len(batch))
            keep = label_array[rows] != -1
            if keep.any():
                ranked = search(np.ascontiguousarray(batch[keep]), depth + 1)
                for query_row, ranking in zip(rows[keep], ranked, strict=True):
                    _score_one(scores, query_row, ranking, label_array, counts, depth)
        start += len(part)
        if progress is not None:
            progress(start, total)
    return scores.result()


def _score_one(
    scores: RetrievalScores,
    query_row: int,
    ranking: np.ndarray,
    label_array: np.ndarray,
    counts: dict[int, int],
    depth: int,
) -> None:
    ranking = ranking[(ranking != query_row) & (ranking >= 0)][:depth]
    code = label_array[query_row]
    scores.add(label_array[ranking] == code, counts[code] - 1)


def evaluate_store(
    store_path: str | Path,
    spec: IndexSpec,
    ks: Sequence[int],
    *,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """``decaf index eval``: build ``spec``'s index in memory (nothing written) and score it."""
    from retrieval.build import build_from_source
    from retrieval.recipe import plan
    from retrieval.sources import StoreLayer, store_rows

    source = StoreLayer.open(store_path, spec.layer)
    _, labels = store_rows(source.store)
    if not any(label is not None for label in labels):
        raise StoreError(
            f"store {store_path} has no labels (its images were not in class sub-folders): "
            "retrieval quality needs labels as relevance"
        )
    recipe = plan(spec, source.rows, source.dim)
    index = build_from_source(
        source,
        recipe,
        progress=None if progress is None else lambda p: progress(p.step, p.done, p.total),
    )
    result = evaluate_ranking(
        lambda queries, n: index.search(queries, n)[1],
        source.parts,
        labels,
        ks,
        progress=None
        if progress is None
        else lambda done, total: progress("querying", done, total),
    )
    manifest = source.store.manifest
    return {
        "store": str(store_path),
        "backbone": manifest.backbone,
        "layer": spec.layer,
        "recipe": recipe.to_dict(),
        "rows": source.rows,
        **result,
    }
