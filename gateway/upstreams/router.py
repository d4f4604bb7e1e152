"""Opens the upstream response for a call, failing over between upstreams before the first byte is relayed.

An attempt fails over on a connection failure, 429, 529 or any 5xx; any other answer (2xx, a 4xx the caller
caused) is returned as it is. An error response that ends up relayed is read into memory first (it is small),
so a failed attempt never holds a connection and Google's error shape can be rewritten into Anthropic's.

`retry-after` is honoured by skipping, never by sleeping: the upstream that sent it (429, 529 or 503) is held
back, capped at `retry_after_max`, and the call moves straight on to the next upstream. A held upstream is still
tried last when nothing else is left, so one upstream alone behaves as without failover: its answer, and its
`retry-after`, reach the client, whose own retries wait. Sleeping here would hold the client's connection and
multiply the load the upstream asked to shed.

Each upstream has a circuit breaker for a host that is down, not one that is busy: `breaker_failures` failures in a
row (connection failures, 5xx other than 529) open it for `breaker_cooldown` seconds, or for the `retry-after` of
the failure that opened it when that is shorter; calls skip it meanwhile, then one trial call decides. 429 and 529
are a working upstream asking for patience: they are passed through with their `retry-after` (clients back off on
their own) and never open the circuit, so an overload never shuts everyone out for longer than the upstream asked.
When every circuit is open the call fails fast with 503 and `retry-after`.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Callable, Sequence

import orjson

from gateway.upstreams.base import Upstream, UpstreamCall, UpstreamError, UpstreamResult, UpstreamUnavailable
from gateway.upstreams.breaker import CircuitBreaker, parse_retry_after
from gateway.upstreams.errors import UpstreamTimeout, UpstreamTransportError
from gateway.upstreams.transport import UpstreamResponse, UpstreamTransport

logger = logging.getLogger("gateway.upstreams")

FAILOVER_STATUSES = frozenset({429, 529}) | frozenset(range(500, 600))
_HOLD_STATUSES = frozenset({429, 503, 529})
# Busy, not broken: no verdict for the circuit breaker.
_PATIENCE_STATUSES = frozenset({429, 529})
# Error bodies are a few hundred bytes; a larger one is cut rather than held in memory whole.
ERROR_BODY_LIMIT = 64 * 1024
_DROPPED_FROM_BUFFERED = frozenset({b"content-length", b"transfer-encoding", b"content-encoding"})


class UpstreamRouter:
    """Sends each call to the first upstream able to take it, in the configured order."""

    def __init__(
        self,
        upstreams: Upstream | Sequence[Upstream],
        *,
        breaker_failures: int = 5,
        breaker_cooldown: float = 30.0,
        retry_after_max: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstreams: list[Upstream] = [upstreams] if not isinstance(upstreams, Sequence) else list(upstreams)
        if not self.upstreams:
            raise ValueError("at least one upstream is needed")
        names = [u.name for u in self.upstreams]
        if len(set(names)) != len(names):
            raise ValueError(f"upstream names must be unique: {names}")
        self.breakers = {u.name: CircuitBreaker(breaker_failures, breaker_cooldown, clock) for u in self.upstreams}
        self.retry_after_max = retry_after_max

    @property
    def names(self) -> list[str]:
        return [u.name for u in self.upstreams]

    async def open(self, transport: UpstreamTransport, call: UpstreamCall) -> UpstreamResult:
        """The first usable response; the last failed one when every upstream failed with a status."""
        failures: list[str] = []
        attempts = 0
        answered: tuple[UpstreamResult, int] | None = None  # the last failed answer, and its entry in failures
        timed_out = False
        last_tried: str | None = None
        # Held upstreams go last, soonest free first: worth trying only when nothing else answered.
        held = sorted(
            (u for u in self.upstreams if self.breakers[u.name].held_for() > 0),
            key=lambda u: self.breakers[u.name].held_for(),
        )
        order = [u for u in self.upstreams if u not in held] + held
        for upstream in order:
            breaker = self.breakers[upstream.name]
            if not breaker.allow():
                failures.append(f"{upstream.name}: circuit open, skipped")
                continue
            attempts += 1
            last_tried = upstream.name
            try:
                result, error_body = await self._attempt(transport, upstream, call)
            except (UpstreamTransportError, UpstreamError) as exc:
                reason = _describe(exc)
                timed_out = isinstance(exc, UpstreamTimeout)
                self._failed(upstream, breaker, reason)
                failures.append(f"{upstream.name}: {reason}")
                continue
            except BaseException:
                breaker.release()  # cancelled (the client left) or the caller's error: no verdict on the upstream
                raise
            status = result.response.status_code
            if status not in FAILOVER_STATUSES:
                if breaker.success():
                    logger.warning("upstream %s answered again: circuit closed", upstream.name)
                result.attempts, result.failures = attempts, failures
                return result
            reason = f"HTTP {status}{_error_detail(error_body)}"
            retry_after = parse_retry_after(result.response.header(b"retry-after"))
            if status in _PATIENCE_STATUSES:
                breaker.release()
                logger.warning("upstream %s busy: %s", upstream.name, reason)
            else:
                self._failed(upstream, breaker, reason, retry_after)
            if retry_after is not None and status in _HOLD_STATUSES:
                breaker.hold(min(retry_after, self.retry_after_max))
            answered = (result, len(failures))
            failures.append(f"{upstream.name}: {reason}")
        if answered is not None:
            # Every upstream failed and one answered: relay that answer (and its retry-after) as the upstream's.
            result, index = answered
            result.attempts, result.failures = attempts, failures[:index] + failures[index + 1 :]
            return result
        raise self._unavailable(attempts, failures, timed_out, last_tried)

    async def _attempt(
        self, transport: UpstreamTransport, upstream: Upstream, call: UpstreamCall
    ) -> tuple[UpstreamResult, bytes]:
        request = await upstream.build_request(call)
        response = await transport.send(request)
        if response.status_code < 400:
            return UpstreamResult(response=response, upstream=upstream.name), b""
        response, body = await _buffered(response, upstream)
        return UpstreamResult(response=response, upstream=upstream.name), body

    def _failed(
        self, upstream: Upstream, breaker: CircuitBreaker, reason: str, retry_after: float | None = None
    ) -> None:
        if breaker.failure(retry_after):
            logger.error(
                "upstream %s: circuit opened for %.0fs, last failure: %s", upstream.name, breaker.retry_in(), reason
            )
        else:
            logger.warning("upstream %s failed: %s", upstream.name, reason)

    def _unavailable(
        self, attempts: int, failures: list[str], timed_out: bool, last_tried: str | None
    ) -> UpstreamUnavailable:
        if attempts == 0:
            wait = min(b.retry_in() for b in self.breakers.values())
            return UpstreamUnavailable(
                "Every upstream is failing, so the gateway is not sending to them for now: " + "; ".join(failures),
                attempts=0,
                failures=failures,
                upstream=None,
                retry_after=max(1.0, math.ceil(wait)),
            )
        what = "timed out" if timed_out else "could not be reached"
        return UpstreamUnavailable(
            f"The upstream {what}: {failures[-1]}",
            attempts=attempts,
            failures=failures[:-1],
            upstream=last_tried,
            timed_out=timed_out,
        )

    async def aclose(self) -> None:
        for upstream in self.upstreams:
            try:
                await upstream.aclose()
            except Exception:  # closing one must not stop the others
                logger.exception("closing upstream %s failed", upstream.name)


async def _buffered(response: UpstreamResponse, upstream: Upstream) -> tuple[UpstreamResponse, bytes]:
    """The error response read into memory and closed, with its body in Anthropic's shape."""
    try:
        body = await response.aread(ERROR_BODY_LIMIT)
    finally:
        await response.aclose()
    encoding = (response.header(b"content-encoding") or "").strip().lower()
    decoded = _decoded(body, encoding)
    dropped = _DROPPED_FROM_BUFFERED if decoded is not None else _DROPPED_FROM_BUFFERED - {b"content-encoding"}
    body = decoded if decoded is not None else body
    body = upstream.anthropic_error(response.status_code, body) or body
    headers = [(k, v) for k, v in response.raw_headers if k.lower() not in dropped]
    headers.append((b"content-length", str(len(body)).encode()))
    return UpstreamResponse.buffered(response.status_code, headers, body), body


