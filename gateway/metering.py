"""Token usage read from responses as they pass: SSE events (framed by gateway.sse) and non-streaming JSON."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from gateway.jsonish import clean_text, loads_object
from gateway.sse import SSEFramer, parse

logger = logging.getLogger(__name__)

# One event (its lines before the blank line) larger than this is skipped: Anthropic's usage events are a few
# hundred bytes, and the cap keeps a hostile or broken upstream from growing the relay's memory.
MAX_EVENT_BYTES = 1024 * 1024
MAX_JSON_BYTES = 8 * 1024 * 1024

# Events whose data carries usage; every other event (content blocks, ping, message_stop, unknown) is skipped
# without decoding its JSON, since ~50 content_block_delta events pass per reply.
# message_stop comes once per reply and says it ended properly.
_WANTED = frozenset((b"message_start", b"message_delta", b"message_stop", b"error"))


@dataclass(slots=True)
class Usage:
    """What the upstream reported about one response."""

    message_id: str | None = None
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    # The part of cache_creation_input_tokens written with a 1-hour TTL (usage.cache_creation), priced apart.
    cache_creation_1h_input_tokens: int | None = None
    web_search_requests: int | None = None  # usage.server_tool_use, charged per search
    inference_geo: str | None = None  # "us" for US-only inference, which costs 1.1x
    speed: str | None = None  # "fast" when fast mode served the request, at its own prices
    iterations: list[Any] | None = None  # per-iteration usage when a request ran several sampling iterations
    stop_reason: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    started: bool = False
    """A stream's message_start was seen (a JSON reply: it parsed as an object)."""
    finished: bool = False
    """A stream's message_stop was seen (a JSON reply: it parsed as an object, or was too large to hold)."""
    estimated: bool = False
    """Some counts are the gateway's estimate: the reply was cut before the upstream reported them."""


def _int(value: object) -> int | None:
    """A token count, or None for anything that is not a non-negative integer."""
    # bool is an int subclass; `true` is not a token count.
    if type(value) is int and value >= 0:
        return value
    return None


def _str(value: object) -> str | None:
    # The lenient reader takes lone surrogate escapes, which no audit sink could write.
    return clean_text(value) if isinstance(value, str) else None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _take_usage(usage: Usage, counts: dict[str, Any]) -> None:
    """Copy what prices a response from an Anthropic `usage` object: valid counts, and the fields that change the
    rate (cache TTLs, server tools, inference region, speed, iterations)."""
    for name in ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
        value = _int(counts.get(name))
        if value is not None:
            setattr(usage, name, value)
    creation = counts.get("cache_creation")
    if isinstance(creation, dict):
        one_hour = _int(creation.get("ephemeral_1h_input_tokens"))
        if one_hour is not None:
            usage.cache_creation_1h_input_tokens = one_hour
    tools = counts.get("server_tool_use")
    if isinstance(tools, dict):
        searches = _int(tools.get("web_search_requests"))
        if searches is not None:
            usage.web_search_requests = searches
    usage.inference_geo = _str(counts.get("inference_geo")) or usage.inference_geo
    usage.speed = _str(counts.get("speed")) or usage.speed
    iterations = counts.get("iterations")
    if isinstance(iterations, list):
        usage.iterations = iterations


def _take_error(usage: Usage, body: dict[str, Any]) -> None:
    error = _dict(body.get("error"))
    # Vertex AI's own errors (quota, permissions) name a `status` where Anthropic's name a `type`.
    usage.error_type = _str(error.get("type")) or _str(error.get("status")) or "error"
    usage.error_message = _str(error.get("message"))


def _take_message(usage: Usage, message: dict[str, Any]) -> None:
    """Read a Messages response object: the non-streaming body, or `message` in `message_start`."""
    usage.message_id = _str(message.get("id")) or usage.message_id
    usage.model = _str(message.get("model")) or usage.model
    usage.stop_reason = _str(message.get("stop_reason")) or usage.stop_reason
    # output_tokens here is a placeholder in a stream; message_delta replaces it. It is kept so a stream cut
    # short still reports what the upstream said.
    _take_usage(usage, _dict(message.get("usage")))


# Estimating the output of a stream cut before its final message_delta (the client hung up, the shutdown cut it):
# the text relayed is what the upstream generated and bills. A text delta costs _DELTA_FRAMING bytes of framing
# besides its text (the wire format Anthropic sends), and a token of text is taken as ESTIMATE_BYTES_PER_TOKEN
# bytes: Claude's tokens average 3.5-4 bytes of English and JSON escapes add bytes, so 3 errs toward charging a
# little more than the upstream will.
_DELTA_FRAMING = len(
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":""}}\n\n'
)
ESTIMATE_BYTES_PER_TOKEN = 3
# The input of a request whose reply never reported it (the client left before message_start, or a non-streaming
# reply was cut), from the request's JSON size: prompts run about 4 bytes a token, and JSON framing adds bytes.
ESTIMATE_BYTES_PER_INPUT_TOKEN = 4
_DELTA_TYPE = b'"content_block_delta"'
_DELTA_EVENT = b'event: content_block_delta\ndata: {"type":"content_block_delta"'


