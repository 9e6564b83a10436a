"""One orchestration of an extraction, whatever the engine.

:func:`extract_dataset` resolves the paths, takes the store's writer lock (a second writer is
refused before any model loads; the lock is held to the end, ``--overwrite``'s deletion and the
finalize included), scans the folder, starts the engine (the local one loads the model; Ray
describes it on a worker), opens the store (create or resume), asks the engine for the pending
parts, writes each one through the store on background threads, reports progress and
cancellation, and finalizes the store. Engines only produce parts (:mod:`featurizer.engines`);
the store owns the format (:mod:`featurizer.store`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from featurizer.dataset import DatasetError, FolderScan, ImageRecord, scan_folder
from featurizer.engines.base import ExtractionEngine, PartPlan
from featurizer.errors import DecafError, StoreError
from featurizer.options import ENGINES, CropMode, Decoder, Engine, Precision
from featurizer.store import FeatureStore, FileList, Manifest, Part, RunInfo, StoreConfig
from featurizer.store.lock import WriterLock

if TYPE_CHECKING:
    from featurizer.engines.ray import RayOptions
    from featurizer.extractor import Featurizer


class ExtractionCancelled(DecafError):
    """``should_stop()`` asked the extraction to stop; completed parts are kept (resumable)."""

    http_status: ClassVar[int] = 409


@dataclass(frozen=True)
class ExtractionProgress:
    done: int  # files handled (features written or error recorded), resumed parts included
    total: int
    errors: int
    images_per_s: float  # over this run only: resumed parts are not speed
    eta_s: float | None


@dataclass(frozen=True)
class ExtractionResult:
    store: Path
    num_images: int
    num_errors: int
    seconds: float
    resumed_parts: int
    manifest: Manifest
    files_this_run: int = 0  # files this run handled: resumed parts are not work done
    skipped: dict[str, int] = field(default_factory=dict)  # entries the scan passed over, by kind

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def images_per_s(self) -> float:
        """Files this run handled per second of this run (model loading included)."""
        return self.files_this_run / self.seconds if self.seconds > 0 else 0.0


ProgressFn = Callable[[ExtractionProgress], None]


def extract_dataset(
    root: str | Path,
    out: str | Path,
    *,
    backbone: str = "alexnet",
    layers: Sequence[str] | None = None,
    weights: str = "imagenet",
    precision: Precision = "fp32",
    crop: CropMode = "center",
    device: str = "auto",
    decoder: Decoder = "auto",
    batch_size: int = 64,
    workers: int | None = None,
    part_size: int = 1024,
    overwrite: bool = False,
    engine: Engine = "local",
    ray: RayOptions | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    featurizer: Featurizer | None = None,
    mean_image: str | None = None,
    follow_symlinks: bool = True,
    allowed_roots: Sequence[str | Path] | None = None,
) -> ExtractionResult:
    """Extract features of every file below ``root`` into the store ``out``.

    ``layers=None`` takes the backbone's default taps. A ``featurizer`` given explicitly (local
    engine only) wins over ``backbone/layers/weights/precision/crop/device/decoder``.
    ``workers``: decode processes (local; default from the core count) or the cap on concurrent
    decode tasks (Ray).
    Re-running on an existing store resumes it (the configuration must match, otherwise
    ``StoreError``; ``overwrite=True`` starts afresh). Unreadable files are skipped and listed
    in ``_errors.jsonl``. Resuming with the same ``batch_size`` (and device) reproduces an
    uninterrupted run bit for bit; another batch size only changes float rounding.
    ``should_stop()`` is polled after every batch: True raises :class:`ExtractionCancelled`
    once the parts already handed over are written. Symbolic links are followed unless
    ``follow_symlinks=False``; ``allowed_roots`` refuses links leaving them (see
    :func:`featurizer.dataset.scan_folder`); what the scan passes over is listed in
    ``_errors.jsonl`` and counted in ``result.skipped``.
    """
    started = time.perf_counter()
    _check_options(batch_size, part_size, workers, engine, ray, featurizer)
    root_path, out_path = resolve_paths(root, out)
    featurizer_kwargs: dict[str, Any] = {
        "backbone": backbone,
        "weights": weights,
        "precision": precision,
        "crop": crop,
        "device": device,
        "decoder": decoder,
    }
    if layers is not None:
        featurizer_kwargs["layers"] = tuple(layers)
    if mean_image is not None:  # Caffe backbones only; recorded in the preprocessing
        featurizer_kwargs["mean_image"] = str(mean_image)
    files_this_run = 0
    with _writer_lock(out_path) as lock:
        scan = scan_folder(root_path, follow_symlinks=follow_symlinks, allowed_roots=allowed_roots)
        if not scan.records:
            raise DatasetError(f"no files found below {root_path}{_skips_note(scan)}")
        with start_engine(engine, featurizer_kwargs, featurizer, workers, ray) as runner:
            config = store_config(runner.description, root_path, scan.records, part_size)
            run = RunInfo(
                source_root=str(root_path),
                engine=runner.name,
                device=runner.description.get("device"),
                batch_size=batch_size,
                ray=runner.cluster,
            )
            with FeatureStore.create_or_resume(
                out_path, config, run, overwrite=overwrite, lock=lock
            ) as store:
                if not store.already_complete:
                    pending = tuple(store.pending_parts)
                    plan = PartPlan(root_path, scan.records, part_size, batch_size, pending)
                    _run_engine(store, runner, plan, progress, should_stop)
                    store.finalize([entry.to_error() for entry in scan.skipped])
                    files_this_run = plan.pending_files
                manifest = store.manifest
                resumed = store.resumed_parts
    return ExtractionResult(
        store=out_path,
        num_images=manifest.num_images,
        num_errors=manifest.num_errors,
        seconds=time.perf_counter() - started,
        resumed_parts=resumed,
        manifest=manifest,
        files_this_run=files_this_run,
        skipped=scan.skip_counts(),
    )


@contextlib.contextmanager
def _writer_lock(out: Path) -> Iterator[WriterLock]:
    """The store's writer lock, taken first: a second writer is refused before the scan and the
    model load. A directory this run created is removed again if it fails before writing."""
    created = not out.exists()
    lock = FeatureStore.lock_for_writing(out)
    try:
        yield lock
    except BaseException:
        if created and lock.held:
            _remove_empty_store_dir(out)
        raise
    finally:
        lock.release()


def _remove_empty_store_dir(out: Path) -> None:
    from featurizer.store import LOCK_NAME

    if {entry.name for entry in out.iterdir()} <= {LOCK_NAME}:
        (out / LOCK_NAME).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            out.rmdir()


def _skips_note(scan: FolderScan) -> str:
    if not scan.skipped:
        return ""
    counts = ", ".join(f"{count} {kind}" for kind, count in scan.skip_counts().items())
    return f" ({len(scan.skipped)} entries skipped: {counts}; e.g. {scan.skipped[0].path})"


def _check_options(
    batch_size: int,
    part_size: int,
    workers: int | None,
    engine: str,
    ray: RayOptions | None,
    featurizer: Featurizer | None,
) -> None:
    for name, value in (("batch_size", batch_size), ("part_size", part_size)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "ray" and featurizer is not None:
        raise ValueError("featurizer= is for the local engine: Ray builds the model on workers")
    if engine == "local" and ray is not None:
        raise ValueError("ray= options need engine='ray'")


def resolve_paths(root: str | Path, out: str | Path) -> tuple[Path, Path]:
    root_path, out_path = Path(root).resolve(), Path(out).resolve()
    # A store inside the image folder would be scanned as images on the next (resumed) run.
    if out_path == root_path or root_path in out_path.parents:
        raise DatasetError(f"the store {out_path} must not be inside the image folder {root_path}")
    if out_path.exists() and not out_path.is_dir():
        raise StoreError(f"--out {out_path} exists and is not a directory")
    return root_path, out_path


@contextlib.contextmanager
def start_engine(
    engine: str,
    featurizer_kwargs: dict[str, Any],
    featurizer: Featurizer | None,
    workers: int | None,
    ray: RayOptions | None,
) -> Iterator[ExtractionEngine]:
    """The engine, ready: the local one with its model loaded, Ray connected and described."""
    if engine == "ray":
        # Imports Ray lazily; EngineUnavailableError (with the install hint) if it is missing.
        from featurizer.engines.ray import RayOptions, ray_engine

        with ray_engine(featurizer_kwargs, ray or RayOptions(), workers=workers) as runner:
            yield runner
        return
    from featurizer.engines.local import LocalEngine, default_workers

    if featurizer is None:
        from featurizer.extractor import Featurizer

        featurizer = Featurizer(**featurizer_kwargs)
    if workers is None:
        workers = default_workers(featurizer.device)
    yield LocalEngine(featurizer, workers=workers)


def store_config(
    description: dict[str, Any], root: Path, records: Sequence[ImageRecord], part_size: int
) -> StoreConfig:
    """What defines the store's contents, from ``Featurizer.describe()`` and the file list."""
    return StoreConfig(
        backbone=description["backbone"],
        weights_id=description["weights_id"],
        weights_sha256=description.get("weights_sha256"),
        layers={name: int(dim) for name, dim in description["layers"].items()},
        # Verbatim from describe(): probes compare it with the provenance of other features.
        preprocessing=description["preprocessing"],
        precision=description["precision"],
        dtype="float32",
        part_size=part_size,
        files=FileList(count=len(records), sha256=files_fingerprint(root, records)),
    )


