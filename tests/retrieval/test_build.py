"""Index builds on synthetic vectors: every codec and kind, streaming, files and their damage."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import faiss
import numpy as np
import pytest

from retrieval.build import BuildProgress, build_from_source
from retrieval.errors import IndexBuildCancelled, IndexCorruptError
from retrieval.index_files import IndexRecord, read_index, read_record, write_index
from retrieval.recipe import IndexSpec, plan
from retrieval.sources import ArraySource, sample_rows


@dataclass
class CountingSource(ArraySource):
    """A matrix served in parts of 500 rows, counting how often it was read."""

    part_rows: int = 500
    passes: int = 0

    def parts(self) -> Iterator[np.ndarray]:
        self.passes += 1
        yield from super().parts()


def clustered(rows: int, dim: int, clusters: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    assignment = rng.integers(0, clusters, size=rows)
    return (centres[assignment] + 0.3 * rng.normal(size=(rows, dim))).astype(np.float32)


def exact_neighbours(matrix: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    return np.argsort(-(q @ unit.T), axis=1)[:, :k]


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return clustered(2000, 32)


def test_sample_rows_draws_distinct_rows_in_one_pass(vectors):
    source = CountingSource(vectors)
    sample = sample_rows(source, 300, seed=1)
    assert source.passes == 1 and sample.shape == (300, 32)
    matches = (sample[:, None, :] == vectors[None, :, :]).all(axis=2)
    assert (matches.sum(axis=1) == 1).all()  # every sampled row is one stored row
    assert len(set(matches.argmax(axis=1).tolist())) == 300  # and all are distinct


@pytest.mark.parametrize(
    ("codec", "kind", "min_recall"),
    [
        ("flat", "exact", 1.0),
        ("fp16", "exact", 0.98),
        ("int8", "exact", 0.9),
        ("pq", "exact", 0.4),  # 8 bytes for 32 floats: lossy
        ("flat", "ivf", 0.9),
        ("fp16", "hnsw", 0.9),
    ],
)
def test_every_codec_and_kind_finds_the_true_neighbours(vectors, codec, kind, min_recall):
    source = CountingSource(vectors)
    recipe = plan(IndexSpec("x", codec=codec, kind=kind), source.rows, source.dim)
    steps: list[str] = []
    index = build_from_source(source, recipe, progress=lambda p: steps.append(p.step))
    assert index.ntotal == len(vectors) and steps[-1] == "adding"
    queries = vectors[:50]
    _, found = index.search(queries, 10)
    truth = exact_neighbours(vectors, queries, 10)
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
    assert recall >= min_recall, recall
    assert (found[:, 0] == np.arange(50)).mean() >= min_recall  # each query finds itself


def test_pca_whitening_builds_from_a_sample_and_scores_are_cosines(vectors):
    source = CountingSource(vectors)
    recipe = plan(IndexSpec("x", dim=16, whiten=True), source.rows, source.dim)
    index = build_from_source(source, recipe)
    assert source.passes == 2  # one pass to sample, one to add: never the matrix in memory
    distances, rows = index.search(vectors[:5], 3)
    assert rows[:, 0].tolist() == list(range(5))
    assert np.allclose(1 - distances[:, 0] / 2, 1.0, atol=1e-4)  # self: cosine 1
    assert (1 - distances / 2 <= 1 + 1e-4).all() and (1 - distances / 2 >= -1 - 1e-4).all()


def test_a_cancelled_build_stops_between_parts(vectors):
    source = CountingSource(vectors)
    recipe = plan(IndexSpec("x"), source.rows, source.dim)
    seen: list[BuildProgress] = []

    def stop() -> bool:
        return len(seen) >= 2  # "adding 0", then the first part added

    with pytest.raises(IndexBuildCancelled, match="cancelled"):
        build_from_source(source, recipe, progress=seen.append, should_stop=stop)
    assert seen[-1].done == 500


def _saved(tmp_path, vectors) -> IndexRecord:
    recipe = plan(IndexSpec("x"), len(vectors), vectors.shape[1])
    index = build_from_source(CountingSource(vectors), recipe)
    data = {
        "store_fingerprint": "f",
        "layer": "x",
        "backbone": "alexnet",
        "weights_id": "random",
        "weights_sha256": None,
        "preprocessing": {},
        "recipe": recipe.to_dict(),
        "rows": len(vectors),
    }
    return write_index(tmp_path / "idx", index, data)


def test_an_index_round_trips_through_its_files(tmp_path, vectors):
    record = _saved(tmp_path, vectors)
    assert read_record(record.path).data == record.data
    index = read_index(read_record(record.path))
    assert index.ntotal == len(vectors)
    assert not list(record.path.glob(".*"))  # no temporary file left behind


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_a_damaged_index_file_is_a_clear_error(tmp_path, vectors, damage):
    record = _saved(tmp_path, vectors)
    data = record.index_file.read_bytes()
    if damage == "truncate":
        record.index_file.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        record.index_file.write_bytes(
            b"\x00not faiss" * (len(data) // 10) + b"\x00" * (len(data) % 10)
        )
    else:
        record.index_file.unlink()
    with pytest.raises(IndexCorruptError, match="rebuild"):
        read_index(record)


def test_garbage_of_the_right_size_is_refused_by_faiss_not_a_crash(tmp_path, vectors):
    record = _saved(tmp_path, vectors)
    size = record.index_file.stat().st_size
    record.index_file.write_bytes(b"IxF2" + b"\xff" * (size - 4))  # a plausible header, then junk
    with pytest.raises(IndexCorruptError, match=r"cannot be read|holds"):
        read_index(record)


def test_a_damaged_record_is_a_clear_error(tmp_path, vectors):
    record = _saved(tmp_path, vectors)
    (record.path / "index.json").write_text("{not json")
    with pytest.raises(IndexCorruptError, match="not readable JSON"):
        read_record(record.path)
    (record.path / "index.json").write_text('{"format": "something-else"}')
    with pytest.raises(IndexCorruptError, match="not a decaf index record"):
        read_record(record.path)


def test_faiss_is_the_cpu_build_here_or_uses_the_gpu_when_present():
    from retrieval.search import to_device

    index = faiss.IndexFlatL2(4)
    moved = to_device(index)
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        assert moved is not index
    else:
        assert moved is index
