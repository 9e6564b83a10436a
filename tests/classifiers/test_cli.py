"""`decaf probe`: choices from the declared values, one make_probe, scores named by kind."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from classifiers import LinearProbe, ProbeError, cli
from classifiers.options import BACKENDS, CLASS_WEIGHT_MODES, CLASSIFIER_KINDS
from classifiers.registry import PROTOCOL_NAMES
from classifiers.synthetic import make_features

ROOT = Path(__file__).resolve().parents[2]


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="decaf")
    cli.register(top.add_subparsers(dest="command", required=True))
    return top


def choices(subcommand: str, flag: str) -> tuple:
    probe = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[
        "probe"
    ]
    sub = next(a for a in probe._actions if isinstance(a, argparse._SubParsersAction))
    (action,) = [a for a in sub.choices[subcommand]._actions if flag in a.option_strings]
    return tuple(action.choices)


def test_choices_come_from_the_declared_values():
    assert choices("eval", "--protocol") == PROTOCOL_NAMES
    assert choices("fit", "--classifier") == CLASSIFIER_KINDS
    assert choices("fit", "--backend") == BACKENDS
    assert choices("eval", "--class-weight") == CLASS_WEIGHT_MODES


def test_parser_needs_no_heavy_package():
    # Stub the package __init__ files (they import eagerly), so only what the parser needs loads.
    script = f"""
import argparse, sys, types
for name in ("classifiers", "featurizer"):
    package = types.ModuleType(name)
    package.__path__ = [{str(ROOT)!r} + "/" + name]
    sys.modules[name] = package
import classifiers.cli
classifiers.cli.register(argparse.ArgumentParser().add_subparsers())
print(sorted(m for m in ("torch", "sklearn", "pyarrow", "numpy", "tqdm") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_estimator_flags_go_through_make_probe():
    flags = ["--C", "0.5", "--cv", "4", "--class-weight", "balanced", "--json"]
    args = parser().parse_args(["probe", "eval", "store", *flags])
    probe = cli._make_probe(args, "svm")
    assert isinstance(probe, LinearProbe)
    expected = {"classifier": "svm", "C": 0.5, "cv": 4, "class_weight": "balanced"}
    assert {k: probe.get_params()[k] for k in expected} == expected
    assert probe.progress is False  # --json: no bar
    args = parser().parse_args(["probe", "fit", "store", "-o", "p", "--cv", "1"])
    with pytest.raises(ProbeError, match="cv"):
        cli._make_probe(args, "logreg")


@pytest.mark.parametrize(
    "flags", [["--C", "nan"], ["--C", "inf"], ["--C", "0"], ["--Cs", "0.1,inf"], ["--Cs", "1,-1"]]
)
def test_c_values_that_would_fail_inside_the_fit_are_refused_by_the_parser(flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args(["probe", "eval", "store", *flags])
    assert exit_info.value.code == 2
    assert "finite number" in capsys.readouterr().err


class FakeFeaturizer:
    """Features are the 'image' itself: a row of a fixed matrix per path."""

    def __init__(self, rows: dict[str, np.ndarray]) -> None:
        self.rows = rows

    def prepare(self, path: str) -> torch.Tensor:
        if path not in self.rows:
            raise OSError(f"cannot decode {path}")
        return torch.from_numpy(self.rows[path])

    def forward(self, batch: torch.Tensor, layers: list[str]) -> dict[str, np.ndarray]:
        return {layers[0]: batch.numpy()}


@pytest.mark.parametrize("classifier", CLASSIFIER_KINDS)
def test_predictions_carry_scores_of_the_probes_kind(classifier, capsys):
    X, y = make_features(3, 20, n_features=16, latent_dim=4, separation=3.0, seed=0)
    probe = LinearProbe(classifier=classifier, C=1.0, backend="sklearn").fit(X, y)
    featurizer = FakeFeaturizer({f"img{i}.jpg": X[i] for i in range(5)})
    images = [*featurizer.rows, "broken.jpg"]
    predictions, errors = cli.predict_images(probe, featurizer, "decaf6", images, 2, 2)
    assert [e["path"] for e in errors] == ["broken.jpg"]
    scores = probe.scores(X[:5])
    for i, item in enumerate(predictions):
        best = item["top_k"][0]
        assert best["label"] == probe.classes_[scores[i].argmax()]
        assert best["score"] == pytest.approx(scores[i].max())
        assert len(item["top_k"]) == 2

    cli._print_predictions(predictions, errors, True, probe.score_kind)
    out, err = capsys.readouterr()
    document = json.loads(out)
    assert document["score_kind"] == probe.score_kind
    assert document["predictions"] == predictions and "broken.jpg" in err
    cli._print_predictions(predictions, [], False, probe.score_kind)
    out, _ = capsys.readouterr()
    assert out.splitlines()[0].startswith(f"score: {probe.score_kind} (")
    assert out.splitlines()[1].startswith("img0.jpg: ")


def test_shots_need_a_protocol_with_n_train():
    flags = ["--protocol", "stratified", "--shots", "1"]
    args = parser().parse_args(["probe", "eval", "store", *flags])
    with pytest.raises(ProbeError, match="use caltech101 or sun397, or drop --shots"):
        args.func(args)


@pytest.mark.parametrize(
    ("weights_id", "expected"),
    [
        ("alexnet/IMAGENET1K_V1", "IMAGENET1K_V1"),
        ("resnet50/IMAGENET1K_V1", "IMAGENET1K_V1"),  # not "imagenet", which means V2 for ResNet
        ("random", "random"),
    ],
)
def test_predict_defaults_to_the_probes_own_weight_tag(weights_id, expected):
    backbone = weights_id.split("/")[0] if "/" in weights_id else "alexnet"
    assert cli.default_weights({"weights_id": weights_id, "backbone": backbone}) == expected


def test_predict_asks_for_the_file_when_the_probe_came_from_one():
    with pytest.raises(ProbeError, match="--weights PATH"):
        cli.default_weights({"weights_id": "file:mine.pth", "backbone": "alexnet"})
