"""Batch-extraction throughput: `decaf extract` end to end vs a naive baseline and the model alone.

Builds an image folder of small (~500x375) and large (~2500x1700) JPEGs, then measures images/s:

  (a) naive   torchvision ImageFolder + Resize/CenterCrop/ToTensor/Normalize + DataLoader
              (num_workers=2, batch_size=64) + AlexNet forward under no_grad
  (b) model   Featurizer.forward alone on preloaded uint8 batches (batch 64, fp32 unless stated)
  (c) decaf   featurizer.extraction.extract_dataset end to end (decode workers + model + Parquet
              writes), per precision and per worker count; the model is built once beforehand
              (weights loading is a constant start-up cost, not throughput)

and the peak RSS of a whole extraction process for N and 4N images (memory must not grow with
the dataset). Then (issue 13, section (e), interleaved A B A B on the small images, medians):

  - decode CPU ms per image (one thread, process CPU time): PIL vs the tensor decoder vs auto
  - model core-seconds per image (process CPU time over the model-alone run)
  - the CPU-work ceiling: cores / (model core-s + decode core-s per image), and end to end as a
    fraction of it beside the fraction of model-only
  - `decaf extract` fp32 now (decoder auto, oneDNN fc) vs before issue 13 (PIL, F.linear)

Targets on a 2-core CPU: (c) fp32 >= 85% of (b) on small images, >= 1.5x (a) on
large ones, bf16 >= 1.4x fp32.

    python benchmarks/extract_throughput.py --quick          # a minute or two, smoke test
    python benchmarks/extract_throughput.py                  # the README numbers (quiet machine!)
    python benchmarks/extract_throughput.py --small 256 --large 64 --precisions fp32,bf16
"""

from __future__ import annotations

from featurizer.runtime import configure_process

configure_process()  # this script is an entry point: set before torch starts its OpenMP runtime

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SMALL_SIZE = (500, 375)
LARGE_SIZE = (2500, 1700)
CLASSES = ("alpha", "beta", "gamma", "delta")
FULL = {"small": 512, "large": 96, "rss_count": 256, "repeats": 3, "precisions": "fp32,bf16,int8"}
QUICK = {"small": 96, "large": 12, "rss_count": 48, "repeats": 1, "precisions": "fp32,bf16"}


@dataclass
class Row:
    name: str
    images: str  # "small" / "large"
    count: int
    seconds: float
    note: str = ""

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else float("nan")


# --------------------------------------------------------------------------- data


