"""Bad state on the server's disk is a clear 4xx, never a 500: invalid or damaged stores,
tampered probes, a full disk during a job, links leading out of the data roots, and the speed a
resumed job reports."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurizer.store import MANIFEST_NAME, part_name
from tests.service._service_helpers import problem
from tests.service._state_helpers import (
    CLASS_COLOURS,
    image_bytes,
    make_image_tree,
    make_settings,
    running_client,
    wait_for_job,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bad_state")


@pytest.fixture(scope="module")
def api(module_dir: Path, shared_featurizer: Any) -> Iterator[Any]:
    """One server with a good store `pets` (3 classes, 3 parts of 4 images)."""
    settings = make_settings(module_dir)
    make_image_tree(module_dir / "roots" / "pets", classes=("cat", "dog", "owl"), per_class=4)
    with running_client(settings, shared_featurizer) as client:
        client.datasets = Path(settings.data_dir).resolve() / "datasets"  # type: ignore[attr-defined]
        client.roots = module_dir / "roots"  # type: ignore[attr-defined]
        done = _extract(client, "pets", "pets")
        assert done["status"] == "succeeded", done
        yield client


def _extract(api: Any, root: str, name: str, **extra: Any) -> dict[str, Any]:
    body = {"root": root, "name": name, "layers": ["decaf6"], "batch_size": 4, "part_size": 4}
    response = api.post("/v1/extractions", json={**body, **extra})
    assert response.status_code == 202, response.text
    return wait_for_job(api, response.json()["id"])


def _copy_store(api: Any, name: str) -> Path:
    """A copy of the good store under another name (the job row is not needed to list it)."""
    source, copy = api.datasets / "pets", api.datasets / name
    copy.mkdir()
    for item in source.iterdir():
        (copy / item.name).write_bytes(item.read_bytes())
    return copy


def _listed(api: Any) -> dict[str, dict[str, Any]]:
    response = api.get("/v1/datasets")
    assert response.status_code == 200, response.text
    return {entry["name"]: entry for entry in response.json()["datasets"]}


INVALID_MANIFESTS = {
    "not-json": lambda m: '{"format_version": 2,',
    "part-outside": lambda m: json.dumps(
        {**m, "parts": [{**m["parts"][0], "file": "../pets/part-00000.parquet"}, *m["parts"][1:]]}
    ),
    "dims-as-text": lambda m: json.dumps({**m, "layers": {"decaf6": "4096"}}),
    "deeply-nested": lambda m: "[" * 100_000 + "]" * 100_000,
}


@pytest.mark.parametrize("name", list(INVALID_MANIFESTS))
def test_an_invalid_store_is_listed_with_its_reason_and_every_route_answers_409(
    api: Any, name: str
) -> None:
    store = _copy_store(api, name)
    manifest = json.loads((store / MANIFEST_NAME).read_text())
    (store / MANIFEST_NAME).write_text(INVALID_MANIFESTS[name](manifest))

    listed = _listed(api)
    assert listed["pets"]["status"] == "complete" and listed["pets"]["complete"] is True
    assert listed[name]["status"] == "invalid" and listed[name]["complete"] is False
    assert str(store / MANIFEST_NAME) in listed[name]["error"]

    detail = api.get(f"/v1/datasets/{name}")
    body = problem(detail, 409)
    assert f"dataset {name!r} is invalid: " in body["detail"] and "overwrite" in body["detail"]
    fit = api.post("/v1/probes", json={"dataset": name, "layer": "decaf6"})
    assert f"dataset {name!r} is invalid" in problem(fit, 409)["detail"]
    again = api.post("/v1/extractions", json={"root": "pets", "name": name, "layers": ["decaf6"]})
    assert f"dataset {name!r} is invalid" in problem(again, 409)["detail"]


def test_a_store_with_parts_of_the_wrong_dims_is_damaged_and_refused_for_probes(
    api: Any,
) -> None:
    store = _copy_store(api, "wrong-dims")
    table = pq.read_table(store / part_name(1))
    column = table.schema.get_field_index("decaf6")
    narrow = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(table.num_rows * 2, "f4")), 2)
    damaged = table.set_column(column, "decaf6", narrow)  # 2 floats a row, the manifest says 4096
    pq.write_table(damaged.replace_schema_metadata(table.schema.metadata), store / part_name(1))

    assert _listed(api)["wrong-dims"]["status"] == "complete"  # the manifest alone is valid
    detail = api.get("/v1/datasets/wrong-dims")
    assert detail.status_code == 200, detail.text
    info = detail.json()
    assert info["complete"] is False and info["status"] == "damaged"
    assert any("part-00001.parquet: layer 'decaf6'" in p for p in info["problems"])
    fit = api.post("/v1/probes", json={"dataset": "wrong-dims", "layer": "decaf6"})
    assert "part-00001.parquet: layer 'decaf6'" in problem(fit, 409)["detail"]


def _few_shot_probe(api: Any) -> tuple[str, Path]:
    labels = ["cat", "cat", "dog", "dog"]
    files = [
        ("files", (f"{i}.jpg", image_bytes(CLASS_COLOURS[label], seed=i), "image/jpeg"))
        for i, label in enumerate(labels)
    ]
    response = api.post("/v1/probes", files=files, data={"labels": json.dumps(labels)})
    assert response.status_code == 201, response.text
    probe_id = response.json()["id"]
    return probe_id, Path(api.app.state.settings.data_dir).resolve() / "probes" / probe_id


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_coef(path: Path) -> None:
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    arrays["coef"][0, 0] += 1.0
    np.savez(path, **arrays)


def _drop_a_class(path: Path) -> None:
    document = json.loads(path.read_text())
    document["classes"].pop()
    path.write_text(json.dumps(document))


TAMPERINGS = {
    "truncated arrays": ("arrays.npz", _truncate, "cannot be read"),
    "edited coefficient": ("arrays.npz", _edit_coef, "coef changed since the probe was saved"),
    "class dropped": ("probe.json", _drop_a_class, "'classes' must list at least 2 labels"),
    "truncated json": ("probe.json", _truncate, "is not valid JSON"),
}


@pytest.mark.parametrize("tampering", list(TAMPERINGS))
def test_a_tampered_probe_makes_predict_answer_409_with_the_reason(
    api: Any, tampering: str
) -> None:
    probe_id, directory = _few_shot_probe(api)
    name, tamper, reason = TAMPERINGS[tampering]
    tamper(directory / name)
    files = [("files", ("x.jpg", image_bytes(CLASS_COLOURS["cat"], seed=9), "image/jpeg"))]
    response = api.post(f"/v1/probes/{probe_id}/predict", files=files)
    detail = problem(response, 409)["detail"]
    assert f"probe {probe_id} cannot be loaded: " in detail and reason in detail, detail


def test_disk_full_in_a_job_is_a_clear_job_error_and_a_resubmission_resumes(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_table = pq.write_table

    def full_at_part_1(table: Any, where: Any, **kwargs: Any) -> None:
        if part_name(1) in str(where):
            raise OSError(errno.ENOSPC, "Error writing bytes to file: No space left on device")
        write_table(table, where, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(pq, "write_table", full_at_part_1)
        failed = _extract(api, "pets", "full")
    assert failed["status"] == "failed"
    assert failed["error"].startswith(
        f"disk full while writing part-00001.parquet in {api.datasets / 'full'} ("
    )
    assert "internal error" not in failed["error"] and "resumes" in failed["error"]

    resumed = _extract(api, "pets", "full")
    assert resumed["status"] == "succeeded", resumed
    result = resumed["result"]
    assert result["resumed_parts"] == 1 and result["files_this_run"] == 8
    # images/s over the 8 files of this attempt, not the 12 of the store.
    rate = result["progress"]["images_per_s"]
    assert rate == pytest.approx(8 / result["seconds"], rel=0.01, abs=0.02)


def test_links_leaving_the_data_roots_are_skipped_and_listed(api: Any, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    make_image_tree(secret, classes=("owl",), per_class=1)
    linked = api.roots / "linked"
    make_image_tree(linked, classes=("cat",), per_class=2)
    (linked / "dog").symlink_to(api.roots / "pets" / "dog")  # inside the data roots: followed
    (linked / "owl").symlink_to(secret / "owl")  # outside: skipped
    done = _extract(api, "linked", "linked")
    assert done["status"] == "succeeded", done
    assert done["result"]["num_images"] == 6
    assert done["result"]["skipped"] == {"symlink leaves the data roots": 1}
    errors = (api.datasets / "linked" / "_errors.jsonl").read_text().splitlines()
    assert [json.loads(line)["path"] for line in errors] == ["owl"]

    plain = _extract(api, "linked", "linked-plain", follow_symlinks=False)
    assert plain["result"]["num_images"] == 2
    assert plain["result"]["skipped"] == {"symlink not followed": 2}


HOLD_LOCK = """
import sys
from featurizer.store import FeatureStore
lock = FeatureStore.lock_for_writing(sys.argv[1])
print("held", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


def test_a_job_is_refused_while_another_process_writes_the_store(api: Any) -> None:
    """`decaf extract` into the server's datasets directory and a job: one writer."""
    out = api.datasets / "held"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        failed = _extract(api, "pets", "held")
        assert failed["status"] == "failed"
        assert f"is being written by another process (pid {holder.pid} on " in failed["error"]
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(60)
    assert _extract(api, "pets", "held")["status"] == "succeeded"
