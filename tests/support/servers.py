"""Real servers on loopback for tests: uvicorn in a thread, and a scriptable stand-in for Anthropic and Google."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn


@contextmanager
def serve(app: Any, *, host: str = "127.0.0.1") -> Iterator[str]:
    """Run an ASGI app under uvicorn on a free loopback port; yield its base URL; stop it (lifespan included)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=5)
    try:
        with run_in_thread(uvicorn.Server(config), sock):
            yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        sock.close()


@contextmanager
def run_in_thread(server: uvicorn.Server, sock: socket.socket) -> Iterator[None]:
    """Serve on an already bound socket from a thread until the block ends; the caller closes the socket."""
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(15)


async def lifespan(receive: Any, send: Any) -> None:
    """Answer an ASGI lifespan conversation for a fake with nothing to start or stop."""
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


async def read_body(receive: Any) -> bytes:
    """The whole request body."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


@dataclass
class Reply:
    """What the fake upstream answers: a status, headers and body chunks sent `delay` seconds apart."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    delay: float = 0.0
    hold: float = 0.0  # seconds to wait before answering at all


@dataclass
class Seen:
    method: str
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.decode().lower() == name.lower():
                return value.decode()
        return None


class FakeUpstream:
    """Plays Anthropic's API from a script (`reply`), and Google's IAP key endpoint (`keys`).

    Records every request, and when the gateway hung up mid-stream (`closed_early`)."""

    def __init__(self) -> None:
        self.reply: Callable[[Seen], Reply] = lambda seen: Reply(200, [("content-type", "application/json")], [b"{}"])
        self.keys: dict[str, str] = {}
        self.key_fetches = 0
        self.requests: list[Seen] = []
        self.closed_early = threading.Event()
        self.finished = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = await read_body(receive)
        if scope["path"] == "/iap/public_key":
            self.key_fetches += 1
            await _send_all(send, Reply(200, [("content-type", "application/json")], [orjson.dumps(self.keys)]))
            return
        seen = Seen(scope["method"], scope["path"], scope["query_string"], list(scope["headers"]), body)
        self.requests.append(seen)
        reply = self.reply(seen)
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        try:
            if reply.hold:
                await asyncio.sleep(reply.hold)
            await send(
                {
                    "type": "http.response.start",
                    "status": reply.status,
                    "headers": [(k.encode(), v.encode()) for k, v in reply.headers],
                }
            )
            for chunk in reply.chunks:
                if reply.delay:
                    try:
                        await asyncio.wait_for(gone.wait(), reply.delay)
                    except TimeoutError:
                        pass
                if gone.is_set():
                    self.closed_early.set()
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            self.finished.set()
        finally:
            watcher.cancel()


async def _send_all(send: Any, reply: Reply) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": reply.status,
            "headers": [(k.encode(), v.encode()) for k, v in reply.headers],
        }
    )
    await send({"type": "http.response.body", "body": b"".join(reply.chunks)})
