from __future__ import annotations

import asyncio
import socket
import time

import pytest

from gateway.upstreams.transport import (
    ConnectError,
    UpstreamRequest,
    UpstreamTransport,
    WriteTimeout,
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
                with pytest.raises(WriteTimeout):
                    await client.send(UpstreamRequest("POST", url, [], b"x" * 50_000_000))
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
            with pytest.raises(ConnectError):
                await client.send(UpstreamRequest("POST", dead, [], b"{}"))
        finally:
            await client.aclose()

    asyncio.run(main())
