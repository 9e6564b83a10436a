"""`decaf reproduce` end to end on tiny datasets in the official layouts (AlexNet, random weights:
the numbers mean nothing, the machinery is real), plus the report's shape and the paper's data."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from classifiers.errors import ProbeError
from classifiers.reproduce.paper import PAPER_RESULTS, paper_result
from classifiers.reproduce.report import format_markdown, weights_slug
from classifiers.reproduce.runner import ReproduceConfig, check_config, run_reproduce
from featurizer.errors import EXIT_BAD_INPUT, EXIT_UNAVAILABLE
from service.cli import main
from tests.classifiers.datasets.fakes import caltech_tree, serve, sun_archives, sun_source

REPO = Path(__file__).resolve().parents[3]
CLASSES = {"BACKGROUND_Google": 8, "Faces": 8, "accordion": 8}
TOP_LEVEL = {
    "kind",
    "dataset",
    "protocol",
    "backbone",
    "weights",
    "random_weights",
    "rows",
    "created",
}
ROW_KEYS = {
    "backbone",
    "weights",
    "layer",
    "classifier",
    "dropout",
    "accuracies",
    "mean",
    "std",
    "paper",
}


def _decaf(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def caltech_run(tmp_path_factory):
    """One CLI run on a 3-class Caltech-101 folder (24 images), then a rerun with --json."""
    base = tmp_path_factory.mktemp("caltech")
    caltech_tree(base / "data", CLASSES)
    out = base / "out"
    common = [
        "reproduce",
        "caltech101",
        "--data-dir",
        str(base / "data"),
        "--backbone",
        "alexnet",
        "--weights",
        "random",
        "--splits",
        "2",
        "--train-per-class",
        "5",
        "--dropout",
        "--workers",
        "0",
        "--batch-size",
        "8",
        "--C",
        "1",
        "--out",
        str(out),
        "--no-download",
    ]
    first = _decaf(*common)
    parts = sorted((out / "features").rglob("part-*.parquet"))
    stamps = {p: p.stat().st_mtime_ns for p in parts}
    # The rerun in this process (no second interpreter start): it must only refit.
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        status = main([*common, "--json", "--no-progress"])
    second = subprocess.CompletedProcess(common, status, printed.getvalue(), "")
    return first, second, out, stamps


@pytest.mark.slow
def test_the_cli_prints_the_table_and_writes_json_markdown_png(caltech_run):
    first, _, out, _ = caltech_run
    assert first.returncode == 0, first.stderr[-3000:]
    assert "RANDOM WEIGHTS" in first.stderr and "RANDOM WEIGHTS" in first.stdout
    assert "| alexnet | decaf6 | svm | yes |" in first.stdout
    assert "86.91 ± 0.7" in first.stdout  # the paper's number beside ours
    assert "not comparable" in first.stdout  # 5 training images per class, not 30
    stem = out / "caltech101-alexnet-random"
    assert stem.with_suffix(".md").read_text().startswith("# DeCAF reproduction: Caltech-101")
    assert stem.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(stem.with_suffix(".json").read_text())
    assert set(report) >= TOP_LEVEL and report["kind"] == "reproduce"
    assert report["random_weights"] is True


@pytest.mark.slow
def test_the_report_rows_follow_the_protocol(caltech_run):
    _, second, _, _ = caltech_run
    assert second.returncode == 0, second.stderr[-3000:]
    report = json.loads(second.stdout)
    rows = report["rows"]
    assert [(r["layer"], r["classifier"], r["dropout"]) for r in rows] == [
        (layer, classifier, dropout)
        for layer in ("decaf5", "decaf6", "decaf7")
        for classifier in ("svm", "logreg")
        for dropout in (False, True)
    ]
    for row in rows:
        assert set(row) >= ROW_KEYS
        assert len(row["accuracies"]) == 2 and all(0 <= a <= 100 for a in row["accuracies"])
        expected = paper_result("caltech101", row["layer"], row["classifier"], row["dropout"])
        assert (row["paper"] is None) == (expected is None)
    assert rows[0]["paper"] is not None and rows[1]["paper"] is None  # decaf5 svm, +dropout
    protocol = report["protocol"]
    # 3 classes x 5 training images; every other image (3 per class) is tested.
    assert protocol["train_images"] == [15, 15] and protocol["test_images"] == [9, 9]
    assert protocol["matches_paper"] is False and protocol["dropout"]["rate"] == 0.5
    assert protocol["classifier_C"] == 1.0 and all(r["chosen_C"] == [1.0, 1.0] for r in rows)
    assert report["extraction"]["images"] == 24


@pytest.mark.slow
def test_a_rerun_reuses_the_feature_store(caltech_run):
    _, second, _, stamps = caltech_run
    assert second.returncode == 0
    assert stamps and all(path.stat().st_mtime_ns == ns for path, ns in stamps.items())


@pytest.mark.slow
def test_sun397_downloads_and_runs_the_official_partitions(tmp_path):
    images, partitions = sun_archives(per_class=6)
    with serve({"SUN397.tar.gz": images, "Partitions.zip": partitions}) as server:
        config = ReproduceConfig(
            dataset="sun397",
            out=tmp_path / "out",
            backbone="alexnet",
            weights="random",
            data_dir=tmp_path / "data",
            splits=2,
            layers=("decaf6",),
            classifiers=("logreg",),
            workers=0,
            batch_size=8,
            C=1.0,
            source=sun_source(server.base_url, images, partitions),
        )
        with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
            report = run_reproduce(config)
    (row,) = report["rows"]
    assert row["layer"] == "decaf6" and row["paper"]["mean"] == 40.94
    assert report["protocol"]["train_images"] == [9, 9]  # 3 classes x 3 of each partition
    assert report["protocol"]["matches_paper"] is False  # 2 partitions, not the paper's 5
    split_file = tmp_path / "out" / "splits" / "sun397-partitions-1-2.json"
    assert json.loads(split_file.read_text())["splits"][0]["train"][0].startswith("a/abbey/")
    assert "RANDOM WEIGHTS" in format_markdown(report)


def test_invalid_options_fail_before_any_work(tmp_path, capsys):
    base = {"out": tmp_path, "backbone": "alexnet"}
    with pytest.raises(ProbeError, match=r"1\.\.10"):
        check_config(ReproduceConfig(dataset="sun397", splits=11, **base))
    with pytest.raises(ProbeError, match="caltech101"):
        check_config(ReproduceConfig(dataset="sun397", train_per_class=5, **base))
    args = ["reproduce", "caltech101", "--backbone", "alexnet", "--classifiers", "knn"]
    assert main([*args, "--out", str(tmp_path)]) == EXIT_BAD_INPUT
    assert "unknown classifier" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_offline_without_the_dataset_the_cli_says_what_to_put_where(tmp_path, capsys):
    args = ["reproduce", "caltech101", "--backbone", "alexnet", "--no-download"]
    out = str(tmp_path / "out")
    assert main([*args, "--data-dir", str(tmp_path), "--out", out]) == EXIT_UNAVAILABLE
    err = capsys.readouterr().err
    assert "caltech-101.zip" in err and str(tmp_path) in err and "Traceback" not in err


def test_the_paper_numbers_cover_the_issue_figures():
    assert PAPER_RESULTS[("caltech101", "decaf6", "svm", False)].mean == 84.77
    assert PAPER_RESULTS[("caltech101", "decaf6", "svm", True)].std == 0.7
    assert PAPER_RESULTS[("caltech101", "decaf7", "logreg", False)].mean == 84.87
    assert PAPER_RESULTS[("caltech101", "decaf5", "svm", False)].mean == 77.12
    assert PAPER_RESULTS[("sun397", "decaf6", "logreg", False)].to_dict()["std"] == 0.3
    assert paper_result("sun397", "decaf6", "svm", True) is None
    assert paper_result("caltech101", "decaf5", "svm", True) is None


def test_weights_slugs_are_folder_safe_and_distinct(tmp_path):
    assert weights_slug("imagenet") == "imagenet" and weights_slug("random") == "random"
    a, b = weights_slug(str(tmp_path / "a" / "w.pth")), weights_slug(str(tmp_path / "b/w.pth"))
    assert a != b and a.startswith("file-w-") and "/" not in a
