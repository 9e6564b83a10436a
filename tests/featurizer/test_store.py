"""Feature-store format: parts, manifest, readers (model-free: parts written directly)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from featurizer import cli as fcli
from featurizer.errors import StoreError
from featurizer.store import (
    ERRORS_NAME,
    LOCK_NAME,
    MANIFEST_NAME,
    FeatureStore,
    Manifest,
    Part,
    clear_store,
    load_features,
    part_name,
    read_errors,
    read_part_footer,
    store_info,
)
from featurizer.store.parts import write_part_file
from tests.featurizer.store_fixtures import (
    BAD,
    DIMS,
    GOOD_PATHS,
    RUN,
    config,
    features,
    parts,
    write_store,
)


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    out = tmp_path / "store"
    return out, write_store(out)


def test_load_features_returns_exact_rows_labels_paths(store) -> None:
    out, full = store
    X, y, paths = load_features(out, "decaf6")
    assert X.dtype == np.float32 and X.flags.c_contiguous and X.shape == (5, 5)
    np.testing.assert_array_equal(X, full["decaf6"])
    assert y.dtype == object and list(y) == ["a", "a", "b", "b", None]
    assert paths == ["a/1.jpg", "a/2.jpg", "b/1.jpg", "b/3.jpg", "root.jpg"]
    X7, _, _ = FeatureStore.open(out).load("decaf7")
    np.testing.assert_array_equal(X7, full["decaf7"])


def test_manifest_is_typed_and_rebuilt_from_the_parts(store) -> None:
    out, _ = store
    manifest = FeatureStore.open(out).manifest
    assert isinstance(manifest, Manifest) and manifest.format_version == 2
    assert manifest.complete and manifest.layers == DIMS and manifest.engine == "local"
    assert manifest.num_images == 5 and manifest.num_errors == 1
    assert manifest.classes == ("a", "b")
    assert [(p.file, p.rows, p.errors) for p in manifest.parts] == [
        ("part-00000.parquet", 3, 0),
        ("part-00001.parquet", 2, 1),
    ]
    data = json.loads((out / MANIFEST_NAME).read_text())
    assert data == manifest.to_dict()
    assert data["format"] == "decaf-feature-store" and data["num_images"] == 5
    assert Manifest.from_dict(data, source="x") == manifest


def test_part_schema_and_metadata(store) -> None:
    out, _ = store
    part = out / part_name(1)
    schema = pq.read_schema(part)
    assert schema.field("decaf6").type == pa.list_(pa.float32(), 5)
    assert schema.field("label").nullable and not schema.field("path").nullable
    footer = read_part_footer(part)
    assert footer.rows == 2 and footer.index == 1 and footer.config_sha256 == config().sha256()
    assert [e["path"] for e in footer.errors] == list(BAD)
    assert pq.read_table(part).num_rows == 2
    assert not list(out.glob(".*tmp*")), "temporary files must be renamed away"


def test_parquet_readers_take_the_store_directory_without_a_glob(store) -> None:
    """The v1 defect: metadata beside the parts broke `pandas.read_parquet(STORE)`."""
    out, full = store
    # Leftovers of a killed writer are skipped too (names starting with "."), as is the lock.
    (out / f".{part_name(2)}.tmp-123-456").write_bytes(b"half a part")
    assert (out / LOCK_NAME).exists() and (out / ERRORS_NAME).exists()

    table = ds.dataset(out, format="parquet").to_table()
    assert sorted(table.column("path").to_pylist()) == sorted(GOOD_PATHS)
    frame = pytest.importorskip("pandas").read_parquet(out)
    assert sorted(frame["path"]) == sorted(GOOD_PATHS)
    rows = {
        path: np.asarray(vector)
        for path, vector in zip(frame["path"], frame["decaf7"], strict=True)
    }
    np.testing.assert_array_equal(rows["root.jpg"], full["decaf7"][-1])


def test_polars_reads_the_parts(store) -> None:
    import polars

    out, _ = store
    assert polars.scan_parquet(f"{out}/*.parquet").collect().height == 5


def test_duckdb_reads_the_parts(store) -> None:
    import duckdb

    out, _ = store
    assert duckdb.sql(f"select count(*) from '{out}/*.parquet'").fetchall() == [(5,)]


def test_reader_reads_float16_and_sliced_chunks(tmp_path: Path) -> None:
    # A store produced by another engine may use float16 or several row groups.
    out = tmp_path / "s"
    out.mkdir()
    X = np.arange(24, dtype=np.float32).reshape(6, 4)
    col = pa.FixedSizeListArray.from_arrays(pa.array(X.astype(np.float16).ravel()), 4)
    table = pa.table({"path": [f"{i}.jpg" for i in range(6)], "label": ["c"] * 6, "decaf6": col})
    pq.write_table(table, out / "part-00000.parquet", row_group_size=4)
    manifest = json.loads(
        Manifest.new(config(layers={"decaf6": 4}, part_size=6), RUN, created_at="t").to_json()
    )
    manifest.update(complete=True, parts=[{"file": "part-00000.parquet", "rows": 6, "errors": 0}])
    manifest.update(num_images=6, num_errors=0)
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    loaded, y, _ = load_features(out, "decaf6")
    np.testing.assert_array_equal(loaded, X)
    assert loaded.dtype == np.float32 and list(y) == ["c"] * 6


def test_unknown_layer_lists_available_ones(store) -> None:
    out, _ = store
    with pytest.raises(StoreError, match=r"'decaf5'.*available: decaf6, decaf7"):
        load_features(out, "decaf5")


def test_incomplete_store_refused_unless_allowed(tmp_path: Path) -> None:
    out = tmp_path / "store"
    write_store(out, complete=False)
    with pytest.raises(StoreError, match=r"incomplete.*resume"):
        load_features(out, "decaf6")
    X, _, _ = load_features(out, "decaf6", allow_incomplete=True)
    assert X.shape == (5, 5)
    assert not FeatureStore.open(out).info().complete


def test_missing_or_foreign_store_errors(store, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not found"):
        FeatureStore.open(tmp_path / "nothing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match=r"no _manifest\.json"):
        load_features(tmp_path / "plain", "decaf6")
    out, _ = store
    (out / part_name(1)).unlink()
    with pytest.raises(StoreError, match="part missing"):
        load_features(out, "decaf6")
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    manifest["format_version"] = 99
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=r"newer decaf \(store format version 99"):
        FeatureStore.open(out)


def test_damaged_part_is_a_store_error(store) -> None:
    out, _ = store
    (out / part_name(0)).write_bytes(b"PAR1 garbage")
    with pytest.raises(StoreError, match="damaged"):
        read_part_footer(out / part_name(0))
    with pytest.raises(StoreError):
        load_features(out, "decaf6")


def test_store_info_counts_classes_and_size(store) -> None:
    out, _ = store
    info = store_info(out)
    assert info["complete"] and info["num_images"] == 5 and info["num_errors"] == 1
    assert info["class_counts"] == {"<none>": 1, "a": 2, "b": 2}
    assert info["disk_bytes"] == sum(p.stat().st_size for p in out.iterdir())
    assert info["problems"] == [] and info["errors_file"] == ERRORS_NAME
    assert info["format_version"] == 2 and info["manifest"]["layers"] == DIMS
    assert read_errors(out) == [{"path": "b/2.jpg", "label": "b", "error": BAD["b/2.jpg"]}]
    assert (out / ERRORS_NAME).read_text().startswith('{"error": "ImageDecodeError')


def _wrong_dims_part(out: Path) -> None:
    """Part 1 rewritten with 4 floats for decaf6 where the manifest says 5 (same rows)."""
    full = features()
    part = parts(full)[1]
    part.features["decaf6"] = part.features["decaf6"][:, :4]
    write_part_file(out, part, layers={"decaf6": 4, "decaf7": 3}, config_sha256="x")


def test_info_reports_wrong_dims_and_damaged_parts_as_not_complete(
    store, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = store
    _wrong_dims_part(out)
    info = FeatureStore.open(out).info()
    assert not info.complete
    assert info.problems == (
        "part-00001.parquet: layer 'decaf6' holds 4 x float, the manifest says 5",
    )
    assert info.class_counts == {"a": 2, "b": 1}  # counted over the healthy parts only
    with pytest.raises(StoreError, match=r"layer 'decaf6' holds 4 x float, the manifest says 5"):
        load_features(out, "decaf6")

    capsys.readouterr()
    assert fcli.main(["info", str(out)]) == 4  # damaged: a conflict
    text = capsys.readouterr().out
    assert "status:       DAMAGED (1 problem(s) below)" in text
    assert "problem:      part-00001.parquet: layer 'decaf6'" in text
    (out / part_name(0)).write_bytes(b"PAR1 garbage")
    assert fcli.main(["info", str(out), "--json"]) == 4
    summary = json.loads(capsys.readouterr().out)
    assert summary["complete"] is False and len(summary["problems"]) == 2
    assert "damaged feature-store part" in summary["problems"][0]


def test_info_of_missing_store_is_a_clean_cli_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fcli.main(["info", str(tmp_path / "nope")]) == 5
    assert "decaf: error: feature store not found" in capsys.readouterr().err


def test_read_only_store_refuses_writes(store) -> None:
    out, full = store
    with pytest.raises(StoreError, match="read-only"):
        FeatureStore.open(out).write_part(parts(full)[0])


def test_write_part_checks_the_part_against_the_store(tmp_path: Path) -> None:
    full = features()
    with FeatureStore.create(tmp_path / "s", config(), RUN) as store:
        part = parts(full)[0]
        with pytest.raises(ValueError, match="holds 2 files, it must hold 3"):
            store.write_part(Part(0, part.paths[:2], part.labels[:2], part.features, []))
        with pytest.raises(ValueError, match="out of range"):
            store.write_part(Part(7, [], [], {}, []))
        with pytest.raises(ValueError, match="decaf6"):
            store.write_part(Part(0, part.paths, part.labels, {**part.features, "decaf6":
                                  np.zeros((3, 2), np.float32)}, []))  # fmt: skip
        assert store.pending_parts == [0, 1]


def test_create_refuses_an_existing_store_and_resume_a_missing_one(store, tmp_path: Path) -> None:
    out, _ = store
    with pytest.raises(StoreError, match=r"already holds a feature store.*--overwrite"):
        FeatureStore.create(out, config(), RUN)
    with pytest.raises(StoreError, match="nothing to resume"):
        FeatureStore.resume(tmp_path / "empty", config(), RUN)
    with FeatureStore.resume(out, config(), RUN) as resumed:
        assert resumed.already_complete and resumed.resumed_parts == 2
    with FeatureStore.create(out, config(), RUN, overwrite=True) as fresh:
        assert fresh.pending_parts == [0, 1] and fresh.resumed_parts == 0


def test_resume_with_another_configuration_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "store"
    write_store(out, complete=False)
    with pytest.raises(StoreError, match=r"cannot resume.*precision: store has \"fp32\", now"):
        FeatureStore.create_or_resume(out, config(precision="bf16"), RUN)


def test_clear_store_removes_only_store_files(store) -> None:
    out, _ = store
    (out / "notes.txt").write_text("mine")
    (out / ".part-00002.parquet.tmp-123").write_bytes(b"half")
    (out / "manifest.json").write_text("{}")  # version-1 names are store files too
    clear_store(out)
    # The lock file stays: another process may hold a lock on it (removing it would let a
    # second writer lock a new file).
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME, "notes.txt"]


def test_write_part_file_rejects_shape_mismatch(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="decaf6"):
        write_part_file(
            tmp_path,
            Part(0, ["a"], [None], {"decaf6": np.zeros((2, 5), np.float32)}, []),
            layers={"decaf6": 5},
            config_sha256="x",
        )
