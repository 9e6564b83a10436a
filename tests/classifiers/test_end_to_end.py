"""End to end on real offline data: scikit-learn's digits as an image folder -> `decaf extract`
(random weights) -> `decaf probe eval|fit|predict`, against a raw-pixel linear baseline."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from classifiers import LinearProbe, evaluate
from service.cli import main as decaf_main

PER_CLASS = 25  # 250 images: 10 digits x 25
N_TRAIN = 10
MAX_TEST = 10


@pytest.fixture(scope="module")
def digits_store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("digits")
    images = root / "images"
    digits = load_digits()
    pixels, labels, written = [], [], 0
    for digit in range(10):
        folder = images / str(digit)
        folder.mkdir(parents=True)
        for k, idx in enumerate(np.flatnonzero(digits.target == digit)[:PER_CLASS]):
            grey = (digits.images[idx] * (255 / 16)).astype(np.uint8)
            Image.fromarray(grey, mode="L").resize((64, 64), Image.NEAREST).save(
                folder / f"{k:03d}.png"
            )
            pixels.append(digits.data[idx])
            labels.append(str(digit))
            written += 1
    (images / "3" / "broken.png").write_bytes(b"not an image at all")
    store = root / "store"
    command = [
        sys.executable,
        "-m",
        "service.cli",
        "extract",
        str(images),
        "--out",
        str(store),
        "--layers",
        "decaf6,decaf7",
        "--weights",
        "random",
        "--batch-size",
        "50",
        "--workers",
        "0",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return {
        "root": root,
        "images": images,
        "store": store,
        "written": written,
        "pixels": np.array(pixels),
        "labels": np.array(labels),
    }


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = decaf_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_beats_chance_and_reports_raw_pixel_baseline(digits_store, capsys):
    code, out, _ = run_cli(
        capsys,
        "probe",
        "eval",
        str(digits_store["store"]),
        "--layer",
        "decaf6",
        "--classifier",
        "logreg",
        "--protocol",
        "caltech101",
        "--n-train",
        str(N_TRAIN),
        "--max-test",
        str(MAX_TEST),
        "--splits",
        "2",
        "--Cs",
        "0.001,0.1",
        "--cv",
        "2",
        "--json",
    )
    assert code == 0
    rows = json.loads(out)["results"]
    assert [(r["layer"], r["classifier"]) for r in rows] == [("decaf6", "logreg")]
    assert all(0.001 <= c <= 0.1 + 1e-12 for c in rows[0]["chosen_C"])
    for row in rows:
        assert row["splits"][0]["n_train"] == 10 * N_TRAIN
        assert row["splits"][0]["n_test"] == 10 * MAX_TEST
    decaf6 = next(r for r in rows if r["layer"] == "decaf6" and r["classifier"] == "logreg")
    # Raw-pixel linear baseline on exactly the same images and protocol.
    baseline = evaluate(
        digits_store["pixels"],
        digits_store["labels"],
        protocol="caltech101",
        probe=LinearProbe(Cs=(0.001, 0.1)),
        n_train=N_TRAIN,
        max_test=MAX_TEST,
        splits=2,
    )
    features = decaf6["mean_class_accuracy"]["mean"]
    print(
        f"\ndigits caltech101 N={N_TRAIN}: random-weight decaf6 logreg {100 * features:.1f}%, "
        f"raw-pixel logreg {100 * baseline.mean:.1f}%, chance 10%"
    )
    assert features > 0.5  # chance is 0.10
    assert baseline.mean > 0.8
    assert features > 0.1 + 0.4


def test_table_output(digits_store, capsys):
    code, out, _ = run_cli(
        capsys,
        "probe",
        "eval",
        str(digits_store["store"]),
        "--layer",
        "decaf6,decaf7",
        "--classifier",
        "logreg,svm",
        "--n-train",
        "5",
        "--max-test",
        "5",
        "--splits",
        "2",
        "--C",
        "0.01",
    )
    assert code == 0
    lines = out.strip().splitlines()
    assert "decaf6" in lines[1] and "decaf7" in lines[1]
    assert lines[2].startswith("logreg") and lines[3].startswith("svm")
    assert lines[2].count("±") == 2 and lines[3].count("±") == 2


def test_fit_predict_and_mismatch(digits_store, capsys, tmp_path):
    probe_dir = tmp_path / "probe"
    code, out, _ = run_cli(
        capsys,
        "probe",
        "fit",
        str(digits_store["store"]),
        "--layer",
        "decaf6",
        "--classifier",
        "svm",
        "--out",
        str(probe_dir),
        "--C",
        "0.01",
        "--json",
    )
    assert code == 0
    summary = json.loads(out)
    assert summary["train_accuracy"] > 0.9
    meta = json.loads((probe_dir / "probe.json").read_text())
    assert meta["layer"] == "decaf6" and meta["weights_id"] == "random"
    assert summary["score_kind"] == meta["score_kind"] == "margin"

    images = digits_store["images"]
    picks = [
        str(images / "7" / "000.png"),
        str(images / "2" / "001.png"),
        str(images / "3" / "broken.png"),
    ]
    code, out, err = run_cli(
        capsys, "probe", "predict", str(probe_dir), *picks, "--top-k", "3", "--json"
    )
    assert code == 0
    result = json.loads(out)
    assert result["score_kind"] == "margin"  # an SVM's scores are margins, not probabilities
    assert [p["path"] for p in result["predictions"]] == picks[:2]
    assert all(len(p["top_k"]) == 3 for p in result["predictions"])
    assert result["errors"][0]["path"] == picks[2] and "broken.png" in err
    assert [p["top_k"][0]["label"] for p in result["predictions"]] == ["7", "2"]

    # A probe trained on other weights must refuse these features with a clear error.
    meta["weights_id"], meta["weights_sha256"] = "file:other.pth", "ab" * 32
    (probe_dir / "probe.json").write_text(json.dumps(meta))
    code, _, err = run_cli(
        capsys, "probe", "predict", str(probe_dir), picks[0], "--weights", "random"
    )
    assert code == 4  # a conflict: the probe does not match the features
    assert "do not match the probe" in err and "weights_id" in err


def test_torch_and_sklearn_agree_on_digits_features(digits_store):
    from featurizer.store import load_features

    X, y, _ = load_features(digits_store["store"], "decaf6")
    rng = np.random.default_rng(0)
    test = rng.random(len(y)) < 0.4
    accuracies = {}
    for backend in ("torch", "sklearn"):
        probe = LinearProbe(classifier="logreg", C=0.01, backend=backend, max_iter=300)
        accuracies[backend] = probe.fit(X[~test], y[~test]).score(X[test], y[test])
    assert abs(accuracies["torch"] - accuracies["sklearn"]) <= 0.005 + 1e-9, accuracies
