"""Process-wide tuning, applied by entry points — the CLI, the server, Ray actors, benchmarks.

Nothing here runs at import: a library that changes environment variables or torch's thread
pool when imported surprises the program that imports it (a notebook, a test suite, another
service). Entry points call :func:`configure_process` first thing, before torch is imported.
"""

from __future__ import annotations

import os

OMP_WAIT_POLICY_VAR = "OMP_WAIT_POLICY"


def default_num_threads() -> int:
    """Cores this process may run on (respects taskset/cgroup CPU sets, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def configure_openmp() -> None:
    """Idle OpenMP threads sleep instead of spinning, so decode workers sharing the cores get them.

    Must run before torch loads its OpenMP runtime (it reads the variable once). Measured on
    2 cores (benchmarks/extract_throughput.py, fp32, 512 small JPEGs): end to end 97-101 vs
    84-88 images/s with spinning; the model alone unchanged. An explicit value in the
    environment wins.
    """
    os.environ.setdefault(OMP_WAIT_POLICY_VAR, "PASSIVE")


def worker_environment() -> dict[str, str]:
    """The tuning variables of this process, for worker processes started elsewhere (Ray)."""
    return {name: os.environ[name] for name in (OMP_WAIT_POLICY_VAR,) if name in os.environ}


def configure_process() -> None:
    """What every entry point calls first, before torch is imported.

    Torch's intra-op thread count is not set here: ``Featurizer(num_threads=...)`` sets it when
    a model is built (default: :func:`default_num_threads`), which is also an entry point's act.
    """
    configure_openmp()