class SSEMeter:
    """Reads Anthropic SSE bytes as they are relayed, chunk boundaries anywhere."""

    __slots__ = ("usage", "_framer", "_done", "_event_bytes", "_deltas", "_final")

    def __init__(self, limit: int = MAX_EVENT_BYTES) -> None:
        self.usage = Usage()
        self._framer = SSEFramer(limit)
        self._done = False
        # For the estimate of a cut stream: the bytes of text delta events, how many, and whether the upstream's
        # final count (message_delta) arrived.
        self._event_bytes = 0
        self._deltas = 0
        self._final = False

    def feed(self, chunk: bytes) -> None:
        """Take the next relayed bytes; never raises, whatever they are."""
        if self._done or not chunk:
            return
        try:
            self._events(self._framer.feed(chunk))
        except Exception:
            # Metering must never break the relay it rides on: stop metering this response instead.
            logger.exception("SSE metering failed; usage for this response is incomplete")
            self._done = True
            self._framer.finish()

    def finish(self) -> None:
        """End of stream: process a trailing event that lacks its final blank line."""
        if self._done:
            return
        self._done = True  # Nothing is read after the end.
        try:
            self._events(self._framer.finish())
        except Exception:
            logger.exception("SSE metering failed at end of stream")
        usage = self.usage
        if usage.started and not self._final:
            # Cut before the final count: charge at least the text that was relayed.
            text = max(0, self._event_bytes - self._deltas * _DELTA_FRAMING)
            estimate = -(-text // ESTIMATE_BYTES_PER_TOKEN)
            if estimate > (usage.output_tokens or 0):
                usage.output_tokens = estimate
                usage.estimated = True

    def _events(self, blocks: list[bytes]) -> None:
        """Read the events that carry usage; most of a reply is content_block_delta events, only counted."""
        for block in blocks:
            if block.startswith(_DELTA_EVENT) and block.find(b"\n", len(_DELTA_EVENT)) < 0:
                # Anthropic's text delta, two lines naming the event and opening its data: counted, never parsed.
                self._event_bytes += len(block)
                self._deltas += 1
                continue
            event = parse(block)
            if event is None:
                continue
            name, payload = event
            if _DELTA_TYPE in payload:
                # The bytes of each text delta event, for the estimate of a stream cut before its final count.
                self._event_bytes += len(block)
                self._deltas += 1
            # An unnamed event's JSON type decides: peek for it in the raw bytes before paying for a JSON decode.
            if name in _WANTED or (not name and any(wanted in payload for wanted in _WANTED)):
                self._read(name, payload)

    def _read(self, name: bytes, payload: bytes) -> None:
        """Read one event that may carry usage or an error."""
        if name == b"message_stop":
            self.usage.finished = True  # its data says nothing more
            return
        body = loads_object(payload, replace=True)
        if body is None:
            if name == b"error":
                # A failure the upstream could not even describe is still a failure.
                self.usage.error_type = "error"
                self.usage.error_message = payload[:500].decode("utf-8", "replace")
            return
        kind = name.decode("ascii", "replace") if name else _str(body.get("type"))
        if kind == "message_start":
            self.usage.started = True
            _take_message(self.usage, _dict(body.get("message")))
        elif kind == "message_delta":
            self.usage.stop_reason = _str(_dict(body.get("delta")).get("stop_reason")) or self.usage.stop_reason
            # output_tokens is cumulative: the latest value is the total. Newer APIs repeat the input and cache
            # counts here too; when present they are the final word.
            _take_usage(self.usage, _dict(body.get("usage")))
            self._final = True
        elif kind == "message_stop":
            self.usage.finished = True
        elif kind == "error":
            _take_error(self.usage, body)


class JSONMeter:
    """Reads a non-streaming JSON response (accumulated up to a cap) for the same fields."""

    __slots__ = ("usage", "truncated", "_parts", "_size", "_limit", "_done")

    def __init__(self, limit: int = MAX_JSON_BYTES) -> None:
        self.usage = Usage()
        self.truncated = False
        self._parts: list[bytes] = []
        self._size = 0
        self._limit = limit
        self._done = False

    def feed(self, chunk: bytes) -> None:
        """Accumulate the body up to the cap; past it, stop accumulating."""
        if self.truncated or self._done:
            return
        self._size += len(chunk)
        if self._size > self._limit:
            # The body will not parse without its end, so holding any of it is wasted memory.
            self.truncated = True
            self._parts.clear()
            return
        self._parts.append(bytes(chunk))

    def finish(self) -> None:
        """Parse what was accumulated; never raises on garbage."""
        if self._done:
            return
        self._done = True
        body_bytes = b"".join(self._parts)
        self._parts.clear()
        if self.truncated:
            # Too large to hold, so not judged: no Messages reply is anywhere near the cap.
            self.usage.started = self.usage.finished = True
            return
        if not body_bytes:
            return
        try:
            body = loads_object(body_bytes, replace=True)
            if body is None:
                return
            self.usage.started = self.usage.finished = True
            if body.get("type") == "error" or isinstance(body.get("error"), dict):
                _take_error(self.usage, body)
            elif "usage" in body or body.get("type") == "message":
                _take_message(self.usage, body)
            else:
                # count_tokens answers {"input_tokens": N}.
                self.usage.input_tokens = _int(body.get("input_tokens"))
        except Exception:
            logger.exception("JSON metering failed; usage for this response is incomplete")
