"""The recipe: what each option turns into, and the options that cannot work."""

from __future__ import annotations

import pytest

from retrieval.errors import InvalidIndexOptionError
from retrieval.recipe import (
    AUTO_EXACT_MAX_FLOATS,
    TRAIN_SAMPLE_BYTES,
    IndexSpec,
    plan,
    pq_subquantizers,
)


def test_auto_is_exact_for_small_stores_and_ivf_above_the_measured_size():
    small = plan(IndexSpec("decaf7"), rows=AUTO_EXACT_MAX_FLOATS // 4096, dim_in=4096)
    large = plan(IndexSpec("decaf7"), rows=AUTO_EXACT_MAX_FLOATS // 4096 + 1, dim_in=4096)
    assert small.kind == "exact" and small.factory == "L2norm,Flat"
    assert large.kind == "ivf" and large.factory.startswith("L2norm,IVF")
    assert large.nlist and large.nprobe and large.train_rows >= large.nlist


def test_pca_dims_decide_auto_and_whitening_is_renormalised():
    recipe = plan(IndexSpec("decaf7", dim=256, whiten=True, codec="fp16"), 50_000, 4096)
    assert recipe.factory == "L2norm,PCAW256,L2norm,SQfp16"
    assert recipe.kind == "exact"  # 50k x 256 is below the exact limit, 50k x 4096 is not
    assert recipe.name == "decaf7-256w-fp16-exact"
    # a covariance of 4096 dims wants 4 x 4096 rows; the sample is capped in bytes
    assert recipe.train_rows == min(4 * 4096, TRAIN_SAMPLE_BYTES // (4 * 4096)) >= 4096


@pytest.mark.parametrize(
    ("codec", "kind", "expected"),
    [
        ("int8", "exact", "SQ8"),
        ("pq", "exact", "PQ64np"),
        ("flat", "hnsw", "HNSW32"),
        ("fp16", "hnsw", "HNSW32_SQfp16"),
        ("pq", "ivf", ",PQ64"),
    ],
)
def test_codecs_and_kinds_map_to_faiss_factory_strings(codec, kind, expected):
    recipe = plan(IndexSpec("x", codec=codec, kind=kind), 100_000, 256)
    assert recipe.factory.endswith(expected)


def test_pq_subquantizers_divide_the_dimension():
    assert pq_subquantizers(256) == 64
    assert pq_subquantizers(4096) == 1024
    assert 100 % pq_subquantizers(100) == 0


@pytest.mark.parametrize(
    ("spec", "rows", "dim", "message"),
    [
        (IndexSpec("x", dim=512), 1000, 256, "PCA can only reduce"),
        (IndexSpec("x", dim=64), 10, 256, "at least 64 rows"),
        (IndexSpec("x"), 0, 256, "no rows"),
    ],
)
def test_impossible_recipes_are_refused_with_the_reason(spec, rows, dim, message):
    with pytest.raises(InvalidIndexOptionError, match=message):
        plan(spec, rows, dim)


def test_whitening_without_pca_and_unknown_values_are_refused():
    with pytest.raises(InvalidIndexOptionError, match="--dim"):
        IndexSpec("x", whiten=True)
    with pytest.raises(InvalidIndexOptionError, match="codec"):
        IndexSpec("x", codec="zip")  # type: ignore[arg-type]
    with pytest.raises(InvalidIndexOptionError, match="kind"):
        IndexSpec("x", kind="lsh")  # type: ignore[arg-type]
