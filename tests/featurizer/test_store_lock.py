"""One writer per store: `STORE/_lock`, taken by create/resume, refused to a second writer.

Processes are forked (multiprocessing "fork"): the children only take or hold the lock. Every
wait is on an Event the test sets, or on a process ending.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import select
import socket
from pathlib import Path

import pytest

from featurizer.errors import StoreError
from featurizer.store import LOCK_NAME, FeatureStore, StoreLockedError
from tests.featurizer.store_fixtures import RUN, config

TIMEOUT_S = 60
fork = multiprocessing.get_context("fork")


def _hold_lock(out: Path, locked, release) -> None:  # runs in the child
    with FeatureStore.create_or_resume(out, config(), RUN):
        locked.set()
        release.wait(TIMEOUT_S)


def _idle(done) -> None:  # a forked worker that just lives on (like a DataLoader worker)
    done.wait(TIMEOUT_S)


def test_second_writer_in_another_process_is_refused_with_its_pid(tmp_path: Path) -> None:
    out = tmp_path / "store"
    locked, release = fork.Event(), fork.Event()
    holder = fork.Process(target=_hold_lock, args=(out, locked, release))
    holder.start()
    try:
        assert locked.wait(TIMEOUT_S), "the child never took the lock"
        with pytest.raises(StoreLockedError) as refused:
            FeatureStore.create_or_resume(out, config(), RUN)
        message = str(refused.value)
        host = socket.gethostname()
        assert f"written by another process (pid {holder.pid} on {host}, `" in message
        assert re.search(r", since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\)", message), message
        assert FeatureStore.open(out).manifest.complete is False  # readers take no lock
    finally:
        release.set()
        holder.join(TIMEOUT_S)
    assert holder.exitcode == 0
    with FeatureStore.create_or_resume(out, config(), RUN) as store:
        assert store.writable


def test_a_killed_writer_leaves_no_stale_lock(tmp_path: Path) -> None:
    out = tmp_path / "store"
    locked, release = fork.Event(), fork.Event()
    holder = fork.Process(target=_hold_lock, args=(out, locked, release))
    holder.start()
    assert locked.wait(TIMEOUT_S)
    holder.kill()  # SIGKILL: no cleanup code runs
    holder.join(TIMEOUT_S)
    assert (out / LOCK_NAME).exists()
    with FeatureStore.create_or_resume(out, config(), RUN) as store:
        assert store.writable


def _writer_with_a_worker(out: Path, locked, never, done, worker_pid) -> None:  # in the child
    FeatureStore.create_or_resume(out, config(), RUN)
    worker = fork.Process(target=_idle, args=(done,))
    worker.start()  # inherits the lock file's descriptor, as a DataLoader worker does
    worker_pid.value = worker.pid
    locked.set()
    # Killed while waiting: on an Event of its own, since a killed waiter would leave the
    # Event's condition waiting forever for its acknowledgement.
    never.wait(TIMEOUT_S)


def _wait_exit(pid_fd: int) -> bool:
    """A pidfd becomes readable when its process ends (also one that is not our child)."""
    return bool(select.select([pid_fd], [], [], TIMEOUT_S)[0])


def test_workers_forked_by_a_killed_writer_do_not_keep_the_lock(tmp_path: Path) -> None:
    """lockf, not flock: a flock would live on in the orphaned worker's inherited descriptor."""
    out = tmp_path / "store"
    locked, never, done = fork.Event(), fork.Event(), fork.Event()
    worker_pid = fork.Value("i", 0)
    writer = fork.Process(target=_writer_with_a_worker, args=(out, locked, never, done, worker_pid))
    writer.start()
    assert locked.wait(TIMEOUT_S)
    writer_fd, worker_fd = os.pidfd_open(writer.pid), os.pidfd_open(worker_pid.value)
    try:
        writer.kill()
        assert _wait_exit(writer_fd)
        assert not select.select([worker_fd], [], [], 0)[0], "the worker outlives the writer"
        with FeatureStore.create_or_resume(out, config(), RUN) as again:
            assert again.writable
    finally:
        done.set()
        _wait_exit(worker_fd)
        # Only now: the writer's exit sentinel stays open while the worker holds its copy.
        writer.join(TIMEOUT_S)
        os.close(writer_fd)
        os.close(worker_fd)


def test_second_writer_in_the_same_process_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "store"
    with FeatureStore.create_or_resume(out, config(), RUN) as first:
        with pytest.raises(StoreError, match=r"already being written by this process"):
            FeatureStore.create_or_resume(out, config(), RUN)
        assert first.writable  # the refused attempt did not drop the first one's lock
    with FeatureStore.create_or_resume(out, config(), RUN) as second:
        assert second.writable
    assert not second.writable
