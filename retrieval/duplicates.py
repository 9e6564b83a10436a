"""Near-duplicate groups: connected components of the k-NN graph above a cosine threshold.

Every stored vector is searched against the index (part by part), an edge joins two rows whose
score reaches the threshold, and each connected component of two or more rows is one group.
Components, not cliques: A~B and B~C put A, B and C in one group, as a chain of re-encodes does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from featurizer.store import FeatureStore
from retrieval.search import Searcher, cosine

GRAPH_K = 10  # neighbours per row in the graph


@dataclass(frozen=True)
class DuplicateGroup:
    rows: list[int]
    paths: list[str]
    labels: list[str | None]
    min_score: float  # the weakest edge that joined the group

    def to_dict(self) -> dict[str, Any]:
        members = [
            {"row": row, "path": path, "label": label}
            for row, path, label in zip(self.rows, self.paths, self.labels, strict=True)
        ]
        return {"size": len(self.rows), "min_score": self.min_score, "members": members}


def find_duplicates(
    searcher: Searcher,
    *,
    threshold: float,
    k: int = GRAPH_K,
    progress: Callable[[int, int], None] | None = None,
) -> list[DuplicateGroup]:
    """Groups of rows whose cosine reaches ``threshold``, largest first."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    store: FeatureStore = searcher.store
    total = searcher.rows
    k = min(k + 1, total)  # + 1: a row is its own nearest neighbour
    sources, targets, scores = [], [], []
    start = 0
    for X, _, _ in store.iter_layer(searcher.layer, with_meta=False):
        distances, rows = searcher.index.search(X, k)
        similar = (1.0 - distances / 2.0 >= threshold) & (rows >= 0)
        query = np.arange(start, start + len(X))[:, None].repeat(k, axis=1)
        similar &= rows != query
        sources.append(query[similar])
        targets.append(rows[similar])
        scores.append(distances[similar])
        start += len(X)
        if progress is not None:
            progress(start, total)
    src, dst = np.concatenate(sources), np.concatenate(targets)
    graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(total, total))
    _, component = connected_components(graph, directed=False)
    weakest = _weakest_edge(component, src, np.concatenate(scores))
    return _groups(searcher, component, weakest)


def _weakest_edge(
    component: np.ndarray, src: np.ndarray, distances: np.ndarray
) -> dict[int, float]:
    weakest: dict[int, float] = {}
    for group, distance in zip(component[src], distances, strict=True):
        weakest[int(group)] = max(weakest.get(int(group), 0.0), float(distance))
    return {group: cosine(distance) for group, distance in weakest.items()}


def _groups(
    searcher: Searcher, component: np.ndarray, weakest: dict[int, float]
) -> list[DuplicateGroup]:
    members: dict[int, list[int]] = {}
    for row, group in enumerate(component.tolist()):
        if group in weakest:
            members.setdefault(group, []).append(row)
    groups = [
        DuplicateGroup(
            rows=rows,
            paths=[searcher.paths[r] for r in rows],
            labels=[searcher.labels[r] for r in rows],
            min_score=weakest[group],
        )
        for group, rows in members.items()
    ]
    return sorted(groups, key=lambda g: (-len(g.rows), g.rows[0]))
