"""Prometheus metrics of one app: requests, latency, batches, queue depth, images, throughput.

One registry per app (tests create many apps in one process). With several backbones the batch
and queue metrics add up over all micro-batchers.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServiceMetrics:
    """All service metrics in one registry per app."""

    def __init__(self, throughput_window_s: float = 10.0) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "decaf_http_requests",
            "HTTP requests by method, route template and status code",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "decaf_http_request_duration_seconds",
            "HTTP request latency by method and route template",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "decaf_batch_size",
            "Images per forward pass of the micro-batchers",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.forward_seconds = Histogram(
            "decaf_forward_duration_seconds",
            "Duration of one batched forward pass",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "decaf_batch_queue_depth",
            "Images waiting for a forward pass (all backbones)",
            registry=self.registry,
        )
        self.images = Counter(
            "decaf_images",
            "Uploaded images by outcome (ok: features returned, failed: per-image error)",
            ["outcome"],
            registry=self.registry,
        )
        self.images_per_second = Gauge(
            "decaf_images_per_second",
            f"Images through the model per second over the last {throughput_window_s:g} s",
            registry=self.registry,
        )
        self.in_flight_gauge = Gauge(
            "decaf_http_requests_in_flight",
            "HTTP requests being processed",
            registry=self.registry,
        )
        self.in_flight = 0  # plain int too: the batchers read it from their threads
        self.in_flight_gauge.set_function(lambda: self.in_flight)
        self.model_loaded = Gauge(
            "decaf_model_loaded", "1 when the models are loaded and serving", registry=self.registry
        )
        self._window_s = throughput_window_s
        self._recent: deque[tuple[float, int]] = deque()
        self.images_per_second.set_function(self._throughput)

    def on_batch(self, size: int, seconds: float) -> None:
        """Hook for MicroBatcher: runs in a batcher thread after each forward pass."""
        self.batch_size.observe(size)
        self.forward_seconds.observe(seconds)
        self._recent.append((time.monotonic(), size))

    def _throughput(self) -> float:
        now = time.monotonic()
        while self._recent and self._recent[0][0] < now - self._window_s:
            self._recent.popleft()
        return sum(size for _, size in self._recent) / self._window_s

    def record_images(self, *, ok: int, failed: int) -> None:
        if ok:
            self.images.labels("ok").inc(ok)
        if failed:
            self.images.labels("failed").inc(failed)

    def watch_queue(self, depth: Callable[[], float]) -> None:
        """Let the queue gauge read the batchers' depth at scrape time."""
        self.queue_depth.set_function(depth)
