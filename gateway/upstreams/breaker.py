"""A per-upstream circuit breaker, and the `retry-after` hold an upstream can ask for."""

from __future__ import annotations

import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class CircuitBreaker:
    """Closed, calls pass; after `threshold` failures in a row it opens for `cooldown` seconds (less when the
    failure said when to come back), then lets one trial call through (half-open): success closes it, failure opens
    it again. A threshold of 0 never opens."""

    def __init__(self, threshold: int, cooldown: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._open_for = cooldown
        self._trial = False
        self._held_until = 0.0

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return CLOSED
        if self._trial or self._clock() - self._opened_at >= self._open_for:
            return HALF_OPEN
        return OPEN

    def allow(self) -> bool:
        """Whether a call may go now; in half-open state this takes the one trial slot."""
        state = self.state
        if state == CLOSED:
            return True
        if state == HALF_OPEN and not self._trial:
            self._trial = True
            return True
        return False

    def success(self) -> bool:
        """Note an answer from the upstream; True when this closed an open circuit."""
        was_open = self._opened_at is not None
        self._failures = 0
        self._opened_at = None
        self._trial = False
        return was_open

    def failure(self, retry_after: float | None = None) -> bool:
        """Note a failure; True when this opened the circuit. An upstream that said when to come back
        (`retry_after` seconds) is kept away no longer than that, nor than `cooldown`."""
        self._failures += 1
        if self._trial or (self.threshold and self._failures >= self.threshold and self._opened_at is None):
            self._opened_at = self._clock()
            self._open_for = self.cooldown if retry_after is None else min(self.cooldown, retry_after)
            self._trial = False
            return True
        return False

    def release(self) -> None:
        """A trial call ended without a verdict (the client left, or a 429 or 529): let the next call try."""
        self._trial = False

    def retry_in(self) -> float:
        """Seconds until the circuit lets a trial call through (0 when it would now)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self._open_for - self._clock())

    def hold(self, seconds: float) -> None:
        """Keep calls away for `seconds`, as the upstream asked with `retry-after`."""
        self._held_until = max(self._held_until, self._clock() + seconds)

    def held_for(self) -> float:
        """Seconds left of a `retry-after` hold (0 when none)."""
        return max(0.0, self._held_until - self._clock())


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds from a `retry-after` header: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)
