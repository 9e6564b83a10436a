"""Shutting down a Ray this process started: never while Ray Data's pipeline threads still run.

A thread that touches Ray after `ray.shutdown()` makes Ray end the whole process with exit 1 and
no traceback. A fresh-clone `make test` died that way: the cancelled-extraction test's pipeline
was still shutting down when the module's fixture shut Ray down. No Ray is needed here: a fake
module records when `shutdown` is called, and the threads are plain threads under Ray Data's
names.
"""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace

import pytest

from featurizer.engines import ray_cluster
from featurizer.engines.ray_cluster import PIPELINE_THREAD_PREFIXES, pipeline_threads, shutdown_ray


def _fake_ray(events: list[str]) -> SimpleNamespace:
    return SimpleNamespace(shutdown=lambda: events.append("shutdown"))


def _pipeline_thread(name: str, release: threading.Event, events: list[str]) -> threading.Thread:
    def run() -> None:
        release.wait()
        events.append(f"{name} ended")

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def test_only_ray_data_pipeline_threads_are_waited_for():
    release = threading.Event()
    threads = [_pipeline_thread(f"{prefix}x", release, []) for prefix in PIPELINE_THREAD_PREFIXES]
    others = [_pipeline_thread(name, release, []) for name in ("Prefetcher", "decaf-part-writer")]
    try:
        assert set(threads) <= set(pipeline_threads())
        assert not set(others) & set(pipeline_threads())
    finally:
        release.set()
        for thread in threads + others:
            thread.join()


class _EndsWhenJoined(threading.Thread):
    """A pipeline thread that finishes only once somebody waits for it: whether Ray is shut
    down before or after it ended depends on the join alone, not on the scheduler."""

    def __init__(self, name: str, events: list[str]) -> None:
        super().__init__(name=name, daemon=True)
        self.release = threading.Event()
        self.events = events

    def run(self) -> None:
        self.release.wait()
        self.events.append(f"{self.name} ended")

    def join(self, timeout: float | None = None) -> None:
        self.release.set()
        super().join(timeout)


def test_ray_is_shut_down_after_the_pipeline_threads_end():
    events: list[str] = []
    thread = _EndsWhenJoined("StreamingExecutor-ds1", events)
    thread.start()
    try:
        shutdown_ray(_fake_ray(events))
        assert events == ["StreamingExecutor-ds1 ended", "shutdown"]
    finally:
        thread.join()


def test_a_thread_that_never_ends_delays_the_shutdown_by_the_drain_time_only(caplog):
    events: list[str] = []
    release = threading.Event()
    thread = _pipeline_thread("iter_threaded", release, events)
    try:
        with caplog.at_level(logging.WARNING, logger=ray_cluster.__name__):
            shutdown_ray(_fake_ray(events), drain_s=0.0)
        assert events == ["shutdown"]
        assert "iter_threaded" in caplog.text
    finally:
        release.set()
        thread.join()


@pytest.mark.parametrize("owned", [True, False])
def test_the_session_shuts_down_only_a_ray_it_started(monkeypatch, owned):
    events: list[str] = []
    fake = _fake_ray(events)
    monkeypatch.setattr(ray_cluster, "connect", lambda ray, address: owned)
    monkeypatch.setattr(ray_cluster, "shutdown_ray", lambda ray: events.append("shutdown_ray"))
    with ray_cluster.ray_session(fake, None):
        pass
    assert events == (["shutdown_ray"] if owned else [])
