"""The response as the client saw it, rebuilt from SSE deltas (or a JSON body) into a capped side buffer."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import orjson

from gateway.metering import to_lf

logger = logging.getLogger(__name__)

DEFAULT_CAP_BYTES = 1024 * 1024
# An event larger than the room left plus this is skipped unparsed: it could not be stored anyway, and holding it
# would let one event double the memory the cap promises. Covers JSON framing around the content of a delta.
EVENT_SLACK = 64 * 1024
# What one content block costs beyond its content (objects, its head), counted against the cap so that a stream
# of a million empty blocks is bounded too.
BLOCK_OVERHEAD = 128
# A JSON body larger than this is not parsed: a Messages reply is bounded by max_tokens, far below it.
MAX_JSON_BODY = 16 * 1024 * 1024

TRUNCATION_MARKER = "[TRUNCATED]"
# Deeper than any real message nests, and well inside what orjson serialises (254 levels).
NESTING_LIMIT = 64

_BOM = b"\xef\xbb\xbf"
# Fields of a content block that arrive through deltas (or are bulky and opaque) rather than kept in its head.
_STREAMED = {"text": ("text", "citations"), "thinking": ("thinking", "signature"), "redacted_thinking": ("data",)}
# Delta type -> (the block field it extends, the delta key holding the piece).
_DELTA_FIELDS = {
    "text_delta": ("text", "text"),
    "thinking_delta": ("thinking", "thinking"),
    "input_json_delta": ("input", "partial_json"),
}
_SURROGATE = re.compile("[\ud800-\udfff]")
_IMPLIED_KIND = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "tool_use"}


def loads_lenient(data: bytes | bytearray | str) -> Any:
    """Decode JSON, tolerating invalid UTF-8 and lone surrogate escapes; raises ValueError if it is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    text = data if isinstance(data, str) else data.decode("utf-8", "replace")
    try:
        # orjson refuses the lone surrogate escapes (`"\ud83d"`) a JavaScript client produces when it cuts a string
        # inside a pair; the standard library accepts them, and clean_text makes them storable.
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(str(exc)) from None


def clean_text(text: str) -> str:
    """The string with lone surrogates replaced by U+FFFD, so that it encodes and serialises."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


def utf8(text: str) -> bytes:
    """UTF-8 bytes of a string, lone surrogates replaced rather than refused."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text).encode()


def clean_json(value: Any, depth: int = 0) -> Any:
    """A copy that serialises: lone surrogates replaced, nesting beyond any real message cut to a marker."""
    if isinstance(value, str):
        return clean_text(value)
    if depth > NESTING_LIMIT:
        return TRUNCATION_MARKER
    if isinstance(value, list | tuple):
        return [clean_json(item, depth + 1) for item in value]
    if isinstance(value, dict):
        return {clean_text(str(key)): clean_json(item, depth + 1) for key, item in value.items()}
    return value


