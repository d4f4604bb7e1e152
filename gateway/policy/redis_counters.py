"""Counters in Redis (Memorystore in production), shared by every instance: one Lua script per admission."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.policy.counters import (
    NO_RESERVE,
    WINDOW,
    CountersUnavailable,
    Exceeded,
    Quota,
    Reserve,
    Snapshot,
    day_ends,
    day_of,
    month_ends,
    month_of,
)

logger = logging.getLogger("gateway.policy.counters")

T = TypeVar("T")

WINDOW_MS = int(WINDOW * 1000)
# A request's concurrency slot lives this long unless renewed; the instance holding it renews it every third of
# that, so a slot held by an instance that died frees itself within this time.
LEASE_TTL_MS = 90_000
# How long a cancelled admission's mark lives: longer than any admission script can sit in a socket buffer or a
# frozen server before it runs (it does nothing once it finds the mark).
CANCELLED_TTL_MS = 600_000
# Admissions given up on and not yet cancelled in Redis; beyond this the oldest are forgotten (their leases expire).
MAX_ABANDONED = 10_000
DAY_TTL = 2 * 86_400 + 3_600
MONTH_TTL = 40 * 86_400

# KEYS: 1 admissions log, 2 tokens log, 3 spend today, 4 spend this month, 5 in-flight leases, 6 this request's
#       cancellation mark, 7 what requests in flight hold (hash: request id -> "tokens:micros").
# ARGV: 1 now (ms), 2 request id, 3 rpm, 4 tpm, 5 daily budget, 6 monthly budget (micro-dollars), 7 max in flight,
#       8 lease ttl (ms), 9 tokens to hold, 10 micro-dollars to hold, 11 take a lease (1) or not (0).
#       A limit of -1 is no limit.
# Returns {} when admitted, else {limit, amount used, ms when it frees up or -1, amount held by others}. Checks
# first, writes after: a refused request changes nothing, and neither does one the gateway cancelled before the
# script got to run. What live leases hold counts as used; an expired lease's hold is dropped with it.
ACQUIRE = """
if redis.call('EXISTS', KEYS[6]) == 1 then return {'cancelled', 0, -1, 0} end
local now = tonumber(ARGV[1])
local since = now - 60000
local rpm, tpm = tonumber(ARGV[3]), tonumber(ARGV[4])
local day, month, inflight = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local function tokens_of(member) return tonumber(string.match(member, ':(%d+)$')) or 0 end

local expired = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now)
if #expired > 0 then
  redis.call('HDEL', KEYS[7], unpack(expired))
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
end
local held_tokens, held_micros = 0, 0
for _, value in ipairs(redis.call('HVALS', KEYS[7])) do
  local tokens, micros = string.match(value, '^(%d+):(%d+)$')
  held_tokens = held_tokens + (tonumber(tokens) or 0)
  held_micros = held_micros + (tonumber(micros) or 0)
end

if month >= 0 then
  local spent = tonumber(redis.call('GET', KEYS[4]) or '0')
  if spent + held_micros >= month then return {'monthly_budget_usd', spent, -1, held_micros} end
end
if day >= 0 then
  local spent = tonumber(redis.call('GET', KEYS[3]) or '0')
  if spent + held_micros >= day then return {'daily_budget_usd', spent, -1, held_micros} end
end
if tpm >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', since)
  local entries = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
  local total = 0
  for i = 1, #entries, 2 do total = total + tokens_of(entries[i]) end
  if total + held_tokens >= tpm then
    local left, free_at = total + held_tokens, -1
    for i = 1, #entries, 2 do
      left = left - tokens_of(entries[i])
      if left < tpm then free_at = tonumber(entries[i + 1]) + 60000; break end
    end
    return {'tokens_per_minute', total, free_at, held_tokens}
  end
end
if rpm >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', since)
  local count = redis.call('ZCARD', KEYS[1])
  if count >= rpm then
    local free_at = -1
    if rpm > 0 then
      local entry = redis.call('ZRANGE', KEYS[1], count - rpm, count - rpm, 'WITHSCORES')
      free_at = tonumber(entry[2]) + 60000
    end
    return {'requests_per_minute', count, free_at, 0}
  end
