"""Section (e) of benchmarks/extract_throughput.py: issue 13's before/after in one run.

* decode CPU ms per image, one thread, for the PIL decoder, the tensor decoder and ``auto``
  (process CPU time, so other jobs on a loaded machine inflate it less than wall time);
* model core-seconds per image (process CPU time of the model-alone run, all torch threads);
* the CPU-work ceiling: ``cores / (model core-s + decode core-s)`` images/s, what the cores could
  do if decoding and the model shared them perfectly;
* ``decaf extract`` fp32 end to end now (``decoder=auto``, oneDNN fc layers) vs before issue 13
  (``decoder=pil``, ``F.linear``), alternated A B A B, medians, with each one's fraction of its
  model-only rate and of its ceiling.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

VARIANTS = {
    "before #13 (pil, F.linear)": {"decoder": "pil", "linear_kernel": "aten"},
    "now (auto, oneDNN fc)": {"decoder": "auto", "linear_kernel": "auto"},
}
DECODERS = ("pil", "tensor", "auto", "decode_jpeg alone")


def decode_ms(files: list[Path], spec, rounds: int) -> dict[str, float]:
    """Median CPU ms per image of each decoder, decoders interleaved within every round."""
    import torch

    from featurizer.decode_tensor import decode_jpeg_rgb, prepare_image

    def libjpeg_floor(path: Path, spec, decoder: str) -> object:
        return decode_jpeg_rgb(path.read_bytes(), str(path))

    run = {name: prepare_image for name in DECODERS[:3]} | {DECODERS[3]: libjpeg_floor}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what one decode worker does
    samples: dict[str, list[float]] = {name: [] for name in DECODERS}
    try:
        for name in DECODERS:
            run[name](files[0], spec, decoder=name)  # warm-up (imports, allocator)
        for _ in range(rounds):
            for path in files:
                for name in DECODERS:
                    start = time.process_time()
                    run[name](path, spec, decoder=name)
                    samples[name].append(time.process_time() - start)
    finally:
        torch.set_num_threads(threads)
    return {name: 1000 * statistics.median(values) for name, values in samples.items()}


def model_core_seconds(featurizers: dict, batch_size: int, rounds: int) -> dict[str, float]:
    """Median process CPU seconds per image of each model, alternated batch by batch."""
    import torch

    batch = torch.randint(0, 256, (batch_size, 3, 224, 224), dtype=torch.uint8)
    samples: dict[str, list[float]] = {name: [] for name in featurizers}
    for fz in featurizers.values():
        fz.forward(batch)
    for _ in range(rounds):
        for name, fz in featurizers.items():
            start = time.process_time()
            fz.forward(batch)
            samples[name].append((time.process_time() - start) / batch_size)
    return {name: statistics.median(values) for name, values in samples.items()}


def model_rates(featurizers: dict, batch_size: int, rounds: int) -> dict[str, float]:
    """Median wall images/s of each model, alternated batch by batch."""
    import torch

    batch = torch.randint(0, 256, (batch_size, 3, 224, 224), dtype=torch.uint8)
    samples: dict[str, list[float]] = {name: [] for name in featurizers}
    for _ in range(rounds):
        for name, fz in featurizers.items():
            start = time.perf_counter()
            fz.forward(batch)
            samples[name].append(batch_size / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in samples.items()}


def compare_section(folders: dict[str, Path], args: argparse.Namespace) -> None:
    from benchmarks.extract_throughput import measure_extract
    from featurizer.engines.local import default_workers
    from featurizer.extractor import Featurizer
    from featurizer.runtime import default_num_threads

    cores = default_num_threads()
    rounds = 1 if args.quick else 3
    featurizers = {
        name: Featurizer(weights=args.weights, precision="fp32", device="cpu", **options)
        for name, options in VARIANTS.items()
    }
    spec = next(iter(featurizers.values())).preprocess
    files = {kind: sorted(folder.rglob("*.jpg"))[:8] for kind, folder in folders.items()}
    print("(e) decode table ...", flush=True)
    decode = {kind: decode_ms(paths, spec, rounds * 2) for kind, paths in files.items()}
    print("(e) model core-seconds and rates ...", flush=True)
    core_s = model_core_seconds(featurizers, args.batch_size, rounds * 3)
    model_ips = model_rates(featurizers, args.batch_size, rounds * 3)
    workers = default_workers("cpu")
    e2e: dict[str, list[float]] = {name: [] for name in featurizers}
    for _ in range(max(2, rounds)):
        for name, fz in featurizers.items():  # A B A B: load bursts hit both alike
            print(f"(e) extract {name} ...", flush=True)
            seconds = measure_extract(fz, folders["small"], folders["small"].parent / "e-store",
                                      args.batch_size, workers)  # fmt: skip
            e2e[name].append(args.small / seconds)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n(e) issue 13, same run: {cores} cores, load average {load:.1f} at the end")
    print("decode + preprocess CPU ms per image (one thread, median); the last column is")
    print("torchvision's libjpeg-turbo decode alone, the floor of the tensor path:")
    print(f"| {'images':<8} | {'PIL':>6} | {'tensor':>6} | {'auto':>6} | tensor/PIL | auto/PIL | "
          "decode_jpeg alone |")  # fmt: skip
    print(f"|{'-' * 10}|{'-' * 8}|{'-' * 8}|{'-' * 8}|{'-' * 12}|{'-' * 10}|{'-' * 19}|")
    for kind, ms in decode.items():
        print(f"| {kind:<8} | {ms['pil']:>6.2f} | {ms['tensor']:>6.2f} | {ms['auto']:>6.2f} | "
              f"{ms['tensor'] / ms['pil']:>9.2f}x | {ms['auto'] / ms['pil']:>7.2f}x | "
              f"{ms['decode_jpeg alone']:>17.2f} |")  # fmt: skip
    print(f"\nfp32, small images, batch {args.batch_size}, {workers} decode workers, "
          "medians of alternated runs:")  # fmt: skip
    print(f"| {'variant':<28} | {'model img/s':>11} | {'model core-ms':>13} | "
          f"{'decode core-ms':>14} | {'ceiling img/s':>13} | {'e2e img/s':>9} | "
          f"{'e2e/model':>9} | {'e2e/ceiling':>11} |")  # fmt: skip
    print(f"|{'-' * 30}|{'-' * 13}|{'-' * 15}|{'-' * 16}|{'-' * 15}|{'-' * 11}|{'-' * 11}|"
          f"{'-' * 13}|")  # fmt: skip
    rates = {}
    for name, options in VARIANTS.items():
        decode_core_s = decode["small"][options["decoder"]] / 1000
        ceiling = cores / (core_s[name] + decode_core_s)
        rate = statistics.median(e2e[name])
        rates[name] = rate
        print(f"| {name:<28} | {model_ips[name]:>11.1f} | {1000 * core_s[name]:>13.2f} | "
              f"{1000 * decode_core_s:>14.2f} | {ceiling:>13.1f} | {rate:>9.1f} | "
              f"{rate / model_ips[name]:>9.2f} | {rate / ceiling:>11.2f} |")  # fmt: skip
    before, now = rates.values()
    model_before, model_now = model_ips.values()
    print(f"  now / before: end to end {now / before:.2f}x (target >= 1.25), "
          f"model alone {model_now / model_before:.2f}x (target >= 1.12 at batch 64); "
          f"decode small tensor/PIL {decode['small']['tensor'] / decode['small']['pil']:.2f} "
          "(target <= 0.4)")  # fmt: skip
