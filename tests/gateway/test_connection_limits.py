"""`claude-gateway serve` as a real process against connections that never finish their headers and uploads that
stall: they are closed or refused, memory stays bounded, and a normal caller keeps being served."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.dev.iap import AssertionSigner
from tests.gateway.conftest import API_KEY, AUDIENCE
from tests.support.gateway_process import GatewayProcess, gateway_process
from tests.support.servers import FakeUpstream, serve

pytestmark = pytest.mark.slow


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[GatewayProcess, AssertionSigner]]:
    signer = AssertionSigner(kid="limits-key")
    fake = FakeUpstream()
    fake.keys = signer.public_key_map()
    env = {
        "GATEWAY_IAP_AUDIENCE": AUDIENCE,
        "GATEWAY_ANTHROPIC_API_KEY": API_KEY,
        "GATEWAY_AUDIT_SINK": f"sqlite:///{tmp_path}/audit.db",
        "GATEWAY_HEADER_TIMEOUT_SECONDS": "0.5",
        "GATEWAY_BODY_READ_TIMEOUT_SECONDS": "20",
    }
    with serve(fake) as fake_url:
        env |= {"GATEWAY_IAP_CERTS_URL": f"{fake_url}/iap/public_key", "GATEWAY_UPSTREAM_URL": fake_url}
        with gateway_process(env, tmp_path) as gateway:
            yield gateway, signer


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed the connection, or None if it is still open after `seconds`."""
    sock.settimeout(seconds)
    started = time.monotonic()
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def test_idle_and_slow_header_connections_are_closed_and_others_still_served(
    served: tuple[GatewayProcess, AssertionSigner],
) -> None:
    gateway, _ = served
    idle = [connect(gateway.url) for _ in range(50)]
    partial = connect(gateway.url)
    partial.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: x\r\n")  # and then nothing more

    assert httpx.get(gateway.url + "/healthz", timeout=5).status_code == 200
    waits = [closed_within(sock, 5.0) for sock in [*idle, partial]]
    for sock in [*idle, partial]:
        sock.close()

    assert all(wait is not None for wait in waits), "a connection was left open"
    assert max(w for w in waits if w is not None) < 3.0
    assert "no complete request headers within 0.5 s" in gateway.stdout.read_text()
    assert httpx.get(gateway.url + "/healthz", timeout=5).status_code == 200


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_stalled_32_mib_uploads_cannot_take_the_instances_memory(
    served: tuple[GatewayProcess, AssertionSigner],
) -> None:
    gateway, signer = served
    before = rss_mib(gateway.process.pid)
    chunk = b"x" * (1024 * 1024)
    uploads = []
    for i in range(32):
        sock = connect(gateway.url)
        assertion = signer.sign(f"user{i % 4}@example.com", audience=AUDIENCE, hd="example.com")
        sock.sendall(
            b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 33554432\r\nx-goog-iap-jwt-assertion: " + assertion.encode() + b"\r\n\r\n"
        )
        uploads.append(sock)
    # Each sends up to 31 MiB and stalls before the end; refused ones are closed by the server.
    for _ in range(31):
        for sock in uploads:
            try:
                sock.sendall(chunk)
            except OSError:
                pass
    peak = rss_mib(gateway.process.pid)
    normal = httpx.get(gateway.url + "/healthz", timeout=5)
    for sock in uploads:
        sock.close()

    print(f"RSS before {before:.0f} MiB, with 32 stalled 32 MiB uploads {peak:.0f} MiB")
    assert normal.status_code == 200
    # Bodies in flight are capped at 128 MiB for the instance: far below Cloud Run's 1 GiB.
    assert peak - before < 400, f"memory grew by {peak - before:.0f} MiB"
