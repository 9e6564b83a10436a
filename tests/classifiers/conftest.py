"""Data shared by the classifiers tests."""

from __future__ import annotations

import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from classifiers.synthetic import make_features


@pytest.fixture(scope="module")
def digits_split():
    """Real 64-pixel digits, 60/40 stratified: a small problem with a known good accuracy."""
    X, y = load_digits(return_X_y=True)
    return train_test_split(X, y, test_size=0.4, random_state=0, stratify=y)


@pytest.fixture(scope="module")
def separable():
    """Five well-separated synthetic classes, train (even rows) and test (odd rows)."""
    X, y = make_features(5, 80, n_features=256, latent_dim=16, separation=3.0, seed=1)
    return X[::2], y[::2], X[1::2], y[1::2]
