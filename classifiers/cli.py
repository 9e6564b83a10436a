"""`decaf probe fit|eval|predict`: linear probes on a feature store from the command line.

Heavy modules (torch, scikit-learn, the model) are imported inside the handlers so `decaf --help`
stays fast. Progress bars go to stderr; ``--json`` prints machine-readable output to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from classifiers.errors import ProbeError
from classifiers.options import (
    BACKENDS,
    CLASS_WEIGHT_MODES,
    CLASSIFIER_KINDS,
    SCORE_KIND_DESCRIPTIONS,
    ScoreKind,
)
from classifiers.registry import (
    PROTOCOL_PARAMETERS,
    PROTOCOLS,
    get_protocol,
    protocol_names,
    protocols_help,
)
from featurizer.argtypes import comma_list, positive_float, positive_float_or_auto, positive_int

# The LinearProbe parameters that have a flag; each flag's dest is the parameter's name.
ESTIMATOR_FLAGS = ("C", "Cs", "cv", "backend", "device", "class_weight", "dropout", "l2_normalize")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "probe",
        help="fit, evaluate and apply linear probes on extracted features",
        description="Linear probes (logistic regression / linear SVM) on DeCAF features.",
    )
    probe_sub = parser.add_subparsers(dest="probe_command", required=True, metavar="SUBCOMMAND")
    _register_fit(probe_sub)
    _register_eval(probe_sub)
    _register_predict(probe_sub)


# ------------------------------------------------------------------ options
def _add_estimator_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--C",
        dest="C",
        default="auto",
        type=positive_float_or_auto,
        help="regularisation: 'auto' (cross-validated on the training split) or a number",
    )
    parser.add_argument(
        "--Cs",
        dest="Cs",
        default=None,
        type=_c_grid,
        help="C grid for C='auto', comma-separated (default 1e-4,1e-3,...,1e2)",
    )
    parser.add_argument("--cv", type=positive_int, default=3, help="folds for C='auto'")
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    parser.add_argument("--device", default="auto", help="torch backend device: auto, cpu, cuda")
    parser.add_argument("--class-weight", default=None, choices=CLASS_WEIGHT_MODES)
    parser.add_argument("--dropout", type=float, default=0.0, help="feature dropout rate")
    parser.add_argument("--l2-normalize", action="store_true", help="L2-normalise each sample")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _c_grid(text: str) -> list[float]:
    try:
        return [positive_float(part) for part in comma_list(text)]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"Cs must be a comma-separated list of finite numbers > 0, got {text!r}"
        ) from None


def _make_probe(args: argparse.Namespace, classifier: str) -> Any:
    from classifiers.probe import make_probe

    options = {name: getattr(args, name) for name in ESTIMATOR_FLAGS}
    progress = not args.json and sys.stderr.isatty()
    return make_probe({**options, "classifier": classifier, "progress": progress})


def _layers_or_default(store: Any, layers: Sequence[str] | None) -> tuple[str, ...]:
    """The layers asked for, or the store's first one its backbone lists as a default."""
    if layers:
        return tuple(layers)
    from featurizer.backbones import get_backbone
    from featurizer.errors import UnknownBackboneError

    stored = list(store.layers)
    try:
        preferred = get_backbone(store.manifest.backbone).default_layers
    except UnknownBackboneError:  # a store made by a newer decaf: any stored layer will do
        preferred = ()
    return tuple([name for name in preferred if name in stored][:1] or stored[:1])


def _labelled_features(store: str, layer: str) -> Any:
    from classifiers.data import labelled_rows
    from featurizer.store import load_features

    labelled = labelled_rows(*load_features(store, layer), source=f"store {store}")
    if labelled.dropped:
        print(f"decaf: ignoring {labelled.dropped} unlabelled images", file=sys.stderr)
    return labelled


