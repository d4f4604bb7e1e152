from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis

from gateway.policy.counters import Counters, CountersUnavailable, InProcessCounters, Quota
from gateway.policy.redis_counters import RedisCounters

pytestmark = pytest.mark.anyio

REDIS_URL = "redis://127.0.0.1:6379/0"
# A fixed moment (the counters take the time from their caller): one minute before a month ends, UTC.
T0 = datetime(2026, 3, 31, 23, 59, 0, tzinfo=UTC).timestamp()
USER = "ada@example.com"


def new_id() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex}"


@pytest.fixture
async def redis_client(prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    yield client
    keys = [key async for key in client.scan_iter(f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture(params=["in-process", "redis"])
async def counters(
    request: pytest.FixtureRequest, prefix: str, redis_client: aioredis.Redis
) -> AsyncIterator[Counters]:
    backend: Counters
    backend = InProcessCounters() if request.param == "in-process" else RedisCounters(REDIS_URL, prefix=prefix)
    await backend.start()
    yield backend
    await backend.aclose()


async def test_requests_per_minute_admits_up_to_the_limit_then_says_when_a_slot_frees(counters: Counters) -> None:
    quota = Quota(requests_per_minute=3)
    for offset in (0, 10, 20):
        assert await counters.acquire(USER, new_id(), quota, T0 + offset) is None

    refused = await counters.acquire(USER, new_id(), quota, T0 + 30)

    assert refused is not None
    assert (refused.limit, refused.used) == ("requests_per_minute", 3)
    assert refused.retry_at == pytest.approx(T0 + 60)
    assert await counters.acquire(USER, new_id(), quota, T0 + 59.9) is not None
    assert await counters.acquire(USER, new_id(), quota, T0 + 60) is None


async def test_counts_are_per_person(counters: Counters) -> None:
    quota = Quota(requests_per_minute=1)

    assert await counters.acquire(USER, new_id(), quota, T0) is None
    assert await counters.acquire("grace@example.com", new_id(), quota, T0) is None
    assert await counters.acquire(USER, new_id(), quota, T0) is not None


async def test_tokens_per_minute_counts_metered_tokens_over_the_last_minute(counters: Counters) -> None:
    quota = Quota(tokens_per_minute=1000)
    first, second = new_id(), new_id()
    assert await counters.acquire(USER, first, quota, T0) is None
    assert await counters.acquire(USER, second, quota, T0) is None
    await counters.settle(USER, first, T0 + 1, tokens=600, micros=0)
    await counters.settle(USER, second, T0 + 5, tokens=500, micros=0)

    refused = await counters.acquire(USER, new_id(), quota, T0 + 6)

    assert refused is not None
    assert (refused.limit, refused.used) == ("tokens_per_minute", 1100)
    assert refused.retry_at == pytest.approx(T0 + 61)  # once the 600 leave, 500 is under the limit
    assert await counters.acquire(USER, new_id(), quota, T0 + 61) is None


async def test_daily_budget_refuses_once_spent_and_starts_over_at_midnight_utc(counters: Counters) -> None:
    quota = Quota(daily_budget_micros=1_000_000)
    lease = new_id()
    assert await counters.acquire(USER, lease, quota, T0) is None
    await counters.settle(USER, lease, T0, tokens=10, micros=1_250_000)

    refused = await counters.acquire(USER, new_id(), quota, T0 + 30)

    assert refused is not None
    assert (refused.limit, refused.used) == ("daily_budget_usd", 1_250_000)
    assert refused.retry_at == datetime(2026, 4, 1, tzinfo=UTC).timestamp()
    assert await counters.acquire(USER, new_id(), quota, T0 + 61) is None  # 1 April, 00:00:01 UTC


async def test_monthly_budget_is_checked_first_and_starts_over_on_the_first(counters: Counters) -> None:
    quota = Quota(daily_budget_micros=500_000, monthly_budget_micros=1_000_000)
    lease = new_id()
    assert await counters.acquire(USER, lease, quota, T0) is None
    await counters.settle(USER, lease, T0, tokens=10, micros=2_000_000)

    refused = await counters.acquire(USER, new_id(), quota, T0)

    assert refused is not None and refused.limit == "monthly_budget_usd"
    assert refused.retry_at == datetime(2026, 4, 1, tzinfo=UTC).timestamp()
    assert await counters.acquire(USER, new_id(), quota, T0 + 120) is None


async def test_concurrency_slot_is_held_until_settled(counters: Counters) -> None:
    quota = Quota(max_concurrent_requests=2)
    first, second = new_id(), new_id()
    assert await counters.acquire(USER, first, quota, T0) is None
    assert await counters.acquire(USER, second, quota, T0) is None

    refused = await counters.acquire(USER, new_id(), quota, T0)
    assert refused is not None
    assert (refused.limit, refused.used, refused.retry_at) == ("max_concurrent_requests", 2, None)

    await counters.settle(USER, first, T0 + 1, tokens=0, micros=0)
    assert await counters.acquire(USER, new_id(), quota, T0 + 1) is None


async def test_a_refused_request_takes_nothing(counters: Counters) -> None:
    quota = Quota(requests_per_minute=5, max_concurrent_requests=1)
    assert await counters.acquire(USER, new_id(), quota, T0) is None

    assert await counters.acquire(USER, new_id(), quota, T0) is not None

    usage = await counters.snapshot(USER, T0)
    assert (usage.requests_last_minute, usage.in_flight) == (1, 1)


async def test_a_limit_of_zero_never_frees_up(counters: Counters) -> None:
    refused = await counters.acquire(USER, new_id(), Quota(requests_per_minute=0), T0)

    assert refused is not None and refused.retry_at is None


async def test_snapshot_reports_current_usage(counters: Counters) -> None:
    quota = Quota(requests_per_minute=10, max_concurrent_requests=5)
    done, running = new_id(), new_id()
    await counters.acquire(USER, done, quota, T0)
    await counters.acquire(USER, running, quota, T0 + 1)
    await counters.settle(USER, done, T0 + 2, tokens=700, micros=1_500)

    usage = await counters.snapshot(USER, T0 + 3)

    assert usage.requests_last_minute == 2
    assert usage.tokens_last_minute == 700
    assert usage.spent_today_micros == usage.spent_this_month_micros == 1_500
    assert usage.in_flight == 1


async def test_redis_keys_all_expire_on_their_own(prefix: str, redis_client: aioredis.Redis) -> None:
    counters = RedisCounters(REDIS_URL, prefix=prefix)
    quota = Quota(
        requests_per_minute=10,
        tokens_per_minute=10_000,
        daily_budget_micros=10_000_000,
        monthly_budget_micros=10_000_000,
        max_concurrent_requests=3,
    )
    now = time.time()
    held, done = new_id(), new_id()
    await counters.acquire(USER, held, quota, now)
    await counters.acquire(USER, done, quota, now)
    await counters.settle(USER, done, now, tokens=100, micros=1_000)

    keys = [key async for key in redis_client.scan_iter(f"{prefix}:*")]
    ttls = {key.decode().rsplit(":", 1)[-1]: await redis_client.ttl(key) for key in keys}
    await counters.aclose()

    assert len(keys) == 5
    assert all(0 < ttl for ttl in ttls.values()), ttls
    assert ttls["req"] <= 61 and ttls["tok"] <= 61 and ttls["inflight"] <= 90
    assert max(ttls.values()) <= 40 * 86_400


async def test_redis_lease_of_a_vanished_instance_frees_itself(prefix: str, redis_client: aioredis.Redis) -> None:
    quota = Quota(max_concurrent_requests=1)
    crashed = RedisCounters(REDIS_URL, prefix=prefix)
    survivor = RedisCounters(REDIS_URL, prefix=prefix)
    assert await crashed.acquire(USER, new_id(), quota, T0) is None
    await crashed.aclose()  # never settles

    assert await survivor.acquire(USER, new_id(), quota, T0 + 1) is not None
    assert await survivor.acquire(USER, new_id(), quota, T0 + 91) is None
    await survivor.aclose()


async def test_redis_lease_is_renewed_while_the_request_runs(prefix: str, redis_client: aioredis.Redis) -> None:
    counters = RedisCounters(REDIS_URL, prefix=prefix, lease_ttl_ms=300)
    await counters.start()
    quota = Quota(max_concurrent_requests=1)
    lease = new_id()
    assert await counters.acquire(USER, lease, quota, time.time()) is None

    await asyncio.sleep(0.7)  # more than twice the lease's lifetime
    assert await counters.acquire(USER, new_id(), quota, time.time()) is not None

    await counters.settle(USER, lease, time.time(), tokens=0, micros=0)
    assert await counters.acquire(USER, new_id(), quota, time.time()) is None
    await counters.aclose()


async def test_two_redis_clients_share_one_limit(prefix: str, redis_client: aioredis.Redis) -> None:
    first, second = RedisCounters(REDIS_URL, prefix=prefix), RedisCounters(REDIS_URL, prefix=prefix)
    quota = Quota(requests_per_minute=3)

    results = [
        await first.acquire(USER, new_id(), quota, T0),
        await second.acquire(USER, new_id(), quota, T0),
        await first.acquire(USER, new_id(), quota, T0),
        await second.acquire(USER, new_id(), quota, T0),
    ]
    await first.aclose()
    await second.aclose()

    assert results[:3] == [None, None, None]
    assert results[3] is not None and results[3].used == 3


async def test_concurrent_admissions_never_exceed_the_limit(prefix: str, redis_client: aioredis.Redis) -> None:
    clients = [RedisCounters(REDIS_URL, prefix=prefix) for _ in range(4)]
    quota = Quota(requests_per_minute=7)

    results = await asyncio.gather(*(clients[i % 4].acquire(USER, new_id(), quota, T0) for i in range(40)))
    for client in clients:
        await client.aclose()

    assert sum(result is None for result in results) == 7


async def test_unreachable_redis_is_reported_fast_and_not_retried_during_cooldown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counters = RedisCounters("redis://127.0.0.1:1/0", prefix="unused", timeout=0.2, cooldown=30)
    await counters.start()  # logs, does not raise

    started = time.monotonic()
    with pytest.raises(CountersUnavailable):
        await counters.acquire(USER, new_id(), Quota(requests_per_minute=1), T0)
    with pytest.raises(CountersUnavailable, match="did not answer a moment ago"):
        await counters.acquire(USER, new_id(), Quota(requests_per_minute=1), T0)
    await counters.aclose()

    assert time.monotonic() - started < 1.0
    assert "Redis at 127.0.0.1:1 failed" in caplog.text
