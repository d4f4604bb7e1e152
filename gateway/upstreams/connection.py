"""One keep-alive HTTP/1.1 connection to an upstream: an asyncio protocol fed to llhttp's parser (httptools), the
request head we write on it, and the exchange of one request for the head of its reply.

Per request it allocates the request head and the body chunks; no tasks, no timeout objects (one loop timer per
connection is moved only when it would fire late). Reading pauses while more than HIGH_WATER bytes of body wait
for a slow reader, so a stream is relayed, never buffered whole.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import Callable
from typing import cast
from urllib.parse import quote, urlsplit

import httptools

from gateway.upstreams.errors import FailureKind, UpstreamConnectError, UpstreamTimeout, UpstreamTransportError

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
# A body this large goes to the socket in its own write rather than being copied onto the head.
_SEPARATE_BODY = 64 * 1024
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_NO_BODY_STATUSES = frozenset({204, 304})
_DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]  # scheme, host, port


class Target:
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


class Connection(asyncio.Protocol):
    """One keep-alive connection; parses replies and hands body chunks to the response that awaits them."""

    __slots__ = (
        "_on_closed",
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

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: Origin, on_closed: Callable[[], None]) -> None:
        self._on_closed = on_closed  # the pool's: a counted connection closed, its slot is free
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
        self.loop = loop
        self.last_read = 0.0
        self.wait_since = 0.0
        self.wait_timeout = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.reset(head_request=False)
        self.active = False

    def reset(self, *, head_request: bool) -> None:
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
            self._on_closed()

    async def exchange(
        self, head: bytes, body: bytes | None, head_request: bool, *, write_timeout: float, read_timeout: float
    ) -> None:
        """Write the request and wait for the reply's head."""
        conn = self
        conn.reset(head_request=head_request)
        conn.uses += 1
        transport = conn.transport
        conn.written_at = conn.loop.time()
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
            if await conn.wait(write_timeout):
                raise UpstreamTimeout(
                    f"upstream stopped taking the request body (nothing for {write_timeout:g}s)",
                    FailureKind.WRITE_TIMEOUT,
                )
        while not conn.head_done:
            if conn.error is not None:
                raise conn.error
            if await conn.wait(read_timeout):
                raise UpstreamTimeout(f"no reply from upstream within {read_timeout:g}s", FailureKind.READ_TIMEOUT)


async def open_connection(
    loop: asyncio.AbstractEventLoop,
    origin: Origin,
    tls_context: ssl.SSLContext,
    timeout: float,
    on_closed: Callable[[], None],
) -> Connection:
    """A new connection to `origin` (TLS for https), within `timeout`."""
    scheme, host, port = origin
    tls = tls_context if scheme == "https" else None
    try:
        async with asyncio.timeout(timeout):
            _, conn = await loop.create_connection(
                lambda: Connection(loop, origin, on_closed), host, port, ssl=tls, server_hostname=host if tls else None
            )
    except TimeoutError:
        raise UpstreamTimeout(
            f"no connection to {host}:{port} within {timeout:g}s", FailureKind.CONNECT_TIMEOUT
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


def request_head(method: str, target: Target, headers: list[tuple[bytes, bytes]], body: bytes | None) -> bytes:
    """The request line and headers: the caller's in order, a host if none, our own framing."""
    parts = [method.encode("ascii"), b" ", target.target, b" HTTP/1.1\r\n", b""]
    lines = 2  # request line, blank line
    has_host = False
    for name, value in headers:
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
    if body:
        parts.append(b"content-length: %d\r\n" % len(body))
        lines += 1
    elif method in _BODY_METHODS:
        parts.append(b"content-length: 0\r\n")
        lines += 1
    parts.append(b"\r\n")
    head = b"".join(parts)
    # A CR or LF inside a name or value would start a header (or a request) of the sender's choosing.
    if head.count(b"\n") != lines or head.count(b"\r") != lines:
        raise ValueError("a request header or the URL contains a line break")
    return head
