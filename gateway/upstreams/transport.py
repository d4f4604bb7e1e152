"""The upstream hop: pooled keep-alive HTTP/1.1 connections (gateway.upstreams.connection) behind the few calls
the router and the proxy make.

Written here rather than taken from a library: this hop carries every relayed byte, and aiohttp's client (used
before) cost ~110-120 µs of CPU per request where this costs ~20 (bench/h1_micro.py), a fifth of the gateway's
whole budget at the issue's 3,000 streamed requests per second. It does what the relay needs and nothing else: no
proxies from the environment, no cookies, no redirects, no decompression; TLS verified against certifi's roots.
Everything else that speaks HTTP (IAP keys, Cloud Identity, Google tokens, the shim) uses httpx.

Retries: a request is sent again once, on a new connection, only when the connection had served an earlier
request (it came from the pool), not one byte of the reply arrived, and the server closed or reset the connection
within `STALE_RACE_SECONDS` of the request being written. That is the race of a server closing an idle connection
just as it is reused (aiohttp and httpx retry it too); a server that kept the request longer may have acted on
it, so its failure is reported, never repeated. Connections the server closed while idle are found closed (the
protocol saw EOF) and skipped before any reuse.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import certifi

from gateway.upstreams.connection import Connection, Origin, Target, open_connection, request_head
from gateway.upstreams.errors import FailureKind, UpstreamTimeout, UpstreamTransportError

if TYPE_CHECKING:
    from gateway.config import Settings

# How long an idle upstream connection is kept (httpx's keep-alive expiry, which the gateway used before).
KEEPALIVE_SECONDS = 5.0
# A reused connection the server dropped this soon after the request was written never took the request.
STALE_RACE_SECONDS = 0.5


@dataclass(slots=True)
class UpstreamRequest:
    """What an upstream sends for one call: method, absolute URL, headers in order, body."""

    method: str
    url: str
    headers: list[tuple[bytes, bytes]]
    body: bytes | None = None


class UpstreamResponse:
    """A reply whose body has not been read yet: status, headers, and the raw body bytes as they arrive."""

    __slots__ = ("status_code", "raw_headers", "_conn", "_release", "_read_timeout", "_pending")

    def __init__(
        self,
        status_code: int,
        raw_headers: list[tuple[bytes, bytes]],
        conn: Connection | None = None,
        release: Callable[[Connection], None] | None = None,
        read_timeout: float = 0.0,
        body: bytes = b"",
    ) -> None:
        self.status_code = status_code
        self.raw_headers = raw_headers
        self._conn = conn
        self._release = release  # the pool's: a connection whose reply ended goes back to it
        self._read_timeout = read_timeout
        self._pending = body

    @classmethod
    def buffered(cls, status_code: int, raw_headers: list[tuple[bytes, bytes]], body: bytes) -> UpstreamResponse:
        """A reply already read into memory (an error the router rewrote), relayed like any other."""
        return cls(status_code, raw_headers, body=body)

    def __del__(self) -> None:
        # A reply dropped unread must still give its connection's slot back (and stop the upstream).
        conn = self._conn
        if conn is not None and not conn.loop.is_closed():
            conn.close()

    def header(self, name: bytes) -> str | None:
        """The first value of a header (`name` in lower case), latin-1 decoded; None when absent."""
        for key, value in self.raw_headers:
            if len(key) == len(name) and key.lower() == name:
                return value.decode("latin-1")
        return None

    @property
    def buffered_bytes(self) -> int:
        """Body bytes received and not read yet (bounded: reading pauses above HIGH_WATER)."""
        return self._conn.buffered if self._conn is not None else 0

    def aiter_raw(self) -> UpstreamResponse:
        """The body as received: transfer encoding removed, content encoding (if any) left as it is."""
        return self

    def __aiter__(self) -> UpstreamResponse:
        return self

    async def __anext__(self) -> bytes:
        if self._pending:
            chunk, self._pending = self._pending, b""
            return chunk
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        chunks = conn.chunks
        while not chunks:
            if conn.complete:
                self._conn = None
                self._give_back(conn)
                raise StopAsyncIteration
            error = conn.error
            if error is not None:
                self._conn = None
                conn.close()
                raise error
            if await conn.wait(self._read_timeout):
                self._conn = None
                conn.close()
                raise UpstreamTimeout(
                    f"upstream sent nothing for {self._read_timeout:g}s mid-reply", FailureKind.READ_TIMEOUT
                )
        chunk = chunks.popleft()
        conn.consumed(len(chunk))
        return chunk

    async def aread(self, limit: int | None = None) -> bytes:
        """The rest of the body, or its first `limit` bytes (the rest is left unread)."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in self:
            chunks.append(chunk)
            size += len(chunk)
            if limit is not None and size >= limit:
                break
        body = b"".join(chunks)
        return body if limit is None else body[:limit]

    async def aclose(self) -> None:
        """Back to the pool when the reply has ended; otherwise the connection is closed now, so the upstream
        stops generating (a client that left must not keep a model running)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if conn.complete:
            self._give_back(conn)
        else:
            conn.close()

    def _give_back(self, conn: Connection) -> None:
        if self._release is not None:
            self._release(conn)
        else:
            conn.close()


class UpstreamTransport:
    """Pooled keep-alive HTTP/1.1 connections for every upstream call, TLS verified against certifi's roots."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        write_timeout: float,
        pool_timeout: float,
        max_connections: int,
        ssl_context: ssl.SSLContext | None = None,
        keepalive_seconds: float = KEEPALIVE_SECONDS,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._pool_timeout = pool_timeout
        self._max_connections = max_connections
        self._keepalive = keepalive_seconds
        self._ssl = ssl_context or ssl.create_default_context(cafile=certifi.where())
        self._idle: dict[Origin, deque[Connection]] = {}
        self._open = 0  # connections holding a slot: busy, idle or being opened
        self._slot_waiters: deque[asyncio.Future[bool]] = deque()
        self._targets: dict[str, Target] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._closing = False
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by the first send

    @classmethod
    def from_settings(cls, settings: Settings) -> UpstreamTransport:
        return cls(
            connect_timeout=settings.upstream_connect_timeout,
            read_timeout=settings.upstream_read_timeout,
            write_timeout=settings.upstream_write_timeout,
            pool_timeout=settings.upstream_pool_timeout,
            max_connections=settings.upstream_max_connections,
        )

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """The reply's status and headers; its body is read from the response."""
        if self._closing:
            raise UpstreamTransportError("upstream transport is closed")
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        target = self._targets.get(request.url)
        if target is None:
            target = Target(request.url)
            if len(self._targets) > 1024:
                self._targets.clear()
            self._targets[request.url] = target
        head = request_head(request.method, target, request.headers, request.body)
        fresh = False
        while True:
            conn = await self._acquire(target.origin, fresh=fresh)
            try:
                await conn.exchange(
                    head,
                    request.body,
                    request.method == "HEAD",
                    write_timeout=self._write_timeout,
                    read_timeout=self._read_timeout,
                )
            except UpstreamTransportError:
                stale = (
                    not fresh
                    and conn.uses > 1
                    and not conn.received
                    and conn.error is not None
                    and conn.error.kind in (FailureKind.PROTOCOL, FailureKind.READ)
                    and self._loop.time() - conn.written_at < STALE_RACE_SECONDS
                )
                conn.close()
                if not stale:
                    raise
                fresh = True
                continue
            except BaseException:
                conn.close()
                raise
            return UpstreamResponse(conn.status, conn.raw_headers, conn, self._release, self._read_timeout)

    async def aclose(self) -> None:
        """Close every pooled connection; replies still being read keep theirs until they end."""
        self._closing = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
        self._idle.clear()

    async def _acquire(self, origin: Origin, *, fresh: bool) -> Connection:
        """An idle connection to `origin`, or a new one once a slot is free (within the pool timeout)."""
        deadline = 0.0
        while True:
            if not fresh:
                conn = self._take_idle(origin)
                if conn is not None:
                    return conn
            if self._open < self._max_connections or self._evict_idle():
                break
            now = self._loop.time()
            if not deadline:
                deadline = now + self._pool_timeout
            if now >= deadline:
                raise UpstreamTimeout(
                    f"no free upstream connection within {self._pool_timeout:g}s ({self._max_connections} in use)",
                    FailureKind.CONNECT_TIMEOUT,
                )
            waiter: asyncio.Future[bool] = self._loop.create_future()
            self._slot_waiters.append(waiter)
            timer = self._loop.call_at(deadline, _expire, waiter)
            try:
                await waiter
            except BaseException:
                # A wake-up meant for this waiter goes to the next one.
                if waiter.done() and not waiter.cancelled():
                    self._wake_waiter()
                raise
            finally:
                timer.cancel()
                if not waiter.done():
                    self._slot_waiters.remove(waiter)
        self._open += 1
        try:
            conn = await open_connection(self._loop, origin, self._ssl, self._connect_timeout, self._forget)
        except BaseException:
            self._forget()
            raise
        conn.counted = True
        return conn

    def _take_idle(self, origin: Origin) -> Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        expired_before = self._loop.time() - self._keepalive
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have been closed by the server
            if conn.closed:
                continue
            if conn.idle_since < expired_before:
                conn.close()
                while idle:  # older still
                    idle.pop().close()
                return None
            return conn
        return None

    def _evict_idle(self) -> bool:
        """Close the oldest idle connection to any origin, so a slot frees for another origin."""
        for idle in self._idle.values():
            while idle:
                conn = idle.popleft()
                if not conn.closed:
                    conn.close()
                    return True
        return False

    def _release(self, conn: Connection) -> None:
        conn.active = False
        if not conn.reusable or conn.closed or self._closing:
            conn.close()
            return
        conn.chunks.clear()
        conn.buffered = 0
        if conn.reading_paused and conn.transport is not None:
            conn.reading_paused = False
            conn.transport.resume_reading()
        conn.idle_since = self._loop.time()
        idle = self._idle.get(conn.origin)
        if idle is None:
            idle = self._idle[conn.origin] = deque()
        idle.append(conn)
        if self._sweep is None:
            self._sweep = self._loop.call_later(self._keepalive, self._sweep_idle)
        if self._slot_waiters:
            self._wake_waiter()

    def _sweep_idle(self) -> None:
        """Close connections idle past the keep-alive expiry (an origin no longer called keeps none open)."""
        self._sweep = None
        expired_before = self._loop.time() - self._keepalive
        remaining = False
        for idle in self._idle.values():
            while idle and (idle[0].closed or idle[0].idle_since < expired_before):
                idle.popleft().close()
            remaining = remaining or bool(idle)
        if remaining:
            self._sweep = self._loop.call_later(self._keepalive, self._sweep_idle)

    def _forget(self) -> None:
        """A connection closed (or never opened): its slot is free."""
        self._open -= 1
        if self._slot_waiters:
            self._wake_waiter()

    def _wake_waiter(self) -> None:
        """A slot freed or a connection went idle: the longest waiter looks again."""
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(False)
                return


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(True)
