"""Budgets as Claude Code shows them: the `anthropic-ratelimit-unified-*` headers, the `billing_error` refusal at the
cap, `GET /api/oauth/usage`, and one log event per threshold crossed, all from the policy's own spend counters.

The shapes follow the gateway protocol Claude Code serves at `GET /protocol` (`claude gateway`): utilization to two
decimals kept below 1 while allowing, a notice threshold of 0.75 or 0.95 once passed, the reset in Unix seconds;
at the cap a 429 without `representative-claim` and `overage-status`, so the client prints our message as it is."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from gateway.policy.model import format_value

# The logger the docs and the log-based metric (terraform/monitoring.tf) name; kept when this module moved here.
logger = logging.getLogger("gateway.budget")

# Notice thresholds Claude Code shows ("You've used 82% of your usage credits"), highest first.
NOTICE_THRESHOLDS = (0.95, 0.75)
# Thresholds announced once per person and budget period in the `budget_threshold_crossed` log event: the admins'
# alerts (terraform/monitoring.tf has one policy for each), so exactly one event per alert.
ALERT_THRESHOLDS = (0.70, 0.90, 1.00)
PREFIX = "anthropic-ratelimit-unified-"
_UPSTREAM_RATELIMIT = b"anthropic-ratelimit-"
DEFAULT_HELP = "ask your Claude Code administrator to raise it"
_MICROS = 1_000_000
# Announced crossings remembered per process; past this many the oldest periods are forgotten.
_MAX_ANNOUNCED = 50_000


@dataclass(frozen=True, slots=True)
class Cap:
    """One dollar budget and a person's standing against it."""

    period: str
    """`daily` or `monthly`, as the protocol's `overage-period` names it."""
    limit_micros: int
    spent_micros: int
    resets_at: datetime
    rule: str = ""

    @property
    def exceeded(self) -> bool:
        return self.spent_micros >= self.limit_micros

    @property
    def utilization(self) -> float:
        return self.spent_micros / self.limit_micros if self.limit_micros > 0 else 1.0

    @property
    def shown_utilization(self) -> float:
        """Two decimals, kept below 1 while the cap still allows requests."""
        rounded = round(self.utilization * 100) / 100
        return rounded if self.exceeded else min(rounded, 0.99)

    @property
    def reset_seconds(self) -> int:
        return int(self.resets_at.timestamp())


def binding(caps: Iterable[Cap]) -> Cap | None:
    """The cap the headers describe: once blocked, the one that resets last; otherwise the fullest."""
    chosen: Cap | None = None
    for cap in caps:
        if chosen is None:
            chosen = cap
        elif chosen.exceeded != cap.exceeded:
            chosen = chosen if chosen.exceeded else cap
        elif chosen.exceeded:
            chosen = chosen if chosen.resets_at > cap.resets_at else cap
        else:
            chosen = chosen if chosen.utilization > cap.utilization else cap
    return chosen


def notice_threshold(cap: Cap) -> float | None:
    if cap.exceeded:
        return 1.0
    return next((t for t in NOTICE_THRESHOLDS if cap.utilization > t), None)


def allowed_headers(cap: Cap) -> list[tuple[bytes, bytes]]:
    """The headers of a successful `POST /v1/messages` for a person with a budget."""
    threshold = notice_threshold(cap)
    status = "allowed_warning" if threshold else "allowed"
    reset = str(cap.reset_seconds)
    headers = {
        "status": status,
        "reset": reset,
        "overage-reset": reset,
        "overage-utilization": _number(cap.shown_utilization),
        "representative-claim": "overage",
        "overage-status": status,
    }
    if threshold:
        headers["overage-surpassed-threshold"] = _number(threshold)
    return [((PREFIX + name).encode(), value.encode()) for name, value in headers.items()]


def billing_refusal(
    cap: Cap, email: str, now: float, *, help_text: str | None = None, groups: Sequence[str] = ()
) -> dict[str, Any]:
    """The 429 `billing_error` at the cap, as keyword arguments for a `GatewayError` (or `PolicyRefusal`)."""
    wait = max(1, math.ceil(cap.resets_at.timestamp() - now))
    reset = str(cap.reset_seconds)
    headers = {
        "retry-after": str(wait),
        "x-should-retry": "false",
        PREFIX + "status": "rejected",
        PREFIX + "reset": reset,
        PREFIX + "overage-reset": reset,
        PREFIX + "overage-utilization": "1",
        PREFIX + "overage-surpassed-threshold": "1",
        PREFIX + "overage-period": cap.period,
        PREFIX + "overage-disabled-reason": "org_spend_cap_reached",
    }
    when = cap.resets_at.strftime("%Y-%m-%d %H:%M UTC")
    budget = format_value("daily_budget_usd", Decimal(cap.limit_micros) / _MICROS)
    spent_when = "today" if cap.period == "daily" else "this month"
    message = (
        f"{cap.period.capitalize()} budget of {budget} used up for {email}"
        f"{f' (rule {cap.rule})' if cap.rule else ''}: {format_usd(cap.spent_micros)} spent {spent_when}. "
        f"It resets at {when} (in {duration(wait)}); to raise it, {help_text or DEFAULT_HELP}."
    )
    return {
        "status": 429,
        "message": message,
        "outcome": "rate_limited",
        "error_type": "billing_error",
        "headers": headers,
    }


