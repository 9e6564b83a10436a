"""`decaf index build|search|duplicates|eval` as a user runs them (subprocesses)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from featurizer.errors import EXIT_BAD_INPUT, EXIT_CONFLICT, EXIT_NOT_FOUND
from tests.retrieval.photos import ORIGINAL, PLANTED

REPO = Path(__file__).resolve().parents[2]


def decaf(*args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "index", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.slow
def test_build_search_duplicates_and_eval_on_a_store_of_photos(photo_store):
    store = str(photo_store)
    built = decaf(
        "build", store, "--layer", "decaf7", "--dim", "16", "--whiten", "--backbone", "alexnet"
    )
    assert built.returncode == 0, built.stderr
    assert "index decaf7-16w-flat-exact built" in built.stdout and "26 rows" in built.stdout
    again = decaf("build", store, "--layer", "decaf7", "--dim", "16", "--whiten")
    assert "up to date" in again.stdout

    query = str(photo_store.parent / "images" / ORIGINAL)
    found = decaf("search", store, query, "-k", "99", "--json")
    assert found.returncode == 0, found.stderr
    answer = json.loads(found.stdout)
    assert answer["k"] == 26 and "above the store's 26 rows" in answer["note"]
    top = answer["results"][0]["neighbours"][0]
    assert top["path"] == ORIGINAL and top["score"] == pytest.approx(1.0, abs=1e-4)

    text = decaf("search", store, query, "-k", "3")
    assert text.returncode == 0 and f"1.0000  {ORIGINAL}  [china]" in text.stdout

    duplicates = decaf("duplicates", store, "--threshold", "0.95", "--csv")
    assert duplicates.returncode == 0, duplicates.stderr
    rows = list(csv.DictReader(io.StringIO(duplicates.stdout)))
    planted_groups = {r["group"] for r in rows if r["path"] in {ORIGINAL, *PLANTED}}
    assert len(planted_groups) == 1
    assert {r["path"] for r in rows if r["group"] in planted_groups} == {ORIGINAL, *PLANTED}

    evaluated = decaf("eval", store, "--layer", "decaf5", "--k", "1,5")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "mAP " in evaluated.stdout and "P@1 " in evaluated.stdout and "P@5 " in evaluated.stdout


def test_search_without_an_index_names_the_build_command(photo_store):
    image = str(photo_store.parent / "images" / ORIGINAL)
    result = decaf("search", str(photo_store), image)
    assert result.returncode == EXIT_NOT_FOUND
    assert f"decaf index build {photo_store} --layer LAYER" in result.stderr
    assert "Traceback" not in result.stderr


def test_build_refuses_another_backbone_and_impossible_options(photo_store):
    other = decaf("build", str(photo_store), "--layer", "decaf7", "--backbone", "resnet50")
    assert other.returncode == EXIT_CONFLICT
    assert "holds alexnet features, not resnet50" in other.stderr
    too_wide = decaf("build", str(photo_store), "--layer", "decaf7", "--dim", "5000")
    assert too_wide.returncode == EXIT_BAD_INPUT and "PCA can only reduce" in too_wide.stderr
    whiten = decaf("build", str(photo_store), "--layer", "decaf7", "--whiten")
    assert whiten.returncode == EXIT_BAD_INPUT and "--dim" in whiten.stderr
