"""The real Claude Code CLI from npm, at the version pinned in `claude-code-version`, for tests to drive.

`scripts/bump-claude-code` moves the pin to the newest release and runs the tests that use it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

VERSION_FILE = Path(__file__).with_name("claude-code-version")
PACKAGE = "@anthropic-ai/claude-code"
# The catalog's opening, as it stands inside the CLI's bundle: `var X={"//":"...",schema_version:1,pricing_tiers:`.
_CATALOG_MARKER = b"schema_version:1,pricing_tiers:"


def pinned_version() -> str:
    return VERSION_FILE.read_text().strip()


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "claude-sso-gateway" / "claude-code"


def install(version: str | None = None) -> Path:
    """The `claude` binary of `version` (default: the pin), installed from npm once per machine; skips the test
    with a clear reason where npm is absent."""
    version = version or pinned_version()
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.skip("npm and node are not installed: the real Claude Code CLI cannot be installed from npm")
    prefix = cache_dir() / version
    binary = _native_binary(prefix)
    if binary is None:
        prefix.mkdir(parents=True, exist_ok=True)
        # The package's postinstall only copies the platform binary over a placeholder; we use the platform
        # package's binary directly, so the install needs no scripts.
        subprocess.run(
            [
                "npm",
                "install",
                "--prefix",
                str(prefix),
                "--no-audit",
                "--no-fund",
                "--ignore-scripts",
                "--loglevel",
                "error",
                f"{PACKAGE}@{version}",
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        )
        binary = _native_binary(prefix)
    if binary is None:
        raise RuntimeError(f"{PACKAGE}@{version} installed, but no native binary for this platform was found")
    return binary


def _native_binary(prefix: Path) -> Path | None:
    scope = prefix / "node_modules" / "@anthropic-ai"
    for candidate in sorted(scope.glob("claude-code-*/claude")) if scope.is_dir() else []:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def catalog(binary: Path) -> dict[str, Any]:
    """Anthropic's model catalog as the CLI carries it (ids, Vertex ids, pricing tiers), read from the binary.

    The catalog is a JavaScript object literal in the bundle: its text is cut out by brace matching and turned
    into JSON by node, so no hand-written JavaScript parser is involved."""
    data = binary.read_bytes()
    marker = data.find(_CATALOG_MARKER)
    if marker < 0:
        raise RuntimeError(f"no model catalog found in {binary}: the bundle's layout changed")
    start = data.rfind(b"={", 0, marker) + 1
    depth, quote, escaped = 0, 0, False
    for end in range(start, len(data)):
        byte = data[end]
        if quote:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == quote:
                quote = 0
        elif byte in b"\"'`":
            quote = byte
        elif byte == 0x7B:  # {
            depth += 1
        elif byte == 0x7D:  # }
            depth -= 1
            if depth == 0:
                break
    literal = data[start : end + 1].decode("utf-8")
    script = "process.stdout.write(JSON.stringify(" + literal + "))"
    out = subprocess.run(["node", "-e", script], check=True, capture_output=True, text=True, timeout=60).stdout
    parsed: dict[str, Any] = json.loads(out)
    return parsed


def environment(home: Path, base_url: str, **extra: str) -> dict[str, str]:
    """A clean environment for `claude -p` against a local base URL: its own HOME, no telemetry or updates."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ANTHROPIC_", "CLAUDE_"))}
    env.update(
        HOME=str(home),
        ANTHROPIC_BASE_URL=base_url,
        DISABLE_AUTOUPDATER="1",
        DISABLE_TELEMETRY="1",
        DISABLE_ERROR_REPORTING="1",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
    )
    env.update(extra)
    return env
