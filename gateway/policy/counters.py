"""Usage counters behind the limits, and the in-process backend (right for exactly one instance).

Per person: a log of admission times (requests per minute), a log of metered tokens (tokens per minute), both
over the last 60 seconds exactly; spend per UTC day and month in micro-dollars; the set of requests in flight.
`acquire` checks everything and takes a request slot and a concurrency slot in one step, or nothing."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

WINDOW = 60.0
MICROS = 1_000_000


@dataclass(frozen=True, slots=True)
class Quota:
    """The limits one admission is checked against; None is no limit."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    daily_budget_micros: int | None = None
    monthly_budget_micros: int | None = None
    max_concurrent_requests: int | None = None


@dataclass(frozen=True, slots=True)
class Reserve:
    """What a request may use at most, held while it runs: tokens and micro-dollars."""

    tokens: int = 0
    micros: int = 0


NO_RESERVE = Reserve()


@dataclass(frozen=True, slots=True)
class Exceeded:
    """A limit that refused an admission: its policy name, how much is used, and when it frees up (epoch
    seconds; None when that cannot be known: a concurrency slot, or a limit of zero)."""

    limit: str
    used: int
    retry_at: float | None
    held: int = 0
    """Held by the person's other requests in flight: when `used` alone is under the limit, it is these that fill
    it, and they free up as those requests finish (settling to what they really used)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One person's current usage, for `policy explain`."""

    requests_last_minute: int = 0
    tokens_last_minute: int = 0
    spent_today_micros: int = 0
    spent_this_month_micros: int = 0
    in_flight: int = 0


class CountersUnavailable(Exception):
    """The shared counter store did not answer; the policy's fail mode decides what happens."""


class Counters(Protocol):
    name: str

    async def start(self) -> None: ...

    async def acquire(
        self, user: str, request_id: str, quota: Quota, now: float, reserve: Reserve = NO_RESERVE
    ) -> Exceeded | None:
        """Admit (recording the request, holding a concurrency slot if limited and `reserve` against the token and
        budget limits until it settles) or say which limit refused. What other requests in flight hold counts
        against the limits as if spent; the request's own reservation does not, so one request alone is admitted
        whenever the person is under the limit."""
        ...

    async def settle(self, user: str, request_id: str, now: float, *, tokens: int, micros: int) -> None:
        """Add a finished request's tokens and cost, and give back its concurrency slot."""
        ...

    async def snapshot(self, user: str, now: float) -> Snapshot: ...

    async def aclose(self) -> None: ...


def day_of(now: float) -> str:
    """The UTC day a budget spend belongs to, e.g. `2025-06-01`."""
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")


def month_of(now: float) -> str:
    """The UTC month a budget spend belongs to, e.g. `2025-06`."""
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m")


def day_ends(now: float) -> datetime:
    """When the daily budget starts over: the next midnight UTC."""
    today = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today + timedelta(days=1)


def month_ends(now: float) -> datetime:
    """When the monthly budget starts over: midnight UTC on the first of next month."""
    moment = datetime.fromtimestamp(now, UTC)
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    return datetime(year, month, 1, tzinfo=UTC)


@dataclass(slots=True)
class _Person:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    spend: dict[str, int] = field(default_factory=dict)
    in_flight: set[str] = field(default_factory=set)
    reserved: dict[str, Reserve] = field(default_factory=dict)

    def prune(self, now: float) -> None:
        since = now - WINDOW
        while self.requests and self.requests[0] <= since:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= since:
            self.tokens.popleft()
        current = (day_of(now), month_of(now))
        for period in [period for period in self.spend if period not in current]:
            del self.spend[period]

    @property
    def idle(self) -> bool:
        return not (self.requests or self.tokens or self.spend or self.in_flight or self.reserved)


