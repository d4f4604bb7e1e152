"""Headless Chromium (Debian's `chromium` package) for tests that look at a rendered page."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

NAMES = ("chromium", "chromium-browser")
TIMEOUT_S = 120  # a cold start on a loaded 2-core machine takes seconds; bounded all the same


def binary() -> str:
    """The browser; without one a test skips on a laptop and fails in CI (scripts/test installs it there)."""
    for name in NAMES:
        found = shutil.which(name)
        if found:
            return found
    reason = "headless Chromium is not installed (Debian: apt-get install -y chromium)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run this check", pytrace=False)
    pytest.skip(reason)


def _run(page: Path, *arguments: str) -> subprocess.CompletedProcess[bytes]:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [
            binary(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            *arguments,
            page.resolve().as_uri(),
        ]
        result = subprocess.run(command, capture_output=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"chromium failed: {result.stderr.decode(errors='replace')[-2000:]}"
    return result


def screenshot(page: Path, png: Path, width: int, height: int) -> Path:
    _run(page, f"--window-size={width},{height}", f"--screenshot={png}")
    assert png.is_file(), "chromium wrote no screenshot"
    return png


def rendered_text(page: Path) -> str:
    """The page's DOM as the browser built it (its parser, not ours)."""
    return _run(page, "--dump-dom").stdout.decode()
