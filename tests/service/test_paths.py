"""Extraction roots must resolve inside DECAF_DATA_ROOTS: no '..', absolute or symlink escape."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.paths import (
    DataRootNotFoundError,
    InvalidNameError,
    PathNotAllowedError,
    resolve_data_root,
    validate_name,
)


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    allowed = tmp_path / "allowed"
    (allowed / "cats" / "inner").mkdir(parents=True)
    (allowed / "file.txt").write_text("not a directory")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "passwords").write_text("x")
    other = tmp_path / "other-root"
    (other / "dogs").mkdir(parents=True)
    return {"allowed": allowed, "secret": secret, "other": other, "tmp": tmp_path}


def test_relative_and_absolute_paths_inside_a_root(tree: dict[str, Path]) -> None:
    roots = [tree["allowed"]]
    assert resolve_data_root("cats", roots) == (tree["allowed"] / "cats").resolve()
    assert resolve_data_root("cats/inner/..", roots) == (tree["allowed"] / "cats").resolve()
    absolute = str(tree["allowed"] / "cats" / "inner")
    assert resolve_data_root(absolute, roots) == Path(absolute).resolve()
    assert resolve_data_root(str(tree["allowed"]), roots) == tree["allowed"].resolve()


def test_relative_path_is_looked_up_in_every_root(tree: dict[str, Path]) -> None:
    roots = [tree["allowed"], tree["other"]]
    assert resolve_data_root("dogs", roots) == (tree["other"] / "dogs").resolve()


@pytest.mark.parametrize(
    "user_path",
    ["..", "../secret", "cats/../../secret", "./../secret/", "cats/inner/../../../secret"],
)
def test_dotdot_cannot_escape(tree: dict[str, Path], user_path: str) -> None:
    with pytest.raises(PathNotAllowedError, match="outside the allowed data roots"):
        resolve_data_root(user_path, [tree["allowed"]])


def test_absolute_path_outside_is_refused(tree: dict[str, Path]) -> None:
    for path in (str(tree["secret"]), "/", "/etc", str(tree["tmp"])):
        with pytest.raises(PathNotAllowedError):
            resolve_data_root(path, [tree["allowed"]])


def test_missing_path_outside_is_refused_not_reported_missing(tree: dict[str, Path]) -> None:
    # Whether something exists outside the roots must not leak through the error type.
    with pytest.raises(PathNotAllowedError):
        resolve_data_root(str(tree["tmp"] / "does-not-exist"), [tree["allowed"]])


def test_symlink_escape_is_refused(tree: dict[str, Path]) -> None:
    link = tree["allowed"] / "sneaky"
    os.symlink(tree["secret"], link)
    with pytest.raises(PathNotAllowedError):
        resolve_data_root("sneaky", [tree["allowed"]])
    with pytest.raises(PathNotAllowedError):
        resolve_data_root(str(link), [tree["allowed"]])


def test_symlink_staying_inside_is_accepted(tree: dict[str, Path]) -> None:
    os.symlink(tree["allowed"] / "cats", tree["allowed"] / "alias")
    resolved = resolve_data_root("alias", [tree["allowed"]])
    assert resolved == (tree["allowed"] / "cats").resolve()


def test_symlinked_root_itself_is_resolved(tree: dict[str, Path]) -> None:
    # A configured root that is itself a link still contains its own sub-directories.
    link_root = tree["tmp"] / "root-link"
    os.symlink(tree["allowed"], link_root)
    assert resolve_data_root("cats", [link_root]) == (tree["allowed"] / "cats").resolve()


def test_prefix_sibling_is_not_inside(tree: dict[str, Path]) -> None:
    # "/x/allowed-evil" starts with the string "/x/allowed" but is not inside it.
    evil = tree["tmp"] / "allowed-evil"
    evil.mkdir()
    with pytest.raises(PathNotAllowedError):
        resolve_data_root(str(evil), [tree["allowed"]])


def test_missing_and_non_directory_inside(tree: dict[str, Path]) -> None:
    with pytest.raises(DataRootNotFoundError, match="does not exist"):
        resolve_data_root("nope", [tree["allowed"]])
    with pytest.raises(DataRootNotFoundError, match="not a directory"):
        resolve_data_root("file.txt", [tree["allowed"]])


def test_no_roots_configured_explains_the_setting(tree: dict[str, Path]) -> None:
    with pytest.raises(PathNotAllowedError, match="DECAF_DATA_ROOTS"):
        resolve_data_root(str(tree["allowed"]), [])
    with pytest.raises(PathNotAllowedError, match="DECAF_DATA_ROOTS"):
        resolve_data_root("cats", [tree["tmp"] / "missing-root"])


def test_empty_and_nul_paths(tree: dict[str, Path]) -> None:
    for bad in ("", "cats\x00/x"):
        with pytest.raises(ValueError):
            resolve_data_root(bad, [tree["allowed"]])


def test_status_codes() -> None:
    assert PathNotAllowedError.http_status == 403
    assert DataRootNotFoundError.http_status == 404
    assert InvalidNameError.http_status == 400


@pytest.mark.parametrize("name", ["caltech101", "a", "My_set-2.v1", "9lives"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "..", ".hidden", "a/b", "a\\b", "-x", "x" * 129, "a b"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidNameError, match="invalid"):
        validate_name(name)
