"""The lean upstream client against real loopback servers: framing, pooling, timeouts, backpressure, TLS."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.upstreams.connection import HIGH_WATER
from gateway.upstreams.errors import FailureKind, UpstreamConnectError, UpstreamTimeout, UpstreamTransportError
from gateway.upstreams.transport import UpstreamRequest, UpstreamTransport

Reply = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes, bytes], Awaitable[bool]]


@contextmanager
def failure(kind: FailureKind, match: str | None = None) -> Iterator[None]:
    """The transport fails with this kind, as the class the relay answers it by (502, 504, nothing sent)."""
    with pytest.raises(UpstreamTransportError, match=match) as caught:
        yield
    assert caught.value.kind == kind
    if kind in (FailureKind.CONNECT_TIMEOUT, FailureKind.READ_TIMEOUT, FailureKind.WRITE_TIMEOUT):
        assert isinstance(caught.value, UpstreamTimeout)
    else:
        assert not isinstance(caught.value, UpstreamTimeout)
    assert isinstance(caught.value, UpstreamConnectError) == (kind == FailureKind.CONNECT)


@pytest.fixture(autouse=True, params=["asyncio", "uvloop"])
def event_loop_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test on both loops: the gateway serves on uvloop, whose transports differ in the details."""
    if request.param == "uvloop":
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        yield request.param
    finally:
        asyncio.set_event_loop_policy(None)


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