def files_fingerprint(root: Path, records: Sequence[ImageRecord]) -> str:
    """Hash of (path, label, size, mtime) of every file: a changed file list refuses resume."""
    digest = hashlib.sha256()
    for record in records:
        try:
            st = os.stat(root / record.path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "unreadable"  # still a record; extraction will report it
        digest.update(f"{record.path}\0{record.label}\0{stamp}\n".encode())
    return digest.hexdigest()


def _run_engine(
    store: FeatureStore,
    engine: ExtractionEngine,
    plan: PartPlan,
    progress: ProgressFn | None,
    should_stop: Callable[[], bool] | None,
) -> None:
    total = len(plan.records)
    done = total - plan.pending_files
    errors = store.manifest.num_errors  # of the resumed parts
    clock = _Rate(done, total)
    if progress:
        progress(clock.report(done, errors))
    # Exit order: the engine stops first (workers shut down), then the parts already handed
    # over are written (a cancelled run keeps them).
    with (
        _PartWriter(store, engine.writer_threads, engine.max_parts_in_flight) as writer,
        contextlib.closing(engine.run(plan)) as steps,
    ):
        for step in steps:
            for part in step.parts:
                writer.submit(part)
            done += step.files
            errors += step.errors
            if progress:
                progress(clock.report(done, errors))
            if should_stop is not None and should_stop():
                raise ExtractionCancelled(
                    f"extraction stopped at {done}/{total} files; completed parts are kept in "
                    f"{store.path} and a rerun resumes from there"
                )


class _PartWriter:
    """Writes parts through the store on background threads, so Parquet encoding overlaps the
    next batches. ``submit`` blocks while ``max_in_flight`` parts wait: memory stays bounded.
    A failed write is re-raised in the caller's thread.
    """

    def __init__(self, store: FeatureStore, threads: int, max_in_flight: int) -> None:
        self.store = store
        self.max_in_flight = max(1, max_in_flight)
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="decaf-part-writer")
        self._in_flight: set[Future[None]] = set()

    def __enter__(self) -> _PartWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._collect(wait(self._in_flight).done)
        finally:
            self._pool.shutdown(wait=True)

    def submit(self, part: Part) -> None:
        while len(self._in_flight) >= self.max_in_flight:
            self._collect(wait(self._in_flight, return_when=FIRST_COMPLETED).done)
        self._in_flight.add(self._pool.submit(self.store.write_part, part))
        self._collect({future for future in self._in_flight if future.done()})

    def _collect(self, finished: set[Future[None]]) -> None:
        for future in finished:
            self._in_flight.discard(future)
            future.result()


class _Rate:
    """images/s and ETA over this run (resumed files are not counted as speed)."""

    def __init__(self, done_at_start: int, total: int) -> None:
        self.start = time.perf_counter()
        self.done_at_start = done_at_start
        self.total = total

    def report(self, done: int, errors: int) -> ExtractionProgress:
        elapsed = time.perf_counter() - self.start
        processed = done - self.done_at_start
        rate = processed / elapsed if elapsed > 0 and processed else 0.0
        eta = (self.total - done) / rate if rate > 0 else None
        return ExtractionProgress(done, self.total, errors, rate, eta)
