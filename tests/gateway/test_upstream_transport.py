from __future__ import annotations

import asyncio
import socket
import time

import pytest

from gateway.upstreams.transport import (
    FailureKind,
    UpstreamConnectError,
    UpstreamRequest,
    UpstreamTimeout,
    UpstreamTransport,
    UpstreamTransportError,
)


def transport(**overrides: float) -> UpstreamTransport:
    options = {"connect_timeout": 1.0, "read_timeout": 5.0, "write_timeout": 5.0, "pool_timeout": 1.0}
    options.update(overrides)
    return UpstreamTransport(max_connections=4, **options)


def test_upstream_that_stops_reading_the_body_times_out_on_write() -> None:
    """aiohttp has no write timeout of its own; without one a stalled upload would wait forever."""

    async def main() -> None:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()  # accepts, never reads
            url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1/messages"
            client = transport(write_timeout=0.3)
            started = time.monotonic()
            try:
                with pytest.raises(UpstreamTimeout) as raised:
                    await client.send(UpstreamRequest("POST", url, [], b"x" * 50_000_000))
                assert raised.value.kind is FailureKind.WRITE_TIMEOUT
            finally:
                await client.aclose()
            assert time.monotonic() - started < 2

    asyncio.run(main())


def test_refused_connection_is_a_connect_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1/messages"

    async def main() -> None:
        client = transport()
        try:
            with pytest.raises(UpstreamConnectError) as raised:
                await client.send(UpstreamRequest("POST", dead, [], b"{}"))
            assert raised.value.kind is FailureKind.CONNECT
        finally:
            await client.aclose()

    asyncio.run(main())


def test_failure_kinds_keep_the_names_audit_rows_have_always_carried() -> None:
    """`upstream_failures` reads "connection failed (ConnectError): ..."; security teams query these names."""
    assert sorted(FailureKind) == [
        "ConnectError", "ConnectTimeout", "ReadError", "ReadTimeout", "RemoteProtocolError",
        "UpstreamTransportError", "WriteTimeout",
    ]


def test_upstream_that_never_answers_is_a_read_timeout() -> None:
    async def main() -> None:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()  # the kernel completes the handshake and buffers the request; nobody answers
            url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1/messages"
            client = transport(read_timeout=0.3)
            try:
                with pytest.raises(UpstreamTimeout) as raised:
                    await client.send(UpstreamRequest("POST", url, [], b"{}"))
            finally:
                await client.aclose()
            assert raised.value.kind is FailureKind.READ_TIMEOUT

    asyncio.run(main())


def test_upstream_that_hangs_up_before_answering_is_a_protocol_error() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/messages"
        client = transport()
        try:
            with pytest.raises(UpstreamTransportError) as raised:
                await client.send(UpstreamRequest("POST", url, [], b"{}"))
        finally:
            await client.aclose()
            server.close()
            await server.wait_closed()
        assert not isinstance(raised.value, UpstreamTimeout)
        assert raised.value.kind is FailureKind.PROTOCOL

    asyncio.run(main())
