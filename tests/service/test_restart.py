"""A real `decaf serve` process is SIGKILLed mid-extraction and started again.

After the restart: probes and finished jobs are still listed, the probe still predicts, and the
killed extraction job is resumed from the parts it had written and runs to completion.

"Mid-extraction" is not left to timing (on a fast machine 80 images are done before a poll sees
16): the first server runs `decaf serve` behind a gate the test controls (tests/_gate.py). Once
the test creates the arm file, a job's model passes go through `PASSES` times and the next one is
held until the process dies, so the kill lands with exactly `PASSES` parts written, every time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._gate import gated_decaf
from tests.service._service_helpers import stop_server_process
from tests.service._state_helpers import CLASS_COLOURS, image_bytes, make_image_tree

REPO = Path(__file__).resolve().parents[2]
FINAL = ("succeeded", "failed", "cancelled", "interrupted")
PASSES = 2  # model passes (of one 8-image part each) let through once the gate is armed


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def decaf_server(
    tmp_path: Path, log_name: str, arm_file: Path | None = None
) -> Iterator[tuple[subprocess.Popen, httpx.Client]]:
    """`python -m service.cli serve --weights random` on a free port, data under tmp_path;
    with `arm_file`: behind the gate (see the module docstring)."""
    port = _free_port()
    decaf, env = [sys.executable, "-m", "service.cli"], dict(os.environ)
    if arm_file is not None:  # job threads gated, the HTTP path not
        decaf, env = gated_decaf(arm_file, PASSES, thread_prefix="decaf-job")
    env.update(
        DECAF_DATA_DIR=str(tmp_path / "data"),
        DECAF_DATA_ROOTS=str(tmp_path / "roots"),
        DECAF_API_KEY="",
    )
    command = [
        *decaf, "serve", "--weights", "random",
        "--host", "127.0.0.1", "--port", str(port), "--layers", "decaf6,decaf7",
        "--max-batch-size", "8", "--decode-threads", "1",
    ]  # fmt: skip
    log = (tmp_path / log_name).open("wb")
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        _wait_ready(process, client, tmp_path / log_name)
        yield process, client
    finally:
        client.close()
        stop_server_process(process, timeout_s=30)
        log.close()


def _wait_ready(process: subprocess.Popen, client: httpx.Client, log_path: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited early:\n{log_path.read_text()[-3000:]}")
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"server not ready in time:\n{log_path.read_text()[-3000:]}")


def _wait_job(client: httpx.Client, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in FINAL:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not finished: {job}")


def _few_shot_probe(client: httpx.Client) -> dict[str, Any]:
    files, labels = [], []
    for label in ("cat", "dog"):
        for seed in range(3):
            data = image_bytes(CLASS_COLOURS[label], seed=seed + 50)
            files.append(("files", (f"{label}{seed}.jpg", data, "image/jpeg")))
            labels.append(label)
    response = client.post(
        "/v1/probes",
        files=files,
        data={"labels": json.dumps(labels), "name": "pets-few", "C": "1.0"},
    )
    assert response.status_code == 201, response.text
    return response.json()


@pytest.mark.slow
def test_sigkill_mid_extraction_then_restart(tmp_path: Path) -> None:
    roots = tmp_path / "roots"
    make_image_tree(roots / "small", per_class=3)
    make_image_tree(roots / "big", per_class=40)  # 80 images, 10 parts of 8

    arm_file = tmp_path / "arm-the-gate"
    with decaf_server(tmp_path, "first.log", arm_file) as (process, client):
        small = client.post(
            "/v1/extractions",
            json={"root": "small", "name": "small", "layers": ["decaf6"], "batch_size": 8},
        ).json()
        finished = _wait_job(client, small["id"])
        assert finished["status"] == "succeeded", finished
        fit = client.post(
            "/v1/probes", json={"dataset": "small", "layer": "decaf6", "C": 1.0, "name": "small"}
        ).json()
        fitted = _wait_job(client, fit["id"])
        assert fitted["status"] == "succeeded", fitted
        dataset_probe = fitted["result"]["probe_id"]
        few_shot = _few_shot_probe(client)

        arm_file.touch()  # the small job is done: from now on, job passes are counted
        big = client.post(
            "/v1/extractions",
            json={
                "root": "big",
                "name": "big",
                "layers": ["decaf6"],
                "batch_size": 8,
                "part_size": 8,
            },
        ).json()
        # Polls a state the gate guarantees (the deadline only turns a hang into a failure):
        # both parts on disk (written by writer threads, atomic renames). Not the job's progress,
        # whose database writes are throttled and may lag the parts.
        store = tmp_path / "data" / "datasets" / "big"
        deadline = time.monotonic() + 120
        while len(list(store.glob("part-*.parquet"))) < PASSES:
            job = client.get(f"/v1/jobs/{big['id']}").json()
            assert job["status"] in ("queued", "running"), job
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
        assert client.get(f"/v1/jobs/{big['id']}").json()["status"] == "running"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    with decaf_server(tmp_path, "second.log") as (_, client):
        # Probes and finished jobs survived.
        probe_ids = {p["id"] for p in client.get("/v1/probes").json()["probes"]}
        assert {dataset_probe, few_shot["id"]} <= probe_ids
        assert client.get(f"/v1/jobs/{small['id']}").json()["status"] == "succeeded"
        assert client.get(f"/v1/jobs/{fit['id']}").json()["result"]["probe_id"] == dataset_probe
        detail = client.get(f"/v1/probes/{dataset_probe}").json()
        assert detail["classes"] == ["cat", "dog"] and detail["provenance"]["layer"] == "decaf6"
        image = image_bytes(CLASS_COLOURS["dog"], seed=7)
        predicted = client.post(
            f"/v1/probes/{few_shot['id']}/predict",
            files=[("files", ("dog.jpg", image, "image/jpeg"))],
            params={"top_k": 2},
        )
        assert predicted.status_code == 200, predicted.text
        assert len(predicted.json()["results"][0]["predictions"]) == 2

        # The killed job was not lost: it is resumed from its finished parts.
        resumed = _wait_job(client, big["id"])
        assert resumed["status"] == "succeeded", resumed
        assert resumed["attempts"] == 2
        assert "resumed after the server stopped unexpectedly" in resumed["note"]
        assert resumed["result"]["resumed_parts"] == PASSES
        assert resumed["result"]["num_images"] == 80
        info = client.get("/v1/datasets/big").json()
        assert info["complete"] and info["class_counts"] == {"cat": 40, "dog": 40}
