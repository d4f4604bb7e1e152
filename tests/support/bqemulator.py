"""The BigQuery emulator (PyPI `bqemulator`, DuckDB inside) as a subprocess on loopback, and a TCP relay in front
of it that can be cut and restored to play a BigQuery outage."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from gateway.admin.bq_admin import audit_table
from gateway.audit.bigquery import TableRef, make_client

PROJECT = "audit-test-project"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def install_spatial_extension() -> Path:
    """The emulator loads DuckDB's spatial extension and cannot download it here: copy the one that the
    duckdb-extension-spatial package ships to where DuckDB looks. Idempotent, and safe for parallel runs."""
    import duckdb
    import duckdb_extension_spatial

    version = f"v{duckdb.__version__}"
    platform = duckdb.execute("PRAGMA platform").fetchone()[0]  # type: ignore[index]
    source = Path(duckdb_extension_spatial.__file__).parent / "extensions" / version / "spatial.duckdb_extension"
    target = Path.home() / ".duckdb" / "extensions" / version / platform / "spatial.duckdb_extension"
    if not target.exists() or target.stat().st_size != source.stat().st_size:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}")
        shutil.copyfile(source, partial)
        partial.replace(target)
    return target


@dataclass
class Emulator:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    project: str = PROJECT

    def client(self, endpoint: str | None = None) -> Any:
        return make_client(self.project, endpoint=endpoint or self.url, anonymous=True)

    def new_table(self, name: str = "requests") -> TableRef:
        """A fresh dataset with the audit table in it, laid out as `bq init` and Terraform make it."""
        table = TableRef(self.project, f"t_{uuid.uuid4().hex[:12]}", name)
        client = self.client()
        client.create_dataset(f"{table.project}.{table.dataset}")
        client.create_table(audit_table(table))
        client.close()
        return table

    def query(self, sql: str) -> list[dict[str, Any]]:
        client = self.client()
        try:
            return [dict(row.items()) for row in client.query(sql).result()]
        finally:
            client.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.unlink(missing_ok=True)


def start_emulator(timeout: float = 60.0) -> Emulator:
    install_spatial_extension()
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="bqemulator-", suffix=".log")[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BQEMU_", "GOOGLE_", "GATEWAY_"))}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bqemulator",
                "start",
                "--rest-host",
                "127.0.0.1",
                "--rest-port",
                str(port),
                "--grpc-port",
                "0",
                "--project",
                PROJECT,
                "--ephemeral",
                "--log-level",
                "warning",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    emulator = Emulator(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(f"{emulator.url}/bigquery/v2/projects/{PROJECT}/datasets", timeout=1.0)
            return emulator
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                output = log.read_text()[-4000:]
                emulator.stop()
                raise RuntimeError(f"bqemulator did not start; its log:\n{output}") from None
            time.sleep(0.1)


_shared: Emulator | None = None
_lock = threading.Lock()


def shared_emulator() -> Emulator:
    """One emulator for the whole test run (it takes seconds to start); each test uses its own dataset."""
    global _shared
    with _lock:
        if _shared is None or _shared.process.poll() is not None:
            _shared = start_emulator()
            atexit.register(_shared.stop)
        return _shared


@dataclass
class Relay:
    """A TCP relay from a loopback port to `target`. `down()` closes the port (connections are refused and
    open ones cut), `hang()` holds every byte, `up()` listens on the same port again: an outage without stopping
    the server behind."""

    target: tuple[str, int]
    port: int = field(default_factory=free_port)
    hanging: bool = False
    """`hang()`: connections are taken and bytes read, but nothing is passed on until `up()` (a BigQuery that
    accepts requests and never answers)."""
    _listener: socket.socket | None = None
    _connections: set[socket.socket] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hang(self) -> None:
        self.hanging = True

    def up(self) -> None:
        self.hanging = False
        if self._listener is not None:
            return
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        self.hanging = False
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            for connection in self._connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                connection.close()
            self._connections.clear()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._connections |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                while self.hanging and self._listener is not None:
                    time.sleep(0.02)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                end.close()
            with self._lock:
                self._connections -= {source, sink}
