"""The load generator: raw asyncio HTTP/1.1 keep-alive connections, driven from protocol callbacks.

No HTTP library and no task per request: a connection writes its next request from the callback that read the
end of the previous response, so the client spends a few tens of microseconds per request and is not what
limits the paths it measures. TTFB is the time from writing the request to the first byte of the response
body (after the status line and headers); total is the time to the last byte of the body.

Modes (all print `MEASURE_START` / `MEASURE_END` lines around the measured window, for the caller's CPU
readings, then one JSON line of results):
  closed: `--concurrency` connections, each sending its next request as soon as a reply ends
  open:   requests at a fixed `--rate`, whatever the replies do, on a pool of connections
  count:  like closed, for exactly `--requests` requests, printing `PROGRESS n` every `--progress` requests
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

_clock = time.perf_counter


def build_request(port: int, headers: dict[str, str], body: bytes, path: str = "/v1/messages") -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"host: 127.0.0.1:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines += ["content-type: application/json", f"content-length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


class Conn(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    __slots__ = (
        "request",
        "on_done",
        "transport",
        "buf",
        "sent_at",
        "first_at",
        "state",
        "remaining",
        "status",
        "chunked",
        "lost",
        "closing",
    )

    def __init__(self, request: bytes, on_done: Callable[[Conn, int, float, float, float], None]) -> None:
        self.request = request
        self.on_done = on_done
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.sent_at = 0.0
        self.first_at = 0.0
        self.state = 0  # 0 idle, 1 headers, 2 body by length, 3 chunk size line, 4 chunk data, 5 last CRLF
        self.remaining = 0
        self.status = 0
        self.chunked = False
        self.closing = False  # the server said `connection: close`: not to be reused
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.state:
            self.state = 0
            self.on_done(self, 599, self.sent_at, self.first_at or _clock(), _clock())
        if not self.lost.done():
            self.lost.set_result(None)

    def send(self, started: float | None = None) -> None:
        """Write the request; `started` backdates the clock (a request that waited for a connection)."""
        if self.transport is None:
            self.on_done(self, 599, started or _clock(), _clock(), _clock())
            return
        self.state = 1
        self.first_at = 0.0
        self.sent_at = started if started is not None else _clock()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = _clock()
        buf = self.buf + data if self.buf else data
        self.buf = b""
        pos = 0
        size = len(buf)
        while pos < size or self.state == 5:
            state = self.state
            if state == 1:
                end = buf.find(b"\r\n\r\n", pos)
                if end < 0:
                    self.buf = buf[pos:]
                    return
                head = buf[pos:end].lower()
                self.status = int(head[9:12])
                if b"\r\nconnection: close" in head:
                    self.closing = True
                pos = end + 4
                if b"\r\ntransfer-encoding: chunked" in head:
                    self.state = 3
                else:
                    at = head.find(b"\r\ncontent-length:")
                    if at < 0:
                        self.remaining = 0
                    else:
                        stop = head.find(b"\r\n", at + 2)
                        self.remaining = int(head[at + 17 : stop if stop >= 0 else len(head)])
                    self.state = 2
                    if self.remaining == 0:
                        self._finish(now, now)
                        continue
                if pos < size:
                    self.first_at = now
            elif state == 2:
                take = min(size - pos, self.remaining)
                if not self.first_at:
                    self.first_at = now
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    self._finish(self.first_at, now)
            elif state == 3:
                if not self.first_at:
                    self.first_at = now
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    self.buf = buf[pos:]
                    return
                length = int(buf[pos:end].split(b";", 1)[0], 16)
                pos = end + 2
                if length == 0:
                    self.state = 5
                    self.remaining = 2  # the CRLF after the last chunk (no trailers)
                else:
                    self.remaining = length + 2
                    self.state = 4
            elif state == 4:
                take = min(size - pos, self.remaining)
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    self.state = 3
            elif state == 5:
                take = min(size - pos, self.remaining)
                pos += take
                self.remaining -= take
                if self.remaining:
                    return
                self._finish(self.first_at, now)
            else:  # bytes nobody asked for
                return
        return

    def _finish(self, first_at: float, now: float) -> None:
        self.state = 0
        self.on_done(self, self.status, self.sent_at, first_at, now)


class Recorder:
    """Per-request samples taken inside the measured window."""

    def __init__(self) -> None:
        self.ttfb: list[float] = []
        self.total: list[float] = []
        self.completed = 0
        self.errors = 0
        self.statuses: dict[int, int] = {}
        self.recording = False
        self.started = 0.0
        self.stopped = 0.0

    def add(self, status: int, sent: float, first: float, done: float) -> None:
        # Throughput counts replies that end inside the window; latency only requests also sent inside it.
        if not self.recording:
            return
        if status != 200:
            self.errors += 1
            self.statuses[status] = self.statuses.get(status, 0) + 1
            return
        self.completed += 1
        if sent >= self.started:
            self.ttfb.append(first - sent)
            self.total.append(done - sent)

    def start(self) -> None:
        self.recording = True
        self.started = _clock()
        marker("MEASURE_START")

    def stop(self) -> None:
        self.recording = False
        self.stopped = _clock()
        marker("MEASURE_END")

    def result(self, **extra: Any) -> dict[str, Any]:
        elapsed = self.stopped - self.started
        return {
            "requests": self.completed,
            "errors": self.errors,
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "elapsed": elapsed,
            "rps": self.completed / elapsed if elapsed > 0 else 0.0,
            "ttfb": percentiles(self.ttfb),
            "total": percentiles(self.total),
            **extra,
        }


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50/p95/p99/max and mean, in milliseconds (nearest-rank)."""
    if not samples:
        return {}
    ordered = sorted(samples)
    n = len(ordered)

    def rank(q: float) -> float:
        return ordered[min(n - 1, max(0, int(q * n + 0.5) - 1))] * 1000

    return {
        "p50": rank(0.50),
        "p95": rank(0.95),
        "p99": rank(0.99),
        "max": ordered[-1] * 1000,
        "mean": sum(ordered) / n * 1000,
    }


