"""`decaf plot tsne|curve|confusion|layers`: pictures of a store or of a result file.

Only argparse and the shared converters are imported here: matplotlib, openTSNE and the store
load inside the handlers, so `decaf --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from featurizer.argtypes import positive_float, positive_int

RESULT_HELP = "JSON written by `decaf probe eval --json` or `decaf reproduce --json`"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "plot",
        help="plots: t-SNE map of a store, few-shot curve, confusion matrix, accuracy per layer",
        description="Plots as PNG or SVG (chosen by the --out extension). Features made with "
        "random weights are marked RANDOM WEIGHTS.",
    )
    plot_sub = parser.add_subparsers(dest="plot_command", required=True, metavar="PLOT")
    _register_tsne(plot_sub)
    _register_result_plot(plot_sub, "curve", "few-shot curve: accuracy vs shots, mean ± std")
    confusion = _register_result_plot(
        plot_sub, "confusion", "confusion matrix of one result row, most confused pairs labelled"
    )
    confusion.add_argument("--layer", default=None, help="row to draw (default: the best)")
    confusion.add_argument("--classifier", default=None, help="row to draw (default: the best)")
    confusion.add_argument("--shots", type=positive_int, default=None, help="few-shot row")
    _register_result_plot(plot_sub, "layers", "accuracy per layer and classifier (+ the paper's)")


def _register_tsne(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "tsne",
        help="t-SNE map of a store's features, coloured by class (PCA to 50, then openTSNE)",
    )
    parser.add_argument("store", metavar="STORE", help="feature store made by `decaf extract`")
    parser.add_argument("--layer", default=None, help="layer (default: the store's first)")
    parser.add_argument(
        "--per-class", type=positive_int, default=None, help="at most N images per class"
    )
    parser.add_argument("--perplexity", type=positive_float, default=30.0)
    parser.add_argument("--seed", type=int, default=0, help="same seed, same map")
    parser.add_argument(
        "--max-coloured",
        type=positive_int,
        default=20,
        help="classes drawn in colour, the largest first; the rest grey (default 20)",
    )
    parser.add_argument("--out", "-o", default="tsne.png", help=".png or .svg (default tsne.png)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    parser.set_defaults(func=_tsne)


def _register_result_plot(
    sub: argparse._SubParsersAction, name: str, help_text: str
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_text)
    parser.add_argument("result", metavar="RESULT.json", help=RESULT_HELP)
    parser.add_argument(
        "--out", "-o", default=f"{name}.png", help=f".png or .svg (default {name}.png)"
    )
    parser.set_defaults(func=_result_plot, plot_name=name)
    return parser


def _tsne(args: argparse.Namespace) -> int:
    from classifiers.plots.figure import plot_format
    from classifiers.plots.tsne import plot_tsne

    plot_format(args.out)  # a bad extension fails before minutes of t-SNE
    summary = plot_tsne(
        args.store,
        layer=args.layer,
        out=args.out,
        per_class=args.per_class,
        perplexity=args.perplexity,
        seed=args.seed,
        max_coloured=args.max_coloured,
    )
    _report(summary, args.json)
    return 0


def _result_plot(args: argparse.Namespace) -> int:
    from classifiers.plots import charts
    from classifiers.plots.figure import plot_format

    plot_format(args.out)
    if args.plot_name == "curve":
        path = charts.plot_curve(args.result, args.out)
    elif args.plot_name == "confusion":
        path = charts.plot_confusion(
            args.result, args.out, layer=args.layer, classifier=args.classifier, shots=args.shots
        )
    else:
        path = charts.plot_layers(args.result, args.out)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def _report(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    seconds = summary["seconds"]
    mark = " [RANDOM WEIGHTS]" if summary["random_weights"] else ""
    print(
        f"wrote {summary['out']}: {summary['points']} images, {summary['classes']} classes, "
        f"{summary['layer']}, perplexity {summary['perplexity']:.3g}{mark} "
        f"(PCA {seconds['pca']:.1f} s, t-SNE {seconds['tsne']:.1f} s, plot {seconds['plot']:.1f} s)"
    )
