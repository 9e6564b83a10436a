"""Batch extraction on Ray Data: the same feature store, produced by a cluster.

``decaf extract ROOT --out STORE --engine ray`` runs this instead of the single-process pipeline
of :mod:`featurizer.batch`. Ray is an optional extra (``pip install 'decaf[ray]'``) and is only
imported inside the functions here, so the default install stays light.

Pipeline (all of it Ray Data, no home-made scheduler)::

    scan_image_folder (driver, sorted)           -> (index, path) of the pending parts' files
    ray.data.from_arrow (one block per batch)    -> Dataset
    map_batches(decode_batch)     CPU tasks      -> uint8 images + per-row error text
    map_batches(FeaturizerActor)  actor pool     -> float32 features per layer (GPU if asked)
    iter_batches (driver)                        -> rows regrouped per part, sorted by index,
                                                    written with featurizer.store on a few
                                                    threads, manifest via featurizer.batch

The driver writes the parts, so the store lands on the machine that ran the command, and part
``k`` covers exactly the rows the local engine puts there: paths, labels and errors are identical
and features agree to float tolerance (batches are composed differently). Resume, the manifest
and ``errors.jsonl`` go through the same code as the local engine; the manifest also says
``"engine": "ray"``.

On a cluster every worker must read ROOT at the same path (shared file system) and find the
weights (``--weights imagenet`` = the torchvision cache of each node, or a ``.pth`` on shared
storage); the actors check that their weights hash equals the driver's before extracting.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from featurizer import batch as local
from featurizer.batch import ExtractionCancelled, ExtractionResult, ProgressFn, write_part_buffer
from featurizer.dataset import CollatedBatch, DatasetError, ImageRecord, scan_image_folder
from featurizer.errors import DecafError

INSTALL_HINT = "pip install 'decaf[ray]'"
# Heap reserved per model actor (Ray `memory` resource). Measured peak RSS of a CPU actor holding
# the fp32 AlexNet and running batches of 32 is 1.2-1.35 GiB (benchmarks/extract_ray.py).
ACTOR_MEMORY_BYTES = int(1.5 * 2**30)
# Up to this many torch threads per CPU actor: intra-op scaling of AlexNet flattens beyond it.
MAX_THREADS_PER_CPU_ACTOR = 8
# Output batches the driver keeps ready while it writes parts.
PREFETCH_BATCHES = 2
# Threads writing Parquet parts on the driver (see PartWriter).
WRITER_THREADS = max(1, min(8, os.cpu_count() or 1))


class EngineUnavailableError(DecafError, RuntimeError):
    """The requested extraction engine cannot run here (e.g. Ray is not installed)."""


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


def extract_dataset_ray(
    root: str | Path,
    out: str | Path,
    *,
    layers: Sequence[str] = ("decaf6", "decaf7"),
    weights: str = "imagenet",
    backbone: str = "alexnet",
    precision: str = "fp32",
    crop: str = "center",
    device: str = "auto",
    batch_size: int = 64,
    part_size: int = 1024,
    overwrite: bool = False,
    address: str | None = None,
    num_gpus_per_worker: float | None = None,
    concurrency: int | None = None,
    workers: int | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ExtractionResult:
    """Extract features of every file below ``root`` into the store ``out`` with Ray Data.

    Same store, resume rules and errors as :func:`featurizer.batch.extract_dataset`. Ray options:

    - ``address``: an existing cluster (``ray://head:10001`` or ``head:6379``); ``None`` starts
      a local Ray on this machine (unless this process is already connected to one).
    - ``num_gpus_per_worker``: GPUs per model actor; ``None`` = 1 when the cluster has GPUs and
      ``device`` is ``auto``/``cuda``, else 0 (CPU actors).
    - ``concurrency``: number of model actors; ``None`` = one per GPU (GPU actors) or one per
      node (CPU actors, each using the node's cores for the forward pass).
    - ``workers``: cap on concurrent decode tasks (``None``: Ray runs as many as CPUs allow).
    """
    ray = import_ray()
    started = time.perf_counter()
    local._check_positive(batch_size=batch_size, part_size=part_size)
    _check_ray_options(num_gpus_per_worker, concurrency, workers)
    root_path, out_path = local._resolve_paths(root, out)
    records = scan_image_folder(root_path)
    if not records:
        raise DatasetError(f"no files found below {root_path}")

    with ray_session(ray, address):
        plan = plan_cluster(ray, address, device, num_gpus_per_worker, concurrency, workers)
        featurizer_kwargs = {
            "layers": tuple(layers),
            "weights": weights,
            "backbone": backbone,
            "precision": precision,
            "crop": crop,
            "device": plan.device,
        }
        described = describe_on_worker(ray, featurizer_kwargs, plan)
        config = local.store_config(described, root_path, records, part_size)
        job = local._open_store(out_path, config, overwrite, records, part_size)
        if job.pending:
            job.manifest.update(engine="ray", batch_size=batch_size, ray=plan.to_dict())
            _run_pending_parts(
                ray,
                job,
                described,
                featurizer_kwargs,
                plan,
                root_path,
                records,
                batch_size,
                progress,
                should_stop,
            )
        manifest = job.finalize(records) if not job.already_complete else job.manifest
    return ExtractionResult(
        store=out_path,
        num_images=int(manifest["num_images"]),
        num_errors=int(manifest["num_errors"]),
        seconds=time.perf_counter() - started,
        resumed_parts=job.resumed_parts,
        manifest=manifest,
    )


def _check_ray_options(
    num_gpus_per_worker: float | None, concurrency: int | None, workers: int | None
) -> None:
    if num_gpus_per_worker is not None and num_gpus_per_worker < 0:
        raise ValueError(f"num_gpus_per_worker must be >= 0, got {num_gpus_per_worker}")
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")


# --------------------------------------------------------------------------- cluster


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
                ray.shutdown()
                _session_owned = False


def connect(ray: ModuleType, address: str | None) -> bool:
    """Connect to ``address`` or start a local Ray; True when this call started it.

    A process already connected (a notebook, the test suite) is reused as it is.
    """
    from featurizer.precision import default_num_threads

    if ray.is_initialized():
        return False
    quiet = {"logging_level": logging.WARNING, "configure_logging": True}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            # The cores this process may use (cgroup/taskset aware), not the host's count.
            ray.init(num_cpus=default_num_threads(), include_dashboard=False, **quiet)
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


def _actor_resources(plan: RayPlan) -> dict[str, Any]:
    # A memory reservation is honest scheduling (the model is ~1 GiB resident) and also keeps
    # Ray from fusing the decode tasks into the model actors, so decoding runs in parallel.
    return {
        "num_cpus": 1,
        "num_gpus": plan.num_gpus_per_actor or None,
        "memory": ACTOR_MEMORY_BYTES,
    }


@dataclass
class DescribedFeaturizer:
    """What :func:`featurizer.batch.store_config` needs of a Featurizer, without the model.

    The driver never loads the network: a worker with the actors' resources does, so fp16 (GPU
    only) works and a cluster whose workers lack the weights fails before any extraction.
    """

    description: dict[str, Any]
    dims: dict[str, int]
    precision: str
    crop: str
    spec: Any  # BackboneSpec
    max_pixels: int

    def describe(self) -> dict[str, Any]:
        return dict(self.description)


def _describe_remote(featurizer_kwargs: dict[str, Any], threads: int | None) -> dict[str, Any]:
    from featurizer.extractor import Featurizer

    featurizer = Featurizer(**featurizer_kwargs, num_threads=threads)
    return {"description": featurizer.describe(), "dims": featurizer.dims}


def describe_on_worker(
    ray: ModuleType, featurizer_kwargs: dict[str, Any], plan: RayPlan
) -> DescribedFeaturizer:
    from featurizer.images import DEFAULT_MAX_PIXELS
    from featurizer.weights import get_backbone_spec

    remote = ray.remote(**_actor_resources(plan))(_describe_remote)
    try:
        info = ray.get(remote.remote(featurizer_kwargs, 1))
    except ray.exceptions.RayTaskError as exc:
        raise _unwrap_task_error(exc) from exc
    return DescribedFeaturizer(
        description=info["description"],
        dims={name: int(dim) for name, dim in info["dims"].items()},
        precision=featurizer_kwargs["precision"],
        crop=featurizer_kwargs["crop"],
        spec=get_backbone_spec(featurizer_kwargs["backbone"]),
        max_pixels=DEFAULT_MAX_PIXELS,
    )


def _unwrap_task_error(exc: Exception) -> Exception:
    """A DecafError raised on a worker (missing weights, bad layer) keeps its type and text."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, DecafError | ValueError):
        return cause
    return exc


# --------------------------------------------------------------------------- Ray Data stages


def decode_batch(
    batch: dict[str, np.ndarray],
    *,
    root: str,
    load: Callable[[str], Any],
    image_shape: tuple[int, ...],
) -> dict[str, np.ndarray]:
    """Decode + preprocess the files of one batch (runs in a CPU task).

    Unreadable files become a non-empty ``error`` (same text as the local engine) and an
    all-zero image that the actor skips: a bad file is data, never a failed task.
    """
    from featurizer.dataset import ImageFileDataset

    paths = [str(p) for p in batch["path"]]
    files = ImageFileDataset(root, paths, load)
    images = np.zeros((len(paths), *image_shape), dtype=np.uint8)
    errors = np.full(len(paths), "", dtype=object)
    for row in range(len(paths)):
        _, item = files[row]
        if isinstance(item, str):
            errors[row] = item
        else:
            images[row] = item.numpy()
    return {"index": np.asarray(batch["index"], dtype=np.int64), "image": images, "error": errors}


class FeaturizerActor:
    """A Ray Data actor: loads the backbone once, then turns image batches into features."""

    def __init__(
        self, featurizer_kwargs: dict[str, Any], threads: int | None, expected: dict[str, Any]
    ) -> None:
        from featurizer.extractor import Featurizer

        self.featurizer = Featurizer(**featurizer_kwargs, num_threads=threads)
        got = self.featurizer.describe()
        for key in ("weights_id", "weights_sha256", "layers", "preprocessing"):
            if got.get(key) != expected.get(key):
                raise EngineUnavailableError(
                    f"a Ray worker loaded a different model ({key}: {got.get(key)!r}, driver "
                    f"expected {expected.get(key)!r}); give every node the same --weights file"
                )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        ok = np.asarray([not e for e in batch["error"]], dtype=bool)
        out: dict[str, np.ndarray] = {"index": batch["index"], "error": batch["error"]}
        dims = self.featurizer.dims
        for name, dim in dims.items():
            out[name] = np.zeros((len(ok), dim), dtype=np.float32)
        if ok.any():
            # Boolean indexing copies: Ray's read-only object-store view becomes a writable array.
            images = torch.from_numpy(batch["image"][ok])
            for name, features in self.featurizer.forward(images).items():
                out[name][ok] = features
        return out


def image_shape_for(crop_size: int, crop: str) -> tuple[int, ...]:
    from featurizer.extractor import TENCROP_VIEWS

    single = (3, crop_size, crop_size)
    return (TENCROP_VIEWS, *single) if crop == "tencrop" else single


def input_blocks(
    indices: Sequence[int], records: Sequence[ImageRecord], rows_per_block: int
) -> list[Any]:
    """(index, path) of the files to extract as Arrow tables of one batch each.

    One block per batch lets Ray spread decode tasks over every CPU from the start, and Arrow
    columns cost far less driver memory than a dict per file on a million-image folder.
    """
    import pyarrow as pa

    return [
        pa.table(
            {
                "index": pa.array(indices[start : start + rows_per_block], pa.int64()),
                "path": pa.array(
                    [records[i].path for i in indices[start : start + rows_per_block]], pa.string()
                ),
            }
        )
        for start in range(0, len(indices), rows_per_block)
    ]


def build_dataset(
    ray: ModuleType,
    blocks: list[Any],
    described: DescribedFeaturizer,
    featurizer_kwargs: dict[str, Any],
    plan: RayPlan,
    root: Path,
    batch_size: int,
) -> Any:
    """The lazy Ray Data pipeline: rows -> decode tasks -> model actors."""
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    decode_kwargs = {
        "root": str(root),
        "load": local._loader_for(described),
        "image_shape": image_shape_for(described.spec.preprocess.crop, described.crop),
    }
    decode_compute = TaskPoolStrategy(size=plan.decode_tasks) if plan.decode_tasks else None
    return (
        ray.data.from_arrow(blocks)
        .map_batches(
            decode_batch,
            batch_size=batch_size,
            fn_kwargs=decode_kwargs,
            num_cpus=1,
            compute=decode_compute,
        )
        .map_batches(
            FeaturizerActor,
            batch_size=batch_size,
            fn_constructor_kwargs={
                "featurizer_kwargs": featurizer_kwargs,
                "threads": plan.threads_per_actor,
                "expected": described.describe(),
            },
            compute=ActorPoolStrategy(size=plan.actors),
            **_actor_resources(plan),
        )
    )


@contextlib.contextmanager
def quiet_ray_data(ray: ModuleType) -> Iterator[None]:
    """Our tqdm (via ``progress``) is the progress display: silence Ray Data's own bars and
    banners for this run, then restore the caller's settings (a notebook keeps its own)."""
    context = ray.data.DataContext.get_current()
    saved = (context.enable_progress_bars, getattr(context, "print_on_execution_start", True))
    # The second logger would announce, once per process, that we disabled the bars.
    loggers = {"ray.data": logging.WARNING, "ray.data._internal.progress": logging.ERROR}
    levels = {name: logging.getLogger(name).level for name in loggers}
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    for name, level in loggers.items():
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        context.enable_progress_bars, context.print_on_execution_start = saved
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


# --------------------------------------------------------------------------- driver side


def _run_pending_parts(
    ray: ModuleType,
    job: Any,  # featurizer.batch._StoreJob
    described: DescribedFeaturizer,
    featurizer_kwargs: dict[str, Any],
    plan: RayPlan,
    root: Path,
    records: Sequence[ImageRecord],
    batch_size: int,
    progress: ProgressFn | None,
    should_stop: Callable[[], bool] | None,
) -> None:
    indices = [i for k in job.pending for i in range(*job.part_range(k))]
    blocks = input_blocks(indices, records, batch_size)
    with quiet_ray_data(ray):
        dataset = build_dataset(ray, blocks, described, featurizer_kwargs, plan, root, batch_size)
        batches = dataset.iter_batches(
            batch_size=None, batch_format="numpy", prefetch_batches=PREFETCH_BATCHES
        )
        try:
            _write_results(_unwrapped(ray, batches), job, records, progress, should_stop)
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # stops the pipeline now (cancel, errors) instead of at GC


def _write_results(
    outputs: Iterator[dict[str, np.ndarray]],
    job: Any,
    records: Sequence[ImageRecord],
    progress: ProgressFn | None,
    should_stop: Callable[[], bool] | None,
) -> None:
    """Regroup Ray's output blocks into parts, write each part as soon as it is complete."""
    total = len(records)
    done = sum(job.part_range(k)[1] - job.part_range(k)[0] for k in job.parts)
    errors = sum(len(p["errors"]) for p in job.parts.values())
    clock = local._Rate(done, total)
    if progress:
        progress(clock.report(done, errors))
    buffers: dict[int, local._PartBuffer] = {}
    with PartWriter(job, records) as writer:
        for output in outputs:
            for index, batch, features in split_by_part(
                output, job.part_size, job.manifest["layers"]
            ):
                start, end = job.part_range(index)
                buffer = buffers.setdefault(index, local._PartBuffer(index, end - start))
                buffer.add(batch, features)
                if buffer.complete:
                    writer.submit(buffers.pop(index))
            done += len(output["index"])
            errors += int(sum(1 for e in output["error"] if e))
            if progress:
                progress(clock.report(done, errors))
            if should_stop is not None and should_stop():
                raise ExtractionCancelled(
                    f"extraction stopped at {done}/{total} files; completed parts are kept in "
                    f"{job.out} and a rerun resumes from there"
                )
    if buffers:  # every row comes back exactly once; anything left is a bug, not user error
        raise DecafError(f"Ray returned incomplete parts {sorted(buffers)}; rerun to resume")


class PartWriter:
    """Writes complete parts on a few threads; records them in the manifest on the caller's.

    One thread writes ~1-3k rows/s of decaf6+decaf7 (zstd + Parquet encoding, which release
    the GIL), less than a few GPU workers deliver; the manifest is only touched by the thread
    that owns the job. At most ``2 x threads`` parts wait, which bounds the driver's memory.
    """

    def __init__(self, job: Any, records: Sequence[ImageRecord], threads: int | None = None):
        self.job, self.records = job, records
        self.threads = threads or WRITER_THREADS
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="decaf-part-writer")
        self.in_flight: set[Future[tuple[int, int, list[dict[str, Any]]]]] = set()

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._record(wait(self.in_flight).done)  # finished parts stay valid on errors too
        finally:
            self.pool.shutdown()

    def submit(self, buffer: Any) -> None:
        dims = dict(self.job.manifest["layers"])
        self.in_flight.add(
            self.pool.submit(
                write_sorted_part, self.job.out, self.job.config_sha, dims, self.records, buffer
            )
        )
        finished, _ = wait(self.in_flight, timeout=0)
        if len(self.in_flight) - len(finished) >= 2 * self.threads:
            finished, _ = wait(self.in_flight, return_when=FIRST_COMPLETED)
        self._record(finished)

    def _record(self, finished: set[Future[tuple[int, int, list[dict[str, Any]]]]]) -> None:
        for future in list(finished):
            self.in_flight.discard(future)
            index, rows, errors = future.result()
            self.job.record_part(index, rows, errors)


