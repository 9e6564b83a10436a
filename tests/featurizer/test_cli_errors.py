"""The CLI never prints a traceback for a user-caused problem: one `decaf: error:` line and the
exit status of the one table (featurizer.errors.EXIT_STATUSES, shown in the README); `-v` adds
the traceback. Disk full during an extraction names the part and says that a rerun resumes.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from featurizer import cli as fcli
from featurizer.errors import EXIT_STATUSES, DecafError, exit_code_of
from featurizer.store import MANIFEST_NAME, FeatureStore, part_name
from tests.featurizer.store_fixtures import write_store
from tests.featurizer.test_batch import build_dataset

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--weights", "random", "--batch-size", "4", "--part-size", "4", "--workers", "0",
         "--backbone", "alexnet", "--layers", "decaf7", "--no-progress"]  # fmt: skip
# Every module of the compute packages that declares a DecafError.
ERROR_MODULES = (
    "featurizer.errors",
    "featurizer.dataset",
    "featurizer.extraction",
    "featurizer.precision",
    "featurizer.store",
    "featurizer.engines.ray_cluster",
    "classifiers.errors",
)


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def test_every_compute_error_has_a_documented_exit_status() -> None:
    for module in ERROR_MODULES:
        importlib.import_module(module)
    documented = {status for entry in EXIT_STATUSES for status in entry.http_statuses}
    errors = [c for c in _subclasses(DecafError) if c.__module__.startswith(ERROR_MODULES)]
    assert len(errors) >= 12
    for error in [DecafError, *errors]:
        assert error.http_status in documented, f"{error.__qualname__}: {error.http_status}"


def test_readme_shows_the_exit_status_table() -> None:
    readme = (REPO / "README.md").read_text()
    for entry in EXIT_STATUSES:
        assert f"| {entry.code} | {entry.meaning} |" in readme, entry


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), 6),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), 6),
        (FileNotFoundError(errno.ENOENT, "No such file"), 5),
        (PermissionError(errno.EACCES, "Permission denied"), 3),
        (RuntimeError("a bug"), 1),
    ],
)
def test_os_errors_and_bugs_map_to_their_exit_status(error: BaseException, code: int) -> None:
    assert exit_code_of(error) == code


def _decaf(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300, check=False,
    )  # fmt: skip


def test_a_user_error_is_one_line_and_its_exit_status_and_v_adds_the_traceback(
    tmp_path: Path,
) -> None:
    quiet = _decaf("info", str(tmp_path / "missing"))
    assert quiet.returncode == 5  # not found
    assert quiet.stderr == f"decaf: error: feature store not found: {tmp_path / 'missing'}\n"
    verbose = _decaf("-v", "info", str(tmp_path / "missing"))
    assert verbose.returncode == 5
    assert verbose.stderr.startswith("Traceback (most recent call last):")
    assert verbose.stderr.endswith(quiet.stderr)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    build_dataset(root, per_class=2)  # 8 good + 3 bad files: 3 parts of 4
    return root


def _fill_the_disk_at(monkeypatch: pytest.MonkeyPatch, part: int) -> None:
    """The part writer meets a full disk at ``part`` (as pyarrow reports it: errno 28)."""
    write_table = pq.write_table

    def full_at_part(table: object, where: object, **kwargs: object) -> None:
        if part_name(part) in str(where):
            raise OSError(
                errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left"
            )
        write_table(table, where, **kwargs)

    monkeypatch.setattr(pq, "write_table", full_at_part)


def test_disk_full_during_extract_names_the_part_and_a_rerun_resumes(
    images: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "store"
    argv = ["extract", str(images), "--out", str(out), *SMALL]
    with monkeypatch.context() as patch:
        _fill_the_disk_at(patch, part=1)
        assert fcli.main(argv) == 6  # disk full
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith(f"decaf: error: disk full while writing part-00001.parquet in {out} (")
    assert err.endswith(
        "; free space and rerun the same extraction: it resumes from the parts already written\n"
    )
    assert (out / part_name(0)).is_file() and not (out / part_name(1)).exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no temporary file left"

    assert fcli.main([*argv, "--json"]) == 0  # the same command, space freed
    summary = json.loads(capsys.readouterr().out)
    assert summary["resumed_parts"] == 1 and summary["num_images"] == 8
    assert summary["files_this_run"] == 7  # parts 1 and 2: resumed files are not work done
    rate = summary["images_per_s"]
    assert rate == pytest.approx(7 / summary["seconds"], rel=0.01, abs=0.02)
    assert FeatureStore.open(out).info().status == "complete"


def test_disk_full_with_v_shows_the_traceback(
    images: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _fill_the_disk_at(monkeypatch, part=0)
    code = fcli.main(["-v", "extract", str(images), "--out", str(tmp_path / "s"), *SMALL])
    assert code == 6
    err = capsys.readouterr().err
    assert "Traceback (most recent call last):" in err and "OSError: [Errno 28]" in err
    assert err.splitlines()[-1].startswith("decaf: error: disk full while writing part-00000")


def test_info_on_an_invalid_manifest_is_one_line_and_a_conflict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "store"
    write_store(out)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    manifest["parts"][0]["file"] = "../../etc/passwd"
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert fcli.main(["info", str(out)]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"decaf: error: {out / MANIFEST_NAME}: ")
    assert "must be a plain part-NNNNN.parquet name inside the store" in err
