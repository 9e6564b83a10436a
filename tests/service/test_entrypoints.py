"""Side effects belong to entry points: `decaf serve --help` stays light, imports change nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

HELP_THEN_LIST_MODULES = """
import contextlib, io, json, sys
from service.cli import build_parser
with contextlib.redirect_stdout(io.StringIO()) as shown, contextlib.suppress(SystemExit):
    build_parser().parse_args(["serve", "--help"])
assert "--backbones" in shown.getvalue() and "fp32,bf16,fp16,int8" in shown.getvalue()
print(json.dumps(sorted(name for name in sys.modules if "." not in name)))
"""


def _top_level_modules_after_help() -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", HELP_THEN_LIST_MODULES],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_serve_help_does_not_import_the_web_stack() -> None:
    loaded = _top_level_modules_after_help()
    web = {"fastapi", "starlette", "uvicorn", "sqlalchemy", "pydantic", "pydantic_settings"}
    assert not loaded & (web | {"prometheus_client", "httpx"}), loaded & web


def test_serve_help_does_not_import_the_model_stack() -> None:
    assert not _top_level_modules_after_help() & {"torch", "sklearn", "pyarrow"}


HEAVY = frozenset({"torch", "torchvision", "sklearn", "pyarrow", "numpy", "PIL", "fastapi"})


def _imported_top_level_modules(args: list[str]) -> set[str]:
    """Top-level modules a whole `decaf ARGS` process imports (from -X importtime's report)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "service.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
    names = {line.rsplit("|", 1)[-1].strip() for line in lines[1:]}  # [0] is the header
    return {name for name in names if "." not in name}


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["extract", "--help"],
        ["info", "--help"],
        ["store", "upgrade", "--help"],
        ["probe", "eval", "--help"],
        ["serve", "--help"],
        ["backbones"],
        ["backbones", "--json"],
    ],
    ids=" ".join,
)
def test_help_and_listing_commands_import_no_heavy_package(args: list[str]) -> None:
    assert not _imported_top_level_modules(args) & HEAVY


IMPORT_EVERYTHING = """
import importlib, json, os, pkgutil
import classifiers, featurizer, torch  # their own import-time effects are not the service's
before = (dict(os.environ), torch.get_num_threads(), torch.get_num_interop_threads())
import service
for info in pkgutil.walk_packages(service.__path__, prefix="service."):
    importlib.import_module(info.name)
after = (dict(os.environ), torch.get_num_threads(), torch.get_num_interop_threads())
print(json.dumps(before == after))
"""


def test_importing_the_service_sets_no_env_vars_or_thread_counts() -> None:
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERYTHING],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) is True
