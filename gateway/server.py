"""The HTTP server's connection guard: a connection must send a request's complete headers in time.

uvicorn times out idle keep-alive connections between requests, but not a connection that never sends a request,
nor one that sends its headers a byte at a time: held open by the hundred, they take the file descriptors every
other caller needs. This protocol closes them (and logs it); `limit_concurrency` caps the rest."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger("gateway.server")


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing a connection that has not sent a request's complete headers within
    `header_timeout` seconds of opening or of the request's first byte."""

    header_timeout = 10.0
    closed_for_headers = 0  # connections closed this way, for the log and tests

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expire(self) -> None:
        self._header_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered: its headers did arrive
        type(self).closed_for_headers += 1
        logger.warning(
            "closing a connection from %s: no complete request headers within %g s",
            f"{self.client[0]}:{self.client[1]}" if self.client else "?",
            self.header_timeout,
        )
        self.transport.close()


def guarded_protocol(header_timeout: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class with this deadline, for `uvicorn.Config(http=...)`."""
    return type("GatewayHttpProtocol", (HeaderDeadlineProtocol,), {"header_timeout": header_timeout})
