"""Benchmark: how long a whole `decaf` process takes to start, against the import it now avoids.

`decaf --help`, `decaf extract --help` and `decaf backbones` must not import torch, pyarrow or
scikit-learn (target: <= 0.3 s per whole process). The baseline, measured in the same run, is
what the CLI cost when its packages imported eagerly: a Python process importing torch,
torchvision, pyarrow and scikit-learn. Each command runs ``--repeat`` times; the table shows the
median and the best wall time per process.

    python benchmarks/startup.py              # 7 runs each
    python benchmarks/startup.py --repeat 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

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


def wall_times(args: list[str], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run([sys.executable, *args], check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs per command (default 7)")
    args = parser.parse_args(argv)
    rows = [(name, wall_times(command, args.repeat)) for name, command in COMMANDS.items()]
    baseline = statistics.median(wall_times(BASELINE[1], args.repeat))
    empty = statistics.median(wall_times(EMPTY[1], args.repeat))
    print(f"{'process':<32} {'median s':>9} {'best s':>7} {'vs baseline':>12} {'target':>7}")
    for name, times in rows:
        median = statistics.median(times)
        verdict = "ok" if median <= TARGET_S else "MISSED"
        print(
            f"{name:<32} {median:>9.3f} {min(times):>7.3f} {baseline / median:>11.1f}x "
            f"{verdict:>7}"
        )
    print(f"baseline: {BASELINE[0]}: {baseline:.3f} s; {EMPTY[0]}: {empty:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
