"""Feature-store format: parts, manifest, reader (model-free: parts written directly)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurizer import store as fstore
from featurizer.errors import StoreError

DIMS = {"decaf6": 5, "decaf7": 3}


def _make_store(tmp_path: Path, *, complete: bool = True) -> tuple[Path, dict[str, np.ndarray]]:
    """Two parts (3 rows + 2 rows, one error in part 1) with known features."""
    rng = np.random.default_rng(0)
    out = tmp_path / "store"
    out.mkdir()
    full = {name: rng.standard_normal((5, dim)).astype(np.float32) for name, dim in DIMS.items()}
    paths = ["a/1.jpg", "a/2.jpg", "b/1.jpg", "b/3.jpg", "root.jpg"]
    labels = ["a", "a", "b", "b", None]
    errors = [{"path": "b/2.jpg", "label": "b", "error": "ImageDecodeError: truncated"}]
    parts = []
    for index, (lo, hi, errs) in enumerate([(0, 3, []), (3, 5, errors)]):
        fstore.write_part(
            out,
            index,
            paths=paths[lo:hi],
            labels=labels[lo:hi],
            features={name: array[lo:hi] for name, array in full.items()},
            layer_dims=DIMS,
            errors=errs,
            config_sha256="abc",
        )
        parts.append({"file": fstore.part_name(index), "rows": hi - lo, "errors": len(errs)})
    manifest = {
        "format_version": fstore.FORMAT_VERSION,
        "complete": complete,
        "layers": DIMS,
        "num_images": 5,
        "num_errors": 1,
        "parts": parts,
        "backbone": "alexnet",
    }
    fstore.write_manifest(out, manifest)
    fstore.write_errors(out, errors)
    return out, full


def test_load_features_returns_exact_rows_labels_paths(tmp_path: Path) -> None:
    out, full = _make_store(tmp_path)
    X, y, paths = fstore.load_features(out, "decaf6")
    assert X.dtype == np.float32 and X.flags.c_contiguous and X.shape == (5, 5)
    np.testing.assert_array_equal(X, full["decaf6"])
    assert y.dtype == object and list(y) == ["a", "a", "b", "b", None]
    assert paths == ["a/1.jpg", "a/2.jpg", "b/1.jpg", "b/3.jpg", "root.jpg"]
    X7, _, _ = fstore.load_features(out, "decaf7")
    np.testing.assert_array_equal(X7, full["decaf7"])


def test_part_schema_and_metadata(tmp_path: Path) -> None:
    out, _ = _make_store(tmp_path)
    part = out / fstore.part_name(1)
    schema = pq.read_schema(part)
    assert schema.field("decaf6").type == pa.list_(pa.float32(), 5)
    assert schema.field("label").nullable and not schema.field("path").nullable
    info = fstore.read_part_info(part)
    assert info["rows"] == 2 and info["index"] == 1 and info["config_sha256"] == "abc"
    assert info["errors"][0]["path"] == "b/2.jpg"
    # other tools read parts directly
    assert pq.read_table(part).num_rows == 2
    assert not list(out.glob(".*tmp*")), "temporary files must be renamed away"


def test_reader_reads_float16_and_sliced_chunks(tmp_path: Path) -> None:
    # A store produced by another engine may use float16 or several row groups.
    out = tmp_path / "s"
    out.mkdir()
    X = np.arange(24, dtype=np.float32).reshape(6, 4)
    col = pa.FixedSizeListArray.from_arrays(pa.array(X.astype(np.float16).ravel()), 4)
    table = pa.table({"path": [f"{i}.jpg" for i in range(6)], "label": ["c"] * 6, "decaf6": col})
    pq.write_table(table, out / "part-00000.parquet", row_group_size=4)
    fstore.write_manifest(
        out,
        {
            "format_version": 1,
            "complete": True,
            "layers": {"decaf6": 4},
            "parts": [{"file": "part-00000.parquet", "rows": 6, "errors": 0}],
        },
    )
    loaded, y, _ = fstore.load_features(out, "decaf6")
    np.testing.assert_array_equal(loaded, X)
    assert loaded.dtype == np.float32 and list(y) == ["c"] * 6


def test_unknown_layer_lists_available_ones(tmp_path: Path) -> None:
    out, _ = _make_store(tmp_path)
    with pytest.raises(StoreError, match=r"'decaf5'.*available: decaf6, decaf7"):
        fstore.load_features(out, "decaf5")


def test_incomplete_store_refused_unless_allowed(tmp_path: Path) -> None:
    out, _ = _make_store(tmp_path, complete=False)
    with pytest.raises(StoreError, match=r"incomplete.*resume"):
        fstore.load_features(out, "decaf6")
    X, _, _ = fstore.load_features(out, "decaf6", allow_incomplete=True)
    assert X.shape == (5, 5)


def test_missing_or_foreign_store_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not found"):
        fstore.read_manifest(tmp_path / "nothing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match=r"no manifest\.json"):
        fstore.load_features(tmp_path / "plain", "decaf6")
    out, _ = _make_store(tmp_path)
    (out / fstore.part_name(1)).unlink()
    with pytest.raises(StoreError, match="part missing"):
        fstore.load_features(out, "decaf6")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["format_version"] = 99
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="version 99"):
        fstore.read_manifest(out)


def test_damaged_part_is_a_store_error(tmp_path: Path) -> None:
    out, _ = _make_store(tmp_path)
    (out / fstore.part_name(0)).write_bytes(b"PAR1 garbage")
    with pytest.raises(StoreError, match="damaged"):
        fstore.read_part_info(out / fstore.part_name(0))
    with pytest.raises(StoreError):
        fstore.load_features(out, "decaf6")


def test_store_info_counts_classes_and_size(tmp_path: Path) -> None:
    out, _ = _make_store(tmp_path)
    info = fstore.store_info(out)
    assert info["complete"] and info["num_images"] == 5 and info["num_errors"] == 1
    assert info["class_counts"] == {"<none>": 1, "a": 2, "b": 2}
    assert info["disk_bytes"] == sum(p.stat().st_size for p in out.iterdir())
    assert fstore.read_errors(out)[0]["error"].startswith("ImageDecodeError")


def test_clear_store_removes_only_store_files(tmp_path: Path) -> None:
    out, _ = _make_store(tmp_path)
    (out / "notes.txt").write_text("mine")
    (out / ".part-00002.parquet.tmp-123").write_bytes(b"half")
    fstore.clear_store(out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_write_part_rejects_shape_mismatch(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="decaf6"):
        fstore.write_part(
            tmp_path,
            0,
            paths=["a"],
            labels=[None],
            features={"decaf6": np.zeros((2, 5), np.float32)},
            layer_dims={"decaf6": 5},
            errors=[],
            config_sha256="x",
        )
