"""`decaf extract --engine ray`: Ray Data writes the same store as the local engine.

One local Ray (2 CPUs) is started for the module; the real random-weight AlexNet runs in the
Ray actors. Tests that need no Ray (the missing-Ray error, the driver-side regrouping, the
cluster sizing rules) run without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from featurizer.dataset import CollatedBatch, ImageRecord
from featurizer.engines.base import PartPlan
from featurizer.engines.ray import (
    INSTALL_HINT,
    EngineUnavailableError,
    plan_cluster,
    regroup_parts,
    split_by_part,
)
from featurizer.engines.ray_cluster import shutdown_ray
from featurizer.errors import DecafError
from featurizer.extraction import ExtractionCancelled, extract_dataset
from featurizer.store import (
    ERRORS_NAME,
    MANIFEST_NAME,
    FeatureStore,
    load_features,
    read_errors,
    read_part_footer,
)

REPO = Path(__file__).resolve().parents[2]
LAYERS = ("decaf6", "decaf7")
# Small parts and batches so the 26 files span several parts and batches straddle parts.
COMMON_ARGS = [
    "--weights",
    "random",
    "--layers",
    ",".join(LAYERS),
    "--batch-size",
    "8",
    "--part-size",
    "10",
    "--no-progress",
]
BAD = {"dog/broken.jpg": b"\xff\xd8\xff\xe0 truncated header", "cat/empty.png": b""}


def make_image_folder(root: Path, per_class: int = 12) -> None:
    """2 classes x ``per_class`` tiny PNG/JPEG images of varied sizes, plus the BAD files."""
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (40 + 3 * i, 56 + 2 * i, 3), dtype=np.uint8)
            fmt = "JPEG" if i % 3 == 0 else "PNG"
            Image.fromarray(pixels).save(root / label / f"{i:02d}.{fmt.lower()}", fmt)
    for rel, data in BAD.items():
        (root / rel).write_bytes(data)


def decaf(argv: list[str]) -> int:
    """Run the `decaf` entry point in this process (so it reuses the module's Ray)."""
    from service.cli import main

    return main(argv)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ray-images")
    make_image_folder(root)
    return root


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray
    if started:
        shutdown_ray(ray)


@pytest.fixture(scope="module")
def stores(image_folder: Path, ray_local, tmp_path_factory: pytest.TempPathFactory):
    """The same folder extracted by both engines through the CLI: (local store, ray store)."""
    out = tmp_path_factory.mktemp("stores")
    assert (
        decaf(
            [
                "extract",
                str(image_folder),
                "--out",
                str(out / "local"),
                "--workers",
                "0",
                *COMMON_ARGS,
            ]
        )
        == 0
    )
    assert (
        decaf(
            [
                "extract",
                str(image_folder),
                "--out",
                str(out / "ray"),
                "--engine",
                "ray",
                *COMMON_ARGS,
            ]
        )
        == 0
    )
    return out / "local", out / "ray"


@pytest.mark.ray
def test_ray_store_equals_local_store(stores: tuple[Path, Path]) -> None:
    local, ray = stores
    for layer in LAYERS:
        x_local, y_local, paths_local = load_features(local, layer)
        x_ray, y_ray, paths_ray = load_features(ray, layer)
        assert paths_ray == paths_local
        assert len(paths_ray) == 24 and not set(BAD) & set(paths_ray)
        assert list(y_ray) == list(y_local)
        assert x_ray.shape == x_local.shape == (24, 4096)
        np.testing.assert_allclose(x_ray, x_local, rtol=1e-5, atol=1e-5)
        assert np.abs(x_ray).max() > 0  # real activations, not placeholders
    assert read_errors(ray) == read_errors(local)
    assert sorted(e["path"] for e in read_errors(ray)) == sorted(BAD)
    assert (ray / ERRORS_NAME).read_bytes() == (local / ERRORS_NAME).read_bytes()


@pytest.mark.ray
def test_ray_store_has_same_parts_and_manifest(stores: tuple[Path, Path]) -> None:
    local, ray = stores
    m_local = FeatureStore.open(local).manifest.to_dict()
    m_ray = FeatureStore.open(ray).manifest.to_dict()
    assert m_ray["engine"] == "ray" and m_local["engine"] == "local"
    assert m_ray["complete"] is True
    assert m_ray["ray"]["actors"] == 1 and m_ray["ray"]["address"] == "local"
    # Part k covers the same files in both stores (so the parts are interchangeable).
    assert m_ray["parts"] == m_local["parts"]
    assert len(m_ray["parts"]) == 3
    for key in (
        "num_images",
        "num_errors",
        "classes",
        "layers",
        "weights_id",
        "preprocessing",
        "precision",
        "part_size",
        "files",
        "format_version",
        "backbone",
    ):
        assert m_ray[key] == m_local[key], key
    for part in m_ray["parts"]:
        info_ray = read_part_footer(ray / part["file"])
        info_local = read_part_footer(local / part["file"])
        assert info_ray.errors == info_local.errors
        assert info_ray.config_sha256 == info_local.config_sha256


@pytest.mark.ray
def test_ray_data_reads_the_store_directory(stores: tuple[Path, Path], ray_local) -> None:
    """No glob: Ray Data skips _manifest.json, _errors.jsonl and _lock like other readers."""
    _, ray_store = stores
    rows = ray_local.data.read_parquet(str(ray_store)).select_columns(["path"]).take_all()
    _, _, paths = load_features(ray_store, "decaf6")
    assert sorted(row["path"] for row in rows) == sorted(paths)


@pytest.mark.ray
def test_ray_resumes_a_partial_store(
    stores: tuple[Path, Path], image_folder: Path, tmp_path: Path
) -> None:
    """A store missing a part (interrupted run) is completed by the ray engine, only that part."""
    _, ray = stores
    partial = tmp_path / "partial"
    partial.mkdir()
    for entry in ray.iterdir():
        (partial / entry.name).write_bytes(entry.read_bytes())
    (partial / "part-00001.parquet").unlink()
    manifest = json.loads((partial / MANIFEST_NAME).read_text())
    manifest["complete"] = False
    (partial / MANIFEST_NAME).write_text(json.dumps(manifest))

    result = extract_dataset(
        image_folder,
        partial,
        engine="ray",
        layers=LAYERS,
        weights="random",
        batch_size=8,
        part_size=10,
    )
    assert result.resumed_parts == 2
    for layer in LAYERS:
        x_full, _, paths_full = load_features(ray, layer)
        x_resumed, _, paths_resumed = load_features(partial, layer)
        assert paths_resumed == paths_full
        np.testing.assert_allclose(x_resumed, x_full, rtol=1e-5, atol=1e-5)
    assert read_errors(partial) == read_errors(ray)


@pytest.mark.ray
def test_should_stop_cancels_cleanly_and_reports_progress(
    image_folder: Path, ray_local, tmp_path: Path
) -> None:
    """The service's cancel hook: stop after the first results, keep a resumable store."""
    seen = []
    with pytest.raises(ExtractionCancelled, match="resumes"):
        extract_dataset(
            image_folder,
            tmp_path / "s",
            engine="ray",
            layers=LAYERS,
            weights="random",
            batch_size=8,
            part_size=10,
            progress=seen.append,
            should_stop=lambda: True,
        )
    assert seen[0].done == 0 and seen[-1].done > 0 and seen[-1].total == 26
    assert FeatureStore.open(tmp_path / "s").manifest.complete is False


@pytest.mark.ray
def test_probe_eval_runs_on_the_ray_store(stores: tuple[Path, Path], capsys) -> None:
    _, ray = stores
    code = decaf(
        [
            "probe",
            "eval",
            str(ray),
            "--layer",
            "decaf7",
            "--protocol",
            "stratified",
            "--splits",
            "2",
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    [result] = json.loads(captured.out)["results"]
    assert result["layer"] == "decaf7" and len(result["splits"]) == 2
    assert set(result["per_class_accuracy"]) == {"cat", "dog"}
    assert 0.0 <= result["mean_class_accuracy"]["mean"] <= 1.0


@pytest.mark.ray
def test_worker_side_errors_keep_their_type(image_folder: Path, ray_local, tmp_path: Path) -> None:
    """Weights missing on the workers fail fast with the featurizer's own error and advice."""
    from featurizer.errors import WeightsError

    with pytest.raises(WeightsError, match=r"nowhere\.pth"):
        extract_dataset(
            image_folder, tmp_path / "s", engine="ray", weights=str(tmp_path / "nowhere.pth")
        )
    assert not (tmp_path / "s" / "part-00000.parquet").exists()


def test_missing_ray_gives_install_hint_and_nonzero_exit(
    image_folder: Path, tmp_path: Path
) -> None:
    """`import ray` failing (as when the extra is not installed) -> clear error, exit code != 0."""
    script = (
        "import sys\n"
        "sys.modules['ray'] = None  # makes `import ray` raise ImportError\n"
        "from service.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    argv = [
        "extract",
        str(image_folder),
        "--out",
        str(tmp_path / "s"),
        "--engine",
        "ray",
        "--weights",
        "random",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", script, *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    assert done.returncode != 0
    assert INSTALL_HINT in done.stderr
    assert "decaf: error:" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "s").exists()


def test_import_ray_error_is_a_decaf_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from featurizer.engines.ray import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(EngineUnavailableError, match=r"pip install 'decaf\[ray\]'") as info:
        import_ray()
    assert isinstance(info.value, DecafError) and info.value.http_status == 501


# --------------------------------------------------------------------------- no Ray needed


def _block(indices: list[int], errors: dict[int, str]) -> dict[str, np.ndarray]:
    return {
        "index": np.array(indices),
        "error": np.array([errors.get(i, "") for i in indices], dtype=object),
        "f": np.array([[i, -i] for i in indices], dtype=np.float32),
    }


def _plan(files: int, part_size: int) -> PartPlan:
    records = [ImageRecord(f"{i}.jpg", "c") for i in range(files)]
    pending = tuple(range(-(-files // part_size)))
    return PartPlan(Path("."), records, part_size, batch_size=4, pending=pending)


def test_blocks_out_of_order_are_regrouped_per_part_in_index_order() -> None:
    """Ray may return blocks in any order; each part must come out sorted, errors kept."""
    outputs = [_block([5, 6, 7], {6: "bad"}), _block([0, 1, 2, 3, 4], {})]
    first, second = regroup_parts(outputs, _plan(8, 4), {"f": 2})
    assert (first.files, first.errors, first.parts) == (3, 1, [])
    assert (second.files, second.errors) == (5, 0)
    part0, part1 = sorted(second.parts, key=lambda part: part.index)
    assert part1.paths == ["4.jpg", "5.jpg", "7.jpg"] and part1.labels == ["c"] * 3
    assert part1.errors == [{"path": "6.jpg", "label": "c", "error": "bad"}]
    np.testing.assert_array_equal(part1.features["f"][:, 0], [4, 5, 7])
    assert part0.paths == ["0.jpg", "1.jpg", "2.jpg", "3.jpg"]
    np.testing.assert_array_equal(part0.features["f"][:, 1], [0, -1, -2, -3])


def test_rows_missing_from_ray_output_are_an_error() -> None:
    with pytest.raises(DecafError, match=r"incomplete parts \[1\]"):
        list(regroup_parts([_block([0, 1, 2, 3, 4], {})], _plan(8, 4), {"f": 2}))


def test_split_by_part_all_rows_failed() -> None:
    output = {
        "index": np.array([3]),
        "error": np.array(["ImageDecodeError: x"], dtype=object),
        "f": np.zeros((1, 2), np.float32),
    }
    [(part, batch, features)] = list(split_by_part(output, 2, {"f": 2}))
    assert part == 1 and batch.indices == [] and batch.errors == [(3, "ImageDecodeError: x")]
    assert features["f"].shape == (0, 2)
    assert isinstance(batch, CollatedBatch)


def fake_cluster(cpus: int, gpus: int, nodes: int) -> SimpleNamespace:
    """Only the two read-only queries plan_cluster makes of Ray (no GPU cluster in CI)."""
    resources = {"CPU": float(cpus), **({"GPU": float(gpus)} if gpus else {})}
    return SimpleNamespace(
        cluster_resources=lambda: resources,
        nodes=lambda: [{"Alive": True}] * nodes,
    )


def test_plan_uses_one_actor_per_gpu_by_default() -> None:
    plan = plan_cluster(fake_cluster(64, 8, 2), "head:6379", "auto", None, None, None)
    assert (plan.actors, plan.num_gpus_per_actor, plan.device) == (8, 1.0, "cuda")
    half = plan_cluster(fake_cluster(64, 8, 2), None, "auto", 0.5, None, None)
    assert half.actors == 16
    pinned = plan_cluster(fake_cluster(64, 8, 2), None, "auto", 1, 3, 12)
    assert (pinned.actors, pinned.decode_tasks) == (3, 12)


def test_plan_cpu_actors_get_the_node_cores() -> None:
    plan = plan_cluster(fake_cluster(2, 0, 1), None, "auto", None, None, None)
    assert (plan.actors, plan.num_gpus_per_actor, plan.threads_per_actor) == (1, 0.0, 2)
    assert plan.device == "cpu"
    forced_cpu = plan_cluster(fake_cluster(32, 4, 2), None, "cpu", None, None, None)
    assert forced_cpu.num_gpus_per_actor == 0.0 and forced_cpu.actors == 2
    assert forced_cpu.threads_per_actor == 8


def test_plan_refuses_gpus_the_cluster_lacks() -> None:
    with pytest.raises(EngineUnavailableError, match="GPU"):
        plan_cluster(fake_cluster(8, 0, 1), None, "auto", 1, None, None)
    with pytest.raises(EngineUnavailableError, match="cuda"):
        plan_cluster(fake_cluster(8, 0, 1), None, "cuda", 0, None, None)