# ---------------------------------------------------------------------- fit
def _register_fit(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("fit", help="fit a probe on all labelled images of a store")
    parser.add_argument("store", metavar="STORE", help="feature store made by `decaf extract`")
    parser.add_argument(
        "--layer",
        default=None,
        help="feature layer (default: the store's first default layer of its backbone, e.g. "
        "decaf6 for AlexNet)",
    )
    parser.add_argument("--classifier", default="logreg", choices=CLASSIFIER_KINDS)
    parser.add_argument("--out", "-o", required=True, metavar="PROBE", help="probe directory")
    _add_estimator_options(parser)
    parser.set_defaults(func=_fit)


def _fit(args: argparse.Namespace) -> int:
    import time

    from classifiers.persistence import provenance_from_manifest, save_probe
    from featurizer.store import FeatureStore

    probe = _make_probe(args, args.classifier)  # invalid options fail before any loading
    store = FeatureStore.open(args.store)
    args.layer = _layers_or_default(store, [args.layer] if args.layer else None)[0]
    provenance = provenance_from_manifest(store.manifest, args.layer)
    data = _labelled_features(args.store, args.layer)
    X, y = data.X, data.y
    started = time.perf_counter()
    probe.fit(X, y)
    seconds = time.perf_counter() - started
    metrics = {
        "train_accuracy": float(probe.score(X, y)),
        "cv_best_score": None
        if probe.cv_results_ is None
        else max(probe.cv_results_["mean_score"]),
        "fit_seconds": seconds,
        "n_train": len(y),
    }
    protocol = {"name": "fit", "store": str(args.store), "n_train": len(y)}
    out = save_probe(probe, args.out, provenance=provenance, metrics=metrics, protocol=protocol)
    summary = {
        "probe": str(out),
        "layer": args.layer,
        "classifier": args.classifier,
        "classes": len(probe.classes_),
        "C": probe.C_,
        "backend": probe.backend_,
        "score_kind": probe.score_kind,
        **metrics,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        cv = summary["cv_best_score"]
        cv_text = "" if cv is None else f", CV mean per-class accuracy {100 * cv:.2f}%"
        print(
            f"saved {out}: {args.classifier} on {args.layer}, {len(y)} images, "
            f"{len(probe.classes_)} classes, C={probe.C_:.4g} ({probe.backend_}){cv_text}, "
            f"{seconds:.1f} s"
        )
    return 0


# --------------------------------------------------------------------- eval
def _register_eval(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "eval",
        help="evaluate probes by a paper's protocol (table: classifier x layer, mean ± std)",
    )
    parser.add_argument("store", metavar="STORE", help="feature store made by `decaf extract`")
    parser.add_argument(
        "--layer",
        type=comma_list,
        default=None,
        help="layer(s), comma-separated (default: as for `decaf probe fit`)",
    )
    parser.add_argument(
        "--classifier",
        type=comma_list,
        default="logreg",
        help=f"{', '.join(CLASSIFIER_KINDS)} or several (comma-separated)",
    )
    parser.add_argument(
        "--protocol",
        default="caltech101",
        choices=protocol_names(),
        help="evaluation protocol (default %(default)s): " + protocols_help(separator="; "),
    )
    parser.add_argument("--splits", type=positive_int, default=5, help="random splits")
    parser.add_argument(
        "--n-train",
        type=positive_int,
        default=None,
        help="training images per class (caltech101: 30, sun397: 50)",
    )
    parser.add_argument(
        "--max-test",
        type=positive_int,
        default=None,
        help="test images per class at most (default 50)",
    )
    parser.add_argument("--train-fraction", type=float, default=0.5, help="for 'stratified'")
    parser.add_argument("--split-file", default=None, help="for 'predefined': JSON or text file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--shots",
        default=None,
        type=_shots,
        help="few-shot curve instead, e.g. 1,2,5,10,20,30 (per-class protocol)",
    )
    parser.add_argument(
        "--plot",
        default=None,
        metavar="DIR",
        help="also write DIR/result.json and its plots (layers.png, confusion.png, curve.png "
        "with --shots); see `decaf plot`",
    )
    _add_estimator_options(parser)
    parser.set_defaults(func=_eval)


def _shots(text: str) -> list[int]:
    try:
        shots = [int(s) for s in comma_list(text)]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"shots must be integers, got {text!r}") from exc
    if not shots or min(shots) < 1:
        raise argparse.ArgumentTypeError(f"shots must be positive integers, got {text!r}")
    return shots


def _eval(args: argparse.Namespace) -> int:
    classifiers = args.classifier
    unknown = [c for c in classifiers if c not in CLASSIFIER_KINDS]
    if unknown or not classifiers:
        raise ProbeError(
            f"unknown classifier(s) {unknown}; choose from {', '.join(CLASSIFIER_KINDS)}"
        )
    if args.shots and "n_train" not in get_protocol(args.protocol).reads:
        per_class = [name for name, entry in PROTOCOLS.items() if "n_train" in entry.reads]
        raise ProbeError(
            f"--shots varies n_train, which protocol {args.protocol!r} does not have; "
            f"use {' or '.join(per_class)}, or drop --shots"
        )
    from featurizer.store import FeatureStore  # options are checked first: no I/O before

    store = FeatureStore.open(args.store)
    layers = _layers_or_default(store, args.layer)
    rows: list[dict[str, Any]] = []
    for layer in layers:
        data = _labelled_features(args.store, layer)
        for classifier in classifiers:
            rows += _evaluate(args, data, layer, classifier)
    document = {**_store_provenance(args.store, store.manifest), "results": rows}
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print(format_table(rows))
    if args.plot:
        _write_plots(document, args.plot)
    return 0


def _store_provenance(store: str, manifest: Any) -> dict[str, Any]:
    """Where the features came from: plots title themselves with it and mark random weights."""
    from classifiers.plots.figure import is_random

    return {
        "store": str(store),
        "backbone": manifest.backbone,
        "weights_id": manifest.weights_id,
        "random_weights": is_random(manifest.weights_id),
    }


def _write_plots(document: dict[str, Any], folder: str) -> None:
    from pathlib import Path

    from classifiers.plots.charts import write_result_plots
    from featurizer.atomic import atomic_write

    Path(folder).mkdir(parents=True, exist_ok=True)
    atomic_write(Path(folder) / "result.json", json.dumps(document, indent=2) + "\n")
    for path in write_result_plots(document, folder):
        print(f"decaf: wrote {path}", file=sys.stderr)


def _evaluate(args: argparse.Namespace, data: Any, layer: str, classifier: str) -> list[dict]:
    """Table rows of one layer and classifier: one per protocol run (per shot for a curve)."""
    from classifiers.protocols import evaluate, few_shot_curve

    probe = _make_probe(args, classifier)
    if args.shots:
        curve = few_shot_curve(
            data.X,
            data.y,
            data.paths,
            probe=probe,
            shots=args.shots,
            max_test=50 if args.max_test is None else args.max_test,
            splits=args.splits,
            seed=args.seed,
            show_progress=not args.json,
        )
        return [_row(layer, classifier, result, shot=result.params["n_train"]) for result in curve]
    # Each protocol parameter has a flag whose dest is the parameter's name.
    protocol_options = {name: getattr(args, name) for name in PROTOCOL_PARAMETERS}
    result = evaluate(
        data.X,
        data.y,
        data.paths,
        protocol=args.protocol,
        probe=probe,
        show_progress=not args.json,
        **protocol_options,
    )
    return [_row(layer, classifier, result)]


def _row(layer: str, classifier: str, result: Any, shot: int | None = None) -> dict[str, Any]:
    return {"layer": layer, "classifier": classifier, "shots": shot, **result.to_dict()}


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """DeCAF-paper layout: one row per classifier (and shot count), one column per layer."""
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    keys = list(dict.fromkeys((r["classifier"], r["shots"]) for r in rows))
    cells = {
        (r["classifier"], r["shots"], r["layer"]): "{:.2f} ± {:.2f}".format(
            100 * r["mean_class_accuracy"]["mean"], 100 * r["mean_class_accuracy"]["std"]
        )
        for r in rows
    }
    names = [c if s is None else f"{c} ({s}-shot)" for c, s in keys]
    first = max(len("classifier"), *(len(n) for n in names))
    width = max(14, *(len(layer) for layer in layers))
    protocol = rows[0]["protocol"] if rows else ""
    lines = [
        f"mean per-class accuracy (%), mean ± std over splits; protocol {protocol}",
        "classifier".ljust(first) + "".join(f"  {layer:>{width}}" for layer in layers),
    ]
    for name, (classifier, shot) in zip(names, keys, strict=True):
        values = [cells.get((classifier, shot, layer), "-") for layer in layers]
        lines.append(name.ljust(first) + "".join(f"  {v:>{width}}" for v in values))
    return "\n".join(lines)


# ------------------------------------------------------------------ predict
def _register_predict(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("predict", help="top-k labels of images with a saved probe")
    parser.add_argument("probe", metavar="PROBE", help="probe directory from `decaf probe fit`")
    parser.add_argument("images", metavar="IMAGES", nargs="+", help="image files")
    parser.add_argument("--top-k", type=positive_int, default=5)
    parser.add_argument(
        "--weights",
        default=None,
        help="imagenet, a .pth file or random (default: what the probe was trained with, when "
        "that can be found: imagenet or random)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=_predict)


def default_weights(meta: dict[str, Any]) -> str:
    """The --weights value that reproduces the probe's feature weights, when one can tell."""
    weights_id = str(meta.get("weights_id") or "")
    if weights_id == "random":
        return "random"
    backbone, _, tag = weights_id.partition("/")
    if tag and backbone == meta.get("backbone"):
        return tag  # the exact tag: a ResNet-50 V1 probe must not be run on V2 weights
    raise ProbeError(
        f"the probe was trained on features from weights {weights_id!r}; pass the same file "
        "with --weights PATH"
    )


def _predict(args: argparse.Namespace) -> int:
    from classifiers.persistence import check_compatible, load_probe, provenance_from_featurizer
    from featurizer.extractor import Featurizer

    probe, meta = load_probe(args.probe)
    layer = meta["layer"]
    preprocessing = meta.get("preprocessing") or {}
    featurizer = Featurizer(
        layers=[layer],
        weights=args.weights or default_weights(meta),
        backbone=meta.get("backbone") or "alexnet",
        precision=meta.get("precision") or "fp32",
        device=args.device,
        crop=preprocessing.get("crop_mode", "center"),
    )
    check_compatible(meta, provenance_from_featurizer(featurizer.describe(), layer))
    predictions, errors = predict_images(
        probe, featurizer, layer, args.images, args.top_k, args.batch_size
    )
    _print_predictions(predictions, errors, args.json, probe.score_kind)
    return 0 if predictions else 1


def predict_images(
    probe: Any, featurizer: Any, layer: str, images: Sequence[str], top_k: int, batch_size: int
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Top-k of every readable image; unreadable ones are reported, not fatal.

    Each entry of ``top_k`` has ``label`` and ``score``; what the score is (probability or SVM
    margin) is ``probe.score_kind``.
    """
    import numpy as np
    import torch

    from featurizer.errors import DecafError

    ready, tensors, errors = [], [], []
    for path in images:
        try:
            tensors.append(featurizer.prepare(path))
            ready.append(path)
        except (DecafError, OSError) as exc:
            errors.append({"path": path, "error": str(exc)})
    predictions = []
    for start in range(0, len(tensors), batch_size):
        batch = torch.stack(tensors[start : start + batch_size])
        features = featurizer.forward(batch, [layer])[layer]
        scores = probe.scores(features)
        order = np.argsort(-scores, axis=1)[:, :top_k]
        for i, path in enumerate(ready[start : start + batch_size]):
            predictions.append(
                {
                    "path": path,
                    "top_k": [
                        {"label": _label(probe.classes_[j]), "score": float(scores[i, j])}
                        for j in order[i]
                    ],
                }
            )
    return predictions, errors


def _label(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _print_predictions(
    predictions: list[dict], errors: list[dict], as_json: bool, score_kind: ScoreKind
) -> None:
    for error in errors:
        print(f"decaf: skipped {error['path']}: {error['error']}", file=sys.stderr)
    if as_json:
        document = {"score_kind": score_kind, "predictions": predictions, "errors": errors}
        print(json.dumps(document, indent=2))
        return
    print(f"score: {score_kind} ({SCORE_KIND_DESCRIPTIONS[score_kind]})")
    for item in predictions:
        ranked = ", ".join(f"{p['label']} ({p['score']:.3f})" for p in item["top_k"])
        print(f"{item['path']}: {ranked}")
