"""Suite-wide hygiene: every test starts with the logging set-up pytest gave it.

Entry points configure logging (`decaf serve` replaces the root logger's handlers, as a server
should); a test that runs one in-process would otherwise leave its handler behind, and with the
shuffled order (pytest-randomly) some later test would find log records in its captured stderr.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
