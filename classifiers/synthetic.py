"""Synthetic features shaped like DeCAF activations, for tests and benchmarks.

Each class has a mean on a low-dimensional latent subspace; samples scatter around it, are
lifted to ``n_features`` dimensions by a fixed random map, get isotropic noise and pass through a
shifted ReLU. The result is non-negative and sparse (about half the entries are zero, like fc6/fc7
after ReLU), with a difficulty that sits between chance and perfect for a linear probe.
"""

from __future__ import annotations

import numpy as np


def make_features(
    n_classes: int,
    n_per_class: int | np.ndarray,
    *,
    n_features: int = 4096,
    latent_dim: int = 64,
    separation: float = 1.0,
    noise: float = 1.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``X`` (float32, C-contiguous) and string labels ``y`` ("class000", ...).

    ``n_per_class`` may be an array of per-class counts (unbalanced datasets).
    """
    rng = np.random.default_rng(seed)
    counts = np.broadcast_to(np.asarray(n_per_class, dtype=np.int64), (n_classes,))
    means = rng.standard_normal((n_classes, latent_dim)) * separation
    lift = (rng.standard_normal((latent_dim, n_features)) / np.sqrt(latent_dim)).astype(np.float32)
    y_idx = np.repeat(np.arange(n_classes), counts)
    latent = means[y_idx] + rng.standard_normal((len(y_idx), latent_dim))
    X = latent.astype(np.float32) @ lift
    X += rng.standard_normal(X.shape, dtype=np.float32) * np.float32(noise)
    np.maximum(X, 0.0, out=X)
    labels = np.array([f"class{c:03d}" for c in range(n_classes)], dtype=object)
    return np.ascontiguousarray(X), labels[y_idx]
