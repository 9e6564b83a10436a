"""Several replicas on one database: atomic claims, leases, takeover, and two real servers.

In-process tests run several `JobManager`s, each with its own `Database` (its own connection
pool, as a separate process would have), on SQLite and on PostgreSQL. The last test starts two
real `decaf serve` processes on one PostgreSQL and one data dir, kills one mid-job, and checks
that the other finishes the job and sees everything the first one made.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.job_owners import OWNERS_DIR, SharedSQLiteError
from service.jobs import JobManager
from service.process_lock import ProcessLock
from service.state import Database, JobRow, utcnow
from tests.service._service_helpers import stop_server_process
from tests.service._state_helpers import CLASS_COLOURS, image_bytes, make_image_tree, make_settings

REPO = Path(__file__).resolve().parents[2]
FINAL = ("succeeded", "failed", "cancelled", "interrupted")
HOST = socket.gethostname()


def here(name: str) -> str:
    """An owner id of a process on this machine (`host:pid:random` in real life)."""
    return f"{HOST}:{name}"


@contextmanager
def replicas(settings: Any, handlers: dict[str, Any], owners: list[str]) -> Iterator[list]:
    """One started JobManager per owner id, each on its own Database; all shut down after."""
    with ExitStack() as stack:
        managers = []
        for owner in owners:
            db = Database(settings.resolved_database_url)
            stack.callback(db.close)
            manager = JobManager(settings, db, handlers, owner=owner)
            manager.start()
            stack.callback(manager.shutdown)
            managers.append(manager)
        yield managers


@pytest.mark.usefixtures("state_database")
def test_concurrent_replicas_run_each_job_exactly_once(tmp_path: Path) -> None:
    # Four replicas of one worker each; every job is submitted to the first. Each job waits at
    # a barrier of four, so a round only passes with four jobs running at once, one per
    # replica: the other three must claim jobs they were not given, and all four keep racing
    # for the next rows, which a non-atomic claim would hand out twice.
    settings = make_settings(tmp_path, job_workers=1, job_poll_s=0.02)
    barrier = threading.Barrier(4)
    runs: list[tuple[str, str]] = []

    def meet(ctx: Any) -> dict[str, Any]:
        runs.append((ctx.job_id, threading.current_thread().name))
        barrier.wait(timeout=30)
        return {"n": ctx.params["n"]}

    owners = [here(f"r{n}") for n in range(4)]
    with replicas(settings, {"meet": meet}, owners) as managers:
        ids = [managers[0].submit("meet", {"n": n})["id"] for n in range(24)]
        done = [managers[(n + 1) % 4].wait(job_id, timeout_s=120) for n, job_id in enumerate(ids)]
    assert [job["status"] for job in done] == ["succeeded"] * 24, done
    assert sorted(job_id for job_id, _ in runs) == sorted(ids)  # each ran, exactly once
    assert all(job["attempts"] == 1 for job in done)
    with managers[0].db.session() as session:
        ran_by = {session.get(JobRow, job_id).owner for job_id in ids}
    assert ran_by == set(owners)


@pytest.mark.usefixtures("state_database")
def test_a_replica_that_stops_renewing_its_lease_is_taken_over_and_fenced(tmp_path: Path) -> None:
    # Replica A freezes mid-job (its heartbeat stops: a stopped VM, a partition); B takes the
    # job over once A's lease has run out. When A wakes up, nothing it writes lands.
    settings = make_settings(tmp_path, job_lease_s=1.0, job_poll_s=0.05)
    first_started, wake_first = threading.Event(), threading.Event()

    def task(ctx: Any) -> dict[str, Any]:
        if ctx.attempt == 1:
            first_started.set()
            assert wake_first.wait(timeout=60)
            ctx.report({"done": 1, "by": "a"}, force=True)  # fenced: A lost the job
            ctx.stop_point()  # A's stop flag was set when its write found the job gone
            return {"by": "a"}
        return {"by": "b"}

    with replicas(settings, {"task": task}, [here("replica-a")]) as (a,):
        job = a.submit("task", {})
        assert first_started.wait(timeout=60)
        a._heartbeat_stop.set()  # A freezes
        with replicas(settings, {"task": task}, [here("replica-b")]) as (b,):
            taken = b.wait(job["id"], timeout_s=60)
            wake_first.set()
            a.shutdown()  # returns once A's job thread has ended
            final = b.get(job["id"])
    assert taken["status"] == "succeeded" and taken["result"] == {"by": "b"}, taken
    assert taken["attempts"] == 2
    takeover = f"replica {here('replica-a')} stopped renewing its lease; {here('replica-b')} took"
    assert takeover in taken["note"]
    assert final == taken  # A's progress and outcome were not written


def _insert_running(db: Database, job_id: str, owner: str) -> None:
    with db.session() as session:
        session.add(
            JobRow(
                id=job_id,
                kind="task",
                status="running",
                params={},
                attempts=1,
                owner=owner,
                lease_expires_at=utcnow() + timedelta(hours=1),
            )
        )


def test_sqlite_sees_a_dead_owner_at_once_and_a_live_one_never(tmp_path: Path) -> None:
    # SQLite: every process is on one machine, so a lock file per process tells whether a
    # running job's owner is alive; a restarted server resumes without waiting out the lease.
    settings = make_settings(tmp_path, job_lease_s=3600, job_poll_s=0.05)
    db = Database(settings.resolved_database_url)
    owners = tmp_path / "data" / OWNERS_DIR
    owners.mkdir(parents=True)
    (owners / f"{here('dead')}.lock").write_text("")  # what a SIGKILLed process leaves
    (owners / "otherhost:5:ee.lock").write_text("")  # another machine's: its locks may not show
    alive = ProcessLock(owners / f"{here('alive')}.lock")
    assert alive.acquire()
    # A forked child does not inherit a lockf lock: an orphaned decode worker of a killed
    # server never makes it look alive.
    forked_owner = ProcessLock(owners / f"{here('forked')}.lock")
    assert forked_owner.acquire()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child just sits there
        time.sleep(60)
        os._exit(0)
    try:
        forked_owner.release()  # the parent "dies"; the child lives on
        _insert_running(db, "of-dead", here("dead"))
        _insert_running(db, "of-forked", here("forked"))
        _insert_running(db, "of-alive", here("alive"))
        _insert_running(db, "of-unknown", here("no-lock-file"))
        _insert_running(db, "of-other-host", "otherhost:5:ee")
        with replicas(settings, {"task": lambda ctx: {"ok": True}}, [here("restarted")]) as (jobs,):
            assert jobs.wait("of-dead")["status"] == "succeeded"
            assert jobs.wait("of-forked")["status"] == "succeeded"
            assert jobs._claim_next() is None  # the others wait for their leases
            for job_id in ("of-alive", "of-unknown", "of-other-host"):
                assert jobs.get(job_id)["status"] == "running"
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        alive.release()
        db.close()
    # The next start sweeps the files of dead processes that no longer own a running job.
    with replicas(settings, {"task": lambda ctx: {"ok": True}}, [here("next")]):
        pass
    left = sorted(path.name for path in owners.iterdir())
    assert left == sorted([f"{here('alive')}.lock", "otherhost:5:ee.lock"])  # own running jobs


def test_sqlite_refuses_a_data_dir_another_machine_serves(tmp_path: Path) -> None:
    # SQLite on shared storage, used from two machines, would corrupt: the second one refuses.
    settings = make_settings(tmp_path)
    owners = tmp_path / "data" / OWNERS_DIR
    owners.mkdir(parents=True)
    elsewhere = ProcessLock(owners / "otherhost:7:ff.lock")
    assert elsewhere.acquire()  # a live server on another machine
    db = Database(settings.resolved_database_url)
    try:
        jobs = JobManager(settings, db, {"task": lambda ctx: {}})
        with pytest.raises(SharedSQLiteError, match=r"host 'otherhost'.*PostgreSQL"):
            jobs.start()
        elsewhere.release()  # it stopped: this machine may take the data dir now
        jobs.start()
        jobs.shutdown()
    finally:
        elsewhere.release()
        db.close()


# --------------------------------------------------------------------------- two real servers
@contextmanager
def decaf_replica(tmp_path: Path, name: str, env: dict[str, str]) -> Iterator[dict[str, Any]]:
    """`decaf serve` (random weights) with the test hooks of _replica_server.py."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable, str(REPO / "tests" / "service" / "_replica_server.py"), "serve",
        "--weights", "random", "--host", "127.0.0.1", "--port", str(port),
        "--layers", "decaf6", "--max-batch-size", "8", "--decode-threads", "1",
    ]  # fmt: skip
    log_path = tmp_path / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        try:
            yield {"name": name, "process": process, "client": client, "log": log_path}
        finally:
            client.close()
            stop_server_process(process, timeout_s=60)


