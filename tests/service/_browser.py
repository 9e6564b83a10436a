"""Headless Chromium for the page tests: Debian's /usr/bin/chromium driven by Playwright.

Playwright's own browser download needs the internet; the tests point it at the system Chromium
(`apt-get install -y chromium`, which `make test` does when it is missing) and skip, saying so,
only when none can be found. Screenshots go to `test-artifacts/browser/` (or
`$DECAF_TEST_ARTIFACTS/browser/`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """`$DECAF_CHROMIUM`, else the first Chromium on PATH, else /usr/bin/chromium if present."""
    explicit = os.environ.get("DECAF_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


def artifacts_dir() -> Path:
    root = Path(os.environ.get("DECAF_TEST_ARTIFACTS") or REPO / "test-artifacts")
    folder = root / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
