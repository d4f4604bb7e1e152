"""checkov over terraform/ (scripts/checkov installs it into .venv-checkov on first use, about a minute)."""

from __future__ import annotations

import subprocess

from tests.deploy.conftest import ROOT


def test_checkov_passes_over_terraform() -> None:
    try:
        result = subprocess.run(
            [str(ROOT / "scripts" / "checkov")],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=1200,
        )
    except subprocess.TimeoutExpired as error:
        raise AssertionError(f"scripts/checkov did not finish in {error.timeout} s") from error
    output = result.stdout + result.stderr
    if not (ROOT / ".venv-checkov" / "bin" / "checkov").exists():
        raise AssertionError(f"checkov could not be installed into .venv-checkov (needs PyPI):\n{output[-4000:]}")
    assert result.returncode == 0, f"checkov found problems (or failed to run):\n{output[-8000:]}"
    assert "Failed checks: 0" in output, f"checkov ran no terraform checks:\n{output[-4000:]}"