def marker(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def connect(port: int, request: bytes, on_done: Callable[[Conn, int, float, float, float], None]) -> Conn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: Conn(request, on_done), "127.0.0.1", port)
    return conn


def usable(conn: Conn) -> bool:
    return conn.transport is not None and not conn.closing


def replace(conn: Conn, port: int, conns: list[Conn], then: Callable[[Conn], None]) -> None:
    """Swap a connection the server closed (or is closing) for a new one, then hand it to `then`."""

    async def reconnect() -> None:
        if conn.transport is not None:
            conn.transport.close()
        fresh = await connect(port, conn.request, conn.on_done)
        conns[conns.index(conn)] = fresh
        then(fresh)

    asyncio.get_running_loop().create_task(reconnect())


async def run_closed(port: int, request: bytes, concurrency: int, warmup: float, duration: float) -> dict[str, Any]:
    """Each connection sends its next request as soon as the previous reply ends."""
    rec = Recorder()
    stopping = False
    idle = 0
    all_idle = asyncio.get_running_loop().create_future()

    def on_done(conn: Conn, status: int, sent: float, first: float, done: float) -> None:
        nonlocal idle
        rec.add(status, sent, first, done)
        if stopping:
            idle += 1
            if idle == concurrency and not all_idle.done():
                all_idle.set_result(None)
        elif usable(conn):
            conn.send()
        else:
            replace(conn, port, conns, lambda fresh: fresh.send())

    conns = [await connect(port, request, on_done) for _ in range(concurrency)]
    for conn in conns:
        conn.send()
    await asyncio.sleep(warmup)
    rec.start()
    await asyncio.sleep(duration)
    rec.stop()
    stopping = True
    await asyncio.wait_for(all_idle, 30)
    _close(conns)
    return rec.result(mode="closed", concurrency=concurrency)


