"""FeatureStore.iter_layer (a layer part by part) and FeatureStore.fingerprint()."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from featurizer.errors import StoreError
from featurizer.store import MANIFEST_NAME, FeatureStore
from tests.featurizer.store_fixtures import DIMS, GOOD_PATHS, write_store


def test_iter_layer_yields_the_loaded_matrix_part_by_part(tmp_path):
    full = write_store(tmp_path / "s")
    store = FeatureStore.open(tmp_path / "s")
    layer = next(iter(DIMS))
    parts = list(store.iter_layer(layer))
    assert [len(X) for X, _, _ in parts] == [3, 2]
    assert np.array_equal(np.concatenate([X for X, _, _ in parts]), full[layer])
    assert [p for _, _, paths in parts for p in paths] == GOOD_PATHS
    X, labels, paths = next(store.iter_layer(layer, with_meta=False))
    assert labels is None and paths is None and X.shape == (3, DIMS[layer])


def test_iter_layer_refuses_unknown_layers_and_incomplete_stores(tmp_path):
    write_store(tmp_path / "s", complete=False)
    store = FeatureStore.open(tmp_path / "s")
    with pytest.raises(StoreError, match="incomplete"):
        next(store.iter_layer(next(iter(DIMS))))
    write_store(tmp_path / "done")
    with pytest.raises(StoreError, match="available"):
        next(FeatureStore.open(tmp_path / "done").iter_layer("nope"))


def test_the_fingerprint_is_stable_and_changes_with_the_store(tmp_path):
    write_store(tmp_path / "s")
    first = FeatureStore.open(tmp_path / "s").fingerprint()
    assert FeatureStore.open(tmp_path / "s").fingerprint() == first
    manifest = FeatureStore.open(tmp_path / "s").manifest
    for change in ({"created_at": "2031-01-01T00:00:00+00:00"}, {"parts": manifest.parts[:1]}):
        (tmp_path / "s" / MANIFEST_NAME).write_text(
            dataclasses.replace(manifest, **change, complete=False).to_json()
        )
        assert FeatureStore.open(tmp_path / "s").fingerprint() != first
