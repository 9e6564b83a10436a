"""Format version 1 stores: read-only opening, `decaf store upgrade`, and crashes mid-upgrade."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from featurizer import cli as fcli
from featurizer.errors import StoreError
from featurizer.store import (
    ERRORS_NAME,
    MANIFEST_NAME,
    V1_ERRORS_NAME,
    V1_MANIFEST_NAME,
    FeatureStore,
    load_features,
    part_name,
    upgrade_store,
)
from tests.featurizer.store_fixtures import BAD, RUN, config, to_v1, write_store

LAYERS = ("decaf6", "decaf7")


class SimulatedCrash(BaseException):
    """The process 'dies' here: no except-Exception handler may tidy up after it."""


@pytest.fixture
def stores(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """(a version-2 store, the same store in version-1 layout, its features)."""
    v2 = tmp_path / "v2"
    full = write_store(v2)
    v1 = tmp_path / "v1"
    shutil.copytree(v2, v1)
    to_v1(v1)
    return v2, v1, full


def _snapshot(store: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(store.iterdir()) if p.name != "_lock"}


def _assert_same_features(store: Path, full: dict[str, np.ndarray]) -> None:
    for layer in LAYERS:
        X, _, _ = load_features(store, layer)
        np.testing.assert_array_equal(X, full[layer])


def test_v1_store_opens_read_only(stores) -> None:
    _, v1, full = stores
    store = FeatureStore.open(v1)
    assert store.manifest.format_version == 1 and store.manifest.engine == "local"
    _assert_same_features(v1, full)
    info = store.info()
    assert info.complete and info.errors_file == V1_ERRORS_NAME
    assert info.class_counts == {"<none>": 1, "a": 2, "b": 2}
    assert [e["path"] for e in store.errors()] == list(BAD)
    with pytest.raises(StoreError, match=r"format-version-1 store.*`decaf store upgrade .*`"):
        FeatureStore.create_or_resume(v1, config(), RUN)
    # The defect version 2 fixes: metadata beside the parts breaks directory readers.
    with pytest.raises(pa.ArrowInvalid, match=r"errors\.jsonl|manifest\.json"):
        ds.dataset(v1, format="parquet").to_table()


def test_upgrade_gives_exactly_the_version_2_store(stores) -> None:
    v2, v1, full = stores
    parts_before = {name: (v1 / name).read_bytes() for name in (part_name(0), part_name(1))}
    result = upgrade_store(v1)
    assert (result.from_version, result.to_version) == (1, 2) and result.changed
    assert set(result.removed) == {V1_MANIFEST_NAME, V1_ERRORS_NAME}
    assert _snapshot(v1) == _snapshot(v2)  # manifest, errors and parts byte for byte
    assert all((v1 / name).read_bytes() == data for name, data in parts_before.items())
    assert ds.dataset(v1, format="parquet").to_table().num_rows == 5
    _assert_same_features(v1, full)

    again = upgrade_store(v1)
    assert (again.from_version, again.to_version, again.changed) == (2, 2, False)


def test_upgraded_incomplete_store_resumes(tmp_path: Path) -> None:
    out = tmp_path / "s"
    write_store(out, complete=False)
    to_v1(out)
    assert not (out / V1_ERRORS_NAME).exists()  # version 1 wrote it at the end only
    upgrade_store(out)
    with FeatureStore.create_or_resume(out, config(), RUN) as store:
        assert store.resumed_parts == 2 and store.pending_parts == []
        manifest = store.finalize()
    assert manifest.complete and manifest.format_version == 2
    assert [e["path"] for e in FeatureStore.open(out).errors()] == list(BAD)


def test_damaged_v1_store_is_not_upgraded(stores) -> None:
    _, v1, _ = stores
    (v1 / part_name(1)).unlink()
    before = _snapshot(v1)
    with pytest.raises(StoreError, match=r"cannot upgrade .*part-00001.*missing.*--overwrite"):
        upgrade_store(v1)
    assert _snapshot(v1) == before


def _crash_after(allowed: int, count: list[int]) -> Callable[[Any], Any]:
    """Wrap os.replace/os.unlink: the first ``allowed`` calls happen, then the process 'dies'."""

    def wrap(real: Callable[..., Any]) -> Callable[..., Any]:
        def mutation(*args: Any, **kwargs: Any) -> Any:
            if count[0] >= allowed:
                raise SimulatedCrash
            count[0] += 1
            return real(*args, **kwargs)

        return mutation

    return wrap


def _upgrade_crashing_after(store: Path, allowed: int, monkeypatch: pytest.MonkeyPatch) -> int:
    count = [0]
    wrap = _crash_after(allowed, count)
    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", wrap(os.replace))
        patch.setattr(os, "unlink", wrap(os.unlink))
        with contextlib.suppress(SimulatedCrash):
            upgrade_store(store)
    return count[0]


def test_a_crash_at_any_step_leaves_a_valid_store_and_a_rerun_finishes(
    stores, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    v2, v1, full = stores
    steps = _upgrade_crashing_after(shutil.copytree(v1, tmp_path / "dry"), 10**6, monkeypatch)
    assert steps == 4  # write _errors.jsonl, write _manifest.json (commit), remove the 2 old
    for allowed in range(steps):
        store = shutil.copytree(v1, tmp_path / f"crash-{allowed}")
        assert _upgrade_crashing_after(store, allowed, monkeypatch) == allowed
        opened = FeatureStore.open(store)
        # Before the commit point the store is version 1, from it on version 2.
        assert opened.manifest.format_version == (2 if allowed >= 2 else 1), allowed
        assert opened.info().complete
        _assert_same_features(store, full)
        upgrade_store(store)
        assert _snapshot(store) == _snapshot(v2), allowed


def test_a_writer_finishes_an_interrupted_upgrade(stores, monkeypatch: pytest.MonkeyPatch) -> None:
    v2, v1, _ = stores
    _upgrade_crashing_after(v1, 2, monkeypatch)  # committed, old files still there
    assert (v1 / V1_MANIFEST_NAME).exists() and (v1 / MANIFEST_NAME).exists()
    with FeatureStore.create_or_resume(v1, config(), RUN) as store:
        assert store.already_complete
    assert _snapshot(v1) == _snapshot(v2)


def test_store_upgrade_command(stores, capsys: pytest.CaptureFixture[str]) -> None:
    _, v1, _ = stores
    capsys.readouterr()
    assert fcli.main(["store", "upgrade", str(v1)]) == 0
    assert capsys.readouterr().out.strip() == f"upgraded {v1} from format version 1 to 2"
    assert fcli.main(["store", "upgrade", str(v1), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == {
        "store": str(v1),
        "from_version": 2,
        "to_version": 2,
        "removed": [],
        "changed": False,
    }
    assert (v1 / ERRORS_NAME).exists()
    assert fcli.main(["store", "upgrade", str(v1.parent / "missing")]) == 5
    assert "decaf: error: feature store not found" in capsys.readouterr().err
