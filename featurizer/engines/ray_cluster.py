"""Ray itself for the Ray engine: importing it, connecting, and sizing the work to the cluster.

Ray is imported only inside these functions (``import_ray``), so the default install (no ray
extra) imports this module without it.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar

from featurizer.errors import DecafError

INSTALL_HINT = "pip install 'decaf[ray]'"
# Heap reserved per model actor (Ray `memory` resource). Measured peak RSS of a CPU actor holding
# the fp32 AlexNet and running batches of 32 is 1.2-1.35 GiB (benchmarks/extract_ray.py).
ACTOR_MEMORY_BYTES = int(1.5 * 2**30)
# Up to this many torch threads per CPU actor: intra-op scaling of AlexNet flattens beyond it.
MAX_THREADS_PER_CPU_ACTOR = 8
# Threads Ray Data starts for one iteration (names as of Ray 2.60). Nobody joins them, and the
# executor's own shutdown waits only 2 s for its scheduling loop; on a loaded machine that loop
# may still run when the driver shuts Ray down. A thread that touches Ray after `ray.shutdown()`
# makes Ray end the whole process (exit 1, no traceback): a cancelled job would take down the
# service. The parked block prefetcher ("Prefetcher") touches Ray only when handed blocks.
PIPELINE_THREAD_PREFIXES = (
    "StreamingExecutor-",
    "iter_threaded",
    "map_tp_",
    "ray-data-metadata-prefetch",
)
PIPELINE_DRAIN_S = 60.0

log = logging.getLogger(__name__)


class EngineUnavailableError(DecafError, RuntimeError):
    """The requested extraction engine cannot run here (e.g. Ray is not installed)."""

    # The server lacks an optional component: "not implemented here", with the install hint.
    http_status: ClassVar[int] = 501


def import_ray() -> ModuleType:
    """``import ray`` (and ``ray.data``), or a clear error telling how to install it."""
    try:
        import ray
        import ray.data  # the Data library is a separate extra of ray
    except ImportError as exc:
        raise EngineUnavailableError(
            f"--engine ray needs Ray Data, which is not installed ({exc}). Install the optional "
            f"extra with: {INSTALL_HINT}   (or use the default --engine local)"
        ) from exc
    return ray


@dataclass(frozen=True)
class RayPlan:
    """How the work is laid out on the cluster (also recorded in the manifest)."""

    address: str | None
    actors: int  # model actors (the `concurrency` of the featurizer stage)
    num_gpus_per_actor: float
    threads_per_actor: int | None  # torch threads of a CPU actor; None on GPU (torch default)
    decode_tasks: int | None  # cap on concurrent decode tasks; None = as many as CPUs allow
    device: str  # what the actors pass to Featurizer(device=...)

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.address or "local",
            "actors": self.actors,
            "num_gpus_per_actor": self.num_gpus_per_actor,
            "threads_per_actor": self.threads_per_actor,
            "decode_tasks": self.decode_tasks,
        }


_session_lock = threading.Lock()
_session_users = 0  # extractions running on a Ray that this module started
_session_owned = False


@contextlib.contextmanager
def ray_session(ray: ModuleType, address: str | None) -> Iterator[None]:
    """Ray connected for the duration of one extraction.

    A Ray this module started is shut down when the last extraction using it ends, so
    concurrent jobs of one process (the service) never pull it from under each other.
    """
    global _session_users, _session_owned
    with _session_lock:
        if _session_users == 0:
            _session_owned = connect(ray, address)
        _session_users += 1
    try:
        yield
    finally:
        with _session_lock:
            _session_users -= 1
            if _session_users == 0 and _session_owned:
                shutdown_ray(ray)
                _session_owned = False


def pipeline_threads() -> list[threading.Thread]:
    """Ray Data's iteration threads still alive in this process."""
    return [
        thread
        for thread in threading.enumerate()
        if thread.name.startswith(PIPELINE_THREAD_PREFIXES) and thread.is_alive()
    ]


