"""Anthropic's own gateway (`claude gateway`, the Claude apps gateway) as a column of the benchmark.

It is the same `claude` binary from npm that the tests drive (the version pinned in
tests/support/claude-code-version), run with `claude gateway --config FILE`. What it needs, all on 127.0.0.1:

- PostgreSQL (`psql` on PATH and a server on 127.0.0.1:5432 that lets this user create databases): each
  column gets a throwaway database, dropped when the column is done or the run is interrupted;
- an OIDC provider for the developer's sign-in: `oidc-provider-mock` from PyPI, installed into
  `.venv-bench-peer` (its own venv, never the project's locked one) the first time it is needed;
- a bearer token, obtained the way Claude Code gets one: the RFC 8628 device flow from GET /protocol
  (device authorization, the verification page, the IdP's sign-in form, the callback, the token poll).

Two columns: `peer` (no spend tracking: no `admin:` block) and `peer+spend` (an `admin:` block and an
organisation-wide monthly cap far above what the run spends, so every request is checked against the cap and
its cost written to PostgreSQL). For `peer+spend` the CPU of the gateway's PostgreSQL backends counts with the
gateway's own, since that work is part of what each request costs.
"""

from __future__ import annotations

import getpass
import http.cookiejar
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from bench import procs
from bench.procs import Proc

if TYPE_CHECKING:
    from bench.run import Bench

PATHS = ("peer", "peer+spend")
PACKAGE = "@anthropic-ai/claude-code"
VERSION_FILE = procs.BENCH_DIR.parent / "tests" / "support" / "claude-code-version"
OIDC_VENV = procs.BENCH_DIR.parent / ".venv-bench-peer"
OIDC_PACKAGE = "oidc-provider-mock>=0.3"
PG_HOST, PG_PORT = "127.0.0.1", 5432
SUB = "dev@example.com"
CLIENT_ID, CLIENT_SECRET = "claude-gateway-bench", "bench-client-secret-" + "0" * 16
# An org-wide monthly cap, in cents, that a benchmark never reaches ($10M).
SPEND_CAP_CENTS = "1000000000"


class PeerUnavailable(Exception):
    """A piece the peer columns need is missing; the message says which and how to get it."""


def claude_binary() -> Path:
    """The pinned `claude` binary, installed from npm into the same cache the tests use."""
    version = VERSION_FILE.read_text().strip()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    prefix = Path(base) / "claude-sso-gateway" / "claude-code" / version
    binary = _native_binary(prefix)
    if binary is not None:
        return binary
    if shutil.which("npm") is None:
        raise PeerUnavailable(
            f"npm is not installed, so {PACKAGE}@{version} cannot be installed (apt-get install -y npm)"
        )
    prefix.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
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
        capture_output=True,
        text=True,
        timeout=600,
    )
    binary = _native_binary(prefix)
    if done.returncode != 0 or binary is None:
        raise PeerUnavailable(f"npm install {PACKAGE}@{version} failed: {done.stderr.strip()[-300:]}")
    return binary


