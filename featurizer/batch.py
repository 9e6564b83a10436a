"""Batch extraction of an image folder into a resumable feature store.

Pipeline: worker processes decode + preprocess files into uint8 tensors (a DataLoader with a
bounded prefetch) while the main process runs the network on the previous batch; results are
buffered per part and each part is flushed to Parquet as soon as it is complete, so memory is
bounded by ``part_size`` rows plus a few batches, whatever the dataset size.

Determinism: files are sorted; part ``k`` covers records ``[k * part_size, (k + 1) * part_size)``
and its batches always start at the part boundary, so a resumed run computes every part from
exactly the same batches as an uninterrupted one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featurizer import store as fstore
from featurizer.dataset import (
    CollatedBatch,
    DatasetError,
    ImageRecord,
    merge_batches,
    part_batches,
    scan_image_folder,
)
from featurizer.errors import DecafError, StoreError

if TYPE_CHECKING:
    from featurizer.extractor import Featurizer

# Keys of the manifest that must match for a store to be resumed (everything that changes
# the numbers in a part or which files go into which part).
RESUME_KEYS = (
    "backbone",
    "weights_id",
    "weights_sha256",
    "layers",
    "preprocessing",
    "precision",
    "dtype",
    "part_size",
    "files",
)
# Each worker keeps this many batches ready: enough to hide decode jitter, bounded memory.
PREFETCH_BATCHES_PER_WORKER = 2


class ExtractionCancelled(DecafError):
    """``should_stop()`` asked the extraction to stop; completed parts are kept (resumable)."""


@dataclass
class ExtractionProgress:
    done: int  # files handled (features written or error recorded), resumed parts included
    total: int
    errors: int
    images_per_s: float  # over this run only
    eta_s: float | None


@dataclass
class ExtractionResult:
    store: Path
    num_images: int
    num_errors: int
    seconds: float
    resumed_parts: int
    manifest: dict


ProgressFn = Callable[[ExtractionProgress], None]


def extract_dataset(
    root: str | Path,
    out: str | Path,
    *,
    featurizer: Featurizer | None = None,
    layers: Sequence[str] = ("decaf6", "decaf7"),
    weights: str = "imagenet",
    precision: str = "fp32",
    crop: str = "center",
    device: str = "auto",
    batch_size: int = 64,
    workers: int | None = None,
    part_size: int = 1024,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ExtractionResult:
    """Extract features of every file below ``root`` into the store ``out``.

    A ``featurizer`` given explicitly wins over ``layers/weights/precision/crop/device``.
    Re-running on an existing store resumes it (the configuration must match, otherwise
    ``StoreError``; ``overwrite=True`` starts afresh). Unreadable files are skipped and listed
    in ``errors.jsonl``. Resuming with the same ``batch_size`` (and device) reproduces an
    uninterrupted run bit for bit; another batch size only changes float rounding.
    """
    started = time.perf_counter()
    _check_positive(batch_size=batch_size, part_size=part_size)
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    root_path, out_path = _resolve_paths(root, out)
    records = scan_image_folder(root_path)
    if not records:
        raise DatasetError(f"no files found below {root_path}")
    if featurizer is None:
        from featurizer.extractor import Featurizer

        featurizer = Featurizer(
            layers=tuple(layers), weights=weights, precision=precision, device=device, crop=crop
        )
    if workers is None:
        workers = default_workers(featurizer.device)
    config = store_config(featurizer, root_path, records, part_size)
    job = _open_store(out_path, config, overwrite, records, part_size)
    if job.pending:
        job.manifest["batch_size"] = batch_size
        _run_pending_parts(
            job, featurizer, root_path, records, batch_size, workers, progress, should_stop
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


def default_workers(device: Any) -> int:
    """Decode processes: a GPU needs every spare core to keep it fed; on CPU the model itself
    uses the cores and decoding is ~1/4 of its cost, so half the cores (at least 2: on a 2-core
    laptop 1 and 2 workers measured the same, 2 copes better with large photos).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    if getattr(device, "type", str(device)) == "cuda":
        return max(2, cores - 1)
    return max(2, cores // 2)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def _resolve_paths(root: str | Path, out: str | Path) -> tuple[Path, Path]:
    root_path, out_path = Path(root).resolve(), Path(out).resolve()
    # A store inside the image folder would be scanned as images on the next (resumed) run.
    if out_path == root_path or root_path in out_path.parents:
        raise DatasetError(f"the store {out_path} must not be inside the image folder {root_path}")
    if out_path.exists() and not out_path.is_dir():
        raise StoreError(f"--out {out_path} exists and is not a directory")
    return root_path, out_path


# --------------------------------------------------------------------------- configuration


def store_config(
    featurizer: Featurizer, root: Path, records: Sequence[ImageRecord], part_size: int
) -> dict[str, Any]:
    """What defines the store's contents (the RESUME_KEYS) plus informational fields."""
    described = featurizer.describe()
    # Verbatim from describe(): probes compare it with the provenance of other features.
    preprocessing = described["preprocessing"]
    return {
        "backbone": described.get("backbone"),
        "weights_id": described.get("weights_id"),
        "weights_sha256": described.get("weights_sha256"),
        "layers": {name: int(dim) for name, dim in featurizer.dims.items()},
        "preprocessing": preprocessing,
        "precision": featurizer.precision,
        "dtype": "float32",
        "part_size": part_size,
        "files": {"count": len(records), "sha256": files_fingerprint(root, records)},
        "source_root": str(root),
        "device": str(described.get("device", "")),
    }


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


def _config_sha(config: dict[str, Any]) -> str:
    subset = {key: config[key] for key in RESUME_KEYS}
    return hashlib.sha256(json.dumps(subset, sort_keys=True).encode()).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- store state


@dataclass
class _StoreJob:
    out: Path
    manifest: dict[str, Any]
    config_sha: str
    part_size: int
    num_records: int
    parts: dict[int, dict[str, Any]] = field(default_factory=dict)  # index -> read_part_info
    already_complete: bool = False
    resumed_parts: int = 0
    # Parts may be recorded from writer threads (the Ray engine uses several).
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def num_parts(self) -> int:
        return -(-self.num_records // self.part_size)

    def part_range(self, index: int) -> tuple[int, int]:
        start = index * self.part_size
        return start, min(start + self.part_size, self.num_records)

    @property
    def pending(self) -> list[int]:
        return [k for k in range(self.num_parts) if k not in self.parts]

    def record_part(self, index: int, rows: int, errors: list[dict[str, Any]]) -> None:
        with self._lock:
            self.parts[index] = {"file": fstore.part_name(index), "rows": rows, "errors": errors}
            self.save_manifest(complete=False)

    def save_manifest(self, *, complete: bool) -> None:
        done = [self.parts[k] for k in sorted(self.parts)]
        self.manifest.update(
            complete=complete,
            num_images=sum(p["rows"] for p in done),
            num_errors=sum(len(p["errors"]) for p in done),
            parts=[
                {"file": p["file"], "rows": p["rows"], "errors": len(p["errors"])} for p in done
            ],
        )
        fstore.write_manifest(self.out, self.manifest)

    def finalize(self, records: Sequence[ImageRecord]) -> dict[str, Any]:
        """Rebuild errors.jsonl and the manifest from the parts themselves (resume-proof)."""
        self.parts = {
            k: fstore.read_part_info(self.out / fstore.part_name(k)) for k in range(self.num_parts)
        }
        errors = [e for k in sorted(self.parts) for e in self.parts[k]["errors"]]
        failed = {e["path"] for e in errors}
        self.manifest["classes"] = sorted(
            {r.label for r in records if r.label is not None and r.path not in failed}
        )
        self.manifest["finished_at"] = _now()
        fstore.write_errors(self.out, errors)
        self.save_manifest(complete=True)
        return self.manifest


def _open_store(
    out: Path,
    config: dict[str, Any],
    overwrite: bool,
    records: Sequence[ImageRecord],
    part_size: int,
) -> _StoreJob:
    """Create, resume or (with overwrite) reset the store; validate what is already there."""
    if overwrite:
        fstore.clear_store(out)
    out.mkdir(parents=True, exist_ok=True)
    fstore.remove_temp_files(out)
    manifest_path = out / fstore.MANIFEST_NAME
    existing_parts = fstore.existing_part_files(out)
    config_sha = _config_sha(config)
    if manifest_path.exists():
        old = fstore.read_manifest(out)
        _check_same_config(out, old, config)
        manifest = {**old, **config}
    elif existing_parts:
        raise StoreError(
            f"{out} holds feature-store parts but no {fstore.MANIFEST_NAME}; use --overwrite to "
            "start afresh or choose another --out"
        )
    else:
        manifest = {
            "format_version": fstore.FORMAT_VERSION,
            **config,
            "created_at": _now(),
            "finished_at": None,
            "classes": [],
            "complete": False,
        }
    job = _StoreJob(out, manifest, config_sha, part_size, len(records))
    for path in existing_parts:
        info = _validated_part(job, path)
        job.parts[info["index"]] = info
    job.resumed_parts = len(job.parts)
    job.already_complete = bool(manifest.get("complete")) and not job.pending
    if not job.already_complete:
        job.save_manifest(complete=False)
    return job


def _check_same_config(out: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    differing = [key for key in RESUME_KEYS if old.get(key) != new.get(key)]
    if differing:
        details = "; ".join(
            f"{key}: store has {_short(old.get(key))}, now {_short(new.get(key))}"
            for key in differing
        )
        raise StoreError(
            f"cannot resume {out}: it was made with a different configuration ({details}). "
            "Use --overwrite to replace it, or choose another --out."
        )


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def _validated_part(job: _StoreJob, path: Path) -> dict[str, Any]:
    info = fstore.read_part_info(path)
    index = info["index"]
    if path.name != fstore.part_name(index) or not 0 <= index < job.num_parts:
        raise StoreError(f"unexpected part {path.name} in {job.out}; use --overwrite")
    start, end = job.part_range(index)
    if info["config_sha256"] != job.config_sha or info["rows"] + len(info["errors"]) != end - start:
        raise StoreError(
            f"{path} was written with a different configuration; use --overwrite to start afresh"
        )
    return info


# --------------------------------------------------------------------------- the pipeline


@dataclass
class _PartBuffer:
    """Rows of one part accumulated batch by batch until every file of the part is handled."""

    index: int
    expected: int
    handled: int = 0
    rows: list[int] = field(default_factory=list)
    chunks: dict[str, list[np.ndarray]] = field(default_factory=dict)
    errors: list[tuple[int, str]] = field(default_factory=list)

    def add(self, batch: CollatedBatch, features: dict[str, np.ndarray] | None) -> None:
        self.handled += len(batch.indices) + len(batch.errors)
        self.rows.extend(batch.indices)
        self.errors.extend(batch.errors)
        for name, array in (features or {}).items():
            self.chunks.setdefault(name, []).append(array)

    @property
    def complete(self) -> bool:
        return self.handled == self.expected


def _run_pending_parts(
    job: _StoreJob,
    featurizer: Featurizer,
    root: Path,
    records: Sequence[ImageRecord],
    batch_size: int,
    workers: int,
    progress: ProgressFn | None,
    should_stop: Callable[[], bool] | None,
) -> None:
    total = len(records)
    done = sum(job.part_range(k)[1] - job.part_range(k)[0] for k in job.parts)
    errors = sum(len(p["errors"]) for p in job.parts.values())
    ranges = [job.part_range(k) for k in job.pending]
    loader = _make_loader(featurizer, root, records, ranges, batch_size, workers)
    clock = _Rate(done, total)
    if progress:
        progress(clock.report(done, errors))
    buffers: dict[int, _PartBuffer] = {}
    writer = _BackgroundWriter()
    chunks = iter(loader)
    try:
        for model_batch in part_batches(ranges, batch_size):
            batch = _next_model_batch(chunks, len(model_batch))
            first = model_batch[0]
            index = first // job.part_size
            start, end = job.part_range(index)
            buffer = buffers.setdefault(index, _PartBuffer(index, end - start))
            features = featurizer.forward(batch.images) if batch.images is not None else None
            buffer.add(batch, features)
            done += len(batch)
            errors += len(batch.errors)
            if buffer.complete:
                writer.submit(_flush_part, job, records, buffers.pop(index))
            if progress:
                progress(clock.report(done, errors))
            if should_stop is not None and should_stop():
                raise ExtractionCancelled(
                    f"extraction stopped at {done}/{total} files; completed parts are kept in "
                    f"{job.out} and a rerun resumes from there"
                )
    finally:
        del chunks  # shuts the worker processes down now, also on errors
        writer.close()  # a part already handed over is still written (cancel keeps it)


def _next_model_batch(chunks: Iterator[CollatedBatch], size: int) -> CollatedBatch:
    """Pull decoded chunks until they make up the next model batch of ``size`` files."""
    pieces: list[CollatedBatch] = []
    handled = 0
    while handled < size:
        piece = next(chunks)
        pieces.append(piece)
        handled += len(piece)
    if handled != size:
        raise RuntimeError(f"decode chunks out of step: {handled} files for a batch of {size}")
    return merge_batches(pieces)


def decode_chunk_size(batch_size: int, workers: int, device: Any) -> int:
    """Files per worker task: ~2 chunks per worker per model batch on CPU; whole batches on
    CUDA, where pinned whole-batch tensors go straight to the device without a copy.
    """
    if workers <= 1 or getattr(device, "type", str(device)) == "cuda":
        return batch_size
    return max(1, -(-batch_size // (2 * workers)))


class _BackgroundWriter:
    """Writes parts on one thread so Parquet encoding overlaps the next forward passes.

    At most one part waits to be written (submit blocks on the previous one): memory stays
    bounded, and the order of parts and manifest updates is preserved.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decaf-part-writer")
        self._pending: Future[None] | None = None

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        self.wait()
        self._pending = self._pool.submit(fn, *args)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()  # re-raises a failed write here, in the caller's thread

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


def _make_loader(
    featurizer: Featurizer,
    root: Path,
    records: Sequence[ImageRecord],
    ranges: Sequence[tuple[int, int]],
    batch_size: int,
    workers: int,
):
    import torch.utils.data

    from featurizer.dataset import (
        ImageFileDataset,
        PartBatchSampler,
        collate_items,
        init_worker,
    )

    dataset = ImageFileDataset(root, [r.path for r in records], _loader_for(featurizer))
    chunk = decode_chunk_size(batch_size, workers, featurizer.device)
    extra: dict[str, Any] = {}
    if workers > 0:
        # In flight: PREFETCH_BATCHES_PER_WORKER model batches per worker whatever the chunk
        # size, one per worker when there are many (tencrop batches are 10x larger).
        batches = PREFETCH_BATCHES_PER_WORKER if workers < 4 else 1
        per_worker = -(-batches * batch_size // chunk)
        extra = {
            "worker_init_fn": init_worker,
            "prefetch_factor": per_worker,
            "persistent_workers": False,
        }
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=PartBatchSampler(ranges, batch_size, chunk),
        num_workers=workers,
        collate_fn=collate_items,
        pin_memory=getattr(featurizer.device, "type", "cpu") == "cuda",
        **extra,
    )


def _loader_for(featurizer: Featurizer) -> Callable[[str], Any]:
    """A picklable path -> uint8 tensor function equal to ``featurizer.prepare``.

    A partial of the module-level function (rather than the bound method) keeps the model
    out of what is sent to spawned workers.
    """
    from featurizer.images import DEFAULT_MAX_PIXELS
    from featurizer.preprocess import load_and_preprocess

    return functools.partial(
        load_and_preprocess,
        spec=featurizer.spec.preprocess,
        crop=featurizer.crop,
        max_pixels=getattr(featurizer, "max_pixels", DEFAULT_MAX_PIXELS),
    )


def _flush_part(job: _StoreJob, records: Sequence[ImageRecord], buffer: _PartBuffer) -> None:
    index, rows, errors = write_part_buffer(
        job.out, job.config_sha, job.manifest["layers"], records, buffer
    )
    job.record_part(index, rows, errors)


def write_part_buffer(
    out: Path,
    config_sha: str,
    dims: dict[str, int],
    records: Sequence[ImageRecord],
    buffer: _PartBuffer,
) -> tuple[int, int, list[dict[str, Any]]]:
    """Write one complete part (rows in the buffer's order) without touching the manifest.

    Shared by both engines; the manifest update (``_StoreJob.record_part``) stays with the caller
    because it must happen on one thread.
    """
    features = {
        name: np.concatenate(buffer.chunks[name])
        if buffer.chunks.get(name)
        else np.empty((0, dim), dtype=np.float32)
        for name, dim in dims.items()
    }
    errors = [
        {"path": records[i].path, "label": records[i].label, "error": reason}
        for i, reason in sorted(buffer.errors)
    ]
    fstore.write_part(
        out,
        buffer.index,
        paths=[records[i].path for i in buffer.rows],
        labels=[records[i].label for i in buffer.rows],
        features=features,
        layer_dims=dims,
        errors=errors,
        config_sha256=config_sha,
    )
    return buffer.index, len(buffer.rows), errors


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
