"""Server-sent events cut from relayed bytes: one framer for every reader of the stream (metering, capture).

Written here rather than taken from a library: the readers sit on the relay's hot path and are fed raw byte
chunks split anywhere, and the libraries we know either work on a client's response (httpx-sse decodes line by
line from httpx's text iterator), serve events (sse-starlette), or decode every line to str and build an object
per event. Here a chunk of whole events costs one `split` at C speed, a reader looks at an event's raw bytes
before paying for its fields, and an oversize event is dropped before it is held.

The rules are the WHATWG "interpreting an event stream" ones our readers need: CRLF, CR or LF line endings, a
leading byte order mark, events ended by a blank line, `:` comments, `data` lines joined with LF, the last
`event` line naming the event, one space after the colon removed, other fields ignored.
"""

from __future__ import annotations

BOM = b"\xef\xbb\xbf"

# One dispatched event: its name (b"" when it has none) and its data lines joined with LF. A plain tuple: a reply
# has ~50 events, and a named tuple's constructor costs more than the rest of reading one.
Event = tuple[bytes, bytes]


class SSEFramer:
    """Cuts an SSE byte stream, fed in chunks split anywhere, into whole events (their lines, LF-separated).

    An event longer than `limit` bytes is dropped rather than held, and its bytes are counted in `dropped`;
    a reader may change `limit` between chunks.
    """

    __slots__ = ("limit", "dropped", "_buf", "_scan_from", "_last_cr", "_skipping", "_started")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.dropped = 0
        # Pending bytes with line endings already LF, starting at an event boundary.
        self._buf = bytearray()
        # Where to resume looking for a blank line, so a large event arriving in small chunks is scanned once.
        self._scan_from = 0
        # The previous chunk ended in CR: a LF opening this chunk is the second half of a CRLF.
        self._last_cr = False
        # Inside an oversize event: drop bytes until the blank line that ends it.
        self._skipping = False
        self._started = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """The events this chunk completes, each without its blank line (some may be empty or all comments)."""
        if self._last_cr or b"\r" in chunk:
            if self._last_cr and chunk.startswith(b"\n"):
                chunk = chunk[1:]
            self._last_cr = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self._buf
        if not buf and not self._skipping and chunk.endswith(b"\n\n"):
            # The usual case: the chunk holds whole events and nothing is pending, so nothing is copied.
            if self._started and len(chunk) <= self.limit:
                return chunk[:-2].split(b"\n\n")
            return self._split(chunk[:-2])
        buf += chunk

        if self._skipping:
            end = buf.find(b"\n\n", self._scan_from)
            if end < 0:
                # Keep only a trailing LF: it may be the first half of the blank line that ends the event.
                self.dropped += len(buf) - 1
                del buf[: len(buf) - 1]
                self._scan_from = 0
                return []
            self.dropped += end
            del buf[: end + 2]
            self._skipping = False
            self._scan_from = 0

        events: list[bytes] = []
        end = buf.rfind(b"\n\n", self._scan_from)
        if end >= 0:
            events = self._split(bytes(buf[:end]))
            del buf[: end + 2]
        if len(buf) > self.limit:
            # Too large to be any event a reader wants: drop it rather than hold it.
            self._skipping = True
            self.dropped += len(buf) - 1
            del buf[: len(buf) - 1]
            self._scan_from = 0
        else:
            self._scan_from = max(len(buf) - 1, 0)
        return events

    def finish(self) -> list[bytes]:
        """End of stream: a trailing event that lacks its final blank line, if there is one."""
        buf, skipping = self._buf, self._skipping
        self._buf = bytearray()
        self._skipping = False
        if skipping or not buf.strip(b"\n"):
            return []
        return self._split(bytes(buf))

    def _split(self, complete: bytes) -> list[bytes]:
        if not self._started:
            self._started = True
            if complete.startswith(BOM):
                complete = complete[3:]
        events = complete.split(b"\n\n")
        if len(complete) > self.limit:
            limit = self.limit
            kept = [event for event in events if len(event) <= limit]
            if len(kept) < len(events):
                self.dropped += sum(len(event) for event in events if len(event) > limit)
                return kept
        return events


def parse(block: bytes) -> Event | None:
    """An event's name and data from its lines; None when it has no data line (the spec dispatches nothing)."""
    # Fast path for the shape Anthropic sends: `event: NAME\ndata: JSON`.
    if block.startswith(b"event:"):
        eol = block.find(b"\n")
        if eol > 0 and block.startswith(b"data:", eol + 1) and block.find(b"\n", eol + 1) < 0:
            # One slice each, a space after the colon skipped by offset rather than sliced off a copy.
            at = eol + 6
            return block[7 if block[6] == 0x20 else 6 : eol], block[at + 1 if block.startswith(b" ", at) else at :]
    name = b""
    lines: list[bytes] = []
    for line in block.split(b"\n"):
        field, _, value = line.partition(b":")
        if field == b"data":
            lines.append(value[1:] if value.startswith(b" ") else value)
        elif field == b"event":
            name = value[1:] if value.startswith(b" ") else value
        # Comments (`:`), `id`, `retry` and unknown fields carry nothing our readers use.
    if not lines:
        return None
    return name, lines[0] if len(lines) == 1 else b"\n".join(lines)
