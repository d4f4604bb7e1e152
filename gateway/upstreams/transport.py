"""The upstream hop: aiohttp's client (C parser, O(1) pool) behind the few calls the router and the proxy make.

Everything else that speaks HTTP (IAP keys, Cloud Identity, Google tokens, the shim) stays on httpx; this hop
carries every relayed byte, and httpx's pool and per-read cancel scopes cost more CPU than the gateway itself.
aiohttp's exceptions become the gateway's own in one table at the end of this module (`_ERRORS`).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import aiohttp
import certifi
from aiohttp.payload import Payload
from multidict import CIMultiDict, CIMultiDictProxy

if TYPE_CHECKING:
    from aiohttp.abc import AbstractStreamWriter

    from gateway.config import Settings

# How long an idle upstream connection is kept (httpx's keep-alive expiry, which the gateway used before).
KEEPALIVE_SECONDS = 5.0


class FailureKind(StrEnum):
    """What went wrong on the way to the upstream, as audit rows name it: `upstream_failures` reads
    "connection failed (ConnectError): ...". Security teams query these strings, so they never change."""

    CONNECT = "ConnectError"
    """No connection could be opened (refused, DNS, TLS)."""
    CONNECT_TIMEOUT = "ConnectTimeout"
    """No connection within the connect timeout (waiting for a free pooled connection included)."""
    WRITE_TIMEOUT = "WriteTimeout"
    """The upstream stopped taking the request body."""
    READ_TIMEOUT = "ReadTimeout"
    """No byte of the reply within the read timeout."""
    READ = "ReadError"
    """The connection failed while the request was sent or the reply read."""
    PROTOCOL = "RemoteProtocolError"
    """The upstream closed the connection early or sent something that is not HTTP/1.1."""
    OTHER = "UpstreamTransportError"
    """Any other failure of the HTTP client."""


class UpstreamTransportError(Exception):
    """The upstream could not be reached, or broke the exchange off (a 502)."""

    def __init__(self, message: str, kind: FailureKind = FailureKind.OTHER) -> None:
        super().__init__(message)
        self.kind = kind


class UpstreamTimeout(UpstreamTransportError):
    """A connect, write or read deadline passed (a 504)."""


class UpstreamConnectError(UpstreamTransportError):
    """No connection could be opened, so nothing of the request was sent."""


@dataclass(slots=True)
class UpstreamRequest:
    """What an upstream sends for one call: method, absolute URL, headers in order, body."""

    method: str
    url: str
    headers: list[tuple[bytes, bytes]]
    body: bytes | None = None


class UpstreamResponse:
    """A reply whose body has not been read yet: status, headers, and the raw body bytes as they arrive."""

    __slots__ = ("status_code", "headers", "raw_headers", "_response", "_body")

    def __init__(
        self,
        status_code: int,
        raw_headers: list[tuple[bytes, bytes]],
        headers: CIMultiDictProxy[str],
        response: aiohttp.ClientResponse | None = None,
        body: bytes = b"",
    ) -> None:
        self.status_code = status_code
        self.raw_headers = raw_headers
        self.headers = headers
        self._response = response
        self._body = body

    @classmethod
    def buffered(cls, status_code: int, raw_headers: list[tuple[bytes, bytes]], body: bytes) -> UpstreamResponse:
        """A reply already read into memory (an error the router rewrote), relayed like any other."""
        headers = CIMultiDict((k.decode("latin-1"), v.decode("latin-1")) for k, v in raw_headers)
        return cls(status_code, raw_headers, CIMultiDictProxy(headers), body=body)

    def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body as received: transfer encoding removed, content encoding (if any) left as it is."""
        return _RawChunks(self._response.content if self._response is not None else None, self._body)

    async def aread(self, limit: int | None = None) -> bytes:
        """The rest of the body, or its first `limit` bytes (the rest is left unread)."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in self.aiter_raw():
            chunks.append(chunk)
            size += len(chunk)
            if limit is not None and size >= limit:
                break
        body = b"".join(chunks)
        return body if limit is None else body[:limit]

    async def aclose(self) -> None:
        """Back to the pool when the body was read to the end; otherwise the connection is closed now, so the
        upstream stops generating (a client that left must not keep a model running)."""
        response, self._response = self._response, None
        if response is None:
            return
        if response.content.at_eof():
            response.release()
        else:
            response.close()


class UpstreamTransport:
    """One aiohttp session for every upstream call: pooled keep-alive connections, TLS verified against
    certifi's roots, no proxies from the environment, no cookies kept, no redirects followed, no decompression."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        write_timeout: float,
        pool_timeout: float,
        max_connections: int,
    ) -> None:
        self._write_timeout = write_timeout
        connector = aiohttp.TCPConnector(
            limit=max_connections,
            limit_per_host=0,
            ssl=ssl.create_default_context(cafile=certifi.where()),
            keepalive_timeout=KEEPALIVE_SECONDS,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # aiohttp's `connect` covers waiting for a pooled connection and opening one; `sock_connect` the
            # opening alone. `sock_read` is the longest silence between two reads, the reply's head included.
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=pool_timeout + connect_timeout,
                sock_connect=connect_timeout,
                sock_read=read_timeout,
            ),
            auto_decompress=False,
            trust_env=False,
            # A body's content type is the caller's (httpx added none either), not application/octet-stream.
            skip_auto_headers=("Content-Type",),
            # Cookies an upstream sets are not for the next caller.
            cookie_jar=aiohttp.DummyCookieJar(),
        )

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
        headers = [(_text(name), _text(value)) for name, value in request.headers]
        data = _TimedBody(request.body, self._write_timeout) if request.body else None
        try:
            response = await self._session.request(
                request.method, request.url, headers=headers, data=data, allow_redirects=False
            )
        except _AIOHTTP_ERRORS as exc:
            raise _translated(exc) from exc
        return UpstreamResponse(response.status, list(response.raw_headers), response.headers, response)

    async def aclose(self) -> None:
        await self._session.close()


