"""The Ray engine: Ray Data decodes and featurizes the pending parts on a cluster.

``decaf extract ROOT --out STORE --engine ray`` runs this instead of the local engine. Ray is an
optional extra (``pip install 'decaf[ray]'``) and is only imported inside the functions here, so
the default install stays light.

Pipeline (all of it Ray Data, no home-made scheduler)::

    scan_image_folder (driver, sorted)           -> (index, path) of the pending parts' files
    ray.data.from_arrow (one block per batch)    -> Dataset
    map_batches(decode_batch)     CPU tasks      -> uint8 images + per-row error text
    map_batches(FeaturizerActor)  actor pool     -> float32 features per layer (GPU if asked)
    iter_batches (driver)                        -> rows regrouped per part, sorted by index
                                                    (regroup_parts), yielded as complete parts

The driver writes the parts (the orchestration in :mod:`featurizer.extraction`, on several
threads), so the store lands on the machine that ran the command, and part ``k`` covers exactly
the rows the local engine puts there: paths, labels and errors are identical and features agree
to float tolerance (batches are composed differently). The manifest says ``"engine": "ray"`` and
records the plan (actors, GPUs per actor, ...).

On a cluster every worker must read ROOT at the same path (shared file system) and find the
weights (``--weights imagenet`` = the torchvision cache of each node, or a ``.pth`` on shared
storage); the actors check that their weights hash equals the described one before extracting.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from featurizer.dataset import CollatedBatch, ImageRecord
from featurizer.engines.base import (
    EngineStep,
    PartBuffer,
    PartPlan,
    decode_function,
)
from featurizer.engines.ray_cluster import (
    INSTALL_HINT,
    EngineUnavailableError,
    RayPlan,
    actor_resources,
    connect,
    import_ray,
    plan_cluster,
    ray_session,
)
from featurizer.errors import DecafError

# Public names, with the cluster helpers of ray_cluster (one import place for callers).
__all__ = [
    "INSTALL_HINT",
    "DescribedFeaturizer",
    "EngineUnavailableError",
    "FeaturizerActor",
    "RayEngine",
    "RayOptions",
    "build_dataset",
    "connect",
    "decode_batch",
    "describe_on_worker",
    "driver_writer_threads",
    "image_shape_for",
    "import_ray",
    "input_blocks",
    "plan_cluster",
    "quiet_ray_data",
    "ray_engine",
    "regroup_parts",
    "split_by_part",
]

# Output batches the driver keeps ready while it writes parts.
PREFETCH_BATCHES = 2
# At most this many threads write Parquet parts on the driver (see RayEngine).
MAX_WRITER_THREADS = 8


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray engine runs (``decaf extract --engine ray`` options).

    - ``address``: an existing cluster (``ray://head:10001`` or ``head:6379``); ``None`` starts
      a local Ray on this machine (unless this process is already connected to one).
    - ``num_gpus_per_worker``: GPUs per model actor; ``None`` = 1 when the cluster has GPUs and
      ``device`` is ``auto``/``cuda``, else 0 (CPU actors).
    - ``concurrency``: number of model actors; ``None`` = one per GPU (GPU actors) or one per
      node (CPU actors, each using the node's cores for the forward pass).

    The extraction's ``workers`` caps concurrent decode tasks (``None``: as many as CPUs allow).
    """

    address: str | None = None
    num_gpus_per_worker: float | None = None
    concurrency: int | None = None

    def __post_init__(self) -> None:
        if self.num_gpus_per_worker is not None and not self.num_gpus_per_worker >= 0:
            raise ValueError(f"num_gpus_per_worker must be >= 0, got {self.num_gpus_per_worker}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")


@contextlib.contextmanager
def ray_engine(
    featurizer_kwargs: dict[str, Any], options: RayOptions, *, workers: int | None
) -> Iterator[RayEngine]:
    """Connect to Ray, plan the cluster and describe the model on a worker; yield the engine.

    Ray stays connected while the caller runs the engine (a Ray this started is shut down on
    exit). ``featurizer_kwargs`` are ``Featurizer`` keyword arguments; ``device`` is resolved
    against the cluster.
    """
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    ray = import_ray()
    with ray_session(ray, options.address):
        plan = plan_cluster(
            ray,
            options.address,
            featurizer_kwargs.get("device", "auto"),
            options.num_gpus_per_worker,
            options.concurrency,
            workers,
        )
        kwargs = {**featurizer_kwargs, "device": plan.device}
        described = describe_on_worker(ray, kwargs, plan)
        # The actors load exactly the taps described (the backbone's defaults if none given).
        kwargs["layers"] = tuple(described.dims)
        yield RayEngine(ray, plan, described, kwargs)


