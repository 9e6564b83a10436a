"""`decaf extract` and `decaf info`: batch extraction into a feature store, and its summary.

Heavy modules (torch, the model) are imported inside the handlers so `decaf --help` stays fast.
Progress goes to stderr; `--json` prints machine-readable output to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from featurizer.errors import DecafError

DEFAULT_LAYERS = "decaf6,decaf7"


def register(sub: argparse._SubParsersAction) -> None:
    _register_extract(sub)
    _register_info(sub)


def _register_extract(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "extract",
        help="extract DeCAF features of an image folder into a feature store",
        description="Extract features of every file below ROOT (ImageFolder layout: class = "
        "first-level sub-folder; files directly in ROOT are unlabeled) into the Parquet store "
        "OUT. Unreadable files are skipped and listed in OUT/errors.jsonl. Rerunning the same "
        "command on an interrupted store resumes it.",
    )
    parser.add_argument("root", metavar="ROOT", help="image folder")
    parser.add_argument("--out", "-o", required=True, metavar="STORE", help="store directory")
    parser.add_argument(
        "--layers",
        default=DEFAULT_LAYERS,
        help=f"comma-separated layer taps (default {DEFAULT_LAYERS}); "
        "decaf5, decaf6_pre, decaf6, decaf7_pre, decaf7, logits",
    )
    parser.add_argument(
        "--weights",
        default="imagenet",
        help="imagenet (torchvision cache), a .pth file, or random (tests only)",
    )
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "int8"])
    parser.add_argument("--crop", default="center", choices=["center", "tencrop"])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch-size", type=_positive_int, default=64)
    parser.add_argument(
        "--workers",
        type=_non_negative_int,
        default=None,
        help="decode worker processes (default: half the cores, min 2; all but one with a "
        "GPU; 0 = decode in the main process)",
    )
    parser.add_argument(
        "--part-size",
        type=_positive_int,
        default=1024,
        help="rows per Parquet part (also the resume granularity)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing store instead of resuming it"
    )
    parser.add_argument(
        "--engine",
        choices=["local", "ray"],
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
        type=float,
        default=None,
        help="with --engine ray: GPUs per model actor (default: 1 if the cluster has GPUs, else 0)",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        default=None,
        help="with --engine ray: model actors (default: one per GPU, or one per CPU node)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run_extract)


def _register_info(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "info", help="summarise a feature store", description="Show what a feature store holds."
    )
    parser.add_argument("store", metavar="STORE")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run_info)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _parse_layers(text: str) -> tuple[str, ...]:
    layers = tuple(part.strip() for part in text.split(",") if part.strip())
    if not layers:
        raise DecafError("--layers is empty; e.g. --layers decaf6,decaf7")
    return layers


# --------------------------------------------------------------------------- extract


def run_extract(args: argparse.Namespace) -> int:
    options = {
        "layers": _parse_layers(args.layers),
        "weights": args.weights,
        "precision": args.precision,
        "crop": args.crop,
        "device": args.device,
        "batch_size": args.batch_size,
        "part_size": args.part_size,
        "overwrite": args.overwrite,
        "workers": args.workers,  # None: the engine picks (featurizer.batch.default_workers)
    }
    with _ProgressBar(enabled=not args.no_progress) as bar:
        if args.engine == "ray":
            ray_options = {
                "address": args.ray_address,
                "num_gpus_per_worker": args.num_gpus_per_worker,
                "concurrency": args.concurrency,
            }
            result = _extract_with_ray(args.root, args.out, {**options, **ray_options}, bar)
        else:
            from featurizer.batch import extract_dataset

            result = extract_dataset(args.root, args.out, progress=bar.update, **options)
    summary = {
        "store": str(result.store),
        "num_images": result.num_images,
        "num_errors": result.num_errors,
        "seconds": round(result.seconds, 3),
        "resumed_parts": result.resumed_parts,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        rate = result.num_images / result.seconds if result.seconds > 0 else 0.0
        print(
            f"{result.num_images} images -> {result.store} in {result.seconds:.1f} s "
            f"({rate:.1f} images/s overall), {result.num_errors} unreadable "
            f"(see errors.jsonl), {result.resumed_parts} part(s) resumed"
        )
    return 0


def _extract_with_ray(root: str, out: str, options: dict[str, Any], bar: _ProgressBar) -> Any:
    # distributed.py imports ray lazily and raises EngineUnavailableError (a DecafError) itself.
    from featurizer.distributed import extract_dataset_ray

    return extract_dataset_ray(root, out, progress=bar.update, **options)


class _ProgressBar:
    """tqdm on stderr fed by ExtractionProgress callbacks (images/s and ETA shown by tqdm)."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None

    def __enter__(self) -> _ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()

    def update(self, progress: Any) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            from tqdm import tqdm

            # initial = files of resumed parts, so the rate and ETA reflect this run only.
            self._bar = tqdm(
                total=progress.total,
                initial=progress.done,
                unit="img",
                file=sys.stderr,
                dynamic_ncols=True,
                smoothing=0.1,
            )
        self._bar.update(progress.done - self._bar.n)
        self._bar.set_postfix(errors=progress.errors, refresh=False)


# --------------------------------------------------------------------------- info


def run_info(args: argparse.Namespace) -> int:
    from featurizer.store import store_info

    info = store_info(args.store)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True, ensure_ascii=False))
    else:
        print(format_info(info))
    return 0


def format_info(info: dict[str, Any]) -> str:
    """Human-readable summary of ``store_info``."""
    manifest = info["manifest"]
    status = "complete" if info["complete"] else "INCOMPLETE (rerun `decaf extract` to resume)"
    layers = ", ".join(f"{name} ({dim})" for name, dim in manifest.get("layers", {}).items())
    preprocessing = manifest.get("preprocessing", {})
    lines = [
        f"store:        {info['store']}",
        f"status:       {status}",
        f"images:       {info['num_images']}",
        f"errors:       {info['num_errors']}"
        + (" (see errors.jsonl)" if info["num_errors"] else ""),
        f"layers:       {layers}",
        f"backbone:     {manifest.get('backbone')}  weights: {manifest.get('weights_id')}"
        + (
            f" (sha256 {str(manifest['weights_sha256'])[:12]})"
            if manifest.get("weights_sha256")
            else ""
        ),
        f"precision:    {manifest.get('precision')}  dtype: {manifest.get('dtype')}",
        f"preprocess:   {_compact(preprocessing)}",
        f"source:       {manifest.get('source_root')}",
        f"created:      {manifest.get('created_at')}  finished: {manifest.get('finished_at')}",
        f"parts:        {len(manifest.get('parts', []))} x up to {manifest.get('part_size')} rows",
        f"disk size:    {_human_bytes(info['disk_bytes'])}",
    ]
    counts = info["class_counts"]
    lines.append(f"classes:      {len([c for c in counts if c != '<none>'])}")
    width = max((len(name) for name in counts), default=0)
    lines += [f"  {name:<{width}}  {count}" for name, count in counts.items()]
    return "\n".join(lines)


def _compact(mapping: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in mapping.items())


def _human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{value:.1f} TiB"


def _build_standalone_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m featurizer.cli")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m featurizer.cli extract|info ...`: the same commands without the service."""
    args = _build_standalone_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DecafError as exc:
        print(f"decaf: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
