"""`decaf serve` with two test hooks, for the replica tests (run as a script, never imported).

    python tests/service/_replica_server.py serve --weights random ...

with `DECAF_TEST_HOOK_DIR` set. The hooks wrap the extraction handler of this process only:

- every start of an extraction job appends `job_id attempt pid` to `HOOK_DIR/runs.log`, so the
  test can count how often each job ran, and where;
- if `HOOK_DIR/hold-<dataset name>` exists, the first process to start that job (an exclusive
  create of `HOOK_DIR/held-<name>` decides) stops in the middle of it, once at least one part is
  in the store, writes its pid to `HOOK_DIR/holding-<name>` and waits until the job is told to
  stop. The test kills it there: a kill mid-job at a point the test knows, not after a guessed
  delay. Whoever takes the job over runs it straight through.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any


def _append(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())  # one write with O_APPEND: lines never interleave
    finally:
        os.close(fd)


def _first_to_hold(hook_dir: Path, name: str) -> bool:
    if not (hook_dir / f"hold-{name}").exists():
        return False
    try:
        os.close(os.open(hook_dir / f"held-{name}", os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True


def _hold_once_a_part_is_stored(ctx: Any, hook_dir: Path, name: str) -> None:
    from featurizer.store import read_manifest

    deadline = time.monotonic() + 120
    while not read_manifest(ctx.params["out"])["parts"]:  # parts are written in the background
        if time.monotonic() > deadline:
            raise RuntimeError("no part reached the store in 120 s")
        time.sleep(0.05)
    (hook_dir / f"holding-{name}").write_text(str(os.getpid()))
    ctx.stop_event.wait()  # until killed, or stopped by a shutdown


def install_hooks(hook_dir: Path) -> None:
    from service.tasks import extraction

    original = extraction.run_extraction

    def run_extraction(ctx: Any, featurizer_factory: Any) -> dict[str, Any]:
        _append(hook_dir / "runs.log", f"{ctx.job_id} {ctx.attempt} {os.getpid()}\n")
        name = ctx.params["name"]
        if _first_to_hold(hook_dir, name):
            report = ctx.report

            def report_then_hold(progress: dict[str, Any], *, force: bool = False) -> None:
                report(progress, force=force)
                if progress.get("done", 0) >= 16:
                    _hold_once_a_part_is_stored(ctx, hook_dir, name)

            ctx.report = report_then_hold
        return original(ctx, featurizer_factory)

    extraction.run_extraction = run_extraction  # looked up at call time by the handler


if __name__ == "__main__":
    from service.cli import main

    install_hooks(Path(os.environ["DECAF_TEST_HOOK_DIR"]))
    sys.exit(main(sys.argv[1:]))