def client(**overrides: Any) -> UpstreamTransport:
    options: dict[str, Any] = {"connect_timeout": 1.0, "read_timeout": 5.0, "write_timeout": 5.0}
    options |= {"pool_timeout": 1.0, "max_connections": 4}
    options.update(overrides)
    return UpstreamTransport(**options)


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """One request's head and body, or None when the client closed the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head, await reader.readexactly(length)


class Server:
    """An asyncio server on a free loopback port; `reply` answers each request and says whether to serve more."""

    def __init__(self, reply: Reply, *, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> None:
        self.reply = reply
        self.tls = tls
        self.host = host
        self.connections = 0
        self.open_connections = 0  # accepted and not yet closed by the client (EOF) or the reply
        self.heads: list[bytes] = []
        self.url = ""

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self.tls else 'http'}://{self.host}:{port}/v1/messages"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_connections += 1
        try:
            while (request := await read_request(reader)) is not None:
                self.heads.append(request[0])
                if not await self.reply(reader, writer, *request):
                    break
        finally:
            self.open_connections -= 1
            writer.close()


def reply_with(*pieces: bytes, pause: float = 0.0, keep: bool = True) -> Reply:
    """A reply written in pieces, each its own write, `pause` apart."""

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes) -> bool:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        return keep

    return reply


def post(url: str, body: bytes | None = b"{}", headers: list[tuple[bytes, bytes]] | None = None) -> UpstreamRequest:
    return UpstreamRequest("POST", url, headers or [(b"content-type", b"application/json")], body)


OK_HELLO = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"


def test_content_length_body_is_read_and_the_connection_reused() -> None:
    async def main() -> None:
        async with Server(reply_with(OK_HELLO)) as server:
            upstream = client()
            for _ in range(2):
                response = await upstream.send(post(server.url))
                assert response.status_code == 200
                assert await response.aread() == b"hello"
                await response.aclose()
            await upstream.aclose()
        assert server.connections == 1

    run(main())


def test_connection_idle_past_the_keepalive_expiry_is_not_reused() -> None:
    async def main() -> None:
        async with Server(reply_with(OK_HELLO)) as server:
            upstream = client(keepalive_seconds=0.2)
            for pause in (0.0, 0.4):
                await asyncio.sleep(pause)
                response = await upstream.send(post(server.url))
                assert await response.aread() == b"hello"
                await response.aclose()
            await upstream.aclose()
        assert server.connections == 2

    run(main())


def test_idle_connections_are_closed_by_the_sweep_when_no_request_comes() -> None:
    async def main() -> None:
        async with Server(reply_with(OK_HELLO)) as server:
            upstream = client(keepalive_seconds=0.2)
            response = await upstream.send(post(server.url))
            assert await response.aread() == b"hello"
            await response.aclose()
            deadline = time.monotonic() + 2.0
            while server.open_connections and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert server.open_connections == 0  # the server saw the pooled connection close
            await upstream.aclose()

    run(main())


def test_chunked_body_split_across_reads() -> None:
    pieces = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
        b"lo\r\n6\r\n world\r",
        b"\n0\r\n",
        b"\r\n",
    )

    async def main() -> None:
        async with Server(reply_with(*pieces, pause=0.02)) as server:
            upstream = client()
            response = await upstream.send(post(server.url))
            chunks = [chunk async for chunk in response.aiter_raw()]
            assert b"".join(chunks) == b"hello world"
            assert len(chunks) > 1  # handed on as they arrived
            await response.aclose()
            response = await upstream.send(post(server.url))  # the chunked reply ended cleanly: reused
            assert await response.aread() == b"hello world"
            await upstream.aclose()
        assert server.connections == 1

    run(main())


def test_close_delimited_body_ends_at_close_and_is_not_reused() -> None:
    async def main() -> None:
        reply = reply_with(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\npart1", b"part2", pause=0.02, keep=False
        )
        async with Server(reply) as server:
            upstream = client()
            for _ in range(2):
                response = await upstream.send(post(server.url))
                assert await response.aread() == b"part1part2"
                await response.aclose()
            await upstream.aclose()
        assert server.connections == 2

    run(main())


def test_connection_close_reply_is_not_reused() -> None:
    async def main() -> None:
        # The server says close but keeps the socket open: the client must still not reuse it.
        reply = reply_with(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
        async with Server(reply) as server:
            upstream = client()
            for _ in range(2):
                response = await upstream.send(post(server.url))
                assert await response.aread() == b"ok"
                await response.aclose()
            await upstream.aclose()
        assert server.connections == 2

    run(main())


def test_idle_connection_closed_by_server_is_replaced() -> None:
    async def main() -> None:
        async with Server(reply_with(OK_HELLO, keep=False)) as server:
            upstream = client()
            response = await upstream.send(post(server.url))
            assert await response.aread() == b"hello"
            await asyncio.sleep(0.1)  # the server's close reaches the idle connection
            response = await upstream.send(post(server.url))
            assert await response.aread() == b"hello"
            await upstream.aclose()
        assert server.connections == 2

    run(main())


def test_reused_connection_dropped_as_the_request_arrives_is_retried_once() -> None:
    """The keep-alive race: the server closes a reused connection on reading the request, without a byte back."""
    served: list[int] = []

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes) -> bool:
        served.append(1)
        if len(served) == 2:
            return False  # close without replying
        writer.write(OK_HELLO)
        await writer.drain()
        return True

    async def main() -> None:
        async with Server(reply) as server:
            upstream = client()
            for _ in range(2):
                response = await upstream.send(post(server.url))
                assert await response.aread() == b"hello"
            await upstream.aclose()
        assert server.connections == 2
        assert len(served) == 3

    run(main())


def test_new_connection_dropped_without_reply_is_not_retried() -> None:
    async def main() -> None:
        async with Server(reply_with(keep=False)) as server:
            upstream = client()
            with failure(FailureKind.PROTOCOL, match="before replying"):
                await upstream.send(post(server.url))
            await upstream.aclose()
        assert server.connections == 1

    run(main())


def test_early_close_mid_body_closes_the_connection() -> None:
    async def main() -> None:
        eof = asyncio.Event()

        async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes) -> bool:
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            await writer.drain()
            if await reader.read() == b"":
                eof.set()
            return False

        async with Server(reply) as server:
            upstream = client()
            response = await upstream.send(post(server.url))
            assert await response.aiter_raw().__anext__() == b"first"
            await response.aclose()
            await asyncio.wait_for(eof.wait(), 2)
            await upstream.aclose()

    run(main())


def test_silent_server_is_a_read_timeout() -> None:
    async def main() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes) -> bool:
            await asyncio.sleep(5)
            return False

        async with Server(silent) as server:
            upstream = client(read_timeout=0.2)
            started = time.monotonic()
            with failure(FailureKind.READ_TIMEOUT, match="no reply from upstream within 0.2s"):
                await upstream.send(post(server.url))
            assert time.monotonic() - started < 2
            await upstream.aclose()

    run(main())


def test_server_silent_mid_body_is_a_read_timeout() -> None:
    async def main() -> None:
        async with Server(reply_with(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf", pause=5)) as server:
            upstream = client(read_timeout=0.2)
            response = await upstream.send(post(server.url))
            with failure(FailureKind.READ_TIMEOUT):
                await response.aread()
            await upstream.aclose()

    run(main())


def test_read_timeout_is_the_longest_silence_not_the_whole_reply() -> None:
    pieces = [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"] + [b"1\r\nx\r\n"] * 5 + [b"0\r\n\r\n"]

    async def main() -> None:
        async with Server(reply_with(*pieces, pause=0.15)) as server:
            upstream = client(read_timeout=0.4)
            response = await upstream.send(post(server.url))
            assert await response.aread() == b"xxxxx"  # ~0.9 s in all, never 0.4 s without a byte
            await upstream.aclose()

    run(main())


def test_tls_handshake_that_never_ends_is_a_connect_timeout() -> None:
    async def main() -> None:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()  # the TCP connection opens; no TLS reply ever comes
            upstream = client(connect_timeout=0.3)
            started = time.monotonic()
            with failure(FailureKind.CONNECT_TIMEOUT, match="within 0.3s"):
                await upstream.send(post(f"https://127.0.0.1:{listener.getsockname()[1]}/v1/messages"))
            assert time.monotonic() - started < 2
            await upstream.aclose()

    run(main())


def test_refused_connection_is_a_connect_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1/messages"

    async def main() -> None:
        upstream = client()
        with failure(FailureKind.CONNECT, match="connection refused"):
            await upstream.send(post(dead))
        await upstream.aclose()

    run(main())


def test_upstream_that_stops_reading_the_body_times_out_on_write() -> None:
    async def main() -> None:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()  # accepts, never reads
            url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1/messages"
            upstream = client(write_timeout=0.3)
            started = time.monotonic()
            with failure(FailureKind.WRITE_TIMEOUT):
                await upstream.send(post(url, b"x" * 50_000_000))
            assert time.monotonic() - started < 2
            await upstream.aclose()

    run(main())


def test_pool_limit_waits_for_a_free_connection_then_times_out() -> None:
    async def main() -> None:
        async with Server(reply_with(OK_HELLO)) as server:
            upstream = client(max_connections=1, pool_timeout=0.2)
            held = await upstream.send(post(server.url))
            started = time.monotonic()
            with failure(FailureKind.CONNECT_TIMEOUT, match="no free upstream connection within 0.2s"):
                await upstream.send(post(server.url))
            assert 0.15 < time.monotonic() - started < 2

            waiting = asyncio.ensure_future(upstream.send(post(server.url)))
            await asyncio.sleep(0.05)
            assert not waiting.done()
            assert await held.aread() == b"hello"  # the body's end frees the connection for the waiter
            response = await asyncio.wait_for(waiting, 1)
            assert await response.aread() == b"hello"
            await upstream.aclose()
        assert server.connections == 1

    run(main())


def test_slow_consumer_pauses_reading_instead_of_buffering_the_stream() -> None:
    size = 50 * 1024 * 1024
    block = b"x" * (1024 * 1024)

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        for _ in range(size // len(block)):
            writer.write(block)
            await writer.drain()
        return True

    async def main() -> None:
        async with Server(stream) as server:
            upstream = client()
            response = await upstream.send(post(server.url))
            await asyncio.sleep(0.5)  # the consumer does not read
            # Reading paused past the high-water mark; at most one socket read more arrived.
            assert HIGH_WATER < response.buffered_bytes <= HIGH_WATER + 512 * 1024
            received = 0
            async for chunk in response.aiter_raw():
                received += len(chunk)
                assert response.buffered_bytes <= HIGH_WATER + 512 * 1024
            assert received == size
            await upstream.aclose()

    run(main())


def test_headers_keep_their_order_and_duplicates() -> None:
    head = b"HTTP/1.1 200 OK\r\nX-B: 1\r\nset-cookie: a=1\r\nx-a: 2\r\nSet-Cookie: b=2\r\ncontent-length: 0\r\n\r\n"

    async def main() -> None:
        async with Server(reply_with(head)) as server:
            upstream = client()
            response = await upstream.send(post(server.url))
            assert response.raw_headers == [
                (b"X-B", b"1"),
                (b"set-cookie", b"a=1"),
                (b"x-a", b"2"),
                (b"Set-Cookie", b"b=2"),
                (b"content-length", b"0"),
            ]
            assert response.header(b"set-cookie") == "a=1"  # the first, whatever the case it came in
            assert response.header(b"x-a") == "2"
            assert response.header(b"x-missing") is None
            await response.aclose()
            await upstream.aclose()

    run(main())


def test_request_head_has_host_and_length_then_callers_headers_in_order() -> None:
    async def main() -> None:
        async with Server(reply_with(OK_HELLO)) as server:
            upstream = client()
            headers = [(b"x-one", b"1"), (b"Content-Type", b"application/json"), (b"x-one", b"2")]
            response = await upstream.send(post(server.url + "?beta=true", b'{"a":1}', headers))
            await response.aread()
            sent = await upstream.send(UpstreamRequest("GET", server.url, [(b"host", b"example.test")]))
            await sent.aread()
            await upstream.aclose()
        port = server.url.split(":")[2].split("/")[0]
        assert server.heads[0].split(b"\r\n") == [
            b"POST /v1/messages?beta=true HTTP/1.1",
            b"host: 127.0.0.1:" + port.encode(),
            b"x-one: 1",
            b"Content-Type: application/json",
            b"x-one: 2",
            b"content-length: 7",
            b"",
            b"",
        ]
        assert server.heads[1] == b"GET /v1/messages HTTP/1.1\r\nhost: example.test\r\n\r\n"

    run(main())


def test_header_with_a_line_break_is_refused() -> None:
    async def main() -> None:
        upstream = client()
        with pytest.raises(ValueError, match="line break"):
            await upstream.send(post("http://127.0.0.1:9/v1/messages", headers=[(b"x", b"a\r\nevil: 1")]))
        await upstream.aclose()

    run(main())


def test_no_content_reply_has_an_empty_body_and_keeps_the_connection() -> None:
    async def main() -> None:
        async with Server(reply_with(b"HTTP/1.1 204 No Content\r\n\r\n")) as server:
            upstream = client()
            for _ in range(2):
                response = await upstream.send(post(server.url))
                assert response.status_code == 204
                assert await response.aread() == b""
            await upstream.aclose()
        assert server.connections == 1

    run(main())


def test_head_reply_has_no_body() -> None:
    async def main() -> None:
        async with Server(reply_with(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")) as server:
            upstream = client()
            response = await upstream.send(UpstreamRequest("HEAD", server.url, []))
            assert response.header(b"content-length") == "5"
            assert await response.aread() == b""
            await upstream.aclose()

    run(main())


def test_reply_dropped_unread_frees_its_connection() -> None:
    async def main() -> None:
        async with Server(reply_with(OK_HELLO)) as server:
            upstream = client(max_connections=1, pool_timeout=0.5)
            await upstream.send(post(server.url))  # never read, never closed
            response = await upstream.send(post(server.url))
            assert await response.aread() == b"hello"
            await upstream.aclose()

    run(main())


def test_informational_reply_is_skipped() -> None:
    async def main() -> None:
        async with Server(reply_with(b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n", OK_HELLO)) as server:
            upstream = client()
            response = await upstream.send(post(server.url))
            assert response.status_code == 200
            assert response.raw_headers == [(b"content-length", b"5")]
            assert await response.aread() == b"hello"
            await upstream.aclose()

    run(main())


def self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a fresh self-signed certificate for localhost, and a client context trusting it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return server, ssl.create_default_context(cadata=cert_pem.decode())


def test_https_upstream_verified_against_the_given_roots(tmp_path: Path) -> None:
    server_tls, client_tls = self_signed(tmp_path)

    async def main() -> None:
        async with Server(reply_with(OK_HELLO), tls=server_tls, host="localhost") as server:
            upstream = client(ssl_context=client_tls)
            for _ in range(2):
                response = await upstream.send(post(server.url))
                assert await response.aread() == b"hello"
            await upstream.aclose()
            assert server.connections == 1

            default = client()  # certifi's roots do not know this certificate
            with failure(FailureKind.CONNECT, match="not trusted"):
                await default.send(post(server.url))
            await default.aclose()

    run(main())


def test_failure_kinds_keep_the_names_audit_rows_have_always_carried() -> None:
    """`upstream_failures` reads "connection failed (ConnectError): ..."; security teams query these names."""
    assert sorted(FailureKind) == [
        "ConnectError",
        "ConnectTimeout",
        "ReadError",
        "ReadTimeout",
        "RemoteProtocolError",
        "UpstreamTransportError",
        "WriteTimeout",
    ]
