"""JobManager: real extraction jobs (random-weight AlexNet), cancellation, crash recovery, and
handlers registered from outside (the manager knows no kinds of its own)."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from featurizer.store import read_manifest
from service.job_context import JobContext
from service.jobs import (
    JobConflictError,
    JobManager,
    JobNotFoundError,
    UnknownJobKindError,
)
from service.state import Database, DatasetRow, JobRow
from service.tasks.extraction import extraction_handler
from tests.service._state_helpers import make_image_tree, make_settings

# Every test here runs on SQLite and on PostgreSQL (tests/service/conftest.py).
pytestmark = pytest.mark.usefixtures("state_database")


@pytest.fixture(scope="module")
def featurizer() -> Any:
    from featurizer.extractor import Featurizer

    return Featurizer(("decaf6", "decaf7"), weights="random")


class CountingFactory:
    """Hands out the one shared featurizer (jobs run one at a time here) and counts calls."""

    def __init__(self, featurizer: Any) -> None:
        self.featurizer = featurizer
        self.calls: list[tuple[str, Any, str, str]] = []

    def __call__(self, backbone: str, layers: Any, precision: str, crop: str) -> Any:
        self.calls.append((backbone, tuple(layers), precision, crop))
        assert tuple(layers) == self.featurizer.layers
        return self.featurizer


@pytest.fixture
def env(tmp_path: Path, featurizer: Any) -> dict[str, Any]:
    settings = make_settings(tmp_path)
    db = Database.from_settings(settings)
    factory = CountingFactory(featurizer)
    yield {"settings": settings, "db": db, "factory": factory, "tmp": tmp_path}
    db.close()


def handlers(env: dict[str, Any]) -> dict[str, Any]:
    return {"extraction": extraction_handler(env["factory"])}


def manager(env: dict[str, Any], extra: dict[str, Any] | None = None, **kwargs: Any) -> JobManager:
    jobs = JobManager(env["settings"], env["db"], {**handlers(env), **(extra or {})}, **kwargs)
    jobs.start()
    return jobs


def extraction_params(env: dict[str, Any], name: str, root: Path, **extra: Any) -> dict:
    params = {
        "root": str(root),
        "out": str(Path(env["settings"].data_dir).resolve() / "datasets" / name),
        "name": name,
        "layers": ["decaf6", "decaf7"],
        "crop": "center",
        "precision": "fp32",
        "batch_size": 8,
        "part_size": 8,
        "engine": "local",
        "overwrite": False,
    }
    params.update(extra)
    return params


def test_extraction_job_runs_to_completion(env: dict[str, Any]) -> None:
    root = make_image_tree(env["tmp"] / "roots" / "pets", per_class=5)
    (root / "cat" / "broken.jpg").write_bytes(b"not an image at all")
    jobs = manager(env)
    try:
        job = jobs.submit("extraction", extraction_params(env, "pets", root), dataset="pets")
        assert job["status"] == "queued" and job["kind"] == "extraction"
        done = jobs.wait(job["id"])
    finally:
        jobs.shutdown()
    assert done["status"] == "succeeded", done
    assert done["result"]["num_images"] == 10 and done["result"]["num_errors"] == 1
    assert done["progress"]["done"] == done["progress"]["total"] == 11
    assert done["progress"]["errors"] == 1 and done["progress"]["images_per_s"] > 0
    assert done["attempts"] == 1 and done["started_at"] and done["finished_at"]
    manifest = read_manifest(done["result"]["store"])
    assert manifest["complete"] and manifest["classes"] == ["cat", "dog"]
    with env["db"].session() as session:
        assert session.get(DatasetRow, "pets").job_id == job["id"]
    # Jobs without a backbone parameter (queued by an older server) use the default one.
    assert env["factory"].calls == [("alexnet", ("decaf6", "decaf7"), "fp32", "center")]


def test_failed_job_keeps_the_reason(env: dict[str, Any]) -> None:
    empty = env["tmp"] / "roots" / "empty"
    empty.mkdir(parents=True)
    jobs = manager(env)
    try:
        job = jobs.submit("extraction", extraction_params(env, "empty", empty))
        done = jobs.wait(job["id"])
    finally:
        jobs.shutdown()
    assert done["status"] == "failed"
    assert "no files" in done["error"]


def test_unknown_kind_and_unknown_job(env: dict[str, Any]) -> None:
    jobs = manager(env)
    try:
        with pytest.raises(UnknownJobKindError, match="unknown job kind 'mining'") as caught:
            jobs.submit("mining", {})
        assert "['extraction']" in str(caught.value) and caught.value.http_status == 422
        with pytest.raises(UnknownJobKindError):
            jobs.list(kind="mining")
        with pytest.raises(JobNotFoundError):
            jobs.get("nope")
        with pytest.raises(JobNotFoundError):
            jobs.cancel("nope")
    finally:
        jobs.shutdown()


def paused_extraction(env: dict[str, Any], after: int, reached: threading.Event) -> Any:
    """The extraction handler, held in its progress report once `after` files are done until
    the job is told to stop (cancel or shutdown) — once; later jobs run straight through.

    So how fast this machine extracts cannot decide whether the job is still running when the
    test stops it.
    """
    run = extraction_handler(env["factory"])

    def handler(ctx: Any) -> dict[str, Any]:
        report = ctx.report

        def report_then_pause(progress: dict[str, Any], *, force: bool = False) -> None:
            report(progress, force=force)
            if progress.get("done", 0) >= after and not reached.is_set():
                reached.set()
                ctx.stop_event.wait(timeout=60)

        ctx.report = report_then_pause
        return run(ctx)

    return handler


def test_cancel_queued_and_running_then_resume(env: dict[str, Any]) -> None:
    root = make_image_tree(env["tmp"] / "roots" / "big", per_class=24)  # 48 images, 6 parts
    small = make_image_tree(env["tmp"] / "roots" / "small", per_class=2)
    reached = threading.Event()
    # One worker: the second job waits in the queue.
    jobs = manager(env, {"extraction": paused_extraction(env, 8, reached)})
    try:
        running = jobs.submit("extraction", extraction_params(env, "big", root), dataset="big")
        queued = jobs.submit("extraction", extraction_params(env, "small", small))
        assert jobs.cancel(queued["id"])["status"] == "cancelled"
        assert reached.wait(timeout=60), "the job never reported 8 files done"
        asked = jobs.cancel(running["id"])
        assert asked["cancel_requested"] is True
        stopped = jobs.wait(running["id"])
        assert stopped["status"] == "cancelled"
        assert jobs.get(queued["id"])["status"] == "cancelled"
        assert jobs.get(queued["id"])["started_at"] is None  # never ran
        with pytest.raises(JobConflictError, match="already finished"):
            jobs.cancel(running["id"])
        # Submitting the same extraction again picks up the parts already written.
        again = jobs.submit("extraction", extraction_params(env, "big", root), dataset="big")
        finished = jobs.wait(again["id"])
    finally:
        jobs.shutdown()
    assert finished["status"] == "succeeded", finished
    assert finished["result"]["resumed_parts"] >= 1
    assert finished["result"]["num_images"] == 48
    listed = {job["id"] for job in jobs.list()}
    assert {running["id"], queued["id"], again["id"]} <= listed
    assert [job["id"] for job in jobs.list(status="succeeded")] == [again["id"]]


def _insert(db: Database, job_id: str, status: str, params: dict, **fields: Any) -> None:
    with db.session() as session:
        session.add(JobRow(id=job_id, kind="extraction", status=status, params=params, **fields))


def test_start_recovers_jobs_a_crash_left_behind(env: dict[str, Any]) -> None:
    root = make_image_tree(env["tmp"] / "roots" / "crash", per_class=3)
    db = env["db"]
    # What a SIGKILLed server leaves in the database:
    _insert(db, "was-running", "running", extraction_params(env, "a", root), attempts=1)
    _insert(db, "was-queued", "queued", extraction_params(env, "b", root))
    _insert(db, "crash-loop", "running", extraction_params(env, "c", root), attempts=3)
    _insert(
        db,
        "was-cancelling",
        "running",
        extraction_params(env, "d", root),
        attempts=1,
        cancel_requested=True,
    )
    _insert(db, "finished", "succeeded", extraction_params(env, "e", root), attempts=1)
    jobs = manager(env)
    try:
        resumed = jobs.wait("was-running")
        queued = jobs.wait("was-queued")
    finally:
        jobs.shutdown()
    assert resumed["status"] == "succeeded" and resumed["attempts"] == 2
    assert "resumed after the server stopped" in resumed["note"]
    assert queued["status"] == "succeeded" and queued["attempts"] == 1
    looping = jobs.get("crash-loop")
    assert looping["status"] == "interrupted" and "crash loop" in looping["error"]
    assert jobs.get("was-cancelling")["status"] == "cancelled"
    assert jobs.get("finished")["status"] == "succeeded"  # untouched
    assert read_manifest(resumed["result"]["store"])["complete"]


def test_graceful_shutdown_pauses_and_next_start_resumes(env: dict[str, Any]) -> None:
    root = make_image_tree(env["tmp"] / "roots" / "pause", per_class=16)  # 32 images
    reached = threading.Event()
    jobs = manager(env, {"extraction": paused_extraction(env, 8, reached)})
    job = jobs.submit("extraction", extraction_params(env, "pause", root))
    assert reached.wait(timeout=60), "the job never reported 8 files done"
    jobs.shutdown()
    paused = jobs.get(job["id"])
    assert paused["status"] == "queued", paused
    assert "paused by a server shutdown" in paused["note"]
    again = manager(env)
    try:
        done = again.wait(job["id"])
    finally:
        again.shutdown()
    assert done["status"] == "succeeded"
    assert done["result"]["resumed_parts"] >= 1 and done["result"]["num_images"] == 32


class HeldFeaturizer:
    """The real featurizer, except that forward pass number `hold_at` waits for `release`.

    Lets a test act while a job is known to be mid-extraction, however fast or loaded the
    machine is (a job of tiny images can otherwise finish before the test gets to act).
    """

    def __init__(self, featurizer: Any, hold_at: int) -> None:
        self._featurizer = featurizer
        self.hold_at = hold_at
        self.forward_calls = 0
        self.holding = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._featurizer, name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.forward_calls += 1
        if self.forward_calls == self.hold_at:
            self.holding.set()
            if not self.release.wait(timeout=60):
                raise RuntimeError("the test never released the held forward pass")
        return self._featurizer.forward(*args, **kwargs)


def test_cancel_flag_set_by_another_process_is_noticed(env: dict[str, Any]) -> None:
    # With several server workers, DELETE may land in a process that does not run the job:
    # the only trace is the flag in the database, which the running job polls.
    root = make_image_tree(env["tmp"] / "roots" / "remote", per_class=20)  # 40 images, 5 batches
    held = HeldFeaturizer(env["factory"].featurizer, hold_at=2)
    env["factory"].featurizer = held
    # Poll the flag at every batch (the default throttles it to once per second, which a job of
    # 5 tiny batches can outrun: that race, not a missed flag, made this test flaky).
    jobs = manager(env, cancel_poll_interval_s=0.0)
    other_process = Database(env["settings"].resolved_database_url)  # its own connections
    try:
        job = jobs.submit("extraction", extraction_params(env, "remote", root))
        assert held.holding.wait(timeout=60), "the job never reached its second batch"
        with other_process.session() as session:
            session.get(JobRow, job["id"]).cancel_requested = True
        held.release.set()
        final = jobs.wait(job["id"])
    finally:
        held.release.set()
        jobs.shutdown()
        other_process.close()
    assert final["status"] == "cancelled", final
    assert final["note"] == "cancelled by request" and final["cancel_requested"] is True
    # Stopped right after the batch that was running when the flag was written...
    assert held.forward_calls == 2
    # ...keeping the two finished parts (part_size 8) for a resume, and no more.
    store = Path(final["params"]["out"])
    assert len(sorted(store.glob("part-*.parquet"))) == 2
    assert read_manifest(store)["complete"] is False


def test_cancel_poll_reads_the_database_at_most_once_per_interval(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # should_stop() runs after every batch and must not cost a database read each time; a
    # cancel written by another process is seen within one interval instead.
    _insert(env["db"], "job", "running", {})
    ctx = JobContext(
        job_id="job",
        kind="extraction",
        params={},
        attempt=1,
        settings=env["settings"],
        db=env["db"],
        stop_event=threading.Event(),
        _report=lambda progress, force: None,
        cancel_poll_interval_s=0.2,
    )
    now = [100.0]
    # A fake clock for service.job_context only (the real `time` module stays untouched).
    monkeypatch.setattr("service.job_context.time", SimpleNamespace(monotonic=lambda: now[0]))
    assert ctx.should_stop() is False  # the first call reads the flag
    with env["db"].session() as session:
        session.get(JobRow, "job").cancel_requested = True
    now[0] += 0.1
    assert ctx.should_stop() is False  # within the interval: not read again
    now[0] += 0.11
    assert ctx.should_stop() is True  # interval over: read, and remembered
    assert ctx.stop_event.is_set()


# --------------------------------------------------------------------------- custom handlers
def test_a_handler_registered_from_outside_runs_and_reports(env: dict[str, Any]) -> None:
    started = threading.Event()
    release = threading.Event()
    seen: list[JobContext] = []

    def count_words(ctx: JobContext) -> dict[str, Any]:
        seen.append(ctx)
        started.set()
        assert release.wait(timeout=60), "the test never released the job"
        ctx.report({"done": 1, "total": 1}, force=True)
        return {"words": len(ctx.params["text"].split())}

    jobs = manager(env, extra={"count_words": count_words})
    try:
        assert jobs.kinds == ["count_words", "extraction"]
        job = jobs.submit("count_words", {"text": "a few words here"})
        assert started.wait(timeout=60)
        assert jobs.get(job["id"])["status"] == "running"
        assert [j["id"] for j in jobs.list(kind="count_words")] == [job["id"]]
        release.set()
        done = jobs.wait(job["id"])
    finally:
        release.set()
        jobs.shutdown()
    assert done["status"] == "succeeded" and done["result"] == {"words": 4}
    assert done["progress"] == {"done": 1, "total": 1}
    assert seen[0].kind == "count_words" and seen[0].attempt == 1


def test_a_cancelled_custom_handler_stops_at_its_stop_point(env: dict[str, Any]) -> None:
    started = threading.Event()
    cancelled = threading.Event()

    def waits_for_cancel(ctx: JobContext) -> dict[str, Any]:
        started.set()
        assert cancelled.wait(timeout=60)
        ctx.stop_point()  # raises JobCancelledError: the cancel was asked
        raise AssertionError("stop_point did not stop the job")

    jobs = manager(env, extra={"slow": waits_for_cancel})
    try:
        job = jobs.submit("slow", {})
        assert started.wait(timeout=60)
        assert jobs.cancel(job["id"])["cancel_requested"] is True
        cancelled.set()
        final = jobs.wait(job["id"])
    finally:
        cancelled.set()
        jobs.shutdown()
    assert final["status"] == "cancelled" and final["note"] == "cancelled by request"


def test_a_recovered_job_of_a_kind_nobody_handles_fails_clearly(env: dict[str, Any]) -> None:
    _insert(env["db"], "orphan-kind", "queued", {})
    with env["db"].session() as session:
        session.get(JobRow, "orphan-kind").kind = "retired_kind"
    jobs = manager(env)
    try:
        final = jobs.wait("orphan-kind")
    finally:
        jobs.shutdown()
    assert final["status"] == "failed"
    assert "no handler for job kind 'retired_kind'" in final["error"]


def test_a_manager_needs_handlers(env: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="at least one handler"):
        JobManager(env["settings"], env["db"], {})
