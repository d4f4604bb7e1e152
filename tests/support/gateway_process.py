"""`claude-gateway serve` as a real subprocess, configured from its environment as Cloud Run runs it, its stdout
(Cloud Logging JSON lines, where `audit_fallback` rows go) in a file, and real signals to stop it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.support.bqemulator import free_port

CLOUD_RUN_GRACE = 10.0


@dataclass
class GatewayProcess:
    process: subprocess.Popen[bytes]
    url: str
    stdout: Path

    def log_entries(self) -> list[dict[str, Any]]:
        """The JSON lines written so far (a line a kill cut short is skipped)."""
        entries = []
        for line in self.stdout.read_bytes().splitlines():
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(entry, dict):
                entries.append(entry)
        return entries

    def fallback_rows(self) -> list[dict[str, Any]]:
        """The rows logged as `audit_fallback` entries."""
        return [entry["audit_fallback"] for entry in self.log_entries() if entry.get("message") == "audit_fallback"]

    def terminate(self, timeout: float = CLOUD_RUN_GRACE) -> float:
        """SIGTERM, then the seconds the process took to exit (it must within Cloud Run's grace period)."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout)
        return time.monotonic() - started

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    @property
    def clean_exit(self) -> bool:
        """uvicorn finishes its shutdown, then re-raises the SIGTERM it caught, so -15 is a clean exit too."""
        return self.process.returncode in (0, -signal.SIGTERM) and b"Application shutdown complete" in (
            self.stdout.read_bytes()
        )


@contextmanager
def gateway_process(env: dict[str, str], tmp_path: Path) -> Iterator[GatewayProcess]:
    """Start `claude-gateway serve` with `env` (GATEWAY_* settings) on a free port; kill it at the end if it runs."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "ANTHROPIC_", "GOOGLE_"))}
    clean |= {
        "PORT": str(port),
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_AUDIT_SPILL_DIR": str(tmp_path / "spill"),
        "GATEWAY_ACCESS_LOG": "false",
        **env,
    }
    stdout = tmp_path / f"stdout-{port}.log"
    with stdout.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve"], stdout=out, stderr=subprocess.STDOUT, env=clean
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"gateway did not start:\n{stdout.read_text()[-3000:]}")
            time.sleep(0.1)
        yield GatewayProcess(process, url, stdout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@dataclass
class LogWatcher:
    """Notes when each `audit_fallback` row first appears in a gateway's stdout (polled every 20 ms)."""

    stdout: Path
    seen: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> LogWatcher:
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._scan(0)

    def _watch(self) -> None:
        offset = 0
        while not self._stop.wait(0.02):
            offset = self._scan(offset)

    def _scan(self, offset: int) -> int:
        with self.stdout.open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1
        now = time.monotonic()
        for line in data[:end].splitlines():
            if b'"audit_fallback"' in line:
                try:
                    request_id = orjson.loads(line)["audit_fallback"]["request_id"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    continue
                self.seen.setdefault(request_id, now)
        return offset + end