class InProcessCounters:
    """Counters in this process's memory: exact for one instance; with N instances each allows the full limits."""

    name = "in-process"

    def __init__(self) -> None:
        self._people: dict[str, _Person] = {}
        self._swept_at = time.monotonic()

    async def start(self) -> None:
        return None

    async def acquire(
        self, user: str, request_id: str, quota: Quota, now: float, reserve: Reserve = NO_RESERVE
    ) -> Exceeded | None:
        # No awaits from here to the end: under asyncio the check and the update happen as one step.
        self._sweep()
        person = self._people.setdefault(user, _Person())
        person.prune(now)
        exceeded = _check(person, quota, now)
        if exceeded is not None:
            return exceeded
        if quota.requests_per_minute is not None:
            person.requests.append(now)
        if quota.max_concurrent_requests is not None:
            person.in_flight.add(request_id)
        if reserve != NO_RESERVE:
            person.reserved[request_id] = reserve
        return None

    async def settle(self, user: str, request_id: str, now: float, *, tokens: int, micros: int) -> None:
        person = self._people.setdefault(user, _Person())
        person.in_flight.discard(request_id)
        person.reserved.pop(request_id, None)
        person.prune(now)
        if tokens > 0:
            person.tokens.append((now, tokens))
        if micros > 0:
            for period in (day_of(now), month_of(now)):
                person.spend[period] = person.spend.get(period, 0) + micros

    async def snapshot(self, user: str, now: float) -> Snapshot:
        person = self._people.get(user)
        if person is None:
            return Snapshot()
        person.prune(now)
        return Snapshot(
            requests_last_minute=len(person.requests),
            tokens_last_minute=sum(count for _, count in person.tokens),
            spent_today_micros=person.spend.get(day_of(now), 0),
            spent_this_month_micros=person.spend.get(month_of(now), 0),
            in_flight=len(person.in_flight),
        )

    async def aclose(self) -> None:
        self._people.clear()

    def _sweep(self) -> None:
        """Forget people with nothing counted, now and then, so memory follows the active users."""
        if time.monotonic() - self._swept_at < WINDOW:
            return
        self._swept_at = time.monotonic()
        now = time.time()
        for user in list(self._people):
            person = self._people[user]
            person.prune(now)
            if person.idle:
                del self._people[user]


def _check(person: _Person, quota: Quota, now: float) -> Exceeded | None:
    """The same checks, in the same order, as the Redis script: the slowest to free up first. What the person's
    requests in flight hold counts as used."""
    held_micros = sum(reserve.micros for reserve in person.reserved.values())
    held_tokens = sum(reserve.tokens for reserve in person.reserved.values())
    if quota.monthly_budget_micros is not None:
        spent = person.spend.get(month_of(now), 0)
        if spent + held_micros >= quota.monthly_budget_micros:
            return Exceeded("monthly_budget_usd", spent, month_ends(now).timestamp(), held_micros)
    if quota.daily_budget_micros is not None:
        spent = person.spend.get(day_of(now), 0)
        if spent + held_micros >= quota.daily_budget_micros:
            return Exceeded("daily_budget_usd", spent, day_ends(now).timestamp(), held_micros)
    if quota.tokens_per_minute is not None:
        limit = quota.tokens_per_minute
        total = sum(count for _, count in person.tokens)
        if total + held_tokens >= limit:
            left, free_at = total + held_tokens, None
            for at, count in person.tokens:
                left -= count
                if left < limit:
                    free_at = at + WINDOW
                    break
            return Exceeded("tokens_per_minute", total, free_at, held_tokens)
    if quota.requests_per_minute is not None:
        limit = quota.requests_per_minute
        count = len(person.requests)
        if count >= limit:
            # Below the limit again once the oldest `count - limit + 1` admissions leave the window.
            free_at = person.requests[count - limit] + WINDOW if limit > 0 else None
            return Exceeded("requests_per_minute", count, free_at)
    if quota.max_concurrent_requests is not None:
        count = len(person.in_flight)
        if count >= quota.max_concurrent_requests:
            return Exceeded("max_concurrent_requests", count, None)
    return None