def _native_binary(prefix: Path) -> Path | None:
    scope = prefix / "node_modules" / "@anthropic-ai"
    for candidate in sorted(scope.glob("claude-code-*/claude")) if scope.is_dir() else []:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def oidc_mock() -> Path:
    """The `oidc-provider-mock` command, from the bench's own venv (created and filled on first use)."""
    command = OIDC_VENV / "bin" / "oidc-provider-mock"
    if command.exists():
        return command
    if not (OIDC_VENV / "bin" / "python").exists():
        made = subprocess.run(
            [sys.executable, "-m", "venv", str(OIDC_VENV)], capture_output=True, text=True, timeout=120
        )
        if made.returncode != 0:
            raise PeerUnavailable(f"could not create {OIDC_VENV}: {made.stderr.strip()[-300:]}")
    done = subprocess.run(
        [str(OIDC_VENV / "bin" / "pip"), "install", "--quiet", OIDC_PACKAGE],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0 or not command.exists():
        raise PeerUnavailable(f"pip install {OIDC_PACKAGE} into {OIDC_VENV} failed: {done.stderr.strip()[-300:]}")
    return command


def pg_user() -> str:
    return os.environ.get("PGUSER") or getpass.getuser()


def _psql(database: str, sql: str) -> subprocess.CompletedProcess[str]:
    argv = ["psql", "-h", PG_HOST, "-p", str(PG_PORT), "-U", pg_user(), "-d", database, "-v", "ON_ERROR_STOP=1"]
    return subprocess.run([*argv, "-qAtc", sql], capture_output=True, text=True, timeout=60)


def check_postgres() -> None:
    if shutil.which("psql") is None:
        raise PeerUnavailable("psql is not installed (apt-get install -y postgresql-client, and a server)")
    try:
        socket.create_connection((PG_HOST, PG_PORT), timeout=2).close()
    except OSError as exc:
        raise PeerUnavailable(f"no PostgreSQL server on {PG_HOST}:{PG_PORT} ({exc})") from None
    probe = _psql("postgres", "select 1")
    if probe.returncode != 0:
        raise PeerUnavailable(f"PostgreSQL refused this user: {probe.stderr.strip()[-300:]}")


def prepare() -> tuple[Path, Path]:
    """The claude binary and the OIDC mock command, or PeerUnavailable saying what is missing."""
    check_postgres()
    return claude_binary(), oidc_mock()


def create_database() -> str:
    name = "claude_gw_bench_" + uuid.uuid4().hex[:12]
    made = _psql("postgres", f"create database {name}")
    if made.returncode != 0:
        raise PeerUnavailable(f"could not create database {name}: {made.stderr.strip()[-300:]}")
    return name


def drop_database(name: str) -> None:
    _psql("postgres", f"drop database if exists {name} with (force)")


class PgBackends:
    """The PostgreSQL server processes serving one database, measured like a started process (never stopped)."""

    def __init__(self, database: str) -> None:
        self.name = "postgres"
        self.marker = f" {database} ".encode()

    def pids(self) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    title = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                # A backend's title: "postgres: USER DATABASE HOST(PORT) STATE".
                if title.startswith(b"postgres: ") and self.marker in title:
                    found.append(int(entry.name))
        return found

    def cpu(self) -> float:
        return sum(procs.cpu_seconds(pid) for pid in self.pids())

    def peak_rss_kb(self) -> int:
        return 0  # shared buffers make a backend's RSS meaningless per request


def start_column(bench: Bench, name: str) -> tuple[int, list[Proc], dict[str, str]]:
    """Start one peer column (the OIDC mock on first use, a fresh database, the gateway, a signed-in client);
    returns the port, what to measure (the gateway and its PostgreSQL backends) and the client's headers."""
    assert bench.peer_tools is not None
    binary, oidc_command = bench.peer_tools
    database = create_database()
    bench.databases.append(database)
    started = len(bench.started)
    try:
        if bench.oidc is None:
            bench.oidc = start_oidc(bench, oidc_command)
            started += 1  # the mock stays for the next column
        proc, port, headers = start_peer(bench, name, binary, bench.oidc[1], database)
        method, path, body, _ = bench.ready_request()
        procs.wait_ready(proc, port, (method, path, body, {**headers, "content-type": "application/json"}))
    except RuntimeError as exc:
        for proc in bench.started[started:]:
            bench.stop(proc)
        raise PeerUnavailable(str(exc)) from None
    return port, [proc, PgBackends(database)], headers  # type: ignore[list-item]


def start_oidc(bench: Bench, command: Path) -> tuple[Proc, int]:
    port = procs.free_port()
    proc = bench.start(
        "oidc",
        [str(command), "--host", "127.0.0.1", "--port", str(port)],
        cpu=bench.side_cpu,
        env=bench.env(PYTHONWARNINGS="ignore"),
    )
    _wait_http(proc, f"http://127.0.0.1:{port}/.well-known/openid-configuration", timeout=60)
    return proc, port


def start_peer(
    bench: Bench, name: str, binary: Path, oidc_port: int, database: str
) -> tuple[Proc, int, dict[str, str]]:
    """Start the gateway for one column; returns it, its port and the request headers a signed-in client sends."""
    port = procs.free_port()
    spend = name == "peer+spend"
    write_key = "bench-admin-" + secrets.token_hex(24)
    config = {
        "listen": {"host": "127.0.0.1", "port": port},
        "oidc": {"issuer": f"http://127.0.0.1:{oidc_port}", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
        "session": {"jwt_secret": secrets.token_hex(32)},
        "store": {"postgres_url": f"postgres://{pg_user()}@{PG_HOST}:{PG_PORT}/{database}"},
        "upstreams": [
            {
                "provider": "anthropic",
                "base_url": f"http://127.0.0.1:{bench.upstream_port}",
                "auth": {"api_key": "sk-ant-bench-not-a-real-key"},
            }
        ],
    }
    if spend:
        config["admin"] = {"write_keys": [{"id": "bench", "key": write_key}]}
    path = bench.run_dir / f"{name}.yaml"
    path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    home = bench.run_dir / f"{name}-home"
    home.mkdir(exist_ok=True)
    env = bench.env(
        CLAUDE_GATEWAY_ALLOW_LOOPBACK="1",
        HOME=str(home),
        DISABLE_AUTOUPDATER="1",
        DISABLE_TELEMETRY="1",
        DISABLE_ERROR_REPORTING="1",
    )
    env = {k: v for k, v in env.items() if not k.startswith("CLAUDE_CODE_")}
    proc = bench.start(name, [str(binary), "gateway", "--config", str(path)], cpu=bench.sut_cpu, env=env)
    base = f"http://127.0.0.1:{port}"
    _wait_http(proc, f"{base}/.well-known/oauth-authorization-server", timeout=60)
    token = sign_in(base)
    if spend:
        status, body = _post_json(
            f"{base}/v1/organizations/spend_limits",
            write_key,
            {"scope": {"type": "organization"}, "amount": SPEND_CAP_CENTS, "period": "monthly"},
        )
        if status != 200:
            raise RuntimeError(f"{name}: setting the spend cap failed: HTTP {status} {body[:300]}")
    headers = {k: v for k, v in bench.headers.items() if k not in ("x-api-key", "x-goog-iap-jwt-assertion")}
    headers["authorization"] = f"Bearer {token}"
    return proc, port, headers


def sign_in(base: str, timeout: float = 30.0) -> str:
    """A bearer token for SUB through the device flow, driving the browser's part with plain HTTP requests."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), _NoRedirect)

    def call(
        method: str, url: str, form: dict[str, str] | None = None, origin: str | None = None
    ) -> tuple[int, str, str]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        request = urllib.request.Request(url, data=data, method=method)
        if origin:
            request.add_header("Origin", origin)  # the verification page refuses cross-site posts
        try:
            with opener.open(request, timeout=10) as response:
                return response.status, response.headers.get("Location", ""), response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("Location", ""), exc.read().decode("utf-8", "replace")

    status, _, body = call("POST", f"{base}/oauth/device_authorization", {"surface": "claude_code"})
    if status != 200:
        raise RuntimeError(f"device authorization failed: HTTP {status} {body[:300]}")
    device = json.loads(body)
    call("GET", device["verification_uri_complete"])
    status, idp, body = call("POST", f"{base}/device", {"user_code": device["user_code"]}, origin=base)
    if status not in (302, 303) or not idp:
        raise RuntimeError(f"verification page did not send us to the IdP: HTTP {status} {body[-300:]}")
    idp_origin = "{0.scheme}://{0.netloc}".format(urllib.parse.urlsplit(idp))
    status, callback, body = call("POST", idp, {"sub": SUB}, origin=idp_origin)
    if status not in (302, 303) or not callback:
        raise RuntimeError(f"IdP sign-in failed: HTTP {status} {body[-300:]}")
    status, _, body = call("GET", callback)
    if status != 200:
        raise RuntimeError(f"gateway callback failed: HTTP {status} {body[-300:]}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, _, body = call(
            "POST",
            f"{base}/oauth/token",
            {"grant_type": "urn:ietf:params:oauth:grant-type:device_code", "device_code": device["device_code"]},
        )
        if status == 200:
            return str(json.loads(body)["access_token"])
        time.sleep(0.2)
    raise RuntimeError(f"no token from the device flow: HTTP {status} {body[:300]}")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _post_json(url: str, api_key: str, payload: dict[str, object]) -> tuple[int, str]:
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        method="POST",
        headers={"x-api-key": api_key, "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def _wait_http(proc: Proc, url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.HTTPError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} did not answer {url}: {last}\n{proc.tail()}")
