"""A Redis server of the test's own, on a free loopback port, that the test may freeze (SIGSTOP) and thaw.

The shared Redis on 6379 is never frozen: other tests and other people use it."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


class RedisServer:
    """A running `redis-server` subprocess: its URL, and `freeze`/`thaw` to stop and resume it."""

    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.frozen = False

    def freeze(self) -> None:
        """Stop the server (SIGSTOP): connections stay open, nothing is answered, commands queue in its sockets."""
        self.process.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        self.process.send_signal(signal.SIGCONT)
        self.frozen = False

    @contextmanager
    def frozen_for_the_block(self) -> Iterator[None]:
        self.freeze()
        try:
            yield
        finally:
            self.thaw()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    """Start a private redis-server (skip the test when none is installed); stop it, thawed, at the end."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    with tempfile.TemporaryDirectory(prefix="test-redis-") as directory:
        for _ in range(3):  # the free port may be taken between finding and binding it
            port = _free_port()
            process = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    directory,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 10
            while process.poll() is None and not _answers(port) and time.monotonic() < deadline:
                time.sleep(0.02)
            if process.poll() is None and _answers(port):
                break
            process.kill()
            process.wait(5)
        else:
            raise RuntimeError("could not start a private redis-server")
        server = RedisServer(process, port)
        try:
            yield server
        finally:
            if server.frozen:
                server.thaw()
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