def _decoded(body: bytes, encoding: str) -> bytes | None:
    """The body without its content encoding (an upstream that ignored `identity`), or None when it is in one
    this cannot undo, and stays encoded with its header."""
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        return None
    wbits = zlib.MAX_WBITS | 32 if encoding != "deflate" else zlib.MAX_WBITS
    try:
        decompressor = zlib.decompressobj(wbits)
        return decompressor.decompress(body, ERROR_BODY_LIMIT)
    except zlib.error:
        try:  # deflate sent raw, without the zlib wrapper
            return zlib.decompressobj(-zlib.MAX_WBITS).decompress(body, ERROR_BODY_LIMIT)
        except zlib.error:
            return None


def _error_detail(body: bytes) -> str:
    """` overloaded_error: Overloaded` from an Anthropic-shaped error body, or nothing."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return ""
    parts = [str(error[k])[:200] for k in ("type", "message") if isinstance(error.get(k), str)]
    return (" " + ": ".join(parts)) if parts else ""


def _describe(exc: UpstreamTransportError | UpstreamError) -> str:
    if isinstance(exc, UpstreamError):
        return str(exc)
    what = "timed out" if isinstance(exc, UpstreamTimeout) else "connection failed"
    return f"{what} ({exc.kind}): {str(exc) or exc.kind}"[:300]
