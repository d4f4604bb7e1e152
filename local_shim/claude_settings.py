"""Claude Code's own settings for the two set-ups, written and checked by `claude-shim claude-settings` / `doctor`.

- `gateway`: Claude Code signs in to the shim on loopback (its gateway sign-in, `/login`); `claude-shim serve` must
  be running on the configured port.
- `helper`: no local proxy; Claude Code calls the IAP-protected gateway URL itself and runs `claude-shim token` as its
  `apiKeyHelper` for a fresh Google ID token, which it sends as `Authorization: Bearer` (IAP reads that header).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import httpx

from local_shim.bearer import looks_like_jwt
from local_shim.checks import Check
from local_shim.config import ShimSettings
from local_shim.device_flow import DISCOVERY_PATH, TOKEN_PATH
from local_shim.errors import ConfigError
from local_shim.store import write_private_file

Mode = Literal["gateway", "helper"]
# Google's ID tokens live an hour; a token cached half of that always has half an hour left when it is sent.
HELPER_TTL_MS = 30 * 60 * 1000
_GATEWAY_KEYS = ("forceLoginMethod", "forceLoginGatewayUrl")
_HELPER_ENV = ("ANTHROPIC_BASE_URL", "CLAUDE_CODE_API_KEY_HELPER_TTL_MS")


def settings_path() -> Path:
    """Claude Code's user settings file: `$CLAUDE_CONFIG_DIR/settings.json` or `~/.claude/settings.json`."""
    base = os.environ.get("CLAUDE_CONFIG_DIR")
    return (Path(base).expanduser() if base else Path.home() / ".claude") / "settings.json"


def shim_url(settings: ShimSettings) -> str:
    return f"http://127.0.0.1:{settings.port}"


def helper_command() -> str:
    """The shell command Claude Code runs for a token: this install's claude-shim, with its config dir if not the
    default one (Claude Code runs the helper with its own environment)."""
    sibling = Path(sys.executable).with_name("claude-shim")
    program = str(sibling) if sibling.exists() else (shutil.which("claude-shim") or "claude-shim")
    command = f"{shlex.quote(program)} token"
    override = os.environ.get("CLAUDE_SHIM_CONFIG_DIR")
    return f"CLAUDE_SHIM_CONFIG_DIR={shlex.quote(override)} {command}" if override else command


def read(path: Path) -> dict[str, Any]:
    """The settings file as a dict; none is an empty one."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise ConfigError(f"Cannot read Claude Code's settings {path}: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Cannot read Claude Code's settings {path}: expected a JSON object")
    return data


def _is_ours(command: object) -> bool:
    return isinstance(command, str) and "claude-shim" in command and command.rstrip().endswith(" token")


def updated(current: dict[str, Any], mode: Mode, settings: ShimSettings) -> dict[str, Any]:
    """`current` set up for `mode`, with what the other mode wrote removed and everything else kept."""
    result = dict(current)
    env = dict(result.get("env") or {})
    if _is_ours(result.get("apiKeyHelper")):
        del result["apiKeyHelper"]
    for key in _HELPER_ENV:
        if key == "ANTHROPIC_BASE_URL" and env.get(key) not in {settings.gateway_url, None}:
            continue  # someone else's base URL: theirs to keep (doctor will point at it)
        env.pop(key, None)
    if result.get("forceLoginGatewayUrl", "").startswith("http://127.0.0.1:"):
        for key in _GATEWAY_KEYS:
            result.pop(key, None)
    if mode == "gateway":
        result["forceLoginMethod"] = "gateway"
        result["forceLoginGatewayUrl"] = shim_url(settings)
    else:
        result["apiKeyHelper"] = helper_command()
        env["ANTHROPIC_BASE_URL"] = settings.require_gateway()
        env["CLAUDE_CODE_API_KEY_HELPER_TTL_MS"] = str(HELPER_TTL_MS)
    if env:
        result["env"] = env
    else:
        result.pop("env", None)
    return result


def write(mode: Mode, settings: ShimSettings, path: Path | None = None) -> Path:
    """Write Claude Code's settings for `mode`; returns the file."""
    path = path or settings_path()
    if mode == "helper":
        settings.require_gateway()
    data = updated(read(path), mode, settings)
    write_private_file(path, (json.dumps(data, indent=2) + "\n").encode())
    return path


