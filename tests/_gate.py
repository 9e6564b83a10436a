"""A gate for tests that kill a real `decaf` process mid-work, without a race against its speed.

`gated_decaf(arm_file, passes, thread_prefix)` gives the command and environment of `decaf`
(`service.cli:main`, in a fresh Python process) whose model passes (`Featurizer.forward`) in
threads named `thread_prefix...` are counted once `arm_file` exists: `passes` of them go
through, the next is held until the process dies. A test then waits for the state it wants
(e.g. `passes` parts on disk), which can neither be skipped by a fast machine nor missed by a
slow one, and kills the process there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_GATED_DECAF = """
import os, sys, threading
from featurizer.extractor import Featurizer
arm_file, passes = os.environ["DECAF_TEST_ARM_FILE"], int(os.environ["DECAF_TEST_PASSES"])
prefix = os.environ["DECAF_TEST_GATED_THREADS"]
forward, counted = Featurizer.forward, []
def gated(self, *args, **kwargs):
    if threading.current_thread().name.startswith(prefix) and os.path.exists(arm_file):
        counted.append(1)
        if len(counted) > passes:
            threading.Event().wait()  # held until the test kills the process
    return forward(self, *args, **kwargs)
Featurizer.forward = gated
from service.cli import main
sys.exit(main(sys.argv[1:]))
"""


def gated_decaf(
    arm_file: Path, passes: int, thread_prefix: str = "MainThread"
) -> tuple[list[str], dict[str, str]]:
    """(`decaf` argv prefix, environment) of the gated process; append the subcommand."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "DECAF_TEST_ARM_FILE": str(arm_file),
        "DECAF_TEST_PASSES": str(passes),
        "DECAF_TEST_GATED_THREADS": thread_prefix,
    }
    return [sys.executable, "-c", _GATED_DECAF], env
