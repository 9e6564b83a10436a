"""Model-only throughput and fidelity of each precision (no decoding: preloaded uint8 tensors).

Prints, for batch sizes 64 and 1: images/s of
  - torchvision      plain torchvision AlexNet, NCHW fp32, float input (what a user would write)
  - fp32             Featurizer fp32 (channels_last, uint8 in, normalised on the device; fc layers
                     through oneDNN, featurizer.linear_kernels)
  - fp32-aten        the same with the fc layers through F.linear (MKL sgemm): fp32 before issue 13
  - bf16             Featurizer bf16 (whole model cast to bfloat16: the shipped choice)
  - bf16-autocast    fp32 Featurizer under torch.autocast(bfloat16) (the rejected alternative)
  - int8             Featurizer int8 (dynamic-quantised fc6/fc7/fc8)
with the ratio to fp32 measured in the same run, the speed-up of the oneDNN fc layers
(fp32 / fp32-aten) and of the classifier alone (fc6-fc8, ``--fc-table``), then the worst-view
cosine similarity to fp32 per layer on scikit-learn's two sample photographs (20 views).

    python benchmarks/model_throughput.py            # full: several timed batches per row
    python benchmarks/model_throughput.py --quick    # seconds, for a smoke run on a busy machine
"""

from __future__ import annotations

from featurizer.runtime import configure_process

configure_process()  # this script is an entry point: set before torch starts its OpenMP runtime

import argparse
import contextlib
import copy
import functools
import logging
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torchvision

from featurizer.backbones import get_backbone
from featurizer.extractor import Featurizer
from featurizer.precision import cpu_has_fast_bf16
from featurizer.runtime import default_num_threads

LAYER_NAMES = get_backbone("alexnet").tap_names
FEATURE_LAYERS = ("decaf6", "decaf7")  # what a user typically extracts (runs up to fc7)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few iterations, small batch")
    parser.add_argument("--batch-sizes", default="64,32,8,1", help="comma-separated")
    parser.add_argument("--seconds", type=float, default=8.0, help="time budget per variant")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    parser.add_argument("--weights", default="random", help="random (default), imagenet or PATH")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--stat", choices=["median", "best"], default="median", help="per-batch time statistic"
    )
    parser.add_argument("--no-fidelity", action="store_true", help="skip the cosine table")
    parser.add_argument(
        "--fc-table", action="store_true", help="also time fc6-fc8 alone: F.linear vs oneDNN"
    )
    return parser.parse_args()


def interleaved_rates(
    runs: dict[str, Callable[[], object]], batch: int, seconds: float, stat: str = "median"
) -> dict[str, float]:
    """images/s of each variant, timed in round-robin rounds of one batch each.

    Interleaving means a burst of other load on a shared machine hits every variant alike, so
    the ratios stay meaningful; the median per-batch time (``stat="best"``: the fastest batch,
    the closest estimate of an idle machine) keeps single bursts from deciding a number.
    """
    for run in runs.values():
        run()  # warm-up: oneDNN primitive creation, weight packing
    times: dict[str, list[float]] = {name: [] for name in runs}
    deadline = time.perf_counter() + seconds * len(runs)
    while min(map(len, times.values())) < 3 or time.perf_counter() < deadline:
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    pick = min if stat == "best" else statistics.median
    return {name: batch / pick(samples) for name, samples in times.items()}


def make_variants(args: argparse.Namespace) -> dict[str, Callable[[torch.Tensor], object]]:
    common = {"weights": args.weights, "device": args.device, "num_threads": args.threads}
    fp32 = Featurizer(FEATURE_LAYERS, precision="fp32", **common)
    variants: dict[str, Callable[[torch.Tensor], object]] = {}
    plain = torchvision.models.alexnet(weights=None)
    plain.load_state_dict(fp32.model.net.state_dict())
    plain = plain.eval().to(fp32.device)
    mean = torch.tensor(fp32.preprocess.mean, device=fp32.device).view(1, 3, 1, 1)
    std = torch.tensor(fp32.preprocess.std, device=fp32.device).view(1, 3, 1, 1)

    def torchvision_forward(batch: torch.Tensor) -> object:
        with torch.inference_mode():
            return plain(((batch.to(fp32.device).float() / 255) - mean) / std)

    variants["torchvision"] = torchvision_forward
    variants["fp32"] = fp32.forward
    if fp32.device.type == "cpu":
        aten = Featurizer(FEATURE_LAYERS, precision="fp32", linear_kernel="aten", **common)
        variants["fp32-aten"] = aten.forward
    if fp32.device.type == "cuda":
        variants["fp16"] = Featurizer(FEATURE_LAYERS, precision="fp16", **common).forward
    variants["bf16"] = Featurizer(FEATURE_LAYERS, precision="bf16", **common).forward

    def autocast_forward(batch: torch.Tensor) -> object:
        with torch.autocast(fp32.device.type, dtype=torch.bfloat16):
            return fp32.forward(batch)

    variants["bf16-autocast"] = autocast_forward
    if fp32.device.type == "cpu":
        variants["int8"] = Featurizer(FEATURE_LAYERS, precision="int8", **common).forward
    return variants