class _RawChunks:
    """Iterates a response body; a plain iterator rather than an async generator, so nothing is left suspended
    for the event loop to finalise when the relay stops early."""

    __slots__ = ("_content", "_pending")

    def __init__(self, content: aiohttp.StreamReader | None, pending: bytes) -> None:
        self._content = content
        self._pending = pending

    def __aiter__(self) -> _RawChunks:
        return self

    async def __anext__(self) -> bytes:
        if self._pending:
            chunk, self._pending = self._pending, b""
            return chunk
        if self._content is None:
            raise StopAsyncIteration
        try:
            chunk = await self._content.readany()
        except _AIOHTTP_ERRORS as exc:
            raise _translated(exc) from exc
        if not chunk:
            raise StopAsyncIteration
        return chunk


class _WriteTimedOut(TimeoutError):
    """Raised inside aiohttp's body writer; aiohttp passes a TimeoutError without errno through unwrapped."""


class _TimedBody(Payload):
    """The request body, written within the write timeout (aiohttp has none of its own). Only a body larger
    than the socket's buffer ever waits here: smaller ones are handed to the transport at once. (Not aiohttp's
    BytesPayload, which warns about bodies over 1 MB that the gateway relays on purpose.)"""

    _value: bytes
    _autoclose = True  # bytes in memory: nothing to close

    def __init__(self, value: bytes, timeout: float) -> None:
        super().__init__(value)
        self._size = len(value)
        self._timeout = timeout

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self._value.decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: AbstractStreamWriter, content_length: int | None) -> None:
        value = self._value if content_length is None else self._value[:content_length]
        try:
            async with asyncio.timeout(self._timeout):
                await writer.write(value)
        except TimeoutError:
            raise _WriteTimedOut(f"Timeout writing the request body ({self._timeout:g}s)") from None


_AIOHTTP_ERRORS = (aiohttp.ClientError, OSError)  # OSError includes TimeoutError

# aiohttp's exception -> ours and its kind; the first match wins, so a subclass comes before its base.
_ERRORS: tuple[tuple[type[BaseException], type[UpstreamTransportError], FailureKind], ...] = (
    (aiohttp.ConnectionTimeoutError, UpstreamTimeout, FailureKind.CONNECT_TIMEOUT),
    (_WriteTimedOut, UpstreamTimeout, FailureKind.WRITE_TIMEOUT),
    (TimeoutError, UpstreamTimeout, FailureKind.READ_TIMEOUT),  # aiohttp's SocketTimeoutError included
    (aiohttp.ClientConnectorError, UpstreamConnectError, FailureKind.CONNECT),
    (aiohttp.InvalidURL, UpstreamConnectError, FailureKind.CONNECT),
    (aiohttp.ServerDisconnectedError, UpstreamTransportError, FailureKind.PROTOCOL),
    (aiohttp.ClientPayloadError, UpstreamTransportError, FailureKind.PROTOCOL),
    (aiohttp.ClientResponseError, UpstreamTransportError, FailureKind.PROTOCOL),
    (OSError, UpstreamTransportError, FailureKind.READ),
    (aiohttp.ClientConnectionError, UpstreamTransportError, FailureKind.READ),
)


def _translated(exc: BaseException) -> UpstreamTransportError:
    """aiohttp's exception as the gateway's: timeouts (504) apart from every other failure (502)."""
    detail = str(exc) or type(exc).__name__
    for caught, error, kind in _ERRORS:
        if isinstance(exc, caught):
            return error(detail, kind)
    return UpstreamTransportError(detail)


def _text(value: bytes) -> str:
    # aiohttp encodes header text as UTF-8: decoding UTF-8 sends the caller's bytes unchanged.
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")
