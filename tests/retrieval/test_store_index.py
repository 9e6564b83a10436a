"""Index a store of real photo crops (random-weight AlexNet): search, duplicates, eval, refusals."""

from __future__ import annotations

import dataclasses
import json

import pytest

from featurizer.store import FeatureStore
from featurizer.store.manifest import MANIFEST_NAME
from retrieval.build import build_store_index
from retrieval.duplicates import find_duplicates
from retrieval.errors import (
    IndexCorruptError,
    IndexMismatchError,
    IndexMissingError,
    IndexStaleError,
)
from retrieval.evaluate import evaluate_store
from retrieval.queries import search_image_files, store_featurizer
from retrieval.recipe import IndexSpec
from retrieval.search import Searcher, clamp_k
from tests.retrieval.photos import ORIGINAL, PLANTED

WHITENED = IndexSpec("decaf7", dim=16, whiten=True)


@pytest.fixture(scope="module")
def query_featurizer(photo_store_template):
    manifest = FeatureStore.open(photo_store_template / "store").manifest
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        return store_featurizer(manifest, "decaf7", device="cpu")


def test_the_query_image_itself_is_the_top_hit_with_score_one(photo_store, query_featurizer):
    result = build_store_index(photo_store, IndexSpec("decaf7"))
    assert not result.reused and result.record.rows == 26
    assert (photo_store / "_index" / "decaf7-full-flat-exact" / "index.faiss").is_file()
    searcher = Searcher.open(photo_store)
    query = str(photo_store.parent / "images" / ORIGINAL)
    [answer] = search_image_files(searcher, query_featurizer, [query], k=3)
    top = answer["neighbours"][0]
    assert top["path"] == ORIGINAL and top["label"] == "china"
    assert top["score"] == pytest.approx(1.0, abs=1e-4)
    assert {n["path"] for n in answer["neighbours"][1:]} == set(PLANTED)


def test_an_unreadable_query_gets_its_error_and_the_others_are_answered(
    photo_store, query_featurizer, tmp_path
):
    build_store_index(photo_store, IndexSpec("decaf7"))
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    good = str(photo_store.parent / "images" / "flower/flower_002.jpg")
    results = search_image_files(Searcher.open(photo_store), query_featurizer, [str(bad), good], 2)
    assert results[0]["neighbours"] is None and "image" in results[0]["error"]
    assert results[1]["neighbours"][0]["path"] == "flower/flower_002.jpg"


def test_planted_duplicates_are_one_group(photo_store):
    build_store_index(photo_store, WHITENED)
    groups = find_duplicates(Searcher.open(photo_store), threshold=0.95)
    planted = {ORIGINAL, *PLANTED}
    assert [set(g.paths) for g in groups if set(g.paths) & planted] == [planted]
    assert all(g.min_score >= 0.95 for g in groups)


def test_eval_reports_map_and_precision_at_k_per_layer_and_pca(photo_store):
    plain = evaluate_store(photo_store, IndexSpec("decaf7"), [1, 5])
    assert plain["queries"] == 26 and plain["map_depth"] is None
    assert 0.0 < plain["map"] <= 1.0 and set(plain["precision_at"]) == {"1", "5"}
    whitened = evaluate_store(photo_store, WHITENED, [1])
    assert whitened["recipe"]["factory"] == "L2norm,PCAW16,L2norm,Flat"
    assert not (photo_store / "_index").exists()  # eval writes nothing


def test_no_index_is_an_error_naming_the_build_command(photo_store):
    with pytest.raises(IndexMissingError, match=r"decaf index build .* --layer decaf7"):
        Searcher.open(photo_store, "decaf7")


def test_an_index_of_another_layer_is_not_used(photo_store):
    build_store_index(photo_store, IndexSpec("decaf5"))
    with pytest.raises(IndexMissingError, match=r"decaf5-full-flat-exact \(layer decaf5\)"):
        Searcher.open(photo_store, "decaf7")


def test_an_index_of_another_backbone_is_refused(photo_store):
    record = build_store_index(photo_store, IndexSpec("decaf7")).record
    data = json.loads((record.path / "index.json").read_text())
    data["backbone"] = "resnet50"
    (record.path / "index.json").write_text(json.dumps(data))
    with pytest.raises(IndexMismatchError, match="backbone: index 'resnet50' vs store 'alexnet'"):
        Searcher.open(photo_store)


def test_a_changed_store_refuses_its_index_until_rebuilt(photo_store):
    build_store_index(photo_store, IndexSpec("decaf7"))
    manifest = FeatureStore.open(photo_store).manifest  # as if re-extracted with --overwrite
    changed = dataclasses.replace(manifest, created_at="2030-01-01T00:00:00+00:00")
    (photo_store / MANIFEST_NAME).write_text(changed.to_json())
    with pytest.raises(IndexStaleError, match="--rebuild"):
        Searcher.open(photo_store)
    with pytest.raises(IndexStaleError, match="--rebuild"):
        build_store_index(photo_store, IndexSpec("decaf7"))
    assert not build_store_index(photo_store, IndexSpec("decaf7"), rebuild=True).reused
    assert Searcher.open(photo_store).rows == 26


def test_an_up_to_date_index_is_reused(photo_store):
    first = build_store_index(photo_store, IndexSpec("decaf7"))
    again = build_store_index(photo_store, IndexSpec("decaf7"))
    assert again.reused and again.record.data["built_at"] == first.record.data["built_at"]


def test_a_corrupt_index_file_is_a_clear_error(photo_store):
    record = build_store_index(photo_store, IndexSpec("decaf7")).record
    size = record.index_file.stat().st_size
    record.index_file.write_bytes(b"\x00" * size)
    with pytest.raises(IndexCorruptError, match=r"cannot be read.*--rebuild"):
        Searcher.open(photo_store)


def test_k_above_the_store_size_is_clamped_with_a_note():
    assert clamp_k(50, 26) == (26, "k=50 is above the store's 26 rows: returning 26 neighbours")
    assert clamp_k(5, 26) == (5, None)
