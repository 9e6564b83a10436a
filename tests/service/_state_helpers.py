"""Shared helpers of the jobs/datasets/probes/restart tests (not a conftest: plain functions)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tests.service._service_helpers import problem

API_KEY = "test-key-123"
# One colour per class, far apart, so even random-weight features separate the classes.
CLASS_COLOURS = {
    "cat": (220, 40, 40),
    "dog": (40, 200, 60),
    "owl": (40, 60, 220),
}


def image_bytes(colour: tuple[int, int, int], *, seed: int = 0, size: int = 40) -> bytes:
    """A small JPEG: the class colour plus a little noise, so no two images are identical."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 12, (size, size, 3)), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def make_image_tree(
    root: Path, classes: Sequence[str] = ("cat", "dog"), per_class: int = 4, size: int = 40
) -> Path:
    """root/<class>/<i>.jpg for each class; returns root."""
    for c_index, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            data = image_bytes(CLASS_COLOURS[name], seed=c_index * 1000 + i, size=size)
            (folder / f"{i:04d}.jpg").write_bytes(data)
    return root


def make_settings(tmp_path: Path, **overrides: Any) -> Any:
    from service.settings import Settings

    roots = tmp_path / "roots"
    roots.mkdir(exist_ok=True)
    values: dict[str, Any] = {
        "weights": "random",
        "data_dir": tmp_path / "data",
        "data_roots": [roots],
        "layers": ["decaf6", "decaf7"],
        "max_batch_size": 8,
        "decode_threads": 1,
        "job_workers": 1,
    }
    values.update(overrides)
    return Settings(**values)


@contextmanager
def running_client(settings: Any, featurizer: Any) -> Iterator[Any]:
    """A TestClient over create_app (lifespan included: database and job manager start)."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    app = create_app(settings, featurizer=featurizer)
    with TestClient(app) as client:
        yield client


def wait_for_job(client: Any, job_id: str, timeout_s: float = 60.0, **kwargs: Any) -> dict:
    """Poll GET /v1/jobs/{id} until the job is final."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get(f"/v1/jobs/{job_id}", **kwargs).json()
        if job["status"] in ("succeeded", "failed", "cancelled", "interrupted"):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} did not finish: {job}")
        time.sleep(0.05)


def error_message(response: Any) -> str:
    """The `detail` of the service's problem body (its shape checked: see `problem`)."""
    return problem(response)["detail"]
