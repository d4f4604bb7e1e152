"""A Redis that stops answering (a private redis-server frozen with SIGSTOP): at most one timeout per request, no
slot held by an admission the gateway gave up on, and rows let through unchecked are marked."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from gateway.policy.counters import CountersUnavailable, Quota
from gateway.policy.engine import UNCHECKED
from gateway.policy.redis_counters import RedisCounters
from tests.gateway.conftest import StackFactory
from tests.gateway.policy.test_enforcement import ADA, GRACE, error_of, policy_file, send, streamed
from tests.support.anthropic_sse import SSE_HEADERS, stream_events
from tests.support.redis_server import RedisServer, redis_server
from tests.support.servers import Reply

USER = "ada@example.com"
ONE_SLOT = Quota(max_concurrent_requests=1, requests_per_minute=100)
# Scheduling slack on a loaded 2-core machine; still well under a second timeout.
SLACK = 0.45


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with redis_server() as running:
        yield running


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex}"


@pytest.fixture
async def raw(server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(server.url)
    yield client
    await client.aclose()


async def started(server: RedisServer, prefix: str, **options: Any) -> RedisCounters:
    """Counters that have already run their admission script once, so Redis has it cached as in production."""
    counters = RedisCounters(server.url, prefix=prefix, **options)
    await counters.start()
    assert await counters.acquire("warm-up@example.com", uuid.uuid4().hex, ONE_SLOT, time.time()) is None
    return counters


async def timed_acquire(counters: RedisCounters, delay: float) -> tuple[float, BaseException | None]:
    await asyncio.sleep(delay)
    began = time.monotonic()
    try:
        await counters.acquire(USER, uuid.uuid4().hex, ONE_SLOT, time.time())
    except CountersUnavailable as exc:
        return time.monotonic() - began, exc
    return time.monotonic() - began, None


async def wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.02)
    return False


pytestmark = pytest.mark.anyio


async def test_calls_waiting_on_a_frozen_redis_all_give_up_when_the_first_times_out(
    server: RedisServer, prefix: str
) -> None:
    """Staggered calls end together at the first one's timeout; none waits its own full timeout, none retries."""
    timeout = 1.0
    counters = await started(server, prefix, timeout=timeout, cooldown=30)
    with server.frozen_for_the_block():
        began = time.monotonic()
        results = await asyncio.gather(*(timed_acquire(counters, delay) for delay in (0.0, 0.2, 0.4, 0.6)))
        everything = time.monotonic() - began
        during_cooldown = await timed_acquire(counters, 0)
    await counters.aclose()

    assert all(isinstance(error, CountersUnavailable) for _, error in results)
    assert max(took for took, _ in results) < timeout + SLACK
    # Before: each waited its own timeout and its retry, the last ending 0.6 + 2 × 1.0 s after the first began.
    assert everything < timeout + SLACK
    took, error = during_cooldown
    assert isinstance(error, CountersUnavailable) and "did not answer a moment ago" in str(error)
    assert took < timeout / 2


async def test_admission_given_up_on_takes_no_slot_when_redis_resumes(
    server: RedisServer, prefix: str, raw: aioredis.Redis
) -> None:
    counters = await started(server, prefix, timeout=0.3, cooldown=1.0)
    inflight = f"{prefix}:{{{USER}}}:inflight"
    with server.frozen_for_the_block():
        _, error = await timed_acquire(counters, 0)
        assert isinstance(error, CountersUnavailable)
        assert counters.abandoned == 1

    # The script the gateway gave up on was waiting in Redis's socket: it runs now and takes the slot...
    assert await wait_for(lambda: raw.zcard(inflight))
    # ...until the circuit lets the counters try again, and the first call cancels it before anything else.
    await asyncio.sleep(1.05)
    admitted = await counters.acquire(USER, "after", ONE_SLOT, time.time())
    snapshot = await counters.snapshot(USER, time.time())
    await counters.aclose()

    assert admitted is None
    assert counters.abandoned == 0
    assert await raw.zrange(inflight, 0, -1) == [b"after"]
    assert snapshot.requests_last_minute == 1  # the abandoned admission is not counted either


async def test_cancelled_admission_does_nothing_if_its_script_runs_after_the_cancellation(
    server: RedisServer, prefix: str, raw: aioredis.Redis
) -> None:
    """Cancellation and a late script may reach Redis in either order; here the cancellation comes first."""
    counters = await started(server, prefix, timeout=0.3, cooldown=0.3)
    with server.frozen_for_the_block(), pytest.raises(CountersUnavailable):
        await counters.acquire(USER, "late", ONE_SLOT, time.time())
    await asyncio.sleep(0.35)
    assert await counters.acquire(USER, "next", ONE_SLOT, time.time()) is None  # cancels "late" first
    await counters.settle(USER, "next", time.time(), tokens=0, micros=0)

    # The same admission arriving now finds its cancellation mark and takes nothing.
    with pytest.raises(CountersUnavailable, match="cancelled"):
        await counters.acquire(USER, "late", ONE_SLOT, time.time())
    snapshot = await counters.snapshot(USER, time.time())
    await counters.aclose()

    assert (snapshot.in_flight, snapshot.requests_last_minute) == (0, 1)


