"""A lean HTTP/1.1 client for the upstream hop: an asyncio protocol, llhttp's parser (httptools), a deque of idle
keep-alive connections per origin.

It does what the relay needs and nothing else: no proxies from the environment, no cookies, no redirects, no
decompression. Per request it allocates the request head, one response object and the body chunks; no tasks, no
timeout objects (one loop timer per connection is moved only when it would fire late).

Retries: a request is sent again once, on a new connection, only when the connection had served an earlier
request (it came from the pool), not one byte of the reply arrived, and the server closed or reset the connection
within `STALE_RACE_SECONDS` of the request being written. That is the race of a server closing an idle connection
just as it is reused (as aiohttp retries a reused connection the server dropped); a server that kept the request
longer may have acted on it, so its failure is reported, never repeated. Connections the server closed while idle
are found closed (the protocol saw EOF) and skipped before any reuse.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from typing import TYPE_CHECKING, cast
from urllib.parse import quote, urlsplit

import certifi
import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.upstreams.transport import (
    FailureKind,
    UpstreamConnectError,
    UpstreamRequest,
    UpstreamTimeout,
    UpstreamTransportError,
)

if TYPE_CHECKING:
    from gateway.config import Settings

# How long an idle upstream connection is kept (httpx's keep-alive expiry, which the gateway used before).
KEEPALIVE_SECONDS = 5.0
# A reused connection the server dropped this soon after the request was written never took the request.
STALE_RACE_SECONDS = 0.5
# Reading the socket pauses while more than this much body is waiting for a slow consumer, resumes below the
# low mark: a stream is relayed, never buffered whole.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
# A body this large goes to the socket in its own write rather than being copied onto the head.
_SEPARATE_BODY = 64 * 1024
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_NO_BODY_STATUSES = frozenset({204, 304})
_DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]  # scheme, host, port


class _Target:
    """What a URL gives every request to it: where to connect, the request target and the host header."""

    __slots__ = ("origin", "target", "host")

    def __init__(self, url: str) -> None:
        try:
            parts = urlsplit(url)
            port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 0)
        except ValueError as exc:
            raise UpstreamConnectError(f"invalid upstream URL {url!r}: {exc}", FailureKind.CONNECT) from None
        host = parts.hostname
        if parts.scheme not in _DEFAULT_PORTS or not host:
            raise UpstreamConnectError(
                f"invalid upstream URL {url!r}: http or https with a host is needed", FailureKind.CONNECT
            )
        self.origin: Origin = (parts.scheme, host, port)
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        self.target = quote(target, safe="/?&=%:;@!$'()*+,~-._[]#").encode("ascii")
        authority = f"[{host}]" if ":" in host else host
        if port != _DEFAULT_PORTS[parts.scheme]:
            authority += f":{port}"
        self.host = authority.encode("ascii")


class _Connection(asyncio.Protocol):
    """One keep-alive connection; parses replies and hands body chunks to the response that awaits them."""

    __slots__ = (
        "_pool",
        "origin",
        "transport",
        "parser",
        "closed",
        "counted",
        "idle_since",
        "uses",
        "active",
        "head_request",
        "status",
        "raw_headers",
        "framed",
        "head_done",
        "complete",
        "reusable",
        "close_delimited",
        "received",
        "chunks",
        "buffered",
        "reading_paused",
        "write_paused",
        "error",
        "waiter",
        "written_at",
        "loop",
        "last_read",
        "wait_since",
        "wait_timeout",
        "timer",
    )

    def __init__(self, pool: H1Transport, origin: Origin) -> None:
        self._pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.counted = False  # holds one of the pool's max_connections slots
        self.idle_since = 0.0
        self.uses = 0
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.reading_paused = False
        self.write_paused = False
        self.waiter: asyncio.Future[bool] | None = None
        self.loop = pool._loop
        self.last_read = 0.0
        self.wait_since = 0.0
        self.wait_timeout = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self._reset(head_request=False)
        self.active = False

    def _reset(self, *, head_request: bool) -> None:
        self.active = True
        self.head_request = head_request
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.framed = False
        self.head_done = False
        self.complete = False
        self.reusable = False
        self.close_delimited = False
        self.received = False
        self.error: UpstreamTransportError | None = None
        self.written_at = 0.0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.active and not self.complete and self.error is None:
            if self.close_delimited and exc is None:
                self.complete = True  # the server's close ends a body sent without a length
            elif exc is None:
                where = "mid-reply" if self.received else "before replying"
                self.error = UpstreamTransportError(f"upstream closed the connection {where}", FailureKind.PROTOCOL)
            else:
                self.error = UpstreamTransportError(f"upstream connection lost: {exc}", FailureKind.READ)
        self.reusable = False
        self.transport = None
        self._closed()
        self._wake()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake()

    def data_received(self, data: bytes) -> None:
        if not self.active:  # nothing may arrive between replies
            self.close()
            return
        self.received = True
        self.last_read = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamTransportError("upstream switched protocols", FailureKind.PROTOCOL))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamTransportError(f"invalid HTTP/1.1 reply from upstream: {exc}", FailureKind.PROTOCOL))

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.complete:
            self.reusable = False  # a second reply nobody asked for

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))
        size = len(name)
        if (size == 14 or size == 17) and name.lower() in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # informational (100, 103): the real reply follows
            self.raw_headers = []
            self.framed = False
            return
        self.status = status
        self.head_done = True
        if self.head_request:
            # llhttp cannot be told a HEAD reply has no body; end here and never reuse the connection.
            self.complete = True
        else:
            self.close_delimited = not self.framed and status not in _NO_BODY_STATUSES
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self.head_done or self.complete:
            return  # the end of an informational reply, or of a HEAD reply already ended
        self.complete = True
        transport = self.transport
        # Reusable only when the whole request left: a reply that came before the body was sent leaves the rest.
        self.reusable = (
            transport is not None and transport.get_write_buffer_size() == 0 and self.parser.should_keep_alive()
        )
        self._wake()

    # used by the pool and the response

    async def wait(self, timeout: float) -> bool:
        """Until the protocol has news (True when nothing was read for `timeout`, counted from now at the least)."""
        loop = self.loop
        waiter: asyncio.Future[bool] = loop.create_future()
        self.waiter = waiter
        self.wait_since = now = loop.time()
        self.wait_timeout = timeout
        # One timer serves many waits: it is moved only when it would fire late, and re-armed from `_silence`.
        timer = self.timer
        if timer is None or timer.when() > now + timeout:
            if timer is not None:
                timer.cancel()
            self.timer = loop.call_at(now + timeout, self._silence)
        try:
            return await waiter
        finally:
            self.waiter = None

    def _silence(self) -> None:
        """The timer: times the waiter out if nothing was read for its timeout, otherwise looks again later."""
        self.timer = None
        waiter = self.waiter
        if waiter is None or waiter.done():
            return  # nobody waits: the next wait arms the timer again
        due = max(self.last_read, self.wait_since) + self.wait_timeout
        if self.loop.time() >= due:
            waiter.set_result(True)
        else:
            self.timer = self.loop.call_at(due, self._silence)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(False)

    def _fail(self, error: UpstreamTransportError) -> None:
        if not self.complete and self.error is None:
            self.error = error
        self.close()
        self._wake()

    def consumed(self, size: int) -> None:
        self.buffered -= size
        if self.reading_paused and self.buffered < LOW_WATER and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()
        self._closed()

    def _closed(self) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.counted:
            self.counted = False
            self._pool._forget()


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(True)


class H1Response:
    """A reply whose body has not been read yet: status, headers, and the raw body bytes as they arrive."""

    __slots__ = ("status_code", "raw_headers", "_headers", "_conn", "_pool")

    def __init__(self, conn: _Connection, pool: H1Transport) -> None:
        self.status_code = conn.status
        self.raw_headers = conn.raw_headers
        self._headers: CIMultiDictProxy[str] | None = None
        self._conn: _Connection | None = conn
        self._pool = pool

    def __del__(self) -> None:
        # A reply dropped unread must still give its connection's slot back (and stop the upstream).
        conn = self._conn
        if conn is not None and not conn.loop.is_closed():
            conn.close()

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        """The headers, latin-1 decoded, looked up case-insensitively (built on first use)."""
        if self._headers is None:
            headers = CIMultiDict((k.decode("latin-1"), v.decode("latin-1")) for k, v in self.raw_headers)
            self._headers = CIMultiDictProxy(headers)
        return self._headers

    @property
    def buffered_bytes(self) -> int:
        """Body bytes received and not read yet (bounded: reading pauses above HIGH_WATER)."""
        return self._conn.buffered if self._conn is not None else 0

    def aiter_raw(self) -> H1Response:
        """The body as received: transfer encoding removed, content encoding (if any) left as it is."""
        return self

    def __aiter__(self) -> H1Response:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        chunks = conn.chunks
        while not chunks:
            if conn.complete:
                self._conn = None
                self._pool._release(conn)
                raise StopAsyncIteration
            error = conn.error
            if error is not None:
                self._conn = None
                conn.close()
                raise error
            if await conn.wait(self._pool._read_timeout):
                self._conn = None
                conn.close()
                raise UpstreamTimeout(
                    f"upstream sent nothing for {self._pool._read_timeout:g}s mid-reply", FailureKind.READ_TIMEOUT
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
            self._pool._release(conn)
        else:
            conn.close()


class H1Transport:
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
    ) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._pool_timeout = pool_timeout
        self._max_connections = max_connections
        self._ssl = ssl_context or ssl.create_default_context(cafile=certifi.where())
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._open = 0  # connections holding a slot: busy, idle or being opened
        self._slot_waiters: deque[asyncio.Future[bool]] = deque()
        self._targets: dict[str, _Target] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._closing = False
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by the first send

    @classmethod
    def from_settings(cls, settings: Settings) -> H1Transport:
        return cls(
            connect_timeout=settings.upstream_connect_timeout,
            read_timeout=settings.upstream_read_timeout,
            write_timeout=settings.upstream_write_timeout,
            pool_timeout=settings.upstream_pool_timeout,
            max_connections=settings.upstream_max_connections,
        )

    async def send(self, request: UpstreamRequest) -> H1Response:
        """The reply's status and headers; its body is read from the response."""
        if self._closing:
            raise UpstreamTransportError("upstream transport is closed")
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        target = self._targets.get(request.url)
        if target is None:
            target = _Target(request.url)
            if len(self._targets) > 1024:
                self._targets.clear()
            self._targets[request.url] = target
        head = _head(request, target)
        fresh = False
        while True:
            conn = await self._acquire(target.origin, fresh=fresh)
            try:
                await self._exchange(conn, head, request.body, request.method == "HEAD")
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
            return H1Response(conn, self)

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

    async def _exchange(self, conn: _Connection, head: bytes, body: bytes | None, head_request: bool) -> None:
        """Write the request and wait for the reply's head."""
        conn._reset(head_request=head_request)
        conn.uses += 1
        transport = conn.transport
        conn.written_at = self._loop.time()
        if transport is None or conn.closed:
            conn.error = UpstreamTransportError(
                "upstream closed the connection before the request was sent", FailureKind.PROTOCOL
            )
            raise conn.error
        if body and len(body) > _SEPARATE_BODY:
            transport.write(head)
            transport.write(body)
        else:
            transport.write(head + body if body else head)
        while conn.write_paused and not conn.head_done and conn.error is None:
            if await conn.wait(self._write_timeout):
                raise UpstreamTimeout(
                    f"upstream stopped taking the request body (nothing for {self._write_timeout:g}s)",
                    FailureKind.WRITE_TIMEOUT,
                )
        while not conn.head_done:
            if conn.error is not None:
                raise conn.error
            if await conn.wait(self._read_timeout):
                raise UpstreamTimeout(
                    f"no reply from upstream within {self._read_timeout:g}s", FailureKind.READ_TIMEOUT
                )

    async def _acquire(self, origin: Origin, *, fresh: bool) -> _Connection:
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
            conn = await self._connect(origin)
        except BaseException:
            self._forget()
            raise
        conn.counted = True
        return conn

    def _take_idle(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        expired_before = self._loop.time() - KEEPALIVE_SECONDS
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

    async def _connect(self, origin: Origin) -> _Connection:
        scheme, host, port = origin
        tls = self._ssl if scheme == "https" else None
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await self._loop.create_connection(
                    lambda: _Connection(self, origin), host, port, ssl=tls, server_hostname=host if tls else None
                )
        except TimeoutError:
            raise UpstreamTimeout(
                f"no connection to {host}:{port} within {self._connect_timeout:g}s", FailureKind.CONNECT_TIMEOUT
            ) from None
        except ConnectionRefusedError:
            raise UpstreamConnectError(f"connection refused by {host}:{port}", FailureKind.CONNECT) from None
        except socket.gaierror as exc:
            raise UpstreamConnectError(f"cannot resolve {host}: {exc.strerror}", FailureKind.CONNECT) from None
        except ssl.SSLCertVerificationError as exc:
            raise UpstreamConnectError(
                f"TLS certificate of {host} not trusted: {exc.verify_message}", FailureKind.CONNECT
            ) from None
        except OSError as exc:  # ssl.SSLError included
            raise UpstreamConnectError(f"cannot connect to {host}:{port}: {exc}", FailureKind.CONNECT) from None
        if conn.closed:
            raise UpstreamConnectError(f"connection to {host}:{port} closed while opening", FailureKind.CONNECT)
        return conn

    def _release(self, conn: _Connection) -> None:
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
            self._sweep = self._loop.call_later(KEEPALIVE_SECONDS, self._sweep_idle)
        if self._slot_waiters:
            self._wake_waiter()

    def _sweep_idle(self) -> None:
        """Close connections idle past the keep-alive expiry (an origin no longer called keeps none open)."""
        self._sweep = None
        expired_before = self._loop.time() - KEEPALIVE_SECONDS
        remaining = False
        for idle in self._idle.values():
            while idle and (idle[0].closed or idle[0].idle_since < expired_before):
                idle.popleft().close()
            remaining = remaining or bool(idle)
        if remaining:
            self._sweep = self._loop.call_later(KEEPALIVE_SECONDS, self._sweep_idle)

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


def _head(request: UpstreamRequest, target: _Target) -> bytes:
    """The request line and headers: the caller's in order, a host if none, our own framing."""
    parts = [request.method.encode("ascii"), b" ", target.target, b" HTTP/1.1\r\n", b""]
    lines = 2  # request line, blank line
    has_host = False
    for name, value in request.headers:
        size = len(name)
        if size == 4 and name.lower() == b"host":
            has_host = True
        elif (size == 14 or size == 17) and name.lower() in (b"content-length", b"transfer-encoding"):
            continue  # the framing is ours to set, from the body we send
        parts += (name, b": ", value, b"\r\n")
        lines += 1
    if not has_host:
        parts[4] = b"host: " + target.host + b"\r\n"
        lines += 1
    body = request.body
    if body:
        parts.append(b"content-length: %d\r\n" % len(body))
        lines += 1
    elif request.method in _BODY_METHODS:
        parts.append(b"content-length: 0\r\n")
        lines += 1
    parts.append(b"\r\n")
    head = b"".join(parts)
    # A CR or LF inside a name or value would start a header (or a request) of the sender's choosing.
    if head.count(b"\n") != lines or head.count(b"\r") != lines:
        raise ValueError("a request header or the URL contains a line break")
    return head
