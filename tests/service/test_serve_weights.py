"""`decaf serve` (and `make run`, which calls it) resolves the weights before uvicorn starts:
weights that cannot be had are one sentence and exit status 7, not a traceback from the
server's lifespan; `-v` adds the traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
import torch
import uvicorn

from featurizer import cli as featurizer_cli
from service.cli import build_parser

REPO = Path(__file__).resolve().parents[2]


def test_offline_without_the_weights_file_is_one_sentence_and_no_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty cache
    for name in ("DECAF_WEIGHTS", "DECAF_BACKBONE", "DECAF_BACKBONES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DECAF_DATA_DIR", str(tmp_path / "data"))

    def offline(url: str, dst: str, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    def no_server(*args: object, **kwargs: object) -> None:
        pytest.fail("uvicorn started although the weights cannot be had")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(uvicorn, "run", no_server)
    args = build_parser().parse_args(["serve"])
    assert featurizer_cli.run_command(args) == 7  # unavailable
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # The download attempt is logged (a WARNING line), then the one sentence, last.
    error = err.strip().splitlines()[-1]
    assert error.startswith("decaf: error: could not download alexnet/")
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    assert "Temporary failure in name resolution" in error and str(cache) in error
    assert "`--weights PATH` or `DECAF_WEIGHTS=PATH`" in error


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.pop("DECAF_WEIGHTS", None)
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300, check=False,
    )  # fmt: skip


def test_a_missing_weights_file_stops_decaf_serve_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "alexnet.pth"
    data = ["--data-dir", str(tmp_path / "data"), "--port", "0"]
    quiet = _serve("serve", "--weights", str(missing), *data)
    assert quiet.returncode == 7
    lines = quiet.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0], quiet.stderr
    assert lines[0].startswith("decaf: error: weights ") and "Traceback" not in quiet.stderr
    assert "Uvicorn running" not in quiet.stderr and "Started server" not in quiet.stderr

    verbose = _serve("-v", "serve", "--weights", str(missing), *data)
    assert verbose.returncode == 7
    assert "Traceback (most recent call last):" in verbose.stderr
    assert verbose.stderr.strip().splitlines()[-1] == lines[0]