def driver_writer_threads() -> int:
    """One thread writes ~1-3k rows/s of decaf6+decaf7 (Parquet encoding releases the GIL),
    less than a few GPU actors deliver: one per core of the driver, up to 8."""
    from featurizer.runtime import default_num_threads

    return max(1, min(MAX_WRITER_THREADS, default_num_threads()))


class RayEngine:
    name = "ray"

    def __init__(
        self,
        ray: ModuleType,
        plan: RayPlan,
        described: DescribedFeaturizer,
        featurizer_kwargs: dict[str, Any],
    ) -> None:
        self.ray, self.plan, self.described = ray, plan, described
        self.featurizer_kwargs = featurizer_kwargs
        self.writer_threads = driver_writer_threads()
        # At most 2 x threads parts wait to be written: bounded driver memory.
        self.max_parts_in_flight = 2 * self.writer_threads

    @property
    def description(self) -> dict[str, Any]:
        return dict(self.described.description)

    @property
    def cluster(self) -> dict[str, Any]:
        return self.plan.to_dict()

    def run(self, plan: PartPlan) -> Iterator[EngineStep]:
        indices = [i for start, end in plan.ranges() for i in range(start, end)]
        blocks = input_blocks(indices, plan.records, plan.batch_size)
        with quiet_ray_data(self.ray):
            dataset = build_dataset(
                self.ray,
                blocks,
                self.described,
                self.featurizer_kwargs,
                self.plan,
                plan.root,
                plan.batch_size,
            )
            batches = dataset.iter_batches(
                batch_size=None, batch_format="numpy", prefetch_batches=PREFETCH_BATCHES
            )
            try:
                yield from regroup_parts(_unwrapped(self.ray, batches), plan, self.described.dims)
            finally:
                close = getattr(batches, "close", None)
                if close is not None:
                    close()  # stops the pipeline now (cancel, errors) instead of at GC


@dataclass(frozen=True)
class DescribedFeaturizer:
    """What the driver needs of a Featurizer, without the model.

    The driver never loads the network: a worker with the actors' resources does, so fp16 (GPU
    only) works and a cluster whose workers lack the weights fails before any extraction. The
    worker also sends the decode function and input shape, so the driver needs nothing of the
    backbone registry.
    """

    description: dict[str, Any]  # Featurizer.describe()
    dims: dict[str, int]
    load: Callable[[str], Any]  # picklable path -> uint8 tensor (engines.base.decode_function)
    image_shape: tuple[int, ...]


def _describe_remote(featurizer_kwargs: dict[str, Any], threads: int | None) -> dict[str, Any]:
    from featurizer.extractor import Featurizer

    featurizer = Featurizer(**featurizer_kwargs, num_threads=threads)
    return {
        "description": featurizer.describe(),
        "dims": featurizer.dims,
        "load": decode_function(featurizer),
        "image_shape": image_shape_for(featurizer.preprocess.crop, featurizer.crop),
    }


def describe_on_worker(
    ray: ModuleType, featurizer_kwargs: dict[str, Any], plan: RayPlan
) -> DescribedFeaturizer:
    remote = ray.remote(**actor_resources(plan))(_describe_remote)
    try:
        info = ray.get(remote.remote(featurizer_kwargs, 1))
    except ray.exceptions.RayTaskError as exc:
        raise _unwrap_task_error(exc) from exc
    return DescribedFeaturizer(
        description=info["description"],
        dims={name: int(dim) for name, dim in info["dims"].items()},
        load=info["load"],
        image_shape=tuple(info["image_shape"]),
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
        "load": described.load,
        "image_shape": described.image_shape,
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
                "expected": described.description,
            },
            compute=ActorPoolStrategy(size=plan.actors),
            **actor_resources(plan),
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


def regroup_parts(
    outputs: Iterable[dict[str, np.ndarray]], plan: PartPlan, dims: dict[str, int]
) -> Iterator[EngineStep]:
    """Ray's output blocks -> one step per block, with the parts it completed (rows sorted)."""
    buffers: dict[int, PartBuffer] = {}
    for output in outputs:
        completed = []
        for index, batch, features in split_by_part(output, plan.part_size, dims):
            start, end = plan.part_range(index)
            buffer = buffers.setdefault(index, PartBuffer(index, end - start))
            buffer.add(batch, features)
            if buffer.complete:
                completed.append(buffers.pop(index).to_part(plan.records, dims))
        errors = sum(1 for error in output["error"] if error)
        yield EngineStep(len(output["index"]), errors, completed)
    if buffers:  # every row comes back exactly once; anything left is a bug, not user error
        raise DecafError(f"Ray returned incomplete parts {sorted(buffers)}; rerun to resume")


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
