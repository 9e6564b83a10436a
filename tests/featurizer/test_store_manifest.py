"""The manifest is validated on read: a bad file is a clear StoreError, never a KeyError."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from featurizer.errors import StoreError
from featurizer.store import MANIFEST_NAME, V1_MANIFEST_NAME, FeatureStore, Manifest
from tests.featurizer.store_fixtures import write_store

Mutation = Callable[[dict[str, Any]], Any]


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("valid") / "store"
    write_store(out)
    return json.loads((out / MANIFEST_NAME).read_text())


def _with(**changes: Any) -> Mutation:
    return lambda m: {**m, **changes}


def _without(key: str) -> Mutation:
    return lambda m: {k: v for k, v in m.items() if k != key}


def _with_part(**changes: Any) -> Mutation:
    return lambda m: {**m, "parts": [{**m["parts"][0], **changes}, *m["parts"][1:]]}


CASES: list[tuple[str, Mutation, str]] = [
    ("a JSON list", lambda m: [m], r"not a decaf feature-store manifest \(a JSON list"),
    ("another tool's file", lambda m: {"name": "x"}, r"no integer format_version"),
    ("another format marker", _with(format="delta-lake"), r"\(format 'delta-lake'\)"),
    ("a newer version", _with(format_version=3), r"newer decaf \(.* 3; .* 1-2\): upgrade decaf"),
    ("version as text", _with(format_version="2"), r"no integer format_version"),
    ("version 0", _with(format_version=0), r"format version 0"),
    ("version 2 without its marker", _without("format"), r"no format marker"),
    ("missing backbone", _without("backbone"), r"required field 'backbone' is missing"),
    ("missing layers", _without("layers"), r"required field 'layers' is missing"),
    ("missing parts", _without("parts"), r"required field 'parts' is missing"),
    ("missing engine", _without("engine"), r"required field 'engine' is missing"),
    ("missing files.count", _with(files={"sha256": "f"}), r"required field 'files.count'"),
    ("dims as text", _with(layers={"decaf6": "5"}), r"'layers' must be an object of layer name"),
    ("no layers", _with(layers={}), r"'layers' must be an object"),
    ("part size as text", _with(part_size="3"), r"'part_size' must be an integer >= 1, got \"3\""),
    ("part size true", _with(part_size=True), r"'part_size' must be an integer >= 1, got true"),
    ("complete as text", _with(complete="yes"), r"'complete' must be true or false"),
    ("classes of numbers", _with(classes=[1]), r"'classes' must be a list of strings"),
    ("parts as an object", _with(parts={}), r"'parts' must be a list of parts"),
    ("a part as text", _with(parts=["part-00000.parquet"]), r"'parts\[0\]' must be an object"),
    ("negative rows", _with_part(rows=-1), r"'parts\[0\].rows' must be an integer >= 0"),
    ("counts that disagree", _with(num_images=7), r"num_images is 7 but the parts add up to 5"),
    ("a part twice", lambda m: {**m, "parts": [m["parts"][0]] * 2}, r"a part is listed twice"),
    ("a part beyond the files", _with_part(file="part-00009.parquet"), r"part 9 is beyond the 2"),
]
ESCAPING_NAMES = [
    "../part-00000.parquet",
    "/etc/passwd",
    "sub/part-00000.parquet",
    "part-00000.parquet/../../secret.parquet",
    "part-00000.parquet\x00",
    "PART-00000.parquet",
    "",
]


def _open_with(tmp_path: Path, content: Any, name: str = MANIFEST_NAME) -> FeatureStore:
    out = tmp_path / "store"
    out.mkdir(exist_ok=True)
    text = content if isinstance(content, str) else json.dumps(content)
    (out / name).write_text(text)
    return FeatureStore.open(out)


@pytest.mark.parametrize(("case", "mutate", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_manifest_is_a_clear_store_error(
    tmp_path: Path, valid: dict[str, Any], case: str, mutate: Mutation, message: str
) -> None:
    with pytest.raises(StoreError, match=message) as info:
        _open_with(tmp_path, mutate(valid))
    assert str(tmp_path / "store" / MANIFEST_NAME) in str(info.value), "name the file"


@pytest.mark.parametrize("name", ESCAPING_NAMES)
def test_part_names_that_leave_the_store_are_refused(
    tmp_path: Path, valid: dict[str, Any], name: str
) -> None:
    with pytest.raises(StoreError, match=r"must be a plain part-NNNNN\.parquet name inside"):
        _open_with(tmp_path, _with_part(file=name)(valid))


def test_malformed_json_and_undecodable_bytes(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"is not valid JSON .*re-extract with"):
        _open_with(tmp_path, '{"format_version": 2,')
    (tmp_path / "store" / MANIFEST_NAME).write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(StoreError, match="cannot read"):
        FeatureStore.open(tmp_path / "store")


def test_version_must_match_the_file_name(tmp_path: Path, valid: dict[str, Any]) -> None:
    with pytest.raises(StoreError, match=r"says format version 2, but manifest\.json belongs to"):
        _open_with(tmp_path, valid, name=V1_MANIFEST_NAME)


@pytest.mark.parametrize("junk", [None, [], {}, "x", 1.5, True, -1])
def test_any_field_replaced_by_junk_is_a_store_error_or_accepted(
    valid: dict[str, Any], junk: Any
) -> None:
    """A sweep over every field: nothing but StoreError ever escapes the reader."""
    for key in valid:
        for data in ({**valid, key: junk}, {k: v for k, v in valid.items() if k != key}):
            with contextlib.suppress(StoreError):
                Manifest.from_dict(data, source="m.json")


def test_round_trip_keeps_every_field(valid: dict[str, Any]) -> None:
    manifest = Manifest.from_dict(valid, source="m.json")
    assert manifest.to_dict() == valid
    assert Manifest.from_json(manifest.to_json(), source="m.json") == manifest
