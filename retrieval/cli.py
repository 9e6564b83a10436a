"""``decaf index build|search|duplicates|eval``: retrieval over a feature store.

Light on purpose: registering the commands imports neither FAISS nor torch (``decaf --help``
stays fast); each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from typing import Any

from featurizer.argtypes import comma_list, positive_int
from featurizer.backbones import backbone_names
from retrieval.options import (
    CODEC_HELP,
    CODECS,
    DEFAULT_EVAL_K,
    DEFAULT_K,
    DEFAULT_THRESHOLD,
    INDEX_KINDS,
    KIND_HELP,
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``decaf index`` (build, search, duplicates, eval) to ``decaf``'s sub-parsers."""
    parser = sub.add_parser(
        "index",
        help="nearest-neighbour search, near-duplicates and retrieval quality over a store (FAISS)",
        description="Index a feature store's layer with FAISS (L2-normalised vectors, cosine "
        "scores; optional PCA-whitening and compact codecs), then search it with images, find "
        "near-duplicates or measure retrieval quality (mAP, P@k) with its labels.",
    )
    commands = parser.add_subparsers(dest="index_command", required=True, metavar="ACTION")
    _register_build(commands)
    _register_search(commands)
    _register_duplicates(commands)
    _register_eval(commands)


def _add_recipe_options(parser: argparse.ArgumentParser, *, layer_required: bool) -> None:
    parser.add_argument(
        "--layer", required=layer_required, help="the store's layer to index (e.g. decaf7)"
    )
    parser.add_argument("--dim", type=positive_int, help="PCA to this many dimensions")
    parser.add_argument(
        "--whiten", action="store_true", help="PCA-whitening (needs --dim), learned on the store"
    )
    parser.add_argument("--codec", choices=CODECS, default="flat", help=CODEC_HELP)
    parser.add_argument("--kind", choices=INDEX_KINDS, default="auto", help=KIND_HELP)


