"""Token usage read from responses as they pass: incremental SSE parsing and non-streaming JSON."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson

logger = logging.getLogger(__name__)

# One event (its lines before the blank line) larger than this is skipped: Anthropic's usage events are a few
# hundred bytes, and the cap keeps a hostile or broken upstream from growing the relay's memory.
MAX_EVENT_BYTES = 1024 * 1024
MAX_JSON_BYTES = 8 * 1024 * 1024

# Events whose data carries usage; every other event (content blocks, ping, message_stop, unknown) is skipped
# without decoding its JSON, since ~50 content_block_delta events pass per reply.
# message_stop comes once per reply and says it ended properly.
_WANTED = frozenset((b"message_start", b"message_delta", b"message_stop", b"error"))
_BOM = b"\xef\xbb\xbf"


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
    return value if isinstance(value, str) else None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _loads(data: bytes) -> dict[str, Any] | None:
    """Decode a JSON object; None for anything else."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        # An SSE stream is decoded as UTF-8 with replacement, so a stray invalid byte in a string must not
        # lose the whole event; orjson rejects invalid UTF-8 outright, hence the second try.
        try:
            value = orjson.loads(data.decode("utf-8", "replace"))
        except orjson.JSONDecodeError:
            return None
    return value if isinstance(value, dict) else None


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


def to_lf(chunk: bytes, last_cr: bool) -> tuple[bytes, bool]:
    """SSE line endings (CRLF, CR or LF) as LF; `last_cr` says the previous chunk ended in CR, so a LF opening
    this one is the second half of a CRLF split across chunks. Returns the chunk and the new `last_cr`."""
    if b"\r" in chunk:
        if last_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n"), chunk.endswith(b"\r")
    if last_cr and chunk.startswith(b"\n"):
        chunk = chunk[1:]
    return chunk, False


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