def dumps(value: Any) -> bytes:
    """Serialise JSON-ready data, cleaning it first if it does not serialise as it is."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        return orjson.dumps(clean_json(value), option=orjson.OPT_NON_STR_KEYS)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class _Block:
    """One content block: its head (JSON bytes) and the content its deltas stream, as UTF-8."""

    __slots__ = ("kind", "field", "head", "data", "citations", "signed", "truncated")

    def __init__(self, kind: str, head: bytes) -> None:
        self.kind = kind
        # The key the streamed content goes under.
        self.field = kind if kind in ("text", "thinking") else "input"
        self.head = head
        # Text, thinking or partial tool-input JSON; bytes rather than a list of str parts, whose per-object
        # overhead would double the memory a reply of small deltas takes.
        self.data = bytearray()
        self.citations = bytearray()  # comma-separated JSON objects
        self.signed = False
        self.truncated = False

    def render(self) -> dict[str, Any]:
        """The block as JSON-ready data."""
        block = _dict(orjson.loads(self.head))
        field = self.field
        if field != "input":
            block[field] = self.data.decode("utf-8", "replace")
        elif self.data:
            try:
                block["input"] = orjson.loads(self.data)
            except orjson.JSONDecodeError:
                # Cut by the cap, or broken upstream: the raw text still says what the tool was asked to do.
                block.pop("input", None)
                block["input_raw"] = self.data.decode("utf-8", "replace")
                block["input_invalid"] = True
        if self.citations:
            block["citations"] = orjson.loads(b"[" + self.citations + b"]")
        if self.kind == "thinking":
            block["signed"] = self.signed
        if self.truncated:
            block["truncated"] = True
        return block


class ResponseAssembler:
    """Rebuilds a Messages response from relayed bytes, storing at most `cap_bytes` of it; never raises."""

    __slots__ = (
        "_cap",
        "_stored",
        "_dropped",
        "_received",
        "_blocks",
        "_buf",
        "_scan_from",
        "_last_cr",
        "_skipping",
        "_started",
        "_finished",
        "_message_id",
        "_model",
        "_stop_reason",
        "_stop_sequence",
        "_error",
        "_complete",
        "_truncated",
        "_failure",
    )

    def __init__(self, cap_bytes: int = DEFAULT_CAP_BYTES) -> None:
        self._cap = max(int(cap_bytes), 0)
        self._stored = 0
        self._dropped = 0
        self._received = 0
        self._blocks: dict[int, _Block] = {}
        # Pending bytes with line endings already normalised to LF, starting at an event boundary.
        self._buf = bytearray()
        # Where to resume looking for a blank line, so a large event arriving in small chunks is scanned once.
        self._scan_from = 0
        # The previous chunk ended in CR: a LF opening this chunk is the second half of a CRLF.
        self._last_cr = False
        # Inside an event too large to hold: drop bytes until the blank line that ends it.
        self._skipping = False
        self._started = False
        self._finished = False
        self._message_id: str | None = None
        self._model: str | None = None
        self._stop_reason: str | None = None
        self._stop_sequence: str | None = None
        self._error: dict[str, str | None] | None = None
        self._complete = False
        self._truncated = False
        self._failure: str | None = None

    # Feeding

    def feed(self, chunk: bytes) -> None:
        """Take the next relayed SSE bytes, chunk boundaries anywhere."""
        if not chunk:
            return
        self._received += len(chunk)
        if self._finished or self._failure is not None:
            return
        try:
            self._feed(chunk)
        except Exception as exc:
            self._fail(exc)

    def feed_json(self, body: bytes) -> None:
        """Take a complete non-streaming reply body: a Messages object or an error."""
        self._received += len(body)
        if self._finished or self._failure is not None:
            return
        try:
            self._feed_json(body)
        except Exception as exc:
            self._fail(exc)

    def result(self) -> dict[str, Any]:
        """The assembled response as JSON-ready data; ends the stream, so later bytes are only counted."""
        try:
            self._finish()
            content = [self._blocks[index].render() for index in sorted(self._blocks)]
        except Exception as exc:
            self._fail(exc)
            content = []
        return {
            "message_id": self._message_id,
            "model": self._model,
            "content": content,
            "stop_reason": self._stop_reason,
            "stop_sequence": self._stop_sequence,
            "error": self._error,
            "complete": self._complete,
            "truncated": self._truncated,
            "stored_bytes": self._stored,
            "dropped_bytes": self._dropped,
            "received_bytes": self._received,
            "capture_error": self._failure,
        }

    def _fail(self, exc: BaseException) -> None:
        # Capture rides beside the relay and must never break it: stop capturing this response instead.
        logger.exception("response capture failed; the capture of this response is incomplete")
        self._failure = f"{type(exc).__name__}: {exc}"[:500]
        self._buf = bytearray()

    def _finish(self) -> None:
        """End of stream: dispatch a trailing event that lacks its final blank line."""
        if self._finished:
            return
        self._finished = True
        if self._failure is None and not self._skipping and self._buf.strip(b"\n"):
            self._events(self._buf, len(self._buf))
        self._buf = bytearray()

    # SSE framing

    def _feed(self, chunk: bytes) -> None:
        chunk, self._last_cr = to_lf(chunk, self._last_cr)
        buf = self._buf
        if not buf and not self._skipping and chunk.endswith(b"\n\n"):
            # The usual case: the chunk holds whole events and nothing is pending, so nothing is copied.
            self._events(chunk, len(chunk) - 2)
            return
        buf += chunk

        if self._skipping:
            end = buf.find(b"\n\n", self._scan_from)
            if end < 0:
                # Keep only a trailing LF: it may be the first half of the blank line that ends the event.
                self._dropped += len(buf) - 1
                del buf[: len(buf) - 1]
                self._scan_from = 0
                return
            self._dropped += end
            del buf[: end + 2]
            self._skipping = False
            self._scan_from = 0

        end = buf.rfind(b"\n\n", self._scan_from)
        if end >= 0:
            self._events(buf, end)
            del buf[: end + 2]
        if len(buf) > self._cap - self._stored + EVENT_SLACK:
            # This event could not be stored: skip it rather than hold it.
            self._skipping = True
            self._truncated = True
            self._dropped += len(buf) - 1
            del buf[: len(buf) - 1]
            self._scan_from = 0
        elif buf:
            self._scan_from = len(buf) - 1
        else:
            self._scan_from = 0

    def _events(self, data: bytes | bytearray, end: int) -> None:
        """Dispatch the complete events in `data[:end]`, separated by blank lines, one slice at a time."""
        start = 0
        if not self._started:
            self._started = True
            if data.startswith(_BOM):
                start = 3
        while start < end:
            stop = data.find(b"\n\n", start, end)
            if stop < 0:
                stop = end
            if stop > start:
                self._event(data[start:stop])
            start = stop + 2

    def _event(self, block: bytes | bytearray) -> None:
        """Dispatch one event: its lines, LF-separated."""
        name: bytes | bytearray = b""
        payload: bytes | bytearray | None = None
        # Fast path for the shape Anthropic sends: `event: NAME\ndata: JSON`.
        if block.startswith(b"event:"):
            eol = block.find(b"\n")
            if eol > 0 and block.startswith(b"data:", eol + 1) and block.find(b"\n", eol + 1) < 0:
                name = block[6:eol].strip(b" ")
                payload = block[eol + 6 :]
        if payload is None:
            data: list[bytes | bytearray] = []
            for line in block.split(b"\n"):
                field, _, value = line.partition(b":")
                if field == b"data":
                    data.append(value[1:] if value.startswith(b" ") else value)
                elif field == b"event":
                    name = value.strip(b" ")
            if not data:
                return  # Comments and keep-alives; the spec dispatches nothing without data.
            payload = b"\n".join(data)
        elif payload.startswith(b" "):
            payload = payload[1:]
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError:
            try:
                body = loads_lenient(payload)
            except ValueError:
                body = None
        if not isinstance(body, dict):
            if name == b"error":
                # A failure the upstream could not even describe is still a failure.
                self._error = {"type": "error", "message": payload[:500].decode("utf-8", "replace")}
            return
        kind = name.decode("utf-8", "replace") if name else _str(body.get("type"))
        if kind == "content_block_delta":
            self._delta(body.get("index"), _dict(body.get("delta")))
        elif kind == "content_block_start":
            self._start(body.get("index"), _dict(body.get("content_block")))
        elif kind == "message_start":
            message = _dict(body.get("message"))
            self._message_id = _str(message.get("id")) or self._message_id
            self._model = _str(message.get("model")) or self._model
        elif kind == "message_delta":
            delta = _dict(body.get("delta"))
            self._stop_reason = _str(delta.get("stop_reason")) or self._stop_reason
            self._stop_sequence = _str(delta.get("stop_sequence")) or self._stop_sequence
        elif kind == "message_stop":
            self._complete = True
        elif kind == "error":
            self._take_error(body)
        # content_block_stop, ping and event types added later carry nothing to store.

    def _take_error(self, body: dict[str, Any]) -> None:
        error = _dict(body.get("error"))
        message = _str(error.get("message"))
        self._error = {
            "type": _str(error.get("type")) or _str(error.get("status")) or "error",
            "message": message[:2000] if message else None,
        }

    # Content

    def _feed_json(self, body: bytes) -> None:
        if len(body) > MAX_JSON_BODY:
            self._truncated = True
            self._dropped += len(body)
            return
        try:
            message = loads_lenient(body)
        except ValueError:
            self._error = {"type": "invalid_json", "message": body[:500].decode("utf-8", "replace")}
            return
        if not isinstance(message, dict):
            return
        if message.get("type") == "error" or isinstance(message.get("error"), dict):
            self._take_error(message)
            return
        self._message_id = _str(message.get("id"))
        self._model = _str(message.get("model"))
        self._stop_reason = _str(message.get("stop_reason"))
        self._stop_sequence = _str(message.get("stop_sequence"))
        content = message.get("content")
        if isinstance(content, list):
            for index, block in enumerate(content):
                self._start(index, _dict(block))
        self._complete = True

    def _start(self, index: object, content_block: dict[str, Any]) -> None:
        """A new content block: keep its head, and feed any content it already carries through the cap."""
        if type(index) is not int or index < 0 or index in self._blocks:
            return
        kind = _str(content_block.get("type")) or "unknown"
        head = {key: value for key, value in content_block.items() if key not in _STREAMED.get(kind, ())}
        initial_input = head.get("input")
        if initial_input:
            # A complete (non-streaming) tool input goes through the same path as streamed input, so that it
            # is cut at the cap like text instead of dropped whole.
            head["input"] = {}
        if kind == "redacted_thinking":
            # Encrypted, so useless to an auditor; its size says that it was there.
            data = content_block.get("data")
            head["data_bytes"] = len(data) if isinstance(data, str) else 0
        encoded = dumps(head)
        initial = b""
        if kind in ("text", "thinking"):
            text = content_block.get(kind)
            initial = utf8(text) if isinstance(text, str) else b""
        elif initial_input:
            initial = dumps(initial_input)
        if self._truncated or len(encoded) + BLOCK_OVERHEAD > self._cap - self._stored:
            self._truncated = True
            self._dropped += len(encoded) + len(initial)
            return
        self._stored += len(encoded) + BLOCK_OVERHEAD
        block = _Block(kind, encoded)
        self._blocks[index] = block
        if initial:
            self._append(block, initial)
        if _str(content_block.get("signature")):
            block.signed = True
        citations = content_block.get("citations")
        if isinstance(citations, list):
            for citation in citations:
                self._cite(block, citation)

    def _delta(self, index: object, delta: dict[str, Any]) -> None:
        if type(index) is not int:
            return
        kind = delta.get("type")
        block = self._blocks.get(index)
        if block is None:
            # A delta without its start (a broken stream): infer the block, unless it was dropped at the cap.
            implied = _IMPLIED_KIND.get(kind) if isinstance(kind, str) else None
            if implied is None or self._truncated or index < 0:
                self._count_dropped(delta)
                return
            self._start(index, {"type": implied, "input": {}} if implied == "tool_use" else {"type": implied})
            block = self._blocks.get(index)
            if block is None:
                return
        spec = _DELTA_FIELDS.get(kind) if isinstance(kind, str) else None
        if spec is not None:
            text = delta.get(spec[1])
            if block.field == spec[0] and isinstance(text, str) and text:
                raw = utf8(text)
                if not self._truncated and len(raw) <= self._cap - self._stored:
                    self._stored += len(raw)
                    block.data += raw
                else:
                    self._append(block, raw)
        elif kind == "signature_delta":
            block.signed = True  # Noted, not stored: it is opaque and only proves the thinking unaltered.
        elif kind == "citations_delta":
            self._cite(block, delta.get("citation"))

    def _count_dropped(self, delta: dict[str, Any]) -> None:
        for key in ("text", "thinking", "partial_json"):
            value = delta.get(key)
            if isinstance(value, str):
                self._dropped += len(utf8(value))

    def _append(self, block: _Block, raw: bytes) -> None:
        """Store content up to the cap; past it, only count it."""
        room = self._cap - self._stored
        if not self._truncated and len(raw) <= room:
            self._stored += len(raw)
            block.data += raw
            return
        cut = max(room, 0) if not self._truncated else 0
        # Cut on a character boundary so the stored prefix still decodes.
        while cut > 0 and raw[cut] & 0xC0 == 0x80:
            cut -= 1
        self._stored += cut
        self._dropped += len(raw) - cut
        self._truncated = True
        block.truncated = True
        block.data += raw[:cut]

    def _cite(self, block: _Block, citation: object) -> None:
        if not isinstance(citation, dict):
            return
        encoded = dumps(citation)
        if self._truncated or len(encoded) + 1 > self._cap - self._stored:
            self._truncated = True
            self._dropped += len(encoded)
            block.truncated = True
            return
        self._stored += len(encoded) + 1
        if block.citations:
            block.citations += b","
        block.citations += encoded
