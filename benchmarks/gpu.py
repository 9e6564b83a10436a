"""GPU benchmark in one run (< 8 min on one GPU): model-only, end to end, service, gpu tests.

Prints, on ``--device`` (default cuda):
  1. model-only images/s by precision x batch size: uint8 batches from pinned host memory,
     normalised on the device, channels_last, features copied back (what extraction does);
  2. end to end over photo-like 500x375 JPEGs: ``extract_dataset`` with CPU decode workers
     (PIL/libjpeg-turbo, pinned batches) vs decoding on the device (batched nvJPEG through
     ``featurizer.decode_tensor.prepare_batch_on_device``; file reads one batch ahead in threads);
  3. the HTTP service at 64 concurrent clients (benchmarks/service_load.py, a subprocess);
  4. the ``gpu``-marked tests (pytest -m gpu).

On the GPU machine: ``bash benchmarks/gpu_run.sh`` (installs the carried wheels first, see the
Makefile's gpu-wheels). Rehearsal on a CPU: ``python benchmarks/gpu.py --device cpu --quick``.
Written for torch >= 2.4 / torchvision >= 0.19 (the GPU machine has older ones than ours).
"""

from __future__ import annotations

from featurizer.runtime import configure_process

configure_process()  # this script is an entry point: set before torch starts its OpenMP runtime

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch

LINES: list[str] = []


def say(line: str = "") -> None:
    print(line, flush=True)
    LINES.append(line)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="small sizes (a rehearsal)")
    parser.add_argument("--out", default=None, help="also write the report to this file")
    parser.add_argument("--images", type=int, default=None, help="JPEGs end to end (2048)")
    parser.add_argument("--seconds", type=float, default=None, help="per model-only cell (1.5)")
    parser.add_argument("--skip-service", action="store_true")
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args(argv)
    args.images = args.images or (96 if args.quick else 2048)
    args.seconds = args.seconds or (0.3 if args.quick else 1.5)
    return args


# --------------------------------------------------------------------------- 1. model only


def precisions_for(device: torch.device) -> list[str]:
    return ["fp32", "fp16", "bf16"] if device.type == "cuda" else ["fp32", "bf16"]


def model_only(args: argparse.Namespace, device: torch.device) -> None:
    from featurizer.extractor import Featurizer

    batches = [1, 8] if args.quick else [1, 8, 32, 64, 256]
    say(f"\n1. model only, AlexNet decaf6+decaf7, images/s ({device}, pinned uint8 host batches)")
    say(f"| {'precision':<9} |" + "".join(f" {f'b={b}':>8} |" for b in batches))
    say(f"|{'-' * 11}|" + "".join(f"{'-' * 10}|" for _ in batches))
    for precision in precisions_for(device):
        fz = Featurizer(weights="random", precision=precision, device=str(device))
        cells = []
        for batch_size in batches:
            batch = torch.randint(0, 256, (batch_size, 3, 224, 224), dtype=torch.uint8)
            if device.type == "cuda":
                batch = batch.pin_memory()
            cells.append(images_per_second(fz, batch, args.seconds))
        say(f"| {precision:<9} |" + "".join(f" {rate:>8.0f} |" for rate in cells))
        del fz


def images_per_second(fz, batch: torch.Tensor, seconds: float) -> float:
    for _ in range(3):
        fz.forward(batch)  # warm-up: cuDNN algorithm choice, oneDNN primitives
    times = []
    deadline = time.perf_counter() + seconds
    while len(times) < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        fz.forward(batch)  # returns numpy: includes the device sync and the copy back
        times.append(time.perf_counter() - start)
    return batch.shape[0] / statistics.median(times)


# --------------------------------------------------------------------------- 2. end to end


