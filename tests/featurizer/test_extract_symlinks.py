"""`decaf extract` on a tree of symbolic links: followed by default, every skipped entry listed in
`_errors.jsonl` with its reason and counted in the summary."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from featurizer import cli as fcli
from featurizer.store import FeatureStore, read_errors
from tests.featurizer.test_batch import build_dataset

SMALL = ["--weights", "random", "--batch-size", "4", "--part-size", "4", "--workers", "0",
         "--backbone", "alexnet", "--layers", "decaf7", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def link_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ROOT/<class> are links into a pool; plus a dangling link and a FIFO."""
    base = tmp_path_factory.mktemp("linked")
    build_dataset(base / "pool", per_class=2)  # a/ b/ c/ + root.jpg: 8 good, 3 bad
    root = base / "root"
    root.mkdir()
    for label in "abc":
        os.symlink(base / "pool" / label, root / label)
    os.symlink(base / "pool" / "missing.jpg", root / "a_dangling.jpg")
    os.mkfifo(root / "fifo.jpg")
    return root


def test_a_tree_made_only_of_links_is_extracted_and_skips_are_listed(
    link_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "store"
    assert fcli.main(["extract", str(link_tree), "--out", str(out), *SMALL]) == 0
    summary = capsys.readouterr().out
    assert "7 images" in summary and "3 unreadable" in summary
    assert "2 skipped: 1 FIFO, 1 dangling symlink (see _errors.jsonl)" in summary

    store = FeatureStore.open(out)
    assert store.manifest.classes == ("a", "b", "c") and store.manifest.skipped == 2
    errors = {entry["path"]: entry["error"] for entry in read_errors(out)}
    assert errors["fifo.jpg"] == "skipped (FIFO): not a regular file"
    assert errors["a_dangling.jpg"].startswith("skipped (dangling symlink): link to ")
    assert errors["a/corrupt.jpg"].startswith("ImageDecodeError")
    assert list(errors) == sorted(errors), "one list, in path order"


def test_no_follow_symlinks_on_a_tree_of_links_says_why_nothing_was_found(
    link_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "store"
    argv = ["extract", str(link_tree), "--out", str(out), *SMALL, "--no-follow-symlinks"]
    assert fcli.main(argv) == 3  # bad input
    err = capsys.readouterr().err
    assert err.startswith(f"decaf: error: no files found below {link_tree} (5 entries skipped: ")
    assert "4 symlink not followed" in err and "1 FIFO" in err
    assert not out.exists(), "a failed first run leaves no empty store directory behind"


def test_json_summary_counts_the_skips(
    link_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "store"
    assert fcli.main(["extract", str(link_tree), "--out", str(out), *SMALL, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_skipped"] == 2
    assert summary["skipped"] == {"FIFO": 1, "dangling symlink": 1}
    assert summary["files_this_run"] == 10 and summary["resumed_parts"] == 0
