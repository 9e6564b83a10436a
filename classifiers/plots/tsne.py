"""``decaf plot tsne``: a 2-D map of a store's features, points coloured by class (DeCAF Fig. 1).

Pipeline: optional per-class subsample → PCA to 50 dimensions → openTSNE (seeded, so a rerun
draws the same map; FFT-accelerated gradients for large maps, Barnes-Hut for small) → scatter.
PCA first is the usual recipe (van der Maaten's and openTSNE's docs): the distances t-SNE needs
survive, and the neighbour search runs on 50 numbers per point instead of 4096.
Measured in ``benchmarks/tsne.py``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from classifiers.plots.figure import (
    MAX_COLOURED,
    OTHER_GREY,
    PlotError,
    class_colours,
    is_random,
    mark_random_weights,
    new_figure,
    provenance_title,
    save,
)

PCA_DIMS = 50
# Barnes-Hut below this many points, FFT-interpolated gradients from it on (openTSNE's own
# advice). FFT has a fixed cost per iteration: 70 points took 47.6 s with FFT and 1.05 s with
# Barnes-Hut here (2 loaded cores); benchmarks/tsne.py times both at 10,000 points.
FFT_FROM_POINTS = 10_000
# One thread below this many points: openTSNE's threads synchronise every iteration, and on a
# busy machine a small map took 66 s on 2 threads against 1.4 s on one (70 points, load 12).
PARALLEL_FROM_POINTS = 5_000
UNLABELLED = "(unlabelled)"


@dataclass
class Embedding:
    """2-D coordinates of the rows, and how long each step took (seconds)."""

    points: np.ndarray
    perplexity: float
    seconds: dict[str, float] = field(default_factory=dict)


def effective_perplexity(perplexity: float, n_points: int) -> float:
    """t-SNE needs about 3 x perplexity neighbours per point: clamp it for small samples."""
    return float(max(1.0, min(perplexity, (n_points - 1) / 3.0)))


def reduce_pca(X: np.ndarray, dims: int = PCA_DIMS, seed: int = 0) -> np.ndarray:
    """PCA to ``dims`` components (randomized SVD: only the top components are needed)."""
    from sklearn.decomposition import PCA

    n_components = min(dims, X.shape[0], X.shape[1])
    if n_components == X.shape[1]:
        return np.ascontiguousarray(X - X.mean(axis=0), dtype=np.float32)
    pca = PCA(n_components=n_components, svd_solver="randomized", random_state=seed)
    return pca.fit_transform(X).astype(np.float32)


def embed(
    X: np.ndarray,
    *,
    perplexity: float = 30.0,
    seed: int = 0,
    n_jobs: int | None = None,
    pca_dims: int = PCA_DIMS,
) -> Embedding:
    """PCA then openTSNE; ``n_jobs`` defaults to every core this process may use (one thread
    for small maps)."""
    from openTSNE import TSNE

    from featurizer.runtime import default_num_threads

    if len(X) < 4:
        raise PlotError(f"t-SNE needs at least 4 points, got {len(X)}")
    seconds: dict[str, float] = {}
    started, cpu = time.perf_counter(), time.process_time()
    reduced = reduce_pca(np.asarray(X, dtype=np.float32), pca_dims, seed)
    seconds["pca"] = time.perf_counter() - started
    seconds["pca_cpu"] = time.process_time() - cpu
    used = effective_perplexity(perplexity, len(X))
    tsne = TSNE(
        perplexity=used,
        n_jobs=n_jobs or (default_num_threads() if len(X) >= PARALLEL_FROM_POINTS else 1),
        random_state=seed,
        initialization="pca",
        negative_gradient_method="fft" if len(X) >= FFT_FROM_POINTS else "bh",
        verbose=False,
    )
    started, cpu = time.perf_counter(), time.process_time()
    points = np.asarray(tsne.fit(reduced), dtype=np.float32)
    seconds["tsne"] = time.perf_counter() - started
    seconds["tsne_cpu"] = time.process_time() - cpu  # all threads: what a loaded machine hides
    return Embedding(points=points, perplexity=used, seconds=seconds)


def subsample_per_class(y: np.ndarray, per_class: int | None, seed: int = 0) -> np.ndarray:
    """Row indices with at most ``per_class`` rows of each label (a seeded choice), in order."""
    if per_class is None:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    keep: list[np.ndarray] = []
    for label in sorted(set(y.tolist())):
        rows = np.flatnonzero(y == label)
        keep.append(rows if len(rows) <= per_class else rng.choice(rows, per_class, replace=False))
    return np.sort(np.concatenate(keep)) if keep else np.arange(0)


def _labels(y: np.ndarray) -> np.ndarray:
    return np.array([UNLABELLED if label is None else str(label) for label in y], dtype=object)


def plot_tsne(
    store: str | Path,
    *,
    layer: str | None = None,
    out: str | Path,
    per_class: int | None = None,
    perplexity: float = 30.0,
    seed: int = 0,
    max_coloured: int = MAX_COLOURED,
    n_jobs: int | None = None,
) -> dict[str, Any]:
    """Draw the t-SNE map of ``layer`` of ``store`` into ``out`` (.png or .svg); a summary back.

    ``layer`` defaults to the store's first layer.
    """
    from featurizer.store import FeatureStore

    opened = FeatureStore.open(store)
    manifest = opened.manifest
    layer = layer or next(iter(manifest.layers), None)
    if layer is None:
        raise PlotError(f"store {store} has no layers")
    X, y, _ = opened.load(layer)
    rows = subsample_per_class(_labels(y), per_class, seed)
    if len(rows) < 4:
        raise PlotError(f"store {store} has {len(rows)} images; a t-SNE map needs at least 4")
    labels = _labels(y[rows])
    embedding = embed(X[rows], perplexity=perplexity, seed=seed, n_jobs=n_jobs)
    started = time.perf_counter()
    title = provenance_title(
        "t-SNE", backbone=manifest.backbone, layer=layer, weights=manifest.weights_id
    )
    figure = _scatter(embedding.points, labels, title, max_coloured)
    if is_random(manifest.weights_id):
        mark_random_weights(figure)
    path = save(figure, out)
    embedding.seconds["plot"] = time.perf_counter() - started
    return {
        "out": str(path),
        "store": str(store),
        "layer": layer,
        "points": len(rows),
        "classes": len(set(labels.tolist())),
        "perplexity": embedding.perplexity,
        "random_weights": is_random(manifest.weights_id),
        "seconds": embedding.seconds,
    }


def _scatter(points: np.ndarray, labels: np.ndarray, title: str, max_coloured: int) -> Any:
    names, counts = np.unique(labels, return_counts=True)
    colours = class_colours(dict(zip(names.tolist(), counts.tolist(), strict=True)), max_coloured)
    coloured = sorted(name for name, colour in colours.items() if colour != OTHER_GREY)
    grey = [name for name, colour in colours.items() if colour == OTHER_GREY]
    figure = new_figure(10.0 if len(coloured) > 10 else 9.0, 7.0)
    axes = figure.add_subplot()
    size = float(np.clip(3000.0 / max(len(points), 1), 2.0, 30.0))
    if grey:  # drawn first, underneath the coloured classes
        mask = np.isin(labels, grey)
        axes.scatter(*points[mask].T, s=size, c=OTHER_GREY, linewidths=0,
                     label=f"other ({len(grey)} classes)")  # fmt: skip
    for name in coloured:
        mask = labels == name
        axes.scatter(*points[mask].T, s=size, c=colours[name], linewidths=0, label=str(name))
    axes.set_title(title, fontsize=11)
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_aspect("equal", adjustable="datalim")
    columns = 1 if len(coloured) + bool(grey) <= 14 else 2
    axes.legend(
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        markerscale=max(1.0, 20.0 / size) ** 0.5,
        frameon=False,
        ncols=columns,
        title=f"{len(names)} classes, {len(points)} images",
        title_fontsize=8,
    )
    return figure
