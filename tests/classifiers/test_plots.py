"""`decaf plot`: t-SNE maps of real stores and charts of real `decaf probe eval --json` output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from classifiers.plots import PlotError, embed, parse_result, plot_tsne
from classifiers.plots.charts import (
    most_confused,
    plot_confusion,
    plot_curve,
    plot_layers,
    write_result_plots,
)
from classifiers.plots.figure import OTHER_GREY, RANDOM_MARK, class_colours
from classifiers.synthetic import make_features
from featurizer.errors import EXIT_BAD_INPUT
from featurizer.store import FeatureStore, FileList, Part, RunInfo, StoreConfig
from service.cli import main

ROOT = Path(__file__).resolve().parents[2]
CLASSES = 5
PER_CLASS = 14
DIM = 64


def write_store(out: Path, X: np.ndarray, y: np.ndarray, *, weights_id: str) -> Path:
    """A finished feature store of (X, y) in one part, written through FeatureStore."""
    config = StoreConfig(
        backbone="alexnet",
        weights_id=weights_id,
        weights_sha256=None,
        layers={"decaf6": X.shape[1]},
        preprocessing={"resize": 256, "crop": 224, "crop_mode": "center"},
        precision="fp32",
        dtype="float32",
        part_size=len(X),
        files=FileList(count=len(X), sha256="f" * 64),
    )
    paths = [f"{label}/{i:04d}.jpg" for i, label in enumerate(y)]
    part = Part(index=0, paths=paths, labels=[str(v) for v in y], features={"decaf6": X}, errors=[])
    with FeatureStore.create(out, config, RunInfo(source_root="/data/photos")) as store:
        store.write_part(part)
        store.finalize()
    return out


@pytest.fixture(scope="module")
def clustered() -> tuple[np.ndarray, np.ndarray]:
    return make_features(CLASSES, PER_CLASS, n_features=DIM, latent_dim=8, separation=4.0, seed=1)


@pytest.fixture(scope="module")
def random_store(tmp_path_factory: pytest.TempPathFactory, clustered) -> Path:
    return write_store(tmp_path_factory.mktemp("s") / "random", *clustered, weights_id="random")


@pytest.fixture(scope="module")
def imagenet_store(tmp_path_factory: pytest.TempPathFactory, clustered) -> Path:
    out = tmp_path_factory.mktemp("s") / "imagenet"
    return write_store(out, *clustered, weights_id="alexnet/IMAGENET1K_V1")


def svg_text(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    return text


# --------------------------------------------------------------------------- t-SNE
def test_tsne_keeps_separated_classes_apart(clustered) -> None:
    X, y = clustered
    points = embed(X, perplexity=10, seed=0, n_jobs=1).points
    assert points.shape == (len(X), 2)
    # Each point's nearest neighbour in the map has its class: the clusters survived.
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    assert np.mean(y[distances.argmin(axis=1)] == y) > 0.9


def test_tsne_same_seed_same_map(clustered) -> None:
    X, _ = clustered
    first = embed(X, perplexity=10, seed=3, n_jobs=1).points
    again = embed(X, perplexity=10, seed=3, n_jobs=1).points
    np.testing.assert_allclose(first, again)


def test_tsne_png_has_every_class_colour(random_store: Path, tmp_path: Path) -> None:
    summary = plot_tsne(random_store, layer="decaf6", out=tmp_path / "map.png", perplexity=10)
    assert summary["points"] == CLASSES * PER_CLASS and summary["classes"] == CLASSES
    assert summary["random_weights"] is True
    image = np.asarray(Image.open(tmp_path / "map.png").convert("RGB")).reshape(-1, 3)
    assert image.shape[0] >= 800 * 600
    colours = class_colours({f"class{c:03d}": PER_CLASS for c in range(CLASSES)})
    for name, colour in colours.items():
        rgb = np.array([int(colour[k : k + 2], 16) for k in (1, 3, 5)])
        assert (np.abs(image.astype(int) - rgb).sum(axis=1) < 12).sum() > 20, name


def test_tsne_svg_title_legend_and_random_mark(random_store: Path, tmp_path: Path) -> None:
    plot_tsne(random_store, out=tmp_path / "map.svg", perplexity=10, per_class=6)
    text = svg_text(tmp_path / "map.svg")
    assert "t-SNE of decaf6 · alexnet · weights random" in text
    assert all(f"class{c:03d}" in text for c in range(CLASSES))
    assert RANDOM_MARK in text and "30 images" in text  # 5 classes x --per-class 6


def test_tsne_pretrained_weights_carry_no_mark(imagenet_store: Path, tmp_path: Path) -> None:
    summary = plot_tsne(imagenet_store, out=tmp_path / "map.svg", perplexity=10)
    text = svg_text(tmp_path / "map.svg")
    assert "weights alexnet/IMAGENET1K_V1" in text and RANDOM_MARK not in text
    assert summary["random_weights"] is False


def test_beyond_twenty_classes_the_smallest_are_grey() -> None:
    counts = {f"c{k:02d}": 100 - k for k in range(26)}
    colours = class_colours(counts)
    coloured = [name for name, colour in colours.items() if colour != OTHER_GREY]
    assert sorted(coloured) == [f"c{k:02d}" for k in range(20)]
    assert len(set(colours[name] for name in coloured)) == 20
    assert {colours[f"c{k:02d}"] for k in range(20, 26)} == {OTHER_GREY}


def test_cli_tsne_refuses_an_unknown_extension(random_store: Path, tmp_path: Path, capsys) -> None:
    args = ["plot", "tsne", str(random_store), "--out", str(tmp_path / "map.jpg")]
    assert main(args) == EXIT_BAD_INPUT
    assert "*.png or *.svg" in capsys.readouterr().err
    assert not (tmp_path / "map.jpg").exists()


# --------------------------------------------------------------------------- result charts
def run_eval(store: Path, capsys, *extra: str) -> dict:
    """The real `decaf probe eval --json` of the store: what users feed `decaf plot`."""
    argv = ["probe", "eval", str(store), "--layer", "decaf6", "--classifier", "logreg,svm",
            "--splits", "2", "--C", "1", "--json", *extra]  # fmt: skip
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def eval_json(random_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    argv = [sys.executable, "-m", "service.cli", "probe", "eval", str(random_store),
            "--layer", "decaf6", "--classifier", "logreg,svm", "--protocol", "caltech101",
            "--n-train", "5", "--splits", "2", "--C", "1", "--json"]  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True)
    path = tmp_path_factory.mktemp("eval") / "result.json"
    path.write_text(done.stdout)
    return path


def test_eval_json_records_provenance(eval_json: Path) -> None:
    document = json.loads(eval_json.read_text())
    assert document["backbone"] == "alexnet" and document["weights_id"] == "random"
    assert document["random_weights"] is True
    doc = parse_result(document)
    assert {(row.layer, row.method) for row in doc.rows} == {
        ("decaf6", "logreg"),
        ("decaf6", "svm"),
    }
    assert doc.num_classes() == CLASSES


def test_layers_chart_from_eval_json(eval_json: Path, tmp_path: Path) -> None:
    plot_layers(eval_json, tmp_path / "layers.svg")
    text = svg_text(tmp_path / "layers.svg")
    assert "Accuracy per layer" in text and "logreg" in text and "svm" in text
    assert "decaf6" in text and RANDOM_MARK in text
    assert "(paper)" not in text  # eval results carry no paper numbers


def test_confusion_chart_lists_the_most_confused_pairs(eval_json: Path, tmp_path: Path) -> None:
    plot_confusion(eval_json, tmp_path / "confusion.svg", classifier="svm")
    text = svg_text(tmp_path / "confusion.svg")
    assert "most confused (true → predicted)" in text and "svm:" in text
    assert "class000" in text


def test_curve_needs_shots(eval_json: Path, tmp_path: Path) -> None:
    with pytest.raises(PlotError, match="--shots"):
        plot_curve(eval_json, tmp_path / "curve.png")


def test_eval_plot_dir_writes_result_and_every_chart(random_store: Path, tmp_path: Path,
                                                     capsys) -> None:  # fmt: skip
    folder = tmp_path / "plots"
    document = run_eval(random_store, capsys, "--shots", "1,2,4", "--plot", str(folder))
    assert json.loads((folder / "result.json").read_text()) == document
    assert sorted(p.name for p in folder.iterdir()) == [
        "confusion.png", "curve.png", "layers.png", "result.json"
    ]  # fmt: skip
    for name in ("confusion.png", "curve.png", "layers.png"):
        assert Image.open(folder / name).size[0] >= 600
    plot_curve(folder / "result.json", tmp_path / "curve.svg")
    text = svg_text(tmp_path / "curve.svg")
    assert "training images per class" in text and "decaf6 · svm" in text
    assert f"chance ({CLASSES} classes)" in text


def test_most_confused_pairs_are_the_largest_shares() -> None:
    matrix = np.array([[8, 2, 0], [5, 5, 0], [0, 1, 9]])
    pairs = most_confused(["a", "b", "c"], matrix, top=5)
    assert pairs == [("b", "a", 0.5, 5), ("a", "b", 0.2, 2), ("c", "b", 0.1, 1)]


REPRODUCE = {
    "kind": "reproduce",
    "dataset": "caltech101",
    "backbone": "alexnet",
    "weights": "alexnet/IMAGENET1K_V1",
    "random_weights": False,
    "rows": [
        {"backbone": "alexnet", "weights": "alexnet/IMAGENET1K_V1", "layer": layer,
         "classifier": "svm", "dropout": dropout, "accuracies": [mean - 0.01, mean + 0.01],
         "mean": mean, "std": 0.01,
         "paper": {"mean": paper, "std": 0.7, "table": "Table 2",
                   "citation": "Donahue et al., ICML 2014"}}
        for layer, dropout, mean, paper in [
            ("decaf6", False, 0.84, 84.77), ("decaf6", True, 0.86, 86.91),
            ("decaf7", False, 0.83, 83.24), ("decaf7", True, 0.85, 85.51),
        ]
    ],
}  # fmt: skip


def test_layers_chart_puts_the_papers_numbers_beside_ours(tmp_path: Path) -> None:
    doc = parse_result(REPRODUCE)
    assert doc.rows[1].method == "svm + dropout"
    assert doc.rows[1].paper is not None and doc.rows[1].paper.mean == pytest.approx(0.8691)
    assert doc.rows[1].paper.std == pytest.approx(0.007)
    plot_layers(doc, tmp_path / "layers.svg")
    text = svg_text(tmp_path / "layers.svg")
    assert "svm + dropout (paper)" in text and "svm + dropout (ours)" in text
    assert "86.9" in text and "Donahue et al., ICML 2014" in text
    assert RANDOM_MARK not in text
    with pytest.raises(PlotError, match="no confusion"):
        plot_confusion(doc, tmp_path / "confusion.png")
    assert [p.name for p in write_result_plots(REPRODUCE, tmp_path / "all")] == ["layers.png"]


def test_cli_result_plot_errors_are_clear(tmp_path: Path, capsys) -> None:
    not_json = tmp_path / "result.json"
    not_json.write_text("decaf6 84.2")
    args = ["plot", "layers", str(not_json), "--out", str(tmp_path / "x.png")]
    assert main(args) == EXIT_BAD_INPUT
    assert "is not JSON" in capsys.readouterr().err
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"accuracy": 0.9}))
    assert main(["plot", "curve", str(foreign), "--out", str(tmp_path / "x.png")]) == EXIT_BAD_INPUT
    assert "neither `decaf probe eval --json`" in capsys.readouterr().err
    missing = tmp_path / "missing.json"
    assert main(["plot", "confusion", str(missing)]) == EXIT_BAD_INPUT
    assert "cannot read result file" in capsys.readouterr().err


def test_plot_help_imports_no_plotting_library() -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "service.cli", "plot", "tsne", "--help"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()[1:]}
    assert not imported & {"matplotlib", "openTSNE", "numpy", "sklearn", "torch"}
