"""Dynamic (micro-)batching: merge concurrent requests into one forward pass.

Requests put preprocessed tensors on a bounded queue and await a future. One dedicated worker
thread (never the event loop) takes the first waiting item, keeps collecting for at most
`max_wait_ms` or until `max_batch_size` items, runs `featurizer.forward` once per tensor shape
(centre-crop and ten-crop items cannot be stacked together) with the union of the requested
layers, and resolves each future with the rows of the layers it asked for.

While a forward pass runs, new requests pile up in the queue and form the next batch, so under
load batches grow on their own and `max_wait_ms` only matters when the server is nearly idle.
Requests also announce images they are still decoding (`expecting()`): a batch waits for those
up to `max_decode_wait_ms` after its first image, because with closed-loop clients the next wave
arrives a few decodes apart, and on a CPU box the decoders and the model share the same cores
anyway: one forward of 30 images is far cheaper than ten forwards of 3. With one client nothing is
announced while the queue is empty, so single-request latency is not affected; and when the
server has no other request in flight (`activity`), the batch does not wait `max_wait_ms` either.
A full queue raises `QueueFullError` at once (the HTTP layer answers 503 + Retry-After) instead
of letting latency and memory grow without bound. Items whose future was cancelled (the client
went away, or the request timed out) are dropped before the forward pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from featurizer.errors import DecafError

log = logging.getLogger(__name__)


class QueueFullError(DecafError):
    """The batch queue is full; the client should retry after `retry_after` seconds."""

    http_status: ClassVar[int] = 503
    title: ClassVar[str] = "Batch queue full"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def http_headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, round(self.retry_after)))}


class BatcherStoppedError(DecafError):
    """The batcher is not running (server starting up or shutting down)."""

    http_status: ClassVar[int] = 503


class SupportsForward(Protocol):
    def forward(
        self, batch: torch.Tensor, layers: Any = None
    ) -> dict[str, np.ndarray]: ...  # pragma: no cover


BatchHook = Callable[[int, float], None]
"""Called after each forward pass with (batch size, seconds)."""


@dataclass
class _Item:
    tensor: torch.Tensor
    layers: frozenset[str]
    future: asyncio.Future[dict[str, np.ndarray]]
    loop: asyncio.AbstractEventLoop
    enqueued_at: float = field(default_factory=time.perf_counter)


_STOP = object()


def _worker_stream(featurizer: Any) -> contextlib.AbstractContextManager[Any]:
    """On CUDA, the worker's forward passes run on their own stream: copies and kernels queued by
    other threads (a device decode, a second model) do not wait behind them."""
    device = getattr(featurizer, "device", None)
    if getattr(device, "type", None) != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.stream(torch.cuda.Stream(device))


def _stack(items: list[_Item], device: Any) -> torch.Tensor:
    """The batch in one tensor; in pinned memory on CUDA, so the copy to the device is async."""
    tensors = [item.tensor for item in items]
    if getattr(device, "type", None) != "cuda" or tensors[0].device.type != "cpu":
        return torch.stack(tensors)
    shape = (len(tensors), *tensors[0].shape)
    return torch.stack(tensors, out=torch.empty(shape, dtype=tensors[0].dtype, pin_memory=True))


def _resolve(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    # Runs on the event loop; the future may have been cancelled meanwhile.
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class MicroBatcher:
    """Collects single-image tensors from many requests into batched forward passes."""

    def __init__(
        self,
        featurizer: SupportsForward,
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 256,
        max_decode_wait_ms: float = 0.0,
        on_batch: BatchHook | None = None,
        activity: Callable[[], int] | None = None,
        thread_name: str = "decaf-batcher",
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0 or max_decode_wait_ms < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1, waits >= 0")
        self.featurizer = featurizer
        self.thread_name = thread_name
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_decode_wait_s = max(max_decode_wait_ms / 1000.0, self.max_wait_s)
        self._incoming = 0  # images announced by requests and still being decoded
        self.max_queue = max_queue
        self.on_batch = on_batch
        # Requests in flight in the server (HTTP layer); when the batch already holds images of
        # all of them, nobody else can join it and the max_wait window is skipped.
        self.activity = activity
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._lock = threading.Lock()
        # Counters, read by /metrics and tests (written only by the worker thread).
        self.forward_passes = 0
        self.images_processed = 0
        self.dropped_cancelled = 0
        self.rejected_full = 0
        self.in_flight = 0  # images in the forward pass running right now
        self.batch_sizes: list[int] = []
        self._seconds_per_image = 0.05  # running estimate for Retry-After

    # ---------------------------------------------------------------- lifecycle
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def start(self) -> MicroBatcher:
        """Start the worker thread (idempotent)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                self._thread = threading.Thread(
                    target=self._run, name=self.thread_name, daemon=True
                )
                self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batch in progress, fail whatever still waits, stop the thread."""
        self._stopping = True
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._put_stop(timeout)
            thread.join(timeout)
        self._fail_pending(BatcherStoppedError("the server is shutting down"))

    def _put_stop(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self._queue.put(_STOP, timeout=0.1)
                return
            except queue.Full:
                continue

    def _fail_pending(self, error: BaseException) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Item):
                item.loop.call_soon_threadsafe(_resolve, item.future, None, error)

    # ---------------------------------------------------------------- client side
    @property
    def queue_depth(self) -> int:
        """Items waiting for a forward pass (not counting the batch being computed)."""
        return self._queue.qsize()

    def retry_after_s(self) -> int:
        """Seconds a rejected client should wait: time to drain the current queue, at least 1."""
        return max(1, math.ceil(self.queue_depth * self._seconds_per_image))

    def enqueue(
        self, tensor: torch.Tensor, layers: frozenset[str]
    ) -> asyncio.Future[dict[str, np.ndarray]]:
        """Queue one preprocessed image; the future resolves to its features.

        Call on the event loop; await the future for `{layer: (dim,) float32}`. Raises
        QueueFullError when the queue is full and BatcherStoppedError when not running.
        Cancelling the future cancels the item: it is skipped before the forward pass.
        """
        if self._stopping:
            raise BatcherStoppedError("the server is shutting down")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, np.ndarray]] = loop.create_future()
        item = _Item(tensor=tensor, layers=frozenset(layers), future=future, loop=loop)
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.rejected_full += 1
            raise QueueFullError(
                f"the batch queue is full ({self.max_queue} images waiting); retry later",
                retry_after=self.retry_after_s(),
            ) from None
        return future

    @contextlib.contextmanager
    def expecting(self) -> Iterator[None]:
        """Announce one image that is being decoded; enqueue it inside the block."""
        with self._lock:
            self._incoming += 1
        try:
            yield
        finally:
            with self._lock:
                self._incoming -= 1

    # ---------------------------------------------------------------- worker side
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        with _worker_stream(self.featurizer):
            while True:
                first = self._queue.get()
                if first is _STOP:
                    return
                batch, stop = self._collect(first)
                self._process(batch)
                if stop:
                    return

    def _collect(self, first: _Item) -> tuple[list[_Item], bool]:
        """Gather up to max_batch_size items.

        Waits max_wait after the first item arrived, and up to max_decode_wait while requests
        are still decoding images they announced.
        """
        batch = [first]
        deadline = first.enqueued_at + self.max_wait_s
        decode_deadline = first.enqueued_at + self.max_decode_wait_s
        while len(batch) < self.max_batch_size:
            now = time.perf_counter()
            waiting_for_decodes = self._incoming > 0 and now < decode_deadline
            if not waiting_for_decodes and self._nothing_else_coming(len(batch)):
                break
            remaining = (decode_deadline if waiting_for_decodes else deadline) - now
            try:
                if remaining <= 0:
                    item = self._queue.get_nowait()
                elif waiting_for_decodes:  # re-check the announcements every millisecond
                    item = self._queue.get(timeout=min(remaining, 0.001))
                else:
                    item = self._queue.get(timeout=remaining)
            except queue.Empty:
                if remaining <= 0 or not waiting_for_decodes:
                    break
                continue
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _nothing_else_coming(self, batch_size: int) -> bool:
        """True when no other request is in flight: waiting max_wait would only add latency."""
        if self.activity is None or self._incoming > 0 or not self._queue.empty():
            return False
        return self.activity() <= batch_size

    def _process(self, batch: list[_Item]) -> None:
        live = [item for item in batch if not item.future.cancelled()]
        self.dropped_cancelled += len(batch) - len(live)
        groups: dict[tuple[Any, ...], list[_Item]] = {}
        for item in live:
            key = (tuple(item.tensor.shape), item.tensor.dtype)
            groups.setdefault(key, []).append(item)
        self.in_flight = len(live)
        try:
            for items in groups.values():
                self._forward_group(items)
        finally:
            self.in_flight = 0

    def _forward_group(self, items: list[_Item]) -> None:
        layers = sorted(frozenset().union(*(item.layers for item in items)))
        started = time.perf_counter()
        try:
            stacked = _stack(items, getattr(self.featurizer, "device", None))
            outputs = self.featurizer.forward(stacked, layers=layers)
        except BaseException as exc:  # every waiting request must hear about it
            log.exception("forward pass of %d images failed", len(items))
            for item in items:
                item.loop.call_soon_threadsafe(_resolve, item.future, None, exc)
            return
        seconds = time.perf_counter() - started
        for row, item in enumerate(items):
            # Copy the rows so each response does not keep the whole batch array alive.
            result = {name: np.array(outputs[name][row], copy=True) for name in item.layers}
            item.loop.call_soon_threadsafe(_resolve, item.future, result, None)
        self._record(len(items), seconds)

    def _record(self, size: int, seconds: float) -> None:
        self.forward_passes += 1
        self.images_processed += size
        self.batch_sizes.append(size)
        if len(self.batch_sizes) > 10_000:  # keep memory flat on long-running servers
            del self.batch_sizes[:5_000]
        per_image = seconds / size
        self._seconds_per_image = 0.8 * self._seconds_per_image + 0.2 * per_image
        if self.on_batch is not None:
            try:
                self.on_batch(size, seconds)
            except Exception:  # metrics must never break serving
                log.exception("on_batch hook failed")