def usage_body(caps: Sequence[Cap]) -> dict[str, Any]:
    """`GET /api/oauth/usage`: the cap the headers describe in `extra_usage`, one `limits` row per cap."""
    active = binding(caps)
    body: dict[str, Any] = {}
    if active is not None:
        body["extra_usage"] = {
            "is_enabled": True,
            "monthly_limit": _cents(active.limit_micros),
            "used_credits": math.floor(active.spent_micros / 10_000),
            "utilization": round(active.shown_utilization * 100),
            "currency": "USD",
        }
    body["limits"] = [
        {
            "kind": "spend",
            "group": cap.period,
            "percent": round(cap.shown_utilization * 100),
            "resets_at": cap.resets_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "severity": "critical"
            if cap.exceeded or cap.utilization > 0.95
            else "warning"
            if cap.utilization > 0.75
            else "normal",
            "is_active": cap is active,
        }
        for cap in caps
    ]
    return body


class BudgetHeaders:
    """A request's budget standing, read in the background while the upstream is called, and put on the response
    headers when it starts (the upstream's own `anthropic-ratelimit-*` headers are then removed)."""

    __slots__ = ("_task",)

    # Longest the response start waits for the counters; past it the response goes without budget headers.
    WAIT_SECONDS = 0.25

    def __init__(self, task: asyncio.Task[list[Cap]]) -> None:
        self._task = task
        task.add_done_callback(_retrieve)

    async def apply(self, status: int, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """`headers`, with the budget's on a success; unchanged when the person has no budget or on an error."""
        if status >= 400:
            return headers
        try:
            caps = await asyncio.wait_for(asyncio.shield(self._task), self.WAIT_SECONDS)
        except Exception as exc:  # counters down or slow: the reply matters more than the notice
            logger.warning("budget headers left off: spend counters did not answer (%s)", type(exc).__name__)
            return headers
        cap = binding(caps)
        if cap is None:
            return headers
        kept = [(name, value) for name, value in headers if not name.lower().startswith(_UPSTREAM_RATELIMIT)]
        return kept + allowed_headers(cap)


class ThresholdAnnouncer:
    """Logs `budget_threshold_crossed` once per person, period and threshold when a settlement crosses it.

    A crossing is the spend before this request below `threshold x budget` and the spend after at or above it, so
    every instance sees each crossing once; a process also remembers what it announced."""

    def __init__(self, thresholds: Sequence[float] = ALERT_THRESHOLDS) -> None:
        self.thresholds = tuple(sorted(thresholds))
        self._announced: set[tuple[str, str, str, float]] = set()

    def settled(self, email: str, groups: Sequence[str], caps: Sequence[Cap], micros: int) -> None:
        for cap in caps:
            if cap.limit_micros <= 0:
                continue
            before = cap.spent_micros - micros
            period_id = cap.resets_at.isoformat()
            for threshold in self.thresholds:
                mark = threshold * cap.limit_micros
                key = (email, cap.period, period_id, threshold)
                if not before < mark <= cap.spent_micros or key in self._announced:
                    continue
                if len(self._announced) >= _MAX_ANNOUNCED:
                    self._announced.clear()
                self._announced.add(key)
                logger.warning(
                    "budget_threshold_crossed",
                    extra={
                        "json_fields": {
                            "event": "budget_threshold_crossed",
                            "user": email,
                            "groups": list(groups),
                            "period": cap.period,
                            "threshold": threshold,
                            "spent_usd": round(cap.spent_micros / _MICROS, 6),
                            "budget_usd": round(cap.limit_micros / _MICROS, 6),
                            "resets_at": cap.resets_at.isoformat().replace("+00:00", "Z"),
                            "rule": cap.rule,
                        }
                    },
                )


def duration(seconds: int) -> str:
    """`9 h 3 min`, `2 d 4 h`, `12 min`."""
    hours, minutes = divmod(math.ceil(seconds / 60), 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{max(minutes, 1)} min"


def _retrieve(task: asyncio.Task[list[Cap]]) -> None:
    if not task.cancelled():
        task.exception()  # read, so a failure is not reported as never retrieved; apply() logs it


def _number(value: float) -> str:
    """`0.82`, `0.75`, `1`: as the protocol writes them."""
    return f"{value:.2f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))


def _cents(micros: int) -> int:
    return round(micros / 10_000)


def format_usd(micros: int) -> str:
    """Micro-dollars as people read them: $12.50, or $0.0042 below a dollar."""
    amount = micros / _MICROS
    return f"${amount:,.2f}" if amount >= 1 or amount == 0 else f"${amount:.4f}"