end
if inflight >= 0 then
  local count = redis.call('ZCARD', KEYS[5])
  if count >= inflight then return {'max_concurrent_requests', count, -1, 0} end
end
if rpm >= 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[2])
  redis.call('PEXPIRE', KEYS[1], 61000)
end
if ARGV[11] == '1' then
  redis.call('ZADD', KEYS[5], now + tonumber(ARGV[8]), ARGV[2])
  redis.call('PEXPIRE', KEYS[5], tonumber(ARGV[8]))
  if tonumber(ARGV[9]) > 0 or tonumber(ARGV[10]) > 0 then
    redis.call('HSET', KEYS[7], ARGV[2], ARGV[9] .. ':' .. ARGV[10])
    redis.call('PEXPIRE', KEYS[7], tonumber(ARGV[8]))
  end
end
return {}
"""


class RedisCounters:
    """Counters every instance shares. Each key carries a TTL, so nothing outlives its use.

    Time is each instance's clock (Cloud Run instances are NTP-synchronised to well under the 60 s windows).

    No request waits on Redis for more than `timeout` in all (connecting, the retry of a dropped connection and the
    command together). The first call that fails opens a circuit: calls already waiting give up at once, and none
    is tried for `cooldown` seconds. An admission given up on may still run when Redis comes back, so it is
    cancelled there (`_cancel_abandoned`) before anything else is asked of Redis: it never holds a slot."""

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "claude-gateway",
        timeout: float = 0.5,
        cooldown: float = 5.0,
        lease_ttl_ms: int = LEASE_TTL_MS,
    ) -> None:
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # One immediate retry covers a pooled connection the server closed; it shares the call's one timeout.
            retry=Retry(NoBackoff(), 1),
            health_check_interval=30,
        )
        self._acquire = self._redis.register_script(ACQUIRE)
        self._prefix = prefix
        self._timeout = timeout
        self._cooldown = cooldown
        self._lease_ttl_ms = lease_ttl_ms
        self._down_until = 0.0
        self._waiting: set[asyncio.Timeout] = set()  # the deadlines of calls in progress, cut short when one fails
        self._held: dict[str, str] = {}  # request id -> user, for renewing concurrency leases
        # Request id -> (user, whether the admission itself is undone or only its lease), oldest first.
        self._abandoned: dict[str, tuple[str, bool]] = {}
        self._renewer: asyncio.Task[None] | None = None
        pool_kwargs = self._redis.connection_pool.connection_kwargs
        self.where = f"{pool_kwargs.get('host', pool_kwargs.get('path', '?'))}:{pool_kwargs.get('port', '')}"

    async def start(self) -> None:
        self._renewer = asyncio.create_task(self._upkeep(), name="redis-lease-upkeep")
        try:
            await self._call(self._redis.ping)
            logger.info("policy counters: Redis at %s answers", self.where)
        except CountersUnavailable:
            pass  # logged by _call; the gateway starts anyway and keeps trying

    def _keys(self, user: str, now: float) -> list[str]:
        """The keys for one person, in the script's KEYS order (budget keys for the periods `now` is in)."""
        # The braces make one hash slot per person, so the script's keys stay together on a Redis cluster.
        base = f"{self._prefix}:{{{user}}}"
        return [
            f"{base}:req",
            f"{base}:tok",
            f"{base}:usd:{day_of(now)}",
            f"{base}:usd:{month_of(now)}",
            f"{base}:inflight",
            f"{base}:held",
        ]

    def _cancel_key(self, user: str, request_id: str) -> str:
        return f"{self._prefix}:{{{user}}}:cancelled:{request_id}"

    async def acquire(
        self, user: str, request_id: str, quota: Quota, now: float, reserve: Reserve = NO_RESERVE
    ) -> Exceeded | None:
        # A lease (renewed while the request runs, given back when it settles) carries the concurrency slot and
        # what the request holds against the token and budget limits.
        holds = _holds(quota, reserve)
        leased = quota.max_concurrent_requests is not None or holds != NO_RESERVE
        args: list[int | str] = [
            int(now * 1000),
            request_id,
            _limit(quota.requests_per_minute),
            _limit(quota.tokens_per_minute),
            _limit(quota.daily_budget_micros),
            _limit(quota.monthly_budget_micros),
            _limit(quota.max_concurrent_requests),
            self._lease_ttl_ms,
            holds.tokens,
            holds.micros,
            1 if leased else 0,
        ]
        *person, held = self._keys(user, now)
        keys = [*person, self._cancel_key(user, request_id), held]

        async def admit() -> list[Any]:
            if self._abandoned:
                await self._cancel_abandoned()
            return list(await self._acquire(keys=keys, args=args))

        result = await self._call(admit, abandoned=(user, request_id, True))
        if not result:
            if leased:
                self._held[request_id] = user
            return None
        limit = result[0].decode() if isinstance(result[0], bytes) else str(result[0])
        if limit == "cancelled":  # only an id the gateway already gave up on could get here
            raise CountersUnavailable(f"admission {request_id} was cancelled")
        used, free_at_ms, held_by_others = int(result[1]), int(result[2]), int(result[3])
        retry_at: float | None = free_at_ms / 1000 if free_at_ms >= 0 else None
        if limit == "daily_budget_usd":
            retry_at = day_ends(now).timestamp()
        elif limit == "monthly_budget_usd":
            retry_at = month_ends(now).timestamp()
        return Exceeded(limit, used, retry_at, held_by_others)

    async def settle(self, user: str, request_id: str, now: float, *, tokens: int, micros: int) -> None:
        # Forget the lease first: if Redis is away it is released later (or expires), and is never renewed again.
        held = self._held.pop(request_id, None) is not None
        if not (held or tokens > 0 or micros > 0):
            return
        requests_log, tokens_log, day, month, inflight, held_key = self._keys(user, now)

        async def write() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                if tokens > 0:
                    pipe.zadd(tokens_log, {f"{request_id}:{tokens}": int(now * 1000)})
                    pipe.pexpire(tokens_log, WINDOW_MS + 1000)
                if micros > 0:
                    pipe.incrby(day, micros)
                    pipe.expire(day, DAY_TTL)
                    pipe.incrby(month, micros)
                    pipe.expire(month, MONTH_TTL)
                if held:
                    pipe.zrem(inflight, request_id)
                    pipe.hdel(held_key, request_id)
                await pipe.execute()

        try:
            await self._call(write)
        except BaseException:
            # Sent or not (the circuit may be open), the lease must not outlive the request: cancel it later.
            if held:
                self._note_abandoned((user, request_id, False))
            raise

    async def snapshot(self, user: str, now: float) -> Snapshot:
        requests_log, tokens_log, day, month, inflight, _ = self._keys(user, now)
        since = int(now * 1000) - WINDOW_MS

        async def read() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zcount(requests_log, f"({since}", "+inf")
                pipe.zrangebyscore(tokens_log, f"({since}", "+inf")
                pipe.get(day)
                pipe.get(month)
                pipe.zcount(inflight, f"({int(now * 1000)}", "+inf")
                return list(await pipe.execute())

        requests, token_entries, today, this_month, in_flight = await self._call(read)
        return Snapshot(
            requests_last_minute=int(requests),
            tokens_last_minute=sum(int(entry.rsplit(b":", 1)[1]) for entry in token_entries),
            spent_today_micros=int(today or 0),
            spent_this_month_micros=int(this_month or 0),
            in_flight=int(in_flight),
        )

    @property
    def abandoned(self) -> int:
        """Admissions and leases given up on that are not yet cancelled in Redis."""
        return len(self._abandoned)

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        await self._redis.aclose()

    async def _call(
        self, operation: Callable[[], Awaitable[T]], *, abandoned: tuple[str, str, bool] | None = None
    ) -> T:
        """Run one operation within the one timeout, unless the circuit is open. `abandoned` names the admission
        or lease to cancel later if the operation was sent but its answer never came."""
        if time.monotonic() < self._down_until:
            raise CountersUnavailable(f"Redis at {self.where} did not answer a moment ago")
        try:
            async with asyncio.timeout(self._timeout) as deadline:
                self._waiting.add(deadline)
                try:
                    return await operation()
                finally:
                    self._waiting.discard(deadline)
        except (RedisError, OSError, TimeoutError) as exc:
            self._note_abandoned(abandoned)
            reason = f"{type(exc).__name__}: {str(exc) or f'no answer within {self._timeout:g} s'}"
            self._trip(reason)
            raise CountersUnavailable(f"Redis at {self.where}: {reason}") from exc
        except BaseException:  # cancelled with the request: its command may still run
            self._note_abandoned(abandoned)
            raise

    def _trip(self, reason: str) -> None:
        """Open the circuit, and end the wait of every call in progress now rather than at its own timeout."""
        now = time.monotonic()
        was_closed = now >= self._down_until
        self._down_until = max(self._down_until, now + self._cooldown)
        loop_now = asyncio.get_running_loop().time()
        for deadline in list(self._waiting):
            with contextlib.suppress(RuntimeError):  # already expiring on its own
                deadline.reschedule(loop_now)
        if was_closed:
            logger.error(
                "policy counters: Redis at %s failed (%s); not trying again for %g s",
                self.where,
                reason,
                self._cooldown,
            )

    def _note_abandoned(self, abandoned: tuple[str, str, bool] | None) -> None:
        if abandoned is None:
            return
        user, request_id, admission = abandoned
        self._held.pop(request_id, None)
        self._abandoned[request_id] = (user, admission)
        if len(self._abandoned) > MAX_ABANDONED:
            forgotten = next(iter(self._abandoned))
            del self._abandoned[forgotten]
            logger.warning("policy counters: too many abandoned admissions; %s is left to expire", forgotten)

    async def _cancel_abandoned(self) -> None:
        """Cancel in Redis what the gateway gave up on: the mark first, so a script still to come does nothing,
        then the lease and admission a script that already ran took. Either order of the two is safe."""
        batch = list(self._abandoned.items())
        async with self._redis.pipeline(transaction=False) as pipe:
            for request_id, (user, admission) in batch:
                requests_log, _, _, _, inflight, held = self._keys(user, 0)  # the spend keys are not needed
                pipe.set(self._cancel_key(user, request_id), b"1", px=CANCELLED_TTL_MS)
                pipe.zrem(inflight, request_id)
                pipe.hdel(held, request_id)
                if admission:
                    pipe.zrem(requests_log, request_id)
            await pipe.execute()
        for request_id, _ in batch:
            self._abandoned.pop(request_id, None)
        logger.info("policy counters: cancelled %d abandoned admission(s) in Redis", len(batch))

    async def _upkeep(self) -> None:
        """Renew the leases this instance holds, and cancel abandoned admissions once Redis answers again."""
        renew_every = self._lease_ttl_ms / 3000
        tick = min(renew_every, max(self._cooldown, 0.05))
        renewed_at = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            with contextlib.suppress(CountersUnavailable):  # logged; leases expire on their own if Redis stays away
                if self._abandoned:
                    await self._call(self._cancel_abandoned)
                if self._held and time.monotonic() - renewed_at >= renew_every - tick / 2:
                    renewed_at = time.monotonic()
                    await self._call(functools.partial(self._renew, list(self._held.items())))

    async def _renew(self, held: list[tuple[str, str]]) -> None:
        expires = int(time.time() * 1000) + self._lease_ttl_ms
        async with self._redis.pipeline(transaction=False) as pipe:
            for request_id, user in held:
                keys = self._keys(user, time.time())
                pipe.zadd(keys[4], {request_id: expires}, xx=True)
                pipe.pexpire(keys[4], self._lease_ttl_ms)
                pipe.pexpire(keys[5], self._lease_ttl_ms)
            await pipe.execute()


def _limit(value: int | None) -> int:
    return -1 if value is None else value


def _holds(quota: Quota, reserve: Reserve) -> Reserve:
    """The part of a reservation some limit looks at: tokens under a token limit, dollars under a budget."""
    budgeted = quota.daily_budget_micros is not None or quota.monthly_budget_micros is not None
    return Reserve(reserve.tokens if quota.tokens_per_minute is not None else 0, reserve.micros if budgeted else 0)
