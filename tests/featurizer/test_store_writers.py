"""One writer per store, with real `decaf extract` processes racing on the same --out.

The first process runs the real entry point with one store method gated: when it gets there it
writes a line to a pipe and waits for a byte on another. The test waits on that pipe (an event
it controls, never a sleep), so the second writer always arrives while the first holds the lock:
in the middle of the parts, or after the last part just before the finalize.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from featurizer.store import MANIFEST_NAME, FeatureStore, load_features
from tests.featurizer.test_batch import build_dataset

REPO = Path(__file__).resolve().parents[2]
DECAF = [sys.executable, "-m", "service.cli"]
SMALL = ["--weights", "random", "--batch-size", "4", "--part-size", "4", "--workers", "0",
         "--backbone", "alexnet", "--layers", "decaf7", "--no-progress"]  # fmt: skip
TIMEOUT_S = 300  # a guard against a hung child only; every wait below is on an event

# Runs `decaf ARGS` with FeatureStore.<method> gated once: announce on fd READY, wait on GATE.
GATED = """
import os, sys
from featurizer.store import FeatureStore
ready, gate, method = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
original = getattr(FeatureStore, method)
def gated(self, *args, **kwargs):
    setattr(FeatureStore, method, original)  # once
    os.write(ready, f"{os.getpid()} holds {self.path}\\n".encode())
    os.read(gate, 1)
    return original(self, *args, **kwargs)
setattr(FeatureStore, method, gated)
from service.cli import main
sys.exit(main(sys.argv[4:]))
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    build_dataset(root, per_class=1)  # 5 good + 3 bad files: 2 parts of 4
    return root


@contextmanager
def gated_extract(method: str, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """`decaf extract ARGS` held at FeatureStore.<method> until the block ends."""
    ready_r, ready_w = os.pipe()
    gate_r, gate_w = os.pipe()
    command = [sys.executable, "-c", GATED, str(ready_w), str(gate_r), method, "extract", *args]
    proc = subprocess.Popen(
        command, pass_fds=(ready_w, gate_r), env=_env(), cwd=REPO, stderr=subprocess.PIPE
    )
    os.close(ready_w)
    os.close(gate_r)
    try:
        readable, _, _ = select.select([ready_r], [], [], TIMEOUT_S)
        announced = os.read(ready_r, 4096) if readable else b""
        if not announced:  # EOF: the child ended (or hung) before the gate
            proc.kill()
            pytest.fail(f"the gated writer never reached {method}: {proc.communicate()[1]!r}")
        yield proc
    finally:
        with contextlib.suppress(BrokenPipeError):  # the test may have killed it
            os.write(gate_w, b"go")
        os.close(gate_w)
        os.close(ready_r)
        if proc.poll() is None:
            proc.wait(TIMEOUT_S)


def _decaf(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DECAF, *args], capture_output=True, text=True, env=_env(), cwd=REPO,
        timeout=TIMEOUT_S, check=False,
    )  # fmt: skip


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def _assert_refused_naming(done: subprocess.CompletedProcess[str], holder: int) -> None:
    assert done.returncode == 4, done.stderr  # conflict (README: exit statuses)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("decaf: error: "), done.stderr
    assert f"is being written by another process (pid {holder} on " in lines[0]
    assert "--crop tencrop" in lines[0] or "extract" in lines[0]  # the holder's command
    assert "since 20" in lines[0]  # its start time


@pytest.mark.slow  # four fresh `decaf` processes (imports + model init each)
def test_second_writer_is_refused_while_the_first_writes_parts(
    images: Path, tmp_path: Path
) -> None:
    out = tmp_path / "store"
    tencrop = [str(images), "--out", str(out), *SMALL, "--crop", "tencrop"]
    with gated_extract("write_part", *tencrop) as first:
        before = _snapshot(out)
        # The reported race: --overwrite with the default crop, started while the first runs.
        overwrite = _decaf("extract", str(images), "--out", str(out), *SMALL, "--overwrite")
        _assert_refused_naming(overwrite, first.pid)
        assert "--crop tencrop" in overwrite.stderr
        # The same configuration would do the work twice: refused too.
        same = _decaf("extract", *tencrop)
        _assert_refused_naming(same, first.pid)
        assert _snapshot(out) == before, "a refused writer changed nothing, deleted nothing"
    assert first.returncode == 0, first.stderr.read() if first.stderr else ""

    store = FeatureStore.open(out)
    assert store.info().status == "complete"
    assert store.manifest.preprocessing["crop_mode"] == "tencrop"
    X, _, paths = load_features(out, "decaf7")
    assert X.shape == (5, 4096) and len(paths) == 5

    # Only now may the other configuration replace it, as a whole.
    again = _decaf("extract", str(images), "--out", str(out), *SMALL, "--overwrite", "--json")
    assert again.returncode == 0, again.stderr
    assert FeatureStore.open(out).manifest.preprocessing["crop_mode"] == "center"


@pytest.mark.slow
def test_lock_covers_the_finalize_and_a_killed_writer_never_blocks_a_resume(
    images: Path, tmp_path: Path
) -> None:
    out = tmp_path / "store"
    center = [str(images), "--out", str(out), *SMALL]
    with gated_extract("finalize", *center) as first:
        # Every part is written; only the finalize (errors file, classes, complete) is left.
        assert not json.loads((out / MANIFEST_NAME).read_text())["complete"]
        tencrop = _decaf("extract", str(images), "--out", str(out), *SMALL, "--crop", "tencrop")
        _assert_refused_naming(tencrop, first.pid)
        first.send_signal(signal.SIGKILL)  # dies holding the lock, before the finalize
        first.wait(TIMEOUT_S)
    assert first.returncode == -signal.SIGKILL

    # The kernel dropped the lock with the process: the same command resumes at once.
    resumed = _decaf("extract", *center, "--json")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["resumed_parts"] == 2 and summary["files_this_run"] == 0
    assert FeatureStore.open(out).info().status == "complete"
