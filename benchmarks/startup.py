"""Benchmark: how long a whole `decaf` process takes to start, against the import it now avoids.

`decaf --help`, `decaf extract --help` and `decaf backbones` must not import torch, pyarrow or
scikit-learn (target: <= 0.3 s per whole process). The baseline, measured in the same run, is
what the CLI cost when its packages imported eagerly: a Python process importing torch,
torchvision, pyarrow and scikit-learn. Each command runs ``--repeat`` times; the table shows the
median and the best wall time per process.

A second table (issue 13) times a whole ``decaf extract`` process from start to exit on one batch
of 16 photo-like 500x375 JPEGs with cached weights (a saved AlexNet state_dict given by path:
the same hash check and load as the torchvision cache), decoding in the main process (workers 0,
so no worker start-up is counted) - i.e. process start to first batch plus one small Parquet
write. Baseline in the same run: ``python -c "import torch, torchvision"``, the floor every
extraction pays. Wall and CPU seconds (children's user+sys) are shown: on a loaded machine CPU
time is the steadier number. Target: <= 1.5 s wall on a quiet machine.

    python benchmarks/startup.py              # 7 runs each
    python benchmarks/startup.py --repeat 3
    python benchmarks/startup.py --extract-only --repeat 3
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS: dict[str, list[str]] = {
    "decaf --help": ["-m", "service.cli", "--help"],
    "decaf extract --help": ["-m", "service.cli", "extract", "--help"],
    "decaf probe eval --help": ["-m", "service.cli", "probe", "eval", "--help"],
    "decaf backbones": ["-m", "service.cli", "backbones"],
}
BASELINE = ("import torch, torchvision, pyarrow, sklearn (the old eager imports)", [
    "-c", "import torch, torchvision, pyarrow.parquet, sklearn.linear_model",
])  # fmt: skip
EMPTY = ("python -c pass (interpreter start)", ["-c", "pass"])
TARGET_S = 0.3
EXTRACT_TARGET_S = 1.5
REPO = Path(__file__).resolve().parents[1]


def wall_times(args: list[str], repeat: int) -> list[float]:
    return [wall_and_cpu(args)[0] for _ in range(repeat)]


def wall_and_cpu(args: list[str]) -> tuple[float, float]:
    """Wall seconds of one child process and its CPU seconds (user + sys, its own children too)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    subprocess.run([sys.executable, *args], check=True, capture_output=True, env=env, cwd=REPO)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def extract_table(repeat: int) -> None:
    """Whole `decaf extract` processes on one batch vs importing torch + torchvision, alternated."""
    import torch
    import torchvision

    from benchmarks.extract_throughput import build_folder

    with tempfile.TemporaryDirectory(prefix="decaf-startup-") as tmp:
        work = Path(tmp)
        weights = work / "alexnet.pth"
        torch.save(torchvision.models.alexnet(weights=None).state_dict(), weights)
        images = build_folder(work / "images", 16, (500, 375), seed=0)
        extract = ["-m", "service.cli", "extract", str(images), "--out", str(work / "store"),
                   "--weights", str(weights), "--batch-size", "16", "--workers", "0",
                   "--device", "cpu", "--overwrite", "--no-progress"]  # fmt: skip
        rows = {
            "decaf extract, 1 batch of 16": extract,
            "import torch, torchvision": ["-c", "import torch, torchvision"],
        }
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in rows}
        for _ in range(repeat):
            for name, command in rows.items():  # alternated: load bursts hit both
                samples[name].append(wall_and_cpu(command))
    load = os.getloadavg()[0]
    print(f"\nwhole process, medians of {repeat} alternated runs (load average {load:.1f}):")
    print(f"{'process':<32} {'wall s':>7} {'cpu s':>7} {'target':>8}")
    for name, values in samples.items():
        wall = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        target = f"<= {EXTRACT_TARGET_S}" if name.startswith("decaf") else ""
        print(f"{name:<32} {wall:>7.2f} {cpu:>7.2f} {target:>8}")
    walls = {n: statistics.median(v[0] for v in vals) for n, vals in samples.items()}
    extract_s, floor_s = walls.values()
    print(f"decaf extract beyond the torch+torchvision import: {extract_s - floor_s:.2f} s wall")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs per command (default 7)")
    parser.add_argument("--extract-only", action="store_true", help="only the extract table")
    args = parser.parse_args(argv)
    if args.extract_only:
        extract_table(args.repeat)
        return 0
    rows = [(name, wall_times(command, args.repeat)) for name, command in COMMANDS.items()]
    baseline = statistics.median(wall_times(BASELINE[1], args.repeat))
    empty = statistics.median(wall_times(EMPTY[1], args.repeat))
    print(f"{'process':<32} {'median s':>9} {'best s':>7} {'vs baseline':>12} {'target':>7}")
    for name, times in rows:
        median = statistics.median(times)
        verdict = "ok" if median <= TARGET_S else "MISSED"
        print(
            f"{name:<32} {median:>9.3f} {min(times):>7.3f} {baseline / median:>11.1f}x {verdict:>7}"
        )
    print(f"baseline: {BASELINE[0]}: {baseline:.3f} s; {EMPTY[0]}: {empty:.3f} s")
    extract_table(args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
