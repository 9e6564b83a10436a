"""What an engine is given (a :class:`PartPlan`), what it yields (:class:`EngineStep`), and the
part assembly both engines share (:class:`PartBuffer`).

Determinism: part ``k`` covers records ``[k * part_size, (k + 1) * part_size)`` of the sorted
file list, whatever the engine, so parts made by different runs or engines are interchangeable.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from featurizer.dataset import CollatedBatch, ImageRecord
from featurizer.store import ErrorEntry, Part

if TYPE_CHECKING:
    from featurizer.extractor import Featurizer


@dataclass(frozen=True)
class PartPlan:
    """The parts an engine must produce, and how (batch size) it must compute them."""

    root: Path
    records: Sequence[ImageRecord]  # the sorted file list of the whole store
    part_size: int
    batch_size: int
    pending: tuple[int, ...]  # part indices still to produce, in order

    def part_range(self, index: int) -> tuple[int, int]:
        start = index * self.part_size
        return start, min(start + self.part_size, len(self.records))

    def ranges(self) -> list[tuple[int, int]]:
        return [self.part_range(index) for index in self.pending]

    @property
    def pending_files(self) -> int:
        return sum(end - start for start, end in self.ranges())


@dataclass
class EngineStep:
    """Progress of one batch (local) or output block (Ray), with the parts it completed."""

    files: int  # files handled: features computed or error recorded
    errors: int
    parts: list[Part] = field(default_factory=list)


class ExtractionEngine(Protocol):
    """An extraction engine, started (model loaded or described) and ready to run."""

    name: str  # recorded in the manifest ("local", "ray")
    writer_threads: int  # threads the orchestration writes parts on
    max_parts_in_flight: int  # parts waiting to be written before the engine is held back

    @property
    def description(self) -> dict[str, Any]:
        """``Featurizer.describe()`` of the model computing the features (the store config)."""
        ...

    @property
    def cluster(self) -> dict[str, Any] | None:
        """How the work is laid out on a cluster (recorded in the manifest), None locally."""
        ...

    def run(self, plan: PartPlan) -> Iterator[EngineStep]:
        """Produce the pending parts; closing the iterator stops the engine's workers."""
        ...


@dataclass
class PartBuffer:
    """Rows of one part accumulated batch by batch until every file of the part is handled."""

    index: int
    expected: int
    handled: int = 0
    rows: list[int] = field(default_factory=list)
    chunks: dict[str, list[np.ndarray]] = field(default_factory=dict)
    errors: list[tuple[int, str]] = field(default_factory=list)

    def add(self, batch: CollatedBatch, features: Mapping[str, np.ndarray] | None) -> None:
        self.handled += len(batch.indices) + len(batch.errors)
        self.rows.extend(batch.indices)
        self.errors.extend(batch.errors)
        for name, array in (features or {}).items():
            self.chunks.setdefault(name, []).append(array)

    @property
    def complete(self) -> bool:
        return self.handled == self.expected

    def to_part(self, records: Sequence[ImageRecord], dims: Mapping[str, int]) -> Part:
        """The part with its rows in record order (Ray may deliver blocks out of order)."""
        rows = np.asarray(self.rows, dtype=np.int64)
        features = {
            name: np.concatenate(self.chunks[name])
            if self.chunks.get(name)
            else np.empty((0, dim), dtype=np.float32)
            for name, dim in dims.items()
        }
        if len(rows) > 1 and not np.all(rows[1:] > rows[:-1]):
            order = np.argsort(rows, kind="stable")
            rows = rows[order]
            features = {name: array[order] for name, array in features.items()}
        errors: list[ErrorEntry] = [
            {"path": records[i].path, "label": records[i].label, "error": reason}
            for i, reason in sorted(self.errors)
        ]
        return Part(
            index=self.index,
            paths=[records[i].path for i in rows],
            labels=[records[i].label for i in rows],
            features=features,
            errors=errors,
        )


def decode_function(featurizer: Featurizer) -> Callable[[str], Any]:
    """A picklable path -> uint8 tensor function equal to ``featurizer.prepare``.

    A partial of the module-level function (rather than the bound method) keeps the model out
    of what is sent to spawned workers and Ray tasks.
    """
    from featurizer.decode_tensor import prepare_image
    from featurizer.images import DEFAULT_MAX_PIXELS

    return functools.partial(
        prepare_image,
        spec=featurizer.preprocess,
        crop=featurizer.crop,
        max_pixels=getattr(featurizer, "max_pixels", DEFAULT_MAX_PIXELS),
        decoder=getattr(featurizer, "decoder", "auto"),
    )
