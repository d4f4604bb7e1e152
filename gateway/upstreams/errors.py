"""What can go wrong on the upstream hop, as the gateway's own exceptions: a timeout (the relay answers 504) apart
from every other failure (502), and a `FailureKind` naming it the way audit rows do."""

from __future__ import annotations

from enum import StrEnum


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
