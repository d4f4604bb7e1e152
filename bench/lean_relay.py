"""A what-if baseline: how cheap a Python relay under uvicorn can be, to size the gateway's targets against.

A raw ASGI app (no framework) under uvicorn with uvloop and httptools, and instead of httpx a minimal HTTP/1.1
upstream client on an asyncio protocol: an O(1) deque of idle keep-alive connections, chunked decoding,
no per-request tasks, cancel scopes or timeouts objects. With `--meter` every chunk goes through the gateway's
SSEMeter. It relays only what the benchmark sends (plain-HTTP upstream, no TLS, no retries); it is a
measurement, not a proposal to ship as is.

Run: python -m bench.lean_relay --port 9100 --upstream 127.0.0.1:9000 [--meter]
"""

from __future__ import annotations

import argparse
import asyncio
from collections import deque
from typing import Any

import uvicorn

_DROP_REQUEST = frozenset({b"host", b"content-length", b"connection", b"transfer-encoding", b"accept-encoding"})
_DROP_RESPONSE = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"content-length"})


class UpstreamConn(asyncio.Protocol):
    """One keep-alive connection to the upstream; hands body pieces to whoever awaits `next_piece`."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: Any = None
        self.buf = b""
        self.headers_done: asyncio.Future[tuple[int, list[tuple[bytes, bytes]]]] | None = None
        self.pieces: deque[bytes] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.finished = False
        self.chunked = False
        self.remaining = 0
        self.state = 0  # 0 idle, 1 headers, 2 length body, 3 chunk size, 4 chunk data, 5 final CRLF

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.state:
            if self.headers_done is not None and not self.headers_done.done():
                self.headers_done.set_exception(ConnectionError("upstream closed the connection"))
            self.finished = True
            self._wake()

    def start(self, data: bytes) -> asyncio.Future[tuple[int, list[tuple[bytes, bytes]]]]:
        self.state = 1
        self.finished = False
        self.headers_done = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.headers_done

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def next_piece(self) -> bytes | None:
        """The next body bytes, or None at the end of the body."""
        while not self.pieces:
            if self.finished:
                return None
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        return self.pieces.popleft()

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        self.buf = b""
        pos, size = 0, len(buf)
        while pos < size or self.state == 5:
            if self.state == 1:
                end = buf.find(b"\r\n\r\n", pos)
                if end < 0:
                    self.buf = buf[pos:]
                    return
                lines = buf[pos:end].split(b"\r\n")
                status = int(lines[0][9:12])
                headers = []
                self.remaining = 0
                self.chunked = False
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    value = value.strip()
                    if name == b"transfer-encoding":
                        self.chunked = value.lower() == b"chunked"
                    elif name == b"content-length":
                        self.remaining = int(value)
                    headers.append((name, value))
                pos = end + 4
                self.state = 3 if self.chunked else 2
                assert self.headers_done is not None
                self.headers_done.set_result((status, headers))
                if not self.chunked and self.remaining == 0:
                    self._end()
            elif self.state == 2:
                take = min(size - pos, self.remaining)
                self.pieces.append(buf[pos : pos + take])
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    self._end()
                else:
                    self._wake()
            elif self.state == 3:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    self.buf = buf[pos:]
                    return
                length = int(buf[pos:end].split(b";", 1)[0], 16)
                pos = end + 2
                self.remaining = length + 2 if length else 2
                self.state = 4 if length else 5
            elif self.state == 4:
                take = min(size - pos, self.remaining - 2)
                if take > 0:
                    self.pieces.append(buf[pos : pos + take])
                    pos += take
                    self.remaining -= take
                skip = min(size - pos, self.remaining) if self.remaining <= 2 else 0
                pos += skip
                self.remaining -= skip
                if self.remaining == 0:
                    self.state = 3
                self._wake()
            elif self.state == 5:
                take = min(size - pos, self.remaining)
                pos += take
                self.remaining -= take
                if self.remaining:
                    return
                self._end()
            else:
                return

    def _end(self) -> None:
        self.state = 0
        self.finished = True
        self._wake()


class Pool:
    """Idle keep-alive connections to one upstream, most recently used first."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: deque[UpstreamConn] = deque()

    async def acquire(self) -> UpstreamConn:
        while self.idle:
            conn = self.idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                return conn
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: UpstreamConn(self), self.host, self.port)
        return conn

    def release(self, conn: UpstreamConn) -> None:
        if conn.state == 0 and conn.transport is not None:
            conn.pieces.clear()
            self.idle.append(conn)
        elif conn.transport is not None:
            conn.transport.close()  # abandoned mid-response: the connection cannot be reused


class LeanRelay:
    def __init__(self, upstream: str, *, meter: bool) -> None:
        host, _, port = upstream.rpartition(":")
        self.pool = Pool(host, int(port))
        self.host_header = (b"host", upstream.encode())
        self.meter = meter

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        lines = [scope["method"].encode() + b" " + scope["raw_path"] + b" HTTP/1.1", b"host: " + self.host_header[1]]
        lines += [k + b": " + v for k, v in scope["headers"] if k not in _DROP_REQUEST]
        lines += [b"accept-encoding: identity", b"content-length: " + str(len(body)).encode(), b"", b""]
        conn = await self.pool.acquire()
        meter = None
        if self.meter:
            from gateway.metering import SSEMeter

            meter = SSEMeter()
        try:
            status, headers = await conn.start(b"\r\n".join(lines) + body)
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [(k, v) for k, v in headers if k not in _DROP_RESPONSE],
                }
            )
            while (piece := await conn.next_piece()) is not None:
                if meter is not None:
                    meter.feed(piece)
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.pool.release(conn)
            if meter is not None:
                meter.finish()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="HOST:PORT of a plain-HTTP upstream")
    parser.add_argument("--meter", action="store_true")
    args = parser.parse_args()
    config = uvicorn.Config(
        LeanRelay(args.upstream, meter=args.meter),
        host="127.0.0.1",
        port=args.port,
        log_config=None,
        access_log=False,
        server_header=False,
        date_header=False,
        lifespan="on",
        loop="uvloop",
        http="httptools",
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