async def run_count(
    port: int, request: bytes, concurrency: int, requests: int, progress: int, max_seconds: float
) -> dict[str, Any]:
    """`requests` requests over `concurrency` connections, or fewer if `max_seconds` pass first; `PROGRESS n`
    every `progress` replies."""
    rec = Recorder()
    issued = 0
    completed = 0
    target = requests
    finished = asyncio.get_running_loop().create_future()

    def on_done(conn: Conn, status: int, sent: float, first: float, done: float) -> None:
        nonlocal issued, completed
        rec.add(status, sent, first, done)
        completed += 1
        if progress and completed % progress == 0:
            marker(f"PROGRESS {completed}")
        if completed == requests and not finished.done():
            finished.set_result(None)
        if issued < requests:
            issued += 1
            if usable(conn):
                conn.send()
            else:
                replace(conn, port, conns, lambda fresh: fresh.send())

    conns = [await connect(port, request, on_done) for _ in range(min(concurrency, requests))]
    rec.start()
    for conn in conns:
        issued += 1
        conn.send()
    try:
        await asyncio.wait_for(asyncio.shield(finished), max_seconds or None)
    except TimeoutError:
        requests = issued  # stop issuing; wait for what is in flight
        if completed < issued:
            await asyncio.wait_for(finished, 60)
    rec.stop()
    _close(conns)
    return rec.result(mode="count", concurrency=concurrency, timed_out=completed < target)


async def run_open(
    port: int, request: bytes, rate: float, warmup: float, duration: float, pool: int, drain: float
) -> dict[str, Any]:
    """Requests at fixed times; one waiting for a free connection is timed from when it was due."""
    rec = Recorder()
    idle: deque[Conn] = deque()
    waiting: deque[float] = deque()
    lag: list[float] = []
    opened = 0

    def on_done(conn: Conn, status: int, sent: float, first: float, done: float) -> None:
        rec.add(status, sent, first, done)
        if not usable(conn):
            replace(conn, port, conns, ready)
        else:
            ready(conn)

    def ready(conn: Conn) -> None:
        if waiting:
            conn.send(started=waiting.popleft())
        else:
            idle.append(conn)

    for _ in range(pool):
        idle.append(await connect(port, request, on_done))
    conns = list(idle)
    interval = 1.0 / rate
    t0 = _clock() + 0.01
    total = int((warmup + duration) * rate)
    measure_from = int(warmup * rate)
    for i in range(total):
        due = t0 + i * interval
        delay = due - _clock()
        if delay > 0:
            await asyncio.sleep(delay)
        if i == measure_from:
            rec.start()
        now = _clock()
        if rec.recording:
            lag.append(now - due)
        if idle:
            idle.popleft().send()
        elif opened < pool * 4:
            opened += 1
            # Out of connections: open one more, timing the request from when it was due.
            conn = await connect(port, request, on_done)
            conns.append(conn)
            conn.send(started=due)
        else:
            waiting.append(due)
    # A saturated path builds a queue it may take long to drain: what is still out after `drain` is reported.
    deadline = _clock() + drain
    while (len(idle) < len(conns) or waiting) and _clock() < deadline:
        await asyncio.sleep(0.005)
    unfinished = len(waiting) + sum(1 for conn in conns if conn.state)
    rec.stop()
    rec.stopped = rec.started + duration  # the offered window, not the drain
    _close(conns)
    return rec.result(
        mode="open", target_rate=rate, extra_connections=opened, send_lag=percentiles(lag), unfinished=unfinished
    )


def _close(conns: list[Conn]) -> None:
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=["closed", "open", "count"], default="closed")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--pool", type=int, default=32)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--progress", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=0.0, help="count mode: stop issuing after this long")
    parser.add_argument("--drain", type=float, default=10.0, help="open mode: longest wait for late replies")
    parser.add_argument("--headers", default="{}", help="JSON object of extra request headers")
    parser.add_argument("--body-file", required=True)
    args = parser.parse_args(argv)
    with open(args.body_file, "rb") as handle:
        body = handle.read()
    request = build_request(args.port, json.loads(args.headers), body)

    async def run() -> dict[str, Any]:
        if args.mode == "closed":
            return await run_closed(args.port, request, args.concurrency, args.warmup, args.duration)
        if args.mode == "count":
            return await run_count(args.port, request, args.concurrency, args.requests, args.progress, args.max_seconds)
        return await run_open(args.port, request, args.rate, args.warmup, args.duration, args.pool, args.drain)

    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run())
    else:
        result = uvloop.run(run())
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