async def test_lease_of_a_request_that_could_not_settle_is_released_once_redis_answers(
    server: RedisServer, prefix: str, raw: aioredis.Redis
) -> None:
    counters = await started(server, prefix, timeout=0.3, cooldown=0.5)
    assert await counters.acquire(USER, "running", ONE_SLOT, time.time()) is None
    with server.frozen_for_the_block():
        _, error = await timed_acquire(counters, 0)  # opens the circuit
        assert isinstance(error, CountersUnavailable)
        with pytest.raises(CountersUnavailable):  # not even sent: the circuit is open
            await counters.settle(USER, "running", time.time(), tokens=10, micros=0)

    await asyncio.sleep(0.55)
    admitted = await counters.acquire(USER, "next", ONE_SLOT, time.time())
    await counters.aclose()

    assert admitted is None  # "running" no longer holds the only slot


async def test_upkeep_cancels_abandoned_admissions_without_waiting_for_a_request(
    server: RedisServer, prefix: str, raw: aioredis.Redis
) -> None:
    """Another instance may serve the person next: this one cleans up on its own once Redis answers."""
    counters = await started(server, prefix, timeout=0.3, cooldown=0.3)
    inflight = f"{prefix}:{{{USER}}}:inflight"
    with server.frozen_for_the_block():
        await timed_acquire(counters, 0)

    async def released() -> bool:
        return counters.abandoned == 0 and await raw.zcard(inflight) == 0

    assert await wait_for(released, timeout=5)
    await counters.aclose()


# End to end: the gateway under uvicorn, its Redis frozen.


def _timed(client: httpx.Client, url: str, headers: dict[str, str], body: bytes) -> tuple[float, httpx.Response]:
    began = time.monotonic()
    response = client.post(url, content=body, headers=headers, timeout=20)
    return time.monotonic() - began, response


def _timed_alone(url: str, headers: dict[str, str], body: bytes) -> tuple[float, httpx.Response]:
    with httpx.Client() as client:
        return _timed(client, url, headers, body)


def test_frozen_redis_costs_a_request_at_most_one_timeout_and_locks_nobody_out(
    make_stack: StackFactory, server: RedisServer, tmp_path: Path
) -> None:
    timeout = 1.0
    one_at_a_time = {"max_concurrent_requests": 1, "requests_per_minute": 100}
    settings = {
        "policy_file": policy_file(tmp_path, one_at_a_time, default=one_at_a_time),
        "group_resolver": "static",
        "redis_url": server.url,
        "redis_key_prefix": f"test-{uuid.uuid4().hex}",
        "redis_timeout_seconds": timeout,
    }
    with make_stack(**settings) as stack:
        stack.upstream.reply = streamed
        body = b'{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"x"}]}'
        url = stack.url + "/v1/messages"

        def headers(email: str = ADA) -> dict[str, str]:
            return {"content-type": "application/json", **stack.headers(email)}

        with httpx.Client() as kept_alive:
            baseline, first = _timed(kept_alive, url, headers(), body)
            assert first.status_code == 200
            with server.frozen_for_the_block():
                # Three people at once, then the same kept-alive connection again: each pays at most one timeout.
                together: list[tuple[float, httpx.Response]] = []
                people = [
                    threading.Thread(target=lambda e=e: together.append(_timed_alone(url, headers(e), body)))
                    for e in (ADA, GRACE, "mallory@example.com")
                ]
                for person in people:
                    person.start()
                for person in people:
                    person.join(20)
                again = [_timed(kept_alive, url, headers(), body) for _ in range(3)]

            durations = [took for took, _ in together + again]
            assert [r.status_code for _, r in together + again] == [200] * 6  # fail-open: served, unchecked
            assert max(durations) < timeout + SLACK, durations
            rows = stack.rows(7)
            assert all(row["policy_rule"].endswith(f",{UNCHECKED}") for row in rows[1:]), rows
            assert rows[0]["policy_rule"] == "group:eng@example.com"

            # Redis is back. Ada (one request at a time) is served throughout: first unchecked while the circuit
            # cools down, then checked, and never refused by a slot an abandoned admission took.
            statuses: list[int] = []
            for _ in range(60):
                _, response = _timed(kept_alive, url, headers(), body)
                statuses.append(response.status_code)
                if response.status_code != 200:
                    pytest.fail(f"after Redis resumed: {response.status_code} {error_of(response)}")
                if not stack.rows(7 + len(statuses))[-1]["policy_rule"].endswith(UNCHECKED):
                    break
                time.sleep(0.25)
            assert stack.rows(7 + len(statuses))[-1]["policy_rule"] == "group:eng@example.com"

        # And her limit is enforced again: a second request while one runs is refused.
        stack.upstream.reply = lambda seen: Reply(200, SSE_HEADERS, stream_events(["slow"]), hold=1.5)
        seen_before = len(stack.upstream.requests)
        running: list[httpx.Response] = []
        runner = threading.Thread(target=lambda: running.append(send(stack)))
        runner.start()
        for _ in range(500):
            if len(stack.upstream.requests) > seen_before:
                break
            time.sleep(0.01)
        refused = send(stack)
        runner.join(20)
        assert refused.status_code == 429
        assert error_of(refused)["message"].startswith("Too many requests at once")
        assert running[0].status_code == 200