def _wait_ready(replica: dict[str, Any]) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if replica["process"].poll() is not None:
            raise AssertionError(f"{replica['name']} exited:\n{replica['log'].read_text()[-3000:]}")
        try:
            if replica["client"].get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{replica['name']} not ready:\n{replica['log'].read_text()[-3000:]}")


def _wait_job(client: httpx.Client, job_id: str, timeout_s: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in FINAL:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


def _wait_file(path: Path, replicas: list[dict[str, Any]], timeout_s: float = 180) -> str:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        for replica in replicas:
            assert replica["process"].poll() is None, replica["log"].read_text()[-3000:]
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)
    return path.read_text()


def _extract(client: httpx.Client, root: str, name: str, **extra: Any) -> dict[str, Any]:
    body = {"root": root, "name": name, "layers": ["decaf6"], "batch_size": 8, **extra}
    response = client.post("/v1/extractions", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def _few_shot_probe(client: httpx.Client) -> dict[str, Any]:
    files, labels = [], []
    for label in ("cat", "dog"):
        for seed in range(3):
            data = image_bytes(CLASS_COLOURS[label], seed=seed + 70)
            files.append(("files", (f"{label}{seed}.jpg", data, "image/jpeg")))
            labels.append(label)
    response = client.post(
        "/v1/probes", files=files, data={"labels": json.dumps(labels), "name": "few", "C": "1.0"}
    )
    assert response.status_code == 201, response.text
    return response.json()


def _runs(hook_dir: Path) -> list[tuple[str, int, int]]:
    lines = (hook_dir / "runs.log").read_text().split("\n")
    return [
        (job, int(attempt), int(pid)) for job, attempt, pid in (ln.split() for ln in lines if ln)
    ]


@pytest.mark.slow
def test_two_servers_on_one_postgres_and_one_data_dir(tmp_path: Path, postgres_server: Any) -> None:
    roots, hook_dir = tmp_path / "roots", tmp_path / "hooks"
    make_image_tree(roots / "small", per_class=2)
    make_image_tree(roots / "big", per_class=24)  # 48 images, 6 parts of 8
    hook_dir.mkdir()
    (hook_dir / "hold-big").touch()  # whoever starts `big` first stops in its middle
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "DECAF_DATABASE_URL": postgres_server.database(),
        "DECAF_DATA_DIR": str(tmp_path / "data"),
        "DECAF_DATA_ROOTS": str(roots),
        "DECAF_API_KEY": "",
        # Long enough that a heartbeat starved by a busy CI machine never loses a live job
        # (that would show as attempts == 2 below); the takeover waits it out once.
        "DECAF_JOB_LEASE_S": "8",
        "DECAF_JOB_POLL_S": "0.2",
        "DECAF_TEST_HOOK_DIR": str(hook_dir),
    }
    with decaf_replica(tmp_path, "a", env) as a, decaf_replica(tmp_path, "b", env) as b:
        pair = [a, b]
        for replica in pair:
            _wait_ready(replica)
        ca, cb = a["client"], b["client"]

        # Each job runs exactly once, whichever replica it was submitted to.
        submitted = [_extract(pair[n % 2]["client"], "small", f"small{n}") for n in range(6)]
        done = [
            _wait_job(pair[(n + 1) % 2]["client"], job["id"]) for n, job in enumerate(submitted)
        ]
        assert [job["status"] for job in done] == ["succeeded"] * 6, done
        assert all(job["attempts"] == 1 for job in done)
        started = [job for job, _, _ in _runs(hook_dir)]
        assert sorted(started) == sorted(job["id"] for job in submitted)

        # What one replica made, the other sees: stores, probes, probe fits.
        for client in (ca, cb):
            listed = {d["name"]: d for d in client.get("/v1/datasets").json()["datasets"]}
            assert {f"small{n}" for n in range(6)} <= set(listed)
            assert all(listed[f"small{n}"]["complete"] for n in range(6))
        probe = _few_shot_probe(ca)
        assert cb.get(f"/v1/probes/{probe['id']}").json()["classes"] == ["cat", "dog"]
        dog = image_bytes(CLASS_COLOURS["dog"], seed=5)
        predicted = cb.post(
            f"/v1/probes/{probe['id']}/predict", files=[("files", ("d.jpg", dog, "image/jpeg"))]
        )
        assert predicted.status_code == 200, predicted.text
        fit = cb.post("/v1/probes", json={"dataset": "small3", "layer": "decaf6", "C": 1.0})
        assert fit.status_code == 202, fit.text
        fitted = _wait_job(ca, fit.json()["id"])
        assert fitted["status"] == "succeeded", fitted
        fitted_probe = ca.get(f"/v1/probes/{fitted['result']['probe_id']}").json()
        assert fitted_probe["dataset"] == "small3"

        # A replica killed mid-job: the other takes the job over once the lease has run out
        # and resumes the store from the parts already written.
        big = _extract(ca, "big", "big", part_size=8)
        holder_pid = int(_wait_file(hook_dir / "holding-big", pair))
        holder = next(r for r in pair if r["process"].pid == holder_pid)
        survivor = b if holder is a else a
        holder["process"].send_signal(signal.SIGKILL)
        holder["process"].wait(timeout=60)
        resumed = _wait_job(survivor["client"], big["id"])
        assert resumed["status"] == "succeeded", resumed
        assert resumed["attempts"] == 2
        assert "stopped renewing its lease" in resumed["note"]
        assert resumed["result"]["resumed_parts"] >= 1
        assert resumed["result"]["num_images"] == 48
        info = survivor["client"].get("/v1/datasets/big").json()
        assert info["complete"] and info["class_counts"] == {"cat": 24, "dog": 24}
        big_runs = [(attempt, pid) for job, attempt, pid in _runs(hook_dir) if job == big["id"]]
        assert big_runs == [(1, holder_pid), (2, survivor["process"].pid)]
