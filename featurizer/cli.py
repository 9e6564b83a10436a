"""`decaf extract`, `decaf info` and `decaf store upgrade`: feature stores from the shell.

Heavy modules (torch, pyarrow, the model) are imported inside the handlers so `--help` stays
fast. Progress goes to stderr; `--json` prints machine-readable output to stdout.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import traceback
from typing import TYPE_CHECKING, Any

from featurizer.argtypes import comma_list, non_negative_float, non_negative_int, positive_int
from featurizer.backbones import DEFAULT_BACKBONE, backbone_names
from featurizer.errors import EXIT_CONFLICT, EXIT_INTERRUPTED, DecafError, exit_code_of
from featurizer.options import CROP_MODES, DECODERS, ENGINES, PRECISIONS
from featurizer.progress import ProgressBar

if TYPE_CHECKING:
    from featurizer.extraction import ExtractionProgress
    from featurizer.store import StoreInfo


def register(sub: argparse._SubParsersAction) -> None:
    _register_extract(sub)
    _register_info(sub)
    _register_store(sub)


def _register_extract(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "extract",
        help="extract features of an image folder into a feature store",
        description="Extract features of every file below ROOT (ImageFolder layout: class = "
        "first-level sub-folder; files directly in ROOT are unlabeled) into the Parquet store "
        "OUT. Unreadable files are skipped and listed in OUT/_errors.jsonl. Rerunning the same "
        "command on an interrupted store resumes it.",
    )
    parser.add_argument("root", metavar="ROOT", help="image folder")
    parser.add_argument("--out", "-o", required=True, metavar="STORE", help="store directory")
    parser.add_argument(
        "--backbone",
        default=DEFAULT_BACKBONE,
        choices=backbone_names(),
        help=f"network to extract from (default {DEFAULT_BACKBONE}; see `decaf backbones`)",
    )
    parser.add_argument(
        "--layers",
        type=comma_list,
        default=None,
        help="comma-separated layer taps (default: the backbone's default taps; "
        "see `decaf backbones` for each backbone's taps)",
    )
    parser.add_argument(
        "--weights",
        default="imagenet",
        help="imagenet (torchvision cache), a .pth file, a .caffemodel (caffenet, bvlc_alexnet), "
        "or random (tests only)",
    )
    parser.add_argument(
        "--mean-image",
        default=None,
        metavar="FILE",
        help="Caffe backbones: subtract this mean image (ilsvrc_2012_mean.binaryproto or .npy) "
        "per pixel, as caffe.Classifier did, instead of the per-channel mean",
    )
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    parser.add_argument("--crop", default="center", choices=CROP_MODES)
    parser.add_argument(
        "--decoder",
        default="auto",
        choices=DECODERS,
        help="JPEG decoding: auto (torchvision.io where measured faster, else PIL), tensor, pil",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument(
        "--workers",
        type=non_negative_int,
        default=None,
        help="decode worker processes (default: half the cores, min 2; all but one with a "
        "GPU; 0 = decode in the main process); with --engine ray: cap on decode tasks",
    )
    parser.add_argument(
        "--part-size",
        type=positive_int,
        default=1024,
        help="rows per Parquet part (also the resume granularity)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing store instead of resuming it"
    )
    parser.add_argument(
        "--no-follow-symlinks",
        dest="follow_symlinks",
        action="store_false",
        help="skip symbolic links below ROOT (default: follow them, files and folders, as "
        "torchvision's ImageFolder does; loops are not entered); skipped entries are listed "
        "in STORE/_errors.jsonl",
    )
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="local (this machine) or ray (a Ray cluster, needs the ray extra)",
    )
    parser.add_argument(
        "--address",
        "--ray-address",
        dest="ray_address",
        default=None,
        help="with --engine ray: the cluster to join, e.g. ray://head:10001 (default: local Ray)",
    )
    parser.add_argument(
        "--num-gpus-per-worker",
        type=non_negative_float,
        default=None,
        help="with --engine ray: GPUs per model actor (default: 1 if the cluster has GPUs, else 0)",
    )
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=None,
        help="with --engine ray: model actors (default: one per GPU, or one per CPU node)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run_extract)


def _add_store_command(sub: argparse._SubParsersAction, name: str, func: Any, **texts: str) -> None:
    """A command over one STORE with a ``--json`` switch (``texts``: help, description)."""
    parser = sub.add_parser(name, **texts)
    parser.add_argument("store", metavar="STORE")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=func)


def _register_info(sub: argparse._SubParsersAction) -> None:
    _add_store_command(
        sub,
        "info",
        run_info,
        help="summarise a feature store",
        description="Show what a feature store holds, and check every part against the "
        "manifest (rows, layer dimensions) from the Parquet footers. Exit status 4 if the "
        "store is damaged or its manifest invalid.",
    )


def _register_store(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "store", help="maintain feature stores", description="Maintain feature stores."
    )
    commands = parser.add_subparsers(dest="store_command", required=True, metavar="COMMAND")
    _add_store_command(
        commands,
        "upgrade",
        run_store_upgrade,
        help="convert a store to the current format, in place",
        description="Convert a format-version-1 store (manifest.json, errors.jsonl) to version "
        "2 (_manifest.json, _errors.jsonl: Parquet readers then take the directory itself). "
        "Parts are kept; an interrupted upgrade leaves a valid store, and rerunning finishes it.",
    )


# --------------------------------------------------------------------------- extract


def run_extract(args: argparse.Namespace) -> int:
    from featurizer.extraction import extract_dataset
    from featurizer.store import ERRORS_NAME

    with _extraction_bar(enabled=not args.no_progress) as bar:
        result = extract_dataset(
            args.root,
            args.out,
            backbone=args.backbone,
            layers=args.layers,
            weights=args.weights,
            mean_image=args.mean_image,
            precision=args.precision,
            crop=args.crop,
            device=args.device,
            decoder=args.decoder,
            batch_size=args.batch_size,
            part_size=args.part_size,
            overwrite=args.overwrite,
            workers=args.workers,  # None: the engine decides
            engine=args.engine,
            ray=_ray_options(args),
            progress=functools.partial(_show, bar),
            follow_symlinks=args.follow_symlinks,
        )
    summary = {
        "store": str(result.store),
        "num_images": result.num_images,
        "num_errors": result.num_errors,
        "num_skipped": result.num_skipped,
        "skipped": result.skipped,
        "seconds": round(result.seconds, 3),
        "files_this_run": result.files_this_run,
        "images_per_s": round(result.images_per_s, 2),
        "resumed_parts": result.resumed_parts,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"{result.num_images} images -> {result.store} in {result.seconds:.1f} s "
            f"({result.images_per_s:.1f} images/s over the {result.files_this_run} files of "
            f"this run), {result.num_errors} unreadable, {_skipped_text(result.skipped)} "
            f"(see {ERRORS_NAME}), {result.resumed_parts} part(s) resumed"
        )
    return 0


def _skipped_text(skipped: dict[str, int]) -> str:
    if not skipped:
        return "0 skipped"
    kinds = ", ".join(f"{count} {kind}" for kind, count in skipped.items())
    return f"{sum(skipped.values())} skipped: {kinds}"


def _ray_options(args: argparse.Namespace) -> Any:
    given = [
        flag
        for flag, value in (
            ("--address", args.ray_address),
            ("--num-gpus-per-worker", args.num_gpus_per_worker),
            ("--concurrency", args.concurrency),
        )
        if value is not None
    ]
    if args.engine != "ray":
        if given:
            raise DecafError(f"{', '.join(given)} only apply with --engine ray")
        return None
    from featurizer.engines.ray import RayOptions

    return RayOptions(args.ray_address, args.num_gpus_per_worker, args.concurrency)


def _extraction_bar(*, enabled: bool) -> ProgressBar:
    """images/s and ETA over this run: the bar starts at the files of resumed parts."""
    return ProgressBar(enabled=enabled, unit="img", smoothing=0.1, leave=True)


def _show(bar: ProgressBar, progress: ExtractionProgress) -> None:
    bar.advance_to(progress.done, total=progress.total)
    bar.set_postfix(errors=progress.errors)


# --------------------------------------------------------------------------- info


def run_info(args: argparse.Namespace) -> int:
    from featurizer.store import FeatureStore

    info = FeatureStore.open(args.store).info()
    if args.json:
        print(json.dumps(info.to_dict(), indent=2, sort_keys=True, ensure_ascii=False))
    else:
        print(format_info(info))
    return EXIT_CONFLICT if info.problems else 0


def format_info(info: StoreInfo) -> str:
    """Human-readable summary of a store's :class:`~featurizer.store.StoreInfo`."""
    manifest = info.manifest
    layers = ", ".join(f"{name} ({dim})" for name, dim in manifest.layers.items())
    sha = f" (sha256 {manifest.weights_sha256[:12]})" if manifest.weights_sha256 else ""
    lines = [
        f"store:        {info.path.resolve()}",
        f"status:       {_status(info)}",
        f"format:       version {manifest.format_version}"
        + (
            f" (read-only: `decaf store upgrade {info.path}` converts it)"
            if manifest.format_version < 2
            else ""
        ),
        f"images:       {manifest.num_images}",
        f"errors:       {manifest.num_errors}"
        + (f" (see {info.errors_file})" if manifest.num_errors else ""),
        f"skipped:      {manifest.skipped}"
        + (f" (links, FIFOs, ...; see {info.errors_file})" if manifest.skipped else ""),
        f"layers:       {layers}",
        f"backbone:     {manifest.backbone}  weights: {manifest.weights_id}{sha}",
        f"precision:    {manifest.precision}  dtype: {manifest.dtype}",
        f"preprocess:   {_compact(manifest.preprocessing)}",
        f"engine:       {manifest.engine}  device: {manifest.device}",
        f"source:       {manifest.source_root}",
        f"created:      {manifest.created_at}  finished: {manifest.finished_at}",
        f"parts:        {len(manifest.parts)} x up to {manifest.part_size} rows",
        f"disk size:    {_human_bytes(info.disk_bytes)}",
    ]
    lines += [f"problem:      {problem}" for problem in info.problems]
    counts = info.class_counts
    lines.append(f"classes:      {len([c for c in counts if c != '<none>'])}")
    width = max((len(name) for name in counts), default=0)
    lines += [f"  {name:<{width}}  {count}" for name, count in counts.items()]
    return "\n".join(lines)


