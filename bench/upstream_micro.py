"""CPU per request of the upstream hop alone: the gateway's `UpstreamTransport` (upstreams/transport.py).

When it replaced aiohttp's client (December 2026) the same measurement gave, in µs of CPU per request on this
2-core machine: aiohttp 119.5 (c=1) / 110.8 (c=50) with replies written whole and 261.4 / 236.2 per event;
the lean transport 21.3 / 21.3 and 92.1 / 91.2.

Starts the bench's fake upstream (`bench/upstream.py`) in its own process, then in this process sends N
`/v1/messages` requests through each client, one at a time and 50 at once, reading every body, and prints
this process's CPU (time.process_time) per request. Both reply shapes: written whole, and one SSE event per
write (the body carries the upstream's per-event marker).

Run: .venv/bin/python -m bench.upstream_micro [--requests 5000] [--concurrency 50] [--loop uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from typing import Any

from bench import procs
from bench.run import request_body
from gateway.upstreams.transport import UpstreamRequest, UpstreamTransport

# Headers of the size and shape the gateway forwards to Anthropic.
HEADERS = [
    (b"content-type", b"application/json"),
    (b"anthropic-version", b"2023-06-01"),
    (b"anthropic-beta", b"claude-code-20250219,interleaved-thinking-2025-05-14"),
    (b"x-api-key", b"sk-ant-bench-0000000000000000000000000000000000000000"),
    (b"user-agent", b"claude-cli/2.0.0 (external, cli)"),
    (b"x-stainless-lang", b"js"),
    (b"x-stainless-retry-count", b"0"),
    (b"accept", b"application/json"),
    (b"accept-encoding", b"identity"),
]


def options() -> dict[str, Any]:
    return {
        "connect_timeout": 5.0,
        "read_timeout": 30.0,
        "write_timeout": 30.0,
        "pool_timeout": 30.0,
        "max_connections": 100,
    }


async def one(client: UpstreamTransport, request: UpstreamRequest, expect: int) -> None:
    response = await client.send(request)
    try:
        size = 0
        async for chunk in response.aiter_raw():
            size += len(chunk)
        if response.status_code != 200 or size != expect:
            raise RuntimeError(f"unexpected reply: {response.status_code}, {size} bytes")
    finally:
        await response.aclose()


async def measure(
    client: UpstreamTransport, request: UpstreamRequest, expect: int, requests: int, concurrency: int
) -> float:
    """CPU microseconds per request, `concurrency` requests in flight."""

    async def worker(count: int) -> None:
        for _ in range(count):
            await one(client, request, expect)

    await asyncio.gather(*(worker(200 // concurrency + 1) for _ in range(concurrency)))  # warm: pool, caches
    started = time.process_time()
    await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
    return (time.process_time() - started) / (requests // concurrency * concurrency) * 1e6


async def bench(url: str, requests: int, concurrency: int, expect: dict[bool, int]) -> list[tuple[str, ...]]:
    rows = []
    for per_event in (False, True):
        request = UpstreamRequest("POST", url, HEADERS, request_body(2000, per_event=per_event))
        for name, make in (("transport", UpstreamTransport),):
            cells = [name, "per-event" if per_event else "whole"]
            for c in (1, concurrency):
                client = make(**options())
                try:
                    cells.append(f"{await measure(client, request, expect[per_event], requests, c):.1f}")
                finally:
                    await client.aclose()
            rows.append(tuple(cells))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--deltas", type=int, default=50)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    from bench.upstream import Reply

    body_bytes = Reply(args.deltas, 0.0, b"{}").body_bytes
    port = procs.free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "bench.upstream", "--port", str(port), "--deltas", str(args.deltas)]
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                import socket

                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/v1/messages"
        coro = bench(url, args.requests, args.concurrency, {False: body_bytes, True: body_bytes})
        if args.loop == "uvloop":
            import uvloop

            rows = uvloop.run(coro)
        else:
            rows = asyncio.run(coro)
    finally:
        upstream.terminate()
        upstream.wait(10)
    print(f"CPU µs per request in this process ({args.requests} requests, {args.loop}, {args.deltas} deltas)")
    print(f"{'client':8} {'reply':10} {'c=1':>8} {'c=' + str(args.concurrency):>8}")
    for name, shape, *cells in rows:
        print(f"{name:8} {shape:10} " + " ".join(f"{cell:>8}" for cell in cells))


if __name__ == "__main__":
    main()