def shutdown_ray(ray: ModuleType, *, drain_s: float = PIPELINE_DRAIN_S) -> None:
    """``ray.shutdown()`` once Ray Data's iteration threads have ended (at most ``drain_s``).

    Call it only when no extraction is running on this Ray: it waits for every pipeline.
    """
    deadline = time.monotonic() + drain_s
    for thread in pipeline_threads():
        thread.join(max(0.0, deadline - time.monotonic()))
    left = pipeline_threads()
    if left:
        log.warning(
            "Ray Data threads still running after %.0f s, shutting Ray down anyway: %s",
            drain_s,
            ", ".join(thread.name for thread in left),
        )
    gc.collect()  # Ray objects caught in reference cycles are freed while Ray is still up
    ray.shutdown()


def connect(ray: ModuleType, address: str | None) -> bool:
    """Connect to ``address`` or start a local Ray; True when this call started it.

    A process already connected (a notebook, the test suite) is reused as it is.
    """
    from featurizer.runtime import default_num_threads, worker_environment

    if ray.is_initialized():
        return False
    # Workers are entry points too: they start with the driver's process tuning (set before
    # their Python, hence before torch, starts).
    options = {
        "logging_level": logging.WARNING,
        "configure_logging": True,
        "runtime_env": {"env_vars": worker_environment()},
    }
    try:
        if address:
            ray.init(address=address, **options)
        else:
            # The cores this process may use (cgroup/taskset aware), not the host's count.
            ray.init(num_cpus=default_num_threads(), include_dashboard=False, **options)
    except ConnectionError as exc:
        raise EngineUnavailableError(
            f"cannot connect to the Ray cluster at {address}: {exc}"
        ) from exc
    return True


def plan_cluster(
    ray: ModuleType,
    address: str | None,
    device: str,
    num_gpus_per_worker: float | None,
    concurrency: int | None,
    workers: int | None,
) -> RayPlan:
    """Choose GPU/CPU actors and how many, from the options and the cluster's resources."""
    resources = ray.cluster_resources()
    cluster_gpus = float(resources.get("GPU", 0))
    cluster_cpus = int(resources.get("CPU", 1))
    nodes = max(1, sum(1 for node in ray.nodes() if node.get("Alive")))
    wants_gpu = (device == "auto" and cluster_gpus > 0) or device.startswith("cuda")
    gpus = num_gpus_per_worker if num_gpus_per_worker is not None else (1.0 if wants_gpu else 0.0)
    if gpus > 0:
        if cluster_gpus < gpus:
            raise EngineUnavailableError(
                f"{gpus:g} GPU(s) per worker requested but the Ray cluster has {cluster_gpus:g}; "
                "use --num-gpus-per-worker 0 for CPU workers"
            )
        actors = concurrency or max(1, int(cluster_gpus // gpus))
        # Ray sets CUDA_VISIBLE_DEVICES per actor, so "cuda" is the actor's own GPU.
        actor_device = "cuda" if device == "auto" else device
        return RayPlan(address, actors, gpus, None, workers or None, actor_device)
    if device.startswith("cuda"):
        raise EngineUnavailableError(
            "--device cuda with --num-gpus-per-worker 0: Ray would hide the GPUs from the actors"
        )
    actors = concurrency or nodes
    # Ray pins a CPU actor's OMP/torch threads to its 1 reserved CPU; give the forward pass the
    # node's cores instead (decode tasks overlap it, as the local engine's workers do).
    per_node = max(1, cluster_cpus // nodes)
    threads = max(1, min(MAX_THREADS_PER_CPU_ACTOR, per_node // math.ceil(actors / nodes)))
    return RayPlan(address, actors, 0.0, threads, workers or None, "cpu")


def actor_resources(plan: RayPlan) -> dict[str, Any]:
    # A memory reservation is honest scheduling (the model is ~1 GiB resident) and also keeps
    # Ray from fusing the decode tasks into the model actors, so decoding runs in parallel.
    return {
        "num_cpus": 1,
        "num_gpus": plan.num_gpus_per_actor or None,
        "memory": ACTOR_MEMORY_BYTES,
    }
