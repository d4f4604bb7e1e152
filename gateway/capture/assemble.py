"""The response as the client saw it, rebuilt from SSE deltas (or a JSON body) into a capped side buffer."""

from __future__ import annotations

import logging
from typing import Any

import orjson

from gateway.jsonish import dumps_clean, loads, utf8
from gateway.sse import SSEFramer, parse

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
# Fields of a content block that arrive through deltas (or are bulky and opaque) rather than kept in its head.
_STREAMED = {"text": ("text", "citations"), "thinking": ("thinking", "signature"), "redacted_thinking": ("data",)}
# Delta type -> (the block field it extends, the delta key holding the piece).
_DELTA_FIELDS = {
    "text_delta": ("text", "text"),
    "thinking_delta": ("thinking", "thinking"),
    "input_json_delta": ("input", "partial_json"),
}
_IMPLIED_KIND = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "tool_use"}


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
        "_framer",
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
        self._framer = SSEFramer(self._cap + EVENT_SLACK)
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
        self._framer.finish()  # lets go of pending bytes

    def _finish(self) -> None:
        """End of stream: dispatch a trailing event that lacks its final blank line."""
        if self._finished:
            return
        self._finished = True
        blocks = self._framer.finish()
        if self._failure is None:
            for block in blocks:
                self._event(block)

    # Events

    def _feed(self, chunk: bytes) -> None:
        framer = self._framer
        # An event larger than the room left (plus slack) could not be stored: the framer skips it unheld.
        framer.limit = self._cap - self._stored + EVENT_SLACK
        for block in framer.feed(chunk):
            self._event(block)
        if framer.dropped:
            self._truncated = True
            self._dropped += framer.dropped
            framer.dropped = 0

    def _event(self, block: bytes) -> None:
        """Dispatch one event by its name, or by its JSON type when it has none."""
        event = parse(block)
        if event is None:
            return  # Comments and keep-alives; the spec dispatches nothing without data.
        name, payload = event
        try:
            # orjson first, without the lenient reader's call, since every event of a reply passes here.
            body = orjson.loads(payload)
        except orjson.JSONDecodeError:
            try:
                body = loads(payload, replace=True)
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
            message = loads(body, replace=True)
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
        encoded = dumps_clean(head)
        initial = b""
        if kind in ("text", "thinking"):
            text = content_block.get(kind)
            initial = utf8(text) if isinstance(text, str) else b""
        elif initial_input:
            initial = dumps_clean(initial_input)
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
        encoded = dumps_clean(citation)
        if self._truncated or len(encoded) + 1 > self._cap - self._stored:
            self._truncated = True
            self._dropped += len(encoded)
            block.truncated = True
            return
        self._stored += len(encoded) + 1
        if block.citations:
            block.citations += b","
        block.citations += encoded
