"""The local engine: decode workers (a DataLoader) feed the model in this process.

Worker processes decode + preprocess files into uint8 tensors with a bounded prefetch while the
main process runs the network on the previous batch; a part is handed over as soon as its last
batch is done, so memory is bounded by ``part_size`` rows plus a few batches, whatever the
dataset size.

Batches never straddle a part and always start at the part boundary
(:func:`featurizer.dataset.part_batches`), so a resumed run computes every part from exactly the
same batches as an uninterrupted one: identical bytes with the same batch size and device.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from featurizer.dataset import CollatedBatch, merge_batches, part_batches
from featurizer.engines.base import EngineStep, PartBuffer, PartPlan, decode_function

if TYPE_CHECKING:
    from featurizer.extractor import Featurizer

# Each worker keeps this many batches ready: enough to hide decode jitter, bounded memory.
PREFETCH_BATCHES_PER_WORKER = 2


class LocalEngine:
    name = "local"
    # One writer thread, at most one part waiting: Parquet encoding overlaps the next forward
    # passes, and memory stays at ~2 parts.
    writer_threads = 1
    max_parts_in_flight = 1
    cluster = None

    def __init__(self, featurizer: Featurizer, *, workers: int) -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.featurizer = featurizer
        self.workers = workers

    @property
    def description(self) -> dict[str, Any]:
        return self.featurizer.describe()

    def run(self, plan: PartPlan) -> Iterator[EngineStep]:
        featurizer, dims = self.featurizer, self.featurizer.dims
        ranges = plan.ranges()
        loader = make_loader(featurizer, plan, self.workers)
        buffers: dict[int, PartBuffer] = {}
        chunks = iter(loader)
        try:
            for model_batch in part_batches(ranges, plan.batch_size):
                batch = next_model_batch(chunks, len(model_batch))
                index = model_batch[0] // plan.part_size
                start, end = plan.part_range(index)
                buffer = buffers.setdefault(index, PartBuffer(index, end - start))
                features = featurizer.forward(batch.images) if batch.images is not None else None
                buffer.add(batch, features)
                done = [buffers.pop(index).to_part(plan.records, dims)] if buffer.complete else []
                yield EngineStep(len(batch), len(batch.errors), done)
        finally:
            del chunks  # shuts the worker processes down now, also on errors and cancel


def default_workers(device: Any) -> int:
    """Decode processes: a GPU needs every spare core to keep it fed; on CPU the model itself
    uses the cores and decoding is ~1/4 of its cost, so half the cores (at least 2: on a 2-core
    laptop 1 and 2 workers measured the same, 2 copes better with large photos).
    """
    from featurizer.runtime import default_num_threads

    cores = default_num_threads()
    if getattr(device, "type", str(device)) == "cuda":
        return max(2, cores - 1)
    return max(2, cores // 2)


def decode_chunk_size(batch_size: int, workers: int, device: Any) -> int:
    """Files per worker task: ~2 chunks per worker per model batch on CPU; whole batches on
    CUDA, where pinned whole-batch tensors go straight to the device without a copy.
    """
    if workers <= 1 or getattr(device, "type", str(device)) == "cuda":
        return batch_size
    return max(1, -(-batch_size // (2 * workers)))


def next_model_batch(chunks: Iterator[CollatedBatch], size: int) -> CollatedBatch:
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


def make_loader(featurizer: Featurizer, plan: PartPlan, workers: int) -> Any:
    import torch.utils.data

    from featurizer.dataset import ImageFileDataset, PartBatchSampler, collate_items, init_worker

    paths: Sequence[str] = [record.path for record in plan.records]
    dataset = ImageFileDataset(plan.root, paths, decode_function(featurizer))
    chunk = decode_chunk_size(plan.batch_size, workers, featurizer.device)
    extra: dict[str, Any] = {}
    if workers > 0:
        # In flight: PREFETCH_BATCHES_PER_WORKER model batches per worker whatever the chunk
        # size, one per worker when there are many (tencrop batches are 10x larger).
        batches = PREFETCH_BATCHES_PER_WORKER if workers < 4 else 1
        per_worker = -(-batches * plan.batch_size // chunk)
        extra = {
            "worker_init_fn": init_worker,
            "prefetch_factor": per_worker,
            "persistent_workers": False,
        }
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=PartBatchSampler(plan.ranges(), plan.batch_size, chunk),
        num_workers=workers,
        collate_fn=collate_items,
        pin_memory=getattr(featurizer.device, "type", "cpu") == "cuda",
        **extra,
    )