def _register_build(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("build", help="build (or reuse) the index of a store's layer")
    parser.add_argument("store", metavar="STORE", help="feature store directory")
    _add_recipe_options(parser, layer_required=True)
    parser.add_argument(
        "--backbone",
        choices=backbone_names(),
        help="refuse unless the store holds this backbone's features",
    )
    parser.add_argument(
        "--rebuild", action="store_true", help="replace an existing (or outdated) index"
    )
    parser.add_argument("--json", action="store_true", help="print the index record as JSON")
    parser.set_defaults(func=_build)


def _register_search(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("search", help="nearest stored images of query images")
    parser.add_argument("store", metavar="STORE", help="feature store directory with an index")
    parser.add_argument("images", metavar="IMAGE", nargs="+", help="query image files")
    parser.add_argument("-k", type=positive_int, default=DEFAULT_K, help="neighbours per image")
    parser.add_argument("--layer", help="which index, when the store has several layers indexed")
    parser.add_argument(
        "--weights", help="the store's weights file, when it was extracted from one (file:...)"
    )
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=_search)


def _register_duplicates(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("duplicates", help="groups of near-duplicate images in a store")
    parser.add_argument("store", metavar="STORE", help="feature store directory with an index")
    parser.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"cosine at or above which two images are duplicates (default {DEFAULT_THRESHOLD})",
    )
    parser.add_argument("--layer", help="which index, when the store has several layers indexed")
    parser.add_argument(
        "-k", type=positive_int, default=DEFAULT_K, help="neighbours per image in the graph"
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="groups as JSON")
    output.add_argument("--csv", action="store_true", help="one row per member: group,row,path")
    parser.set_defaults(func=_duplicates)


def _register_eval(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "eval", help="retrieval quality (leave-one-out mAP, P@k) with the labels as relevance"
    )
    parser.add_argument("store", metavar="STORE", help="labelled feature store directory")
    _add_recipe_options(parser, layer_required=True)
    parser.add_argument(
        "--k",
        type=comma_list,
        default=tuple(str(k) for k in DEFAULT_EVAL_K),
        help="comma list of k for precision@k (default 1,5,10)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=_eval)


# ------------------------------------------------------------------ commands
def _quiet_faiss_loader() -> None:
    # FAISS logs every CPU-feature library it tries at INFO: noise on a command's stderr.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def _spec(args: argparse.Namespace) -> Any:
    from retrieval.recipe import IndexSpec

    return IndexSpec(
        layer=args.layer, dim=args.dim, whiten=args.whiten, codec=args.codec, kind=args.kind
    )


def _build(args: argparse.Namespace) -> int:
    _quiet_faiss_loader()
    from featurizer.progress import ProgressBar
    from retrieval.build import build_store_index

    bars: dict[str, ProgressBar] = {}

    def on_progress(progress: Any) -> None:
        bar = bars.get(progress.step)
        if bar is None:
            for other in bars.values():
                other.close()
            bar = bars[progress.step] = ProgressBar(
                enabled=not args.json, total=progress.total, desc=progress.step, unit="rows"
            )
        bar.advance_to(progress.done, total=progress.total)

    try:
        result = build_store_index(
            args.store,
            _spec(args),
            backbone=args.backbone,
            rebuild=args.rebuild,
            progress=on_progress,
        )
    finally:
        for bar in bars.values():
            bar.close()
    record = result.record
    if args.json:
        print(json.dumps({**record.to_dict(), "reused": result.reused}, indent=2))
        return 0
    recipe = record.recipe
    verb = "up to date (pass --rebuild to rebuild)" if result.reused else "built"
    print(f"index {record.name} {verb}: {record.path}")
    print(
        f"  {record.rows} rows, layer {record.layer} ({recipe['dim_in']} -> {recipe['dim_out']} "
        f"dims), {recipe['kind']} index, faiss '{recipe['factory']}', "
        f"{record.data['index_bytes'] / 1e6:.1f} MB, built in {record.data['build_seconds']} s"
    )
    return 0


def _search(args: argparse.Namespace) -> int:
    _quiet_faiss_loader()
    from retrieval.queries import search_image_files, store_featurizer
    from retrieval.search import Searcher, clamp_k

    searcher = Searcher.open(args.store, args.layer)
    k, note = clamp_k(args.k, searcher.rows)
    featurizer = store_featurizer(
        searcher.store.manifest, searcher.layer, weights=args.weights, device=args.device
    )
    results = search_image_files(searcher, featurizer, args.images, k)
    if args.json:
        print(json.dumps({"k": k, "note": note, "index": searcher.record.name, "results": results}))
    else:
        _print_search(results, note)
    return 0 if any(r["error"] is None for r in results) else 1


def _print_search(results: list[dict[str, Any]], note: str | None) -> None:
    if note:
        print(f"note: {note}", file=sys.stderr)
    for result in results:
        print(result["filename"])
        if result["error"] is not None:
            print(f"  error: {result['error']}")
            continue
        for rank, n in enumerate(result["neighbours"], 1):
            label = f"  [{n['label']}]" if n["label"] is not None else ""
            print(f"  {rank:3d}  {n['score']:.4f}  {n['path']}{label}")


def _duplicates(args: argparse.Namespace) -> int:
    _quiet_faiss_loader()
    from featurizer.progress import ProgressBar
    from retrieval.duplicates import find_duplicates
    from retrieval.search import Searcher

    searcher = Searcher.open(args.store, args.layer)
    quiet = args.json or args.csv
    with ProgressBar(enabled=not quiet, desc="duplicates", unit="rows") as bar:
        groups = find_duplicates(
            searcher,
            threshold=args.threshold,
            k=args.k,
            progress=lambda done, total: bar.advance_to(done, total=total),
        )
    if args.json:
        print(json.dumps({"threshold": args.threshold, "groups": [g.to_dict() for g in groups]}))
    elif args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(["group", "row", "path", "label", "min_score"])
        for number, group in enumerate(groups, 1):
            for row, path, label in zip(group.rows, group.paths, group.labels, strict=True):
                writer.writerow([number, row, path, label or "", group.min_score])
    else:
        print(f"{len(groups)} group(s) of near-duplicates at cosine >= {args.threshold}")
        for number, group in enumerate(groups, 1):
            print(f"group {number}: {len(group.rows)} images (weakest link {group.min_score:.4f})")
            for path in group.paths:
                print(f"  {path}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    _quiet_faiss_loader()
    from featurizer.errors import DecafError
    from featurizer.progress import ProgressBar
    from retrieval.evaluate import evaluate_store

    try:
        ks = [int(k) for k in args.k]
    except ValueError as exc:
        raise DecafError(f"--k must be a comma list of positive integers, got {args.k}") from exc
    if not ks or min(ks) < 1:
        raise DecafError(f"--k must be a comma list of positive integers, got {args.k}")
    with ProgressBar(enabled=not args.json, desc="eval", unit="rows") as bar:
        result = evaluate_store(
            args.store,
            _spec(args),
            ks,
            progress=lambda step, done, total: bar.advance_to(done, total=total),
        )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    recipe = result["recipe"]
    depth = "" if result["map_depth"] is None else f"@{result['map_depth']}"
    print(
        f"{result['backbone']} {result['layer']}: {result['rows']} rows, {recipe['kind']} index "
        f"'{recipe['factory']}', {result['queries']} leave-one-out queries"
    )
    cells = [f"mAP{depth} {result['map']:.4f}"] + [
        f"P@{k} {value:.4f}" for k, value in result["precision_at"].items()
    ]
    print("  " + "  ".join(cells))
    if result["skipped_queries"]:
        print(f"  ({result['skipped_queries']} queries skipped: no other image of their class)")
    return 0
