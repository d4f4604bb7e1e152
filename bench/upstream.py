"""A fast fake Anthropic API: a raw asyncio HTTP/1.1 server that writes a precomputed SSE reply.

Every POST gets the same streamed Messages reply (message_start with cache usage, `--deltas` text deltas,
message_delta, message_stop) as chunked transfer encoding, the way Anthropic's API sends it over HTTP/1.1.
By default the whole reply goes out in one write, so the upstream costs a few microseconds per request and
the relays in front of it are what gets measured. With `--per-event` each event is its own chunk and write,
each sent at once (uvloop writes straight to the socket with TCP_NODELAY, so each leaves as its own segment,
as a real stream's do), and with `--delay-ms` also that long apart, like a model producing tokens (the loop's
timer has 1 ms resolution under uvloop). `GET /iap/public_key` serves the IAP key map the gateway verifies
assertions against.

Run: python -m bench.upstream --port 9000 [--deltas 50] [--per-event] [--delay-ms 0] [--keys keys.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path

_OK_JSON = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\n"
    b"request-id: req_bench_0000000000000001\r\n"
    b"anthropic-ratelimit-requests-limit: 4000\r\n"
    b"anthropic-ratelimit-requests-remaining: 3999\r\n"
    b"anthropic-ratelimit-tokens-limit: 400000\r\n"
    b"anthropic-ratelimit-tokens-remaining: 399000\r\n"
    b"transfer-encoding: chunked\r\n"
    b"\r\n"
)
# A request whose body holds this gets its reply one event per write, whatever `--per-event` says: the bench
# sends both shapes through the same relays (the body is the one thing every relay passes on unchanged).
PER_EVENT_MARKER = b"bench-reply-per-event"
_WORDS = "The quick brown fox jumps over the lazy dog while the gateway relays every byte unchanged".split()


def _event(name: str, data: dict[str, object]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def sse_events(deltas: int, model: str = "claude-sonnet-4-5-20250929") -> tuple[bytes, list[bytes], bytes]:
    """The reply's events: (opening events, one per text delta, closing events)."""
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_bench_01XFDUDYJgAACzvnptvVoYEL",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 2095,
                "cache_creation_input_tokens": 1024,
                "cache_read_input_tokens": 18432,
                "output_tokens": 1,
                "service_tier": "standard",
            },
        },
    }
    head = (
        _event("message_start", start)
        + _event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        )
        + _event("ping", {"type": "ping"})
    )
    body = [
        _event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": _WORDS[i % len(_WORDS)] + " "},
            },
        )
        for i in range(deltas)
    ]
    tail = (
        _event("content_block_stop", {"type": "content_block_stop", "index": 0})
        + _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": deltas},
            },
        )
        + _event("message_stop", {"type": "message_stop"})
    )
    return head, body, tail


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Reply:
    """The precomputed response bytes."""

    def __init__(self, deltas: int, delay: float, keys: bytes, *, per_event: bool = False) -> None:
        head, body, tail = sse_events(deltas)
        self.delay = delay
        self.paced = per_event or delay > 0
        self.whole = _SSE_HEAD + _chunk(head + b"".join(body) + tail) + b"0\r\n\r\n"
        self.first = _SSE_HEAD + _chunk(head)
        self.pieces = [_chunk(piece) for piece in body]
        self.last = _chunk(tail) + b"0\r\n\r\n"
        self.keys = (_OK_JSON % len(keys)) + keys
        self.body_bytes = len(head) + sum(len(piece) for piece in body) + len(tail)


class Upstream(asyncio.Protocol):
    """One keep-alive connection: requests are answered in order, pipelined ones included."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._serve()

    def _serve(self) -> None:
        while self.transport is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            length = 0
            lower = head.lower()
            at = lower.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = lower.find(b"\r\n", at + 2)
                length = int(lower[at + 17 : stop if stop >= 0 else len(lower)])
            total = end + 4 + length
            if len(self.buf) < total:
                return
            per_event = self.reply.paced or PER_EVENT_MARKER in self.buf[end + 4 : total]
            self.buf = self.buf[total:]
            if head.startswith(b"POST "):
                if not per_event:
                    self.transport.write(self.reply.whole)
                elif not self.reply.delay:
                    self.transport.write(self.reply.first)
                    for piece in self.reply.pieces:
                        self.transport.write(piece)
                    self.transport.write(self.reply.last)
                else:
                    self.busy = True
                    asyncio.get_running_loop().create_task(self._paced())
                    return
            elif head.startswith(b"GET /iap/public_key"):
                self.transport.write(self.reply.keys)
            elif head.startswith(b"GET /healthz"):
                self.transport.write(_OK_JSON % 2 + b"{}")
            else:
                self.transport.write(_NOT_FOUND)

    async def _paced(self) -> None:
        reply = self.reply
        if self.transport is None:
            return
        self.transport.write(reply.first)
        for piece in reply.pieces:
            await asyncio.sleep(reply.delay)
            if self.transport is None:
                return
            self.transport.write(piece)
        self.transport.write(reply.last)
        self.busy = False
        self._serve()


async def serve(host: str, port: int, reply: Reply) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Upstream(reply), host, port, backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--deltas", type=int, default=50)
    parser.add_argument("--per-event", action="store_true", help="one write per event, one loop turn apart")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="pause between deltas (implies --per-event)")
    parser.add_argument("--keys", type=Path, help="JSON file served at /iap/public_key")
    args = parser.parse_args()
    keys = args.keys.read_bytes() if args.keys else b"{}"
    reply = Reply(args.deltas, args.delay_ms / 1000, keys, per_event=args.per_event)
    try:
        import uvloop
    except ImportError:  # the plain loop works, only slower
        asyncio.run(serve(args.host, args.port, reply))
    else:
        uvloop.run(serve(args.host, args.port, reply))


if __name__ == "__main__":
    main()