def _status(info: StoreInfo) -> str:
    if info.problems:
        return (
            f"DAMAGED ({len(info.problems)} problem(s) below): re-extract it with "
            "`decaf extract ... --overwrite`"
        )
    if not info.complete:
        return "INCOMPLETE (rerun `decaf extract` to resume)"
    return "complete"


def _compact(mapping: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in mapping.items())


def _human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{value:.1f} TiB"


# --------------------------------------------------------------------------- store upgrade


def run_store_upgrade(args: argparse.Namespace) -> int:
    from featurizer.store import upgrade_store

    result = upgrade_store(args.store)
    if args.json:
        summary = {
            "store": str(result.path),
            "from_version": result.from_version,
            "to_version": result.to_version,
            "removed": list(result.removed),
            "changed": result.changed,
        }
        print(json.dumps(summary, indent=2))
    elif result.from_version != result.to_version:
        print(
            f"upgraded {result.path} from format version {result.from_version} to "
            f"{result.to_version}"
        )
    elif result.removed:
        print(
            f"{result.path} is at format version {result.to_version}; removed "
            f"{', '.join(result.removed)} left by an interrupted upgrade"
        )
    else:
        print(f"{result.path} is already at format version {result.to_version}: nothing to do")
    return 0


# --------------------------------------------------------------------------- running a command


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed command. A user-caused problem (any :class:`DecafError`, an OS error such as
    a full disk or a missing permission) is one line ``decaf: error: ...`` on stderr and the
    exit status of :data:`featurizer.errors.EXIT_STATUSES`; ``-v`` adds the traceback. Anything
    else is a bug: it propagates with its traceback (exit status 1).
    """
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # the reader of stdout left: the entry point decides
        raise
    except (DecafError, OSError) as exc:
        return report_error(exc, verbose=bool(getattr(args, "verbose", False)))
    except KeyboardInterrupt:
        print("decaf: interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


def report_error(exc: BaseException, *, verbose: bool) -> int:
    """Print ``exc`` as one ``decaf: error:`` line (after its traceback with ``verbose``)."""
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    print(f"decaf: error: {message or type(exc).__name__}", file=sys.stderr)
    return exit_code_of(exc)


def _build_standalone_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m featurizer.cli")
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks of errors")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m featurizer.cli extract|info|store ...`: the same commands without the service."""
    return run_command(_build_standalone_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