def throughput_table(args: argparse.Namespace, batch_sizes: list[int]) -> None:
    variants = make_variants(args)
    generator = torch.Generator().manual_seed(0)
    print(f"\nimages/s ({args.stat} batch), layers {','.join(FEATURE_LAYERS)}, random uint8 input")
    header = f"{'variant':<15}" + "".join(
        f"{f'b={b} img/s':>14}{'vs fp32':>9}" for b in batch_sizes
    )
    print(header)
    print("-" * len(header))
    rates: dict[str, dict[int, float]] = {name: {} for name in variants}
    for batch_size in batch_sizes:
        batch = torch.randint(
            0, 256, (batch_size, 3, 224, 224), dtype=torch.uint8, generator=generator
        )
        runs = {name: functools.partial(forward, batch) for name, forward in variants.items()}
        for name, rate in interleaved_rates(runs, batch_size, args.seconds, args.stat).items():
            rates[name][batch_size] = rate
    for name in variants:
        cells = "".join(
            f"{rates[name][b]:>14.1f}{rates[name][b] / rates['fp32'][b]:>8.2f}x"
            for b in batch_sizes
        )
        print(f"{name:<15}{cells}")
    if "fp32-aten" in rates:
        gains = "  ".join(
            f"b={b} {rates['fp32'][b] / rates['fp32-aten'][b]:.2f}x" for b in batch_sizes
        )
        print(f"oneDNN fc layers, fp32 / fp32-aten (same run): {gains}")


def fc_table(args: argparse.Namespace, batch_sizes: list[int]) -> None:
    """fc6-fc8 alone (AlexNet shapes), F.linear vs the packed oneDNN inner product, interleaved."""
    from torch import nn

    from featurizer.linear_kernels import pack_linears

    torch.manual_seed(0)
    aten = nn.Sequential(
        nn.Linear(9216, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 1000)
    ).eval()
    onednn = copy.deepcopy(aten)  # same weights, then packed
    pack_linears(onednn, "onednn")
    print("\nAlexNet classifier alone (fc6-fc8), ms per batch, median of interleaved rounds")
    print(f"{'batch':>6}{'F.linear':>11}{'oneDNN':>9}{'speed-up':>10}{'GFLOP/s':>9}")
    for batch_size in batch_sizes:
        x = torch.randn(batch_size, 9216)
        with torch.inference_mode():
            runs = {"aten": functools.partial(aten, x), "onednn": functools.partial(onednn, x)}
            rates = interleaved_rates(runs, batch_size, args.seconds / 4, args.stat)
        ms = {name: 1000 * batch_size / rate for name, rate in rates.items()}
        gflop = 2 * batch_size * (9216 * 4096 + 4096 * 4096 + 4096 * 1000) / 1e9
        print(
            f"{batch_size:>6}{ms['aten']:>11.2f}{ms['onednn']:>9.2f}"
            f"{ms['aten'] / ms['onednn']:>9.2f}x{gflop / ms['onednn'] * 1000:>9.0f}"
        )


def fidelity_table(args: argparse.Namespace) -> None:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    common = {"weights": args.weights, "device": args.device, "num_threads": args.threads}
    reference = Featurizer(LAYER_NAMES, precision="fp32", crop="tencrop", **common)
    photos = [Image.fromarray(array) for array in load_sample_images().images]
    views = torch.stack([reference.prepare(p) for p in photos]).reshape(-1, 3, 224, 224)
    expected = reference.forward(views)
    others = ["bf16", "int8"] if reference.device.type == "cpu" else ["fp16", "bf16"]
    results: dict[str, dict[str, float]] = {}
    for precision in others:
        features = Featurizer(LAYER_NAMES, precision=precision, **common).forward(views)
        results[precision] = {
            layer: worst_cosine(expected[layer], features[layer]) for layer in LAYER_NAMES
        }
    with torch.autocast(reference.device.type, dtype=torch.bfloat16):
        autocast = Featurizer(LAYER_NAMES, precision="fp32", **common).forward(views)
    results["bf16-autocast"] = {
        layer: worst_cosine(expected[layer], autocast[layer]) for layer in LAYER_NAMES
    }
    print(f"\nworst-view cosine similarity vs fp32 ({args.weights} weights, 20 real views)")
    print(f"{'layer':<12}" + "".join(f"{name:>15}" for name in results))
    for layer in LAYER_NAMES:
        print(f"{layer:<12}" + "".join(f"{results[name][layer]:>15.6f}" for name in results))


def worst_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    cos = (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))
    return float(cos.min())


def main() -> None:
    args = parse_args()
    warnings.filterwarnings("ignore", message="USING RANDOM WEIGHTS")
    logging.getLogger("featurizer.weights").setLevel(logging.ERROR)  # random-weights notice
    if args.quick:
        args.seconds = min(args.seconds, 1.0)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.quick:
        batch_sizes = [min(b, 16) for b in batch_sizes]
    threads = args.threads or default_num_threads()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{threads} threads, native bf16: {cpu_has_fast_bf16()}, load avg {load:.1f}"
    )
    with contextlib.suppress(KeyboardInterrupt):
        throughput_table(args, batch_sizes)
        if args.fc_table:
            fc_table(args, batch_sizes)
        if not args.no_fidelity:
            fidelity_table(args)


if __name__ == "__main__":
    main()