class SSEMeter:
    """Reads Anthropic SSE bytes as they are relayed, chunk boundaries anywhere."""

    __slots__ = (
        "usage", "_buf", "_scan_from", "_last_cr", "_skipping", "_started", "_limit", "_done", "_event_bytes",
        "_deltas", "_final",
    )

    def __init__(self, limit: int = MAX_EVENT_BYTES) -> None:
        self.usage = Usage()
        # Pending bytes with line endings already normalised to LF, starting at an event boundary.
        self._buf = bytearray()
        # Where to resume looking for a blank line, so a large event arriving in small chunks is scanned once.
        self._scan_from = 0
        # The previous chunk ended in CR: a LF opening this chunk is the second half of a CRLF.
        self._last_cr = False
        # Inside an oversize event: drop bytes until the blank line that ends it.
        self._skipping = False
        self._started = False
        self._limit = limit
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
            self._feed(chunk)
        except Exception:
            # Metering must never break the relay it rides on: stop metering this response instead.
            logger.exception("SSE metering failed; usage for this response is incomplete")
            self._done = True
            self._buf.clear()

    def finish(self) -> None:
        """End of stream: process a trailing event that lacks its final blank line."""
        if self._done:
            return
        try:
            if not self._skipping and self._buf:
                self._events(bytes(self._buf))
        except Exception:
            logger.exception("SSE metering failed at end of stream")
        self._buf.clear()
        self._skipping = False
        self._done = True  # Nothing is read after the end.
        usage = self.usage
        if usage.started and not self._final:
            # Cut before the final count: charge at least the text that was relayed.
            text = max(0, self._event_bytes - self._deltas * _DELTA_FRAMING)
            estimate = -(-text // ESTIMATE_BYTES_PER_TOKEN)
            if estimate > (usage.output_tokens or 0):
                usage.output_tokens = estimate
                usage.estimated = True

    def _feed(self, chunk: bytes) -> None:
        chunk, self._last_cr = to_lf(chunk, self._last_cr)
        buf = self._buf
        buf += chunk

        if self._skipping:
            end = buf.find(b"\n\n", self._scan_from)
            if end < 0:
                # Keep only a trailing LF: it may be the first half of the blank line that ends the event.
                del buf[: len(buf) - 1]
                self._scan_from = 0
                return
            del buf[: end + 2]
            self._skipping = False
            self._scan_from = 0

        end = buf.rfind(b"\n\n", self._scan_from)
        if end >= 0:
            complete = bytes(buf[:end])
            del buf[: end + 2]
            self._events(complete)
        if len(buf) > self._limit:
            # An event this large carries no usage we would read; drop it rather than hold it.
            self._skipping = True
            del buf[: len(buf) - 1]
            self._scan_from = 0
        else:
            self._scan_from = max(len(buf) - 1, 0)

    def _events(self, events: bytes) -> None:
        """Dispatch complete events: LF-separated lines, events separated by blank lines."""
        if not self._started:
            self._started = True
            if events.startswith(_BOM):
                events = events[3:]
        delta = events.find(_DELTA_TYPE)
        while delta >= 0:
            # The bytes of each text delta event, for the estimate of a stream cut before its final count.
            start = events.rfind(b"\n\n", 0, delta)
            end = events.find(b"\n\n", delta)
            end = len(events) if end < 0 else end
            self._event_bytes += end - (0 if start < 0 else start + 2)
            self._deltas += 1
            delta = events.find(_DELTA_TYPE, end)
        # Every event we read names message_start, message_delta or error somewhere in its bytes. Most events
        # of a reply are content_block_delta ones that do not, so only the events around a match are parsed.
        limit = self._limit
        end = 0
        next_message = events.find(b"message_")
        next_error = events.find(b"error")
        while next_message >= 0 or next_error >= 0:
            hit = next_error if next_message < 0 or 0 <= next_error < next_message else next_message
            start = events.rfind(b"\n\n", end, hit)
            start = end if start < 0 else start + 2
            end = events.find(b"\n\n", hit)
            if end < 0:
                end = len(events)
            if end - start <= limit:
                self._event(events[start:end])
            end += 2
            if 0 <= next_message < end:
                next_message = events.find(b"message_", end)
            if 0 <= next_error < end:
                next_error = events.find(b"error", end)

    def _event(self, block: bytes) -> None:
        """Dispatch one event: the lines between two blank lines, LF-separated."""
        # Fast path: nearly every event opens with its `event:` line and has no second one, so its name decides
        # whether the rest is worth reading.
        if block.startswith(b"event:"):
            eol = block.find(b"\n")
            if eol < 0:
                return  # No data line: the spec dispatches nothing.
            name = block[6:eol]
            if name.startswith(b" "):
                name = name[1:]
            if name not in _WANTED and block.find(b"\nevent", eol) < 0:
                return
            if name == b"message_stop" and block.find(b"\nevent", eol) < 0:
                self.usage.finished = True  # its data says nothing more
                return

        name = b""
        data: list[bytes] = []
        for line in block.split(b"\n"):
            if line.startswith(b"data"):
                field, _, value = line.partition(b":")
                if field != b"data":
                    continue
                data.append(value[1:] if value.startswith(b" ") else value)
            elif line.startswith(b"event"):
                field, _, value = line.partition(b":")
                if field == b"event":
                    name = value[1:] if value.startswith(b" ") else value
            # Comments (`:`), `id`, `retry` and unknown fields carry nothing we read.
        if not data:
            return
        payload = data[0] if len(data) == 1 else b"\n".join(data)
        if name:
            if name not in _WANTED:
                return
        elif not any(wanted in payload for wanted in _WANTED):
            # No event name: peek for the type in the raw bytes before paying for a JSON decode.
            return
        body = _loads(payload)
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
            body = _loads(body_bytes)
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


def new_meter(stream: bool) -> SSEMeter | JSONMeter:
    """The meter for a response: SSE when the request asked to stream, JSON otherwise."""
    return SSEMeter() if stream else JSONMeter()