def end_to_end(args: argparse.Namespace, device: torch.device, work: Path) -> None:
    from benchmarks.extract_throughput import build_folder
    from featurizer.extraction import extract_dataset
    from featurizer.extractor import Featurizer

    folder = build_folder(work / "images", args.images, (500, 375), seed=0)
    files = sorted(str(p) for p in folder.rglob("*.jpg"))
    batch_size = 64 if args.quick else 256
    precision = "fp16" if device.type == "cuda" else "fp32"
    fz = Featurizer(weights="random", precision=precision, device=str(device))
    say(f"\n2. end to end, {len(files)} JPEGs 500x375, {precision}, batch {batch_size}")
    say(f"| {'pipeline':<44} | {'images/s':>9} |")
    say(f"|{'-' * 46}|{'-' * 11}|")
    extract_dataset(folder, work / "warm", featurizer=fz, batch_size=batch_size, overwrite=True)
    start = time.perf_counter()
    extract_dataset(folder, work / "store", featurizer=fz, batch_size=batch_size, overwrite=True)
    cpu_rate = len(files) / (time.perf_counter() - start)
    say(f"| {'extract_dataset, CPU decode workers':<44} | {cpu_rate:>9.1f} |")
    device_rate = device_decode_rate(fz, files, batch_size, device)
    say(f"| {'device decode (nvJPEG batch) + forward':<44} | {device_rate:>9.1f} |")
    model_rate = images_per_second(
        fz, torch.randint(0, 256, (batch_size, 3, 224, 224), dtype=torch.uint8), args.seconds
    )
    say(f"| {'model only (same batch)':<44} | {model_rate:>9.1f} |")
    say(f"  device decode / CPU decode: {device_rate / cpu_rate:.2f}x; "
        f"device decode / model only: {device_rate / model_rate:.2f}")  # fmt: skip


def device_decode_rate(fz, files: list[str], batch_size: int, device: torch.device) -> float:
    """Reads of batch i+1 (threads) overlap decode + forward of batch i on the device."""
    from featurizer.decode_tensor import prepare_batch_on_device

    chunks = [files[i : i + batch_size] for i in range(0, len(files), batch_size)]

    def read(paths: list[str]) -> list[bytes]:
        return [Path(p).read_bytes() for p in paths]

    def run_all() -> int:
        done = 0
        with ThreadPoolExecutor(max_workers=4) as pool:
            pending = pool.submit(read, chunks[0])
            for index in range(len(chunks)):
                data = pending.result()
                if index + 1 < len(chunks):
                    pending = pool.submit(read, chunks[index + 1])
                batch, kept, _errors = prepare_batch_on_device(
                    data, fz.preprocess, fz.crop, device=device
                )
                fz.forward(batch)
                done += len(kept)
        return done

    run_all()  # warm-up: nvJPEG handles, cuDNN algorithms
    start = time.perf_counter()
    done = run_all()
    return done / (time.perf_counter() - start)


# --------------------------------------------------------------------------- 3. service


def service(args: argparse.Namespace, device: torch.device) -> None:
    clients = "1,8" if args.quick else "1,64"
    command = [sys.executable, str(REPO / "benchmarks" / "service_load.py"), "--clients", clients,
               "--skip-naive", "--max-batch-size", "64"]  # fmt: skip
    if args.quick:
        command.append("--quick")
    else:
        command += ["--requests-per-client", "16", "--offline-images", "512"]
    say(f"\n3. service ({device}), clients {clients}: {' '.join(command[1:])}")
    env = {**os.environ, "DECAF_DEVICE": str(device)}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    except subprocess.TimeoutExpired:
        say("  service_load timed out after 240 s")
        return
    lines = done.stdout.strip().splitlines()[-24:]  # the report; progress and warnings: stderr
    if done.returncode != 0:
        lines += done.stderr.strip().splitlines()[-10:]
    for line in lines:
        say(f"  {line}")


# --------------------------------------------------------------------------- 4. gpu tests


def gpu_tests() -> None:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu",
               "tests/featurizer", "-o", "addopts="]  # fmt: skip
    say(f"\n4. gpu-marked tests: {' '.join(command[2:])}")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=REPO)
    except subprocess.TimeoutExpired:
        say("  pytest timed out after 180 s")
        return
    for line in (done.stdout + done.stderr).strip().splitlines()[-8:]:
        say(f"  {line}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")  # random-weights and torchvision.io deprecation notices
    device = torch.device(args.device)
    started = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    say(f"decaf GPU benchmark: torch {torch.__version__}, python {platform.python_version()}, "
        f"device {device} ({name}), cpu cores {os.cpu_count()}")  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="decaf-gpu-"))
    try:
        model_only(args, device)
        end_to_end(args, device, work)
        if not args.skip_service:
            service(args, device)
        if not args.skip_tests:
            gpu_tests()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        say(f"\ntotal {time.perf_counter() - started:.0f} s")
        if args.out:
            Path(args.out).write_text("\n".join(LINES) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
