"""``decaf reproduce caltech101|sun397``: the DeCAF paper's table for one dataset, in one command.

Imports only records at module level (``decaf --help`` stays fast); the run imports torch,
scikit-learn and matplotlib when it starts.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from classifiers.datasets.sources import DATASET_NAMES
from classifiers.errors import ProbeError
from classifiers.options import CLASSIFIER_KINDS
from classifiers.reproduce.paper import PAPER_BACKBONE, PAPER_LAYERS
from featurizer.argtypes import (
    comma_list,
    non_negative_int,
    positive_float_or_auto,
    positive_int,
)
from featurizer.backbones import backbone_names
from featurizer.options import CROP_MODES

DEFAULT_OUT = Path("decaf-reproduce")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "reproduce",
        help="reproduce the DeCAF paper's table on Caltech-101 or SUN-397",
        description="Get the official dataset (from --data-dir, else a verified download), "
        "extract features into a feature store under OUT (reused by reruns), run the paper's "
        "protocol (Caltech-101: 30 training images per class, the rest tested, random splits; "
        "SUN-397: the official 50/50 partitions) for every layer x classifier, and write "
        "OUT/<dataset>-<backbone>-<weights>.json/.md/.png beside the paper's numbers.",
    )
    parser.add_argument("dataset", choices=DATASET_NAMES, help="the benchmark")
    parser.add_argument(
        "--backbone",
        default=PAPER_BACKBONE,
        choices=backbone_names(),
        help=f"network (default {PAPER_BACKBONE}, the paper's; alexnet = torchvision's)",
    )
    parser.add_argument(
        "--weights",
        default="imagenet",
        help="imagenet, a weights file, or random (tests only: the report is marked)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder with the official archive or its extracted folder; downloads go there "
        "(default $DECAF_DATA_DIR or ~/.cache/decaf/datasets)",
    )
    parser.add_argument("--no-download", action="store_true", help="never download")
    parser.add_argument(
        "--splits", type=positive_int, default=5, help="splits (SUN-397: first K of 10)"
    )
    parser.add_argument(
        "--layers",
        type=comma_list,
        default=None,
        help="layers, comma-separated (default: the paper's: "
        + "; ".join(f"{d} {','.join(layers)}" for d, layers in PAPER_LAYERS.items())
        + ")",
    )
    parser.add_argument(
        "--classifiers",
        type=comma_list,
        default=("svm", "logreg"),
        help=f"comma-separated, from {', '.join(CLASSIFIER_KINDS)} (default svm,logreg)",
    )
    parser.add_argument(
        "--dropout", action="store_true", help="also the paper's dropout rows (rate 0.5)"
    )
    parser.add_argument(
        "--C",
        dest="C",
        type=positive_float_or_auto,
        default="auto",
        help="regularisation: 'auto' (default: cross-validated on each training split, as the "
        "paper chose it) or a fixed positive number",
    )
    parser.add_argument(
        "--train-per-class",
        type=positive_int,
        default=None,
        help="caltech101 training images per class (default 30, the paper's; other values are "
        "marked not comparable)",
    )
    parser.add_argument("--out", "-o", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random splits")
    parser.add_argument("--crop", default="center", choices=CROP_MODES)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument(
        "--workers", type=non_negative_int, default=None, help="decode processes (0: inline)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--json", action="store_true", help="print the JSON report instead")
    parser.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    from classifiers.reproduce.report import RANDOM_BANNER, format_markdown, write_report
    from classifiers.reproduce.runner import ReproduceConfig, run_reproduce

    config = ReproduceConfig(
        dataset=args.dataset,
        out=args.out,
        backbone=args.backbone,
        weights=args.weights,
        data_dir=args.data_dir,
        splits=args.splits,
        layers=args.layers,
        classifiers=_classifiers(args.classifiers),
        dropout=args.dropout,
        C=args.C,
        train_per_class=args.train_per_class,
        seed=args.seed,
        crop=args.crop,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        allow_download=not args.no_download,
        progress=not args.no_progress and not args.json,
    )
    if args.weights == "random":
        print(f"decaf: {RANDOM_BANNER.replace('**', '')}", file=sys.stderr)
    with warnings.catch_warnings():
        # The random-weights warning is printed above once; sklearn's convergence chatter
        # would bury the table.
        warnings.simplefilter("ignore")
        report = run_reproduce(config)
    paths = write_report(report, args.out)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(format_markdown(report))
        print(f"\nwrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0


def _classifiers(names: Any) -> tuple[Any, ...]:
    unknown = [name for name in names if name not in CLASSIFIER_KINDS]
    if unknown:
        raise ProbeError(
            f"unknown classifier(s) {unknown}; choose from {', '.join(CLASSIFIER_KINDS)}"
        )
    return tuple(dict.fromkeys(names))
