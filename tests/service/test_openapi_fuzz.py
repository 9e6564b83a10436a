"""schemathesis against the real server: every operation, every check, zero failures (issue 12).

A real uvicorn server on 127.0.0.1 (random-weight AlexNet, small upload limits, an API key) is
fuzzed by the schemathesis CLI in a subprocess, through all its phases (examples, coverage,
fuzzing, stateful) and all its checks, with a fixed seed so that a failure is reproducible
(`--seed` below; the output names each failing case and a curl line for it).

Excluded, each with its reason (`EXCLUDED_CHECKS`): only `positive_data_acceptance` ("a request
the schema allows must be accepted"), on the operations whose acceptance depends on what no
JSON Schema can state. Everything else runs everywhere.

Job-creating operations stay light: the one existing data root holds two 48x64 images, so an
extraction job is done in well under a second; every other root a fuzzer invents is a 404.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.service._service_helpers import LiveServer, jpeg_bytes, run_server

pytestmark = pytest.mark.slow

KEY = "fuzz-key"
SEED = 20260401
# Per operation and phase; ~16 operations. Sized so the run takes about a minute on 2 loaded
# cores (the issue asks for at most 2 minutes).
MAX_EXAMPLES = 15

# operation -> why `positive_data_acceptance` cannot hold for it.
EXCLUDED_CHECKS: dict[str, str] = {
    "POST /v1/extractions": "`layers` must be taps of the chosen backbone, which depend on the "
    "backbones this server loaded (GET /v1/model), not on the schema",
    "POST /v1/features": "the files must be decodable images; a schema says `format: binary`, "
    "so generated files are mostly not images (each then gets its own 415/422)",
    "POST /v1/probes": "few-shot: `labels` must be a JSON array aligned with the files, and the "
    "files decodable images; neither is expressible in a multipart schema",
    "POST /v1/probes/{probe_id}/predict": "the files must be decodable images (as for features)",
}


def _config() -> str:
    """schemathesis.toml: all checks, minus the exclusions above (reasons kept as comments).

    All checks through `[checks] enabled = true`, not `--checks all`: a check named on the
    command line would override the per-operation exclusions.
    """
    lines = ["[checks]", "enabled = true", ""]
    for operation, reason in EXCLUDED_CHECKS.items():
        method, path = operation.split(" ", 1)
        lines += [
            f"# {reason}",
            "[[operations]]",
            f'include-method = "{method}"',
            f'include-path = "{path}"',
            "checks.positive_data_acceptance.enabled = false",
            "",
        ]
    return "\n".join(lines)


@pytest.fixture
def fuzzed_server(make_app: Any, tmp_path: Path) -> Iterator[LiveServer]:
    roots = tmp_path / "roots"  # make_settings's data root
    for label, seed in (("cat", 0), ("dog", 1)):
        (roots / "caltech101" / label).mkdir(parents=True)
        (roots / "caltech101" / label / "a.jpg").write_bytes(jpeg_bytes(seed, size=(48, 64)))
    app = make_app(
        api_key=KEY,
        max_upload_bytes=256 * 1024,
        max_files_per_request=8,
        max_pixels=1_000_000,
        request_timeout_s=60,
    )
    with run_server(app) as server:
        yield server


def test_schemathesis_finds_nothing(fuzzed_server: LiveServer, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(_config())
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        f"{fuzzed_server.base_url}/openapi.json",
        "--header",
        f"X-API-Key: {KEY}",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--request-timeout",
        "60",
        "--no-color",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run(
        command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"schemathesis (seed {SEED}) failed:\n{output[-20000:]}"
    selected = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", output)
    assert selected, output[-3000:]
    assert len(set(selected.groups())) == 1, selected.group(0)  # every operation, all tested
    assert int(selected.group(1)) >= 16
