"""IAP's key endpoint when it misbehaves (a local server that hangs, drips or sends too much): a fetch has a total
deadline and a size cap, one fetch serves everyone waiting, and known keys keep verifying while a refresh hangs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import orjson
import pytest

from gateway.dev.iap import AssertionSigner
from gateway.identity import AuthenticationError, IAPKeys, IAPVerifier
from tests.gateway.conftest import AUDIENCE, StackFactory
from tests.gateway.test_identity import BODY
from tests.support.servers import lifespan, serve

# Scheduling slack on a loaded 2-core machine, added to the deadlines asserted.
SLACK = 0.8


class KeyServer:
    """IAP's public key endpoint, answering as `mode` says: ok, hang, drip (a byte at a time) or huge."""

    def __init__(self, keys: dict[str, str]) -> None:
        self.keys = keys
        self.mode = "ok"
        self.fetches = 0
        self.sent = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        self.fetches += 1
        start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
        if self.mode == "ok":
            await send(start)
            await send({"type": "http.response.body", "body": orjson.dumps(self.keys)})
            return
        if self.mode == "hang":
            with anyio.move_on_after(20):  # until the gateway gives up and hangs up
                while (await receive())["type"] != "http.disconnect":
                    pass
            return
        await send(start)
        chunk, pause = (b" ", 0.2) if self.mode == "drip" else (b" " * 65536, 0.0)
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        try:
            for _ in range(256):  # at most 16 MiB or 51 s
                if gone.is_set():
                    return  # the gateway hung up
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                self.sent += len(chunk)
                await asyncio.sleep(pause)
            await send({"type": "http.response.body", "body": b"{}"})
        finally:
            watcher.cancel()


@pytest.fixture
def signer() -> AssertionSigner:
    return AssertionSigner(kid="key-1")


@pytest.fixture
def key_server(signer: AssertionSigner) -> Iterator[tuple[KeyServer, str]]:
    server = KeyServer(signer.public_key_map())
    with serve(server) as url:
        yield server, url + "/iap/public_key"


def token(signer: AssertionSigner, email: str = "ada@example.com") -> str:
    return signer.sign(email, audience=AUDIENCE, hd="example.com")


pytestmark = pytest.mark.anyio


async def test_known_keys_keep_verifying_while_a_refresh_hangs(
    key_server: tuple[KeyServer, str], signer: AssertionSigner
) -> None:
    server, url = key_server
    async with httpx.AsyncClient() as client:
        keys = IAPKeys(client, url, max_age=0.2, fetch_deadline=5.0)
        verifier = IAPVerifier(keys, [AUDIENCE])
        await verifier.verify(token(signer))
        server.mode = "hang"
        await asyncio.sleep(0.3)  # the keys are now old: the next request starts a refresh, in the background
        await verifier.verify(token(signer, "first@example.com"))
        for _ in range(200):
            if server.fetches == 2:
                break
            await asyncio.sleep(0.01)
        assert server.fetches == 2  # the refresh is hanging now

        began = time.monotonic()
        people = await asyncio.gather(*(verifier.verify(token(signer, f"user{i}@example.com")) for i in range(5)))
        took = time.monotonic() - began
        await keys.aclose()

    assert [p.email for p in people] == [f"user{i}@example.com" for i in range(5)]
    assert took < 5.0 / 2  # none waited for the hanging refresh
    assert server.fetches == 2  # no second refresh while one is in flight


async def test_unknown_key_ids_share_one_fetch_bounded_by_its_deadline(
    key_server: tuple[KeyServer, str], signer: AssertionSigner
) -> None:
    """Before, three such requests waited 10, 20 and 30 s, one fetch after another under a lock."""
    server, url = key_server
    rotated = AssertionSigner(kid="key-2")
    deadline = 1.0
    async with httpx.AsyncClient() as client:
        verifier = IAPVerifier(IAPKeys(client, url, fetch_deadline=deadline), [AUDIENCE])
        await verifier.verify(token(signer))
        server.mode = "hang"

        async def attempt(email: str) -> tuple[float, BaseException | None]:
            began = time.monotonic()
            try:
                await verifier.verify(token(rotated, email))
            except AuthenticationError as exc:
                return time.monotonic() - began, exc
            return time.monotonic() - began, None

        results = await asyncio.gather(*(attempt(f"user{i}@example.com") for i in range(3)))
        # Known keys were never in question.
        assert (await verifier.verify(token(signer, "grace@example.com"))).email == "grace@example.com"

    assert all(isinstance(error, AuthenticationError) and error.status == 401 for _, error in results)
    assert max(took for took, _ in results) < deadline + SLACK
    assert server.fetches == 2


async def test_key_file_over_the_size_cap_is_refused_without_reading_it_all(
    key_server: tuple[KeyServer, str], signer: AssertionSigner, caplog: pytest.LogCaptureFixture
) -> None:
    server, url = key_server
    server.mode = "huge"
    async with httpx.AsyncClient() as client:
        verifier = IAPVerifier(IAPKeys(client, url, max_bytes=256 * 1024), [AUDIENCE])
        with pytest.raises(AuthenticationError) as refused:
            await verifier.verify(token(signer))

    assert refused.value.status == 503 and refused.value.outcome == "gateway_error"
    assert "over the 262144-byte cap" in caplog.text
    assert server.sent < 8 * 1024 * 1024  # of the 16 MiB on offer: the rest was never read


async def test_key_endpoint_dripping_bytes_is_given_up_at_the_deadline(
    key_server: tuple[KeyServer, str], signer: AssertionSigner, caplog: pytest.LogCaptureFixture
) -> None:
    """A byte every 0.2 s never trips a per-read timeout; the fetch's total deadline ends it."""
    server, url = key_server
    server.mode = "drip"
    deadline = 1.0
    async with httpx.AsyncClient() as client:
        verifier = IAPVerifier(IAPKeys(client, url, fetch_deadline=deadline), [AUDIENCE])
        began = time.monotonic()
        with pytest.raises(AuthenticationError) as refused:
            await verifier.verify(token(signer))
        took = time.monotonic() - began

    assert refused.value.status == 503
    assert deadline * 0.9 <= took < deadline + SLACK
    assert "no answer within 1 s" in caplog.text


def test_gateway_answers_503_in_anthropic_shape_when_the_key_file_is_too_large(
    make_stack: StackFactory, key_server: tuple[KeyServer, str]
) -> None:
    server, url = key_server
    server.mode = "huge"
    with make_stack(iap_certs_url=url) as stack:
        response = httpx.post(
            stack.url + "/v1/messages",
            content=BODY,
            headers={"content-type": "application/json", **stack.headers()},
            timeout=20,
        )

        assert response.status_code == 503
        assert response.json() == {
            "type": "error",
            "error": {
                "type": "api_error",
                "message": "The gateway cannot verify identity right now (IAP keys unavailable).",
            },
        }
        assert stack.upstream.requests == []
        assert stack.rows(1)[0]["outcome"] == "gateway_error"