def photo_like(size: tuple[int, int], seed: int) -> Image.Image:
    """Smooth gradients + texture + noise: compresses like a photo, not like flat colour."""
    width, height = size
    rng = np.random.default_rng(seed)
    # Build at 1/4 resolution and upsample: fast for 4-MP images, still photo-like JPEG sizes.
    w4, h4 = max(width // 4, 8), max(height // 4, 8)
    y, x = np.mgrid[0:h4, 0:w4].astype(np.float32)
    phase = rng.uniform(0, 6.28, 3)
    base = np.stack(
        [
            127 + 100 * np.sin(x / (9 + 4 * c) + phase[c]) * np.cos(y / (7 + 3 * c))
            for c in range(3)
        ],
        axis=-1,
    )
    noisy = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(noisy).resize((width, height), Image.Resampling.BILINEAR)
    grain = rng.integers(-12, 13, (height, width, 1), dtype=np.int16)
    return Image.fromarray(np.clip(np.asarray(image, np.int16) + grain, 0, 255).astype(np.uint8))


def build_folder(root: Path, count: int, size: tuple[int, int], seed: int) -> Path:
    """ImageFolder layout with `count` JPEGs spread over CLASSES (a few unique images reused)."""
    unique = [photo_like(size, seed + i) for i in range(min(count, 8))]
    encoded = []
    for image in unique:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        encoded.append(buffer.getvalue())
    for i in range(count):
        folder = root / CLASSES[i % len(CLASSES)]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img{i:06d}.jpg").write_bytes(encoded[i % len(encoded)])
    return root


def replicate(src: Path, dst: Path, times: int) -> Path:
    """`times` hard-linked copies of every file of src (no extra disk, distinct paths)."""
    for path in sorted(src.rglob("*.jpg")):
        rel = path.relative_to(src)
        for t in range(times):
            target = dst / rel.parent / f"{t}_{rel.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)
    return dst


# --------------------------------------------------------------------------- measurements


def measure_naive(root: Path, batch_size: int, workers: int) -> float:
    import torch
    import torchvision
    from torchvision import transforms

    transform = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    dataset = torchvision.datasets.ImageFolder(str(root), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    model = torchvision.models.alexnet(weights=None).eval()
    start = time.perf_counter()
    with torch.no_grad():
        for images, _ in loader:
            model(images)
    return time.perf_counter() - start


def measure_model_alone(fz, count: int, batch_size: int, repeats: int) -> float:
    import torch

    generator = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 256, (batch_size, 3, 224, 224), dtype=torch.uint8, generator=generator)
    fz.forward(batch)  # warm-up: first call picks kernels
    batches = max(1, -(-count // batch_size))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batches):
            fz.forward(batch)
        best = min(best, time.perf_counter() - start)
    return best * count / (batches * batch_size)  # seconds for `count` images


def measure_extract(fz, root: Path, out: Path, batch_size: int, workers: int) -> float:
    from featurizer.extraction import extract_dataset

    start = time.perf_counter()
    extract_dataset(
        root, out, featurizer=fz, batch_size=batch_size, workers=workers, overwrite=True
    )
    seconds = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    return seconds


def peak_rss_mib(root: Path, out: Path, args: argparse.Namespace) -> dict[str, float]:
    """Run one extraction in a fresh process; its own and its largest worker's peak RSS."""
    code = (
        "import json, resource, warnings, sys; warnings.simplefilter('ignore');"
        "from featurizer.extraction import extract_dataset;"
        f"extract_dataset({str(root)!r}, {str(out)!r}, weights={args.weights!r},"
        f" batch_size={args.batch_size}, workers={args.rss_workers}, overwrite=True);"
        "own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
        "kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss;"
        "print(json.dumps({'main': own / 1024, 'worker': kids / 1024}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--small", type=int, help="number of ~500x375 JPEGs (512; quick 96)")
    parser.add_argument("--large", type=int, help="number of ~2500x1700 JPEGs (96; quick 12)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precisions", help="default fp32,bf16,int8 (quick: fp32,bf16)")
    parser.add_argument("--workers", default="1,2", help="decode worker counts to compare (c)")
    parser.add_argument("--weights", default="random", help="random (default) or a .pth path")
    parser.add_argument("--rss-count", type=int, help="N for the RSS check: N and 4N (256)")
    parser.add_argument("--rss-workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, help="repeats of (b), best kept (3)")
    parser.add_argument("--workdir", default=None, help="where to build images (default: tmp)")
    parser.add_argument(
        "--no-ray", action="store_true", help="skip the Ray-local vs default-engine row (d)"
    )
    parser.add_argument(
        "--only-compare",
        action="store_true",
        help="only section (e): decode table, ceiling, before/after issue 13",
    )
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.simplefilter("ignore")  # the random-weights warning, once per Featurizer
    # Before anything imports torch: importing featurizer sets its OpenMP wait policy.
    from featurizer.extractor import Featurizer

    work = Path(args.workdir or tempfile.mkdtemp(prefix="decaf-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"building images in {work} ...", file=sys.stderr)
    folders = {
        "small": build_folder(work / "small", args.small, SMALL_SIZE, seed=0),
        "large": build_folder(work / "large", args.large, LARGE_SIZE, seed=100),
    }
    counts = {"small": args.small, "large": args.large}
    if args.only_compare:
        from benchmarks.extract_compare import compare_section

        compare_section(folders, args)
        return 0
    workers = [int(w) for w in args.workers.split(",")]
    rows: list[Row] = []
    for kind, folder in folders.items():
        print(f"(a) naive baseline on {kind} ...", file=sys.stderr)
        rows.append(Row("(a) naive ImageFolder+DataLoader(2)", kind, counts[kind],
                        measure_naive(folder, args.batch_size, 2)))  # fmt: skip

    for precision in args.precisions.split(","):
        try:
            fz = Featurizer(weights=args.weights, precision=precision, device="cpu")
        except Exception as exc:  # a precision this CPU cannot run: report, go on
            print(f"skipping {precision}: {exc}", file=sys.stderr)
            continue
        seconds = measure_model_alone(fz, args.small, args.batch_size, args.repeats)
        rows.append(Row(f"(b) model alone {precision}", "-", args.small, seconds))
        for kind, folder in folders.items():
            for w in workers:
                print(f"(c) extract {precision} {kind} workers={w} ...", file=sys.stderr)
                seconds = measure_extract(fz, folder, work / "store", args.batch_size, w)
                rows.append(
                    Row(f"(c) decaf extract {precision} w={w}", kind, counts[kind], seconds)
                )
        del fz

    print(f"peak RSS for {args.rss_count} and {4 * args.rss_count} images ...", file=sys.stderr)
    rss_base = build_folder(work / "rss", args.rss_count, SMALL_SIZE, seed=7)
    rss = {
        args.rss_count: peak_rss_mib(rss_base, work / "rss-store", args),
        4 * args.rss_count: peak_rss_mib(
            replicate(rss_base, work / "rss4", 4), work / "rss-store", args
        ),
    }
    ray_report = None if args.no_ray else measure_ray(folders["small"], work, args)
    import torch

    print_report(rows, rss, args, torch.get_num_threads())
    if ray_report is not None:
        print_ray_report(ray_report)
    from benchmarks.extract_compare import compare_section

    compare_section(folders, args)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def print_report(rows: list[Row], rss: dict, args: argparse.Namespace, threads: int) -> None:
    print(f"\ncpu cores: {os.cpu_count()}, torch threads: {threads}, batch {args.batch_size}, "
          f"weights {args.weights}")  # fmt: skip
    print(f"| {'run':<38} | {'images':<6} | {'n':>5} | {'seconds':>8} | {'images/s':>9} |")
    print(f"|{'-' * 40}|{'-' * 8}|{'-' * 7}|{'-' * 10}|{'-' * 11}|")
    for row in rows:
        print(f"| {row.name:<38} | {row.images:<6} | {row.count:>5} | {row.seconds:>8.2f} | "
              f"{row.rate:>9.1f} |")  # fmt: skip
    print("\nratios (target):")
    rate = {(r.name, r.images): r.rate for r in rows}
    best = _best_extract(rows)
    naive_large = rate.get(("(a) naive ImageFolder+DataLoader(2)", "large"))
    model_fp32 = rate.get(("(b) model alone fp32", "-"))
    for _precision, kinds in sorted(best.items()):
        for kind, (name, value) in sorted(kinds.items()):
            print(f"  {name} on {kind}: {value:.1f} img/s")
    if "fp32" in best:
        fp32 = best["fp32"]
        if model_fp32 and "small" in fp32:
            print(f"  e2e fp32 small / model alone fp32 = {fp32['small'][1] / model_fp32:.2f}"
                  "  (target >= 0.85)")  # fmt: skip
        if naive_large and "large" in fp32:
            print(f"  e2e fp32 large / naive large     = {fp32['large'][1] / naive_large:.2f}"
                  "  (target >= 1.5)")  # fmt: skip
        for precision in ("bf16", "int8"):
            if precision in best and "small" in best[precision] and "small" in fp32:
                ratio = best[precision]["small"][1] / fp32["small"][1]
                target = "  (target >= 1.4)" if precision == "bf16" else ""
                print(f"  e2e {precision} small / e2e fp32 small = {ratio:.2f}{target}")
    counts = sorted(rss)
    print("\npeak RSS (MiB), whole extraction process:")
    for n in counts:
        print(f"  {n:>6} images: main {rss[n]['main']:.0f}, largest worker {rss[n]['worker']:.0f}")
    growth = rss[counts[-1]]["main"] / rss[counts[0]]["main"]
    print(f"  main-process growth for {counts[-1] // counts[0]}x the images: {growth:.2f}x "
          "(target: ~1.0)")  # fmt: skip


def measure_ray(folder: Path, work: Path, args: argparse.Namespace) -> dict | None:
    """(d) the Ray Data engine on a local Ray vs the default engine, same folder, same run."""
    try:
        import ray  # noqa: F401
    except ImportError:
        print("(d) skipped: ray is not installed (pip install 'decaf[ray]')", file=sys.stderr)
        return None
    from benchmarks.extract_ray import ray_rows

    print("(d) ray local vs default engine on small ...", file=sys.stderr)
    return ray_rows(folder, work / "ray", weights=args.weights, batch_size=args.batch_size,
                    workers=2, repeats=1 if args.quick else 2)  # fmt: skip


def print_ray_report(report: dict) -> None:
    print("\n(d) Ray Data engine (local Ray) vs default engine, small images, fp32:")
    print(f"| {'engine':<24} | {'images':>6} | {'img/s e2e':>9} | {'start-up s':>10} | "
          f"{'img/s steady':>12} |")  # fmt: skip
    print(f"|{'-' * 26}|{'-' * 8}|{'-' * 11}|{'-' * 12}|{'-' * 14}|")
    for row in report["rows"]:
        print(f"| {row['engine']:<24} | {row['images']:>6} | {row['e2e_ips']:>9.1f} | "
              f"{row['startup_s']:>10.1f} | {row['steady_ips']:>12.1f} |")  # fmt: skip
    print(f"  ray / default: steady {report['ratio_steady']:.2f}, end to end "
          f"{report['ratio_e2e']:.2f} (target: overhead < 25%, i.e. steady >= 0.75); "
          f"ray.init {report['ray_init_s']:.1f} s and first worker start "
          f"{report['ray_warmup_s']:.1f} s not included; "
          f"same rows: {report['same_rows']}")  # fmt: skip


def _best_extract(rows: list[Row]) -> dict[str, dict[str, tuple[str, float]]]:
    """Per precision and image kind, the fastest worker setting of (c)."""
    best: dict[str, dict[str, tuple[str, float]]] = {}
    for row in rows:
        if not row.name.startswith("(c)"):
            continue
        precision = row.name.split()[3]
        current = best.setdefault(precision, {}).get(row.images)
        if current is None or row.rate > current[1]:
            best[precision][row.images] = (row.name, row.rate)
    return best


if __name__ == "__main__":
    sys.exit(main())