def write_sorted_part(
    out: Path,
    config_sha: str,
    dims: dict[str, int],
    records: Sequence[ImageRecord],
    buffer: Any,  # featurizer.batch._PartBuffer
) -> tuple[int, int, list[dict[str, Any]]]:
    """Ray blocks arrive out of order: sort the part's rows, then write it like the local engine."""
    return write_part_buffer(out, config_sha, dims, records, sorted_buffer(buffer))


def _unwrapped(ray: ModuleType, batches: Any) -> Iterator[dict[str, np.ndarray]]:
    """Iterate Ray's output, re-raising our own errors from actors with their type and text."""
    try:
        yield from batches
    except ray.exceptions.RayTaskError as exc:
        raise _unwrap_task_error(exc) from exc


def split_by_part(
    output: dict[str, np.ndarray], part_size: int, layers: dict[str, int]
) -> Iterator[tuple[int, CollatedBatch, dict[str, np.ndarray]]]:
    """One Ray output block -> (part index, good rows + errors, their features) per part."""
    indices = np.asarray(output["index"], dtype=np.int64)
    failed = np.asarray([bool(e) for e in output["error"]], dtype=bool)
    parts = indices // part_size
    for part in np.unique(parts):
        in_part = parts == part
        good = in_part & ~failed
        bad = np.flatnonzero(in_part & failed)
        batch = CollatedBatch(
            indices=indices[good].tolist(),
            images=None,
            errors=[(int(indices[i]), str(output["error"][i])) for i in bad],
        )
        features = {name: np.asarray(output[name][good], dtype=np.float32) for name in layers}
        yield int(part), batch, features


def sorted_buffer(buffer: Any) -> Any:
    """Rows of a part in index order (Ray may return blocks out of order)."""
    order = np.argsort(np.asarray(buffer.rows, dtype=np.int64), kind="stable")
    buffer.rows = [buffer.rows[i] for i in order]
    buffer.chunks = {
        name: [np.concatenate(chunks)[order]] for name, chunks in buffer.chunks.items() if chunks
    }
    return buffer