def configured_mode(path: Path | None = None) -> Mode | None:
    """Which claude-shim set-up Claude Code's settings name, if any."""
    try:
        data = read(path or settings_path())
    except ConfigError:
        return None
    if _is_ours(data.get("apiKeyHelper")):
        return "helper"
    gateway = data.get("forceLoginGatewayUrl")
    return "gateway" if isinstance(gateway, str) and gateway.startswith("http://127.0.0.1:") else None


def check(settings: ShimSettings, path: Path | None = None) -> list[Check]:
    """Doctor's findings about Claude Code's settings file."""
    path = path or settings_path()
    name = "Claude Code settings"
    try:
        data = read(path)
    except ConfigError as error:
        return [Check(name, False, error.message, f"fix or remove {path}")]
    env: dict[str, Any] = data["env"] if isinstance(data.get("env"), dict) else {}
    gateway = data.get("forceLoginGatewayUrl")
    helper = data.get("apiKeyHelper")
    fix_gateway = "run `claude-shim claude-settings gateway`"
    fix_helper = "run `claude-shim claude-settings helper`"
    if gateway and helper:
        return [Check(name, False, f"{path} sets both apiKeyHelper and forceLoginGatewayUrl", "choose one mode")]
    if isinstance(gateway, str) and gateway.startswith("http://127.0.0.1:"):
        if gateway != shim_url(settings) or data.get("forceLoginMethod") != "gateway":
            detail = f"Claude Code signs in to {gateway}, but the shim's address is {shim_url(settings)}"
            return [Check(name, False, detail, fix_gateway)]
        return [Check(name, True, f"gateway sign-in to {gateway} ({path})"), _shim_answers(settings)]
    if helper is not None:
        if not _is_ours(helper):
            return [Check(name, True, f"apiKeyHelper is {str(helper)[:80]!r}, not claude-shim's ({path})")]
        base = env.get("ANTHROPIC_BASE_URL")
        if base != settings.gateway_url:
            detail = f"ANTHROPIC_BASE_URL is {base!r}, not the gateway {settings.gateway_url!r}"
            return [Check(name, False, detail, fix_helper)]
        return [Check(name, True, f"apiKeyHelper straight to {base} ({path})"), _helper_prints_a_token(str(helper))]
    detail = f"no claude-shim set-up in {path}; `claude-shim run -- claude` needs none"
    return [Check(name, True, detail)]


def _shim_answers(settings: ShimSettings) -> Check:
    url = shim_url(settings) + DISCOVERY_PATH
    try:
        reply = httpx.get(url, timeout=5, trust_env=False)
        ok = reply.status_code == 200 and reply.json().get("token_endpoint") == shim_url(settings) + TOKEN_PATH
    except (httpx.HTTPError, ValueError, AttributeError):
        ok = False
    if ok:
        return Check("shim for the sign-in", True, f"claude-shim answers at {shim_url(settings)}")
    return Check(
        "shim for the sign-in",
        False,
        f"nothing answers as claude-shim at {shim_url(settings)}",
        f"start `claude-shim serve --port {settings.port}` (and keep it running, e.g. as a login service)",
    )


def _helper_prints_a_token(command: str) -> Check:
    """Run the helper as Claude Code would (/bin/sh) and check it prints one ID token and nothing else."""
    name = "apiKeyHelper"
    try:
        done = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return Check(name, False, f"`{command}` did not run: {type(error).__name__}", "run it yourself to see why")
    output = done.stdout.strip()
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no message"])[-1][:300]
        return Check(name, False, f"`{command}` failed: {reason}")
    if "\n" in output or not looks_like_jwt(output):
        return Check(name, False, f"`{command}` printed something other than one ID token", "see its output")
    return Check(name, True, f"`{command}` prints an ID token")
