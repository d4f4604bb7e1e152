"""Budgets as Claude Code shows them, through a real gateway under uvicorn: the `anthropic-ratelimit-unified-*`
headers, the 429 `billing_error` at the cap, `GET /api/oauth/usage` and the `budget_threshold_crossed` log event.
The shapes are those of the gateway protocol the Claude Code binary serves at `GET /protocol`."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import Stack
from tests.gateway.policy.test_enforcement import ADA, MALLORY, SONNET, error_of, policy_stack, send
from tests.support.anthropic_sse import SSE_HEADERS, stream_events
from tests.support.servers import Reply

__all__ = ["policy_stack"]  # the fixture, shared with the policy tests

UNIFIED = "anthropic-ratelimit-unified-"
PolicyStack = Callable[..., AbstractContextManager[Stack]]


def costly(seen: Any) -> Reply:
    """About $0.30 at Sonnet 4.5 prices (100k input tokens), with the upstream's own rate-limit headers."""
    headers = [
        *SSE_HEADERS,
        ("anthropic-ratelimit-requests-limit", "4000"),
        ("anthropic-ratelimit-tokens-remaining", "123456"),
    ]
    return Reply(200, headers, stream_events(["Hel", "lo"], model=SONNET, input_tokens=100_000))


def unified(response: httpx.Response) -> dict[str, str]:
    return {name.removeprefix(UNIFIED): value for name, value in response.headers.items() if name.startswith(UNIFIED)}


def next_midnight() -> int:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return int((today + timedelta(days=1)).timestamp())


def spent(stack: Stack, count: int) -> float:
    return sum(row["cost_usd"] for row in stack.rows(count)[:count] if row["outcome"] == "ok")


def test_budget_headers_warn_past_75_and_95_percent_then_billing_error_at_the_cap(policy_stack: PolicyStack) -> None:
    with policy_stack({"daily_budget_usd": 0.95, "monthly_budget_usd": 100}) as stack:
        stack.upstream.reply = costly
        seen: list[dict[str, str]] = []
        for count in range(4):
            response = send(stack)
            assert response.status_code == 200
            seen.append(unified(response))
            # The upstream's own limits are the organisation's, not this person's: never shown to them.
            assert not any(
                name.startswith("anthropic-ratelimit-") and not name.startswith(UNIFIED) for name in response.headers
            )
            stack.rows(count + 1)

        reset = str(next_midnight())
        utilization = [min(round(spent(stack, n) / 0.95, 2), 0.99) for n in range(4)]
        assert [h["overage-utilization"] for h in seen] == [f"{u:g}" for u in utilization]
        assert utilization[2] < 0.75 < utilization[3]
        assert [h["status"] for h in seen] == ["allowed"] * 3 + ["allowed_warning"]
        raw = spent(stack, 3) / 0.95  # about 0.9505: past 0.95 (the notice's second threshold) by a hair
        assert [h.get("overage-surpassed-threshold") for h in seen] == [None] * 3 + ["0.95" if raw > 0.95 else "0.75"]
        assert all(h["representative-claim"] == "overage" and h["overage-status"] == h["status"] for h in seen)
        # The fullest cap is described: the daily one once anything is spent (at 0 % each, either).
        assert all(h["reset"] == h["overage-reset"] == reset for h in seen[1:])

        refused = send(stack)
        assert refused.status_code == 429
        error = error_of(refused)
        assert error["type"] == "billing_error"
        assert error["message"].startswith(f"Daily budget of $0.95 used up for {ADA} (rule group:eng@example.com): $")
        assert "to raise it, ask your Claude Code administrator" in error["message"]
        assert unified(refused) == {
            "status": "rejected",
            "reset": reset,
            "overage-reset": reset,
            "overage-utilization": "1",
            "overage-surpassed-threshold": "1",
            "overage-period": "daily",
            "overage-disabled-reason": "org_spend_cap_reached",
        }  # no representative-claim nor overage-status: Claude Code then prints the message as it is
        assert refused.headers["x-should-retry"] == "false"
        assert abs(int(refused.headers["retry-after"]) - (next_midnight() - time.time())) <= 5
        assert len(stack.upstream.requests) == 4  # refused before proxying
        assert stack.rows(5)[-1]["outcome"] == "rate_limited"


def test_usage_endpoint_gives_the_caps_in_cents_and_percent(policy_stack: PolicyStack) -> None:
    with policy_stack({"daily_budget_usd": 0.95, "monthly_budget_usd": 100}) as stack:
        stack.upstream.reply = costly
        assert send(stack).status_code == 200
        stack.rows(1)
        cost = spent(stack, 1)

        response = httpx.get(stack.url + "/api/oauth/usage", headers=stack.headers(ADA), timeout=10)

        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert body["extra_usage"] == {
            "is_enabled": True,
            "monthly_limit": 95,
            "used_credits": math.floor(cost * 100),
            "utilization": round(cost / 0.95 * 100),
            "currency": "USD",
        }
        daily, monthly = body["limits"]
        assert (daily["kind"], daily["group"], daily["is_active"]) == ("spend", "daily", True)
        assert daily["percent"] == round(cost / 0.95 * 100)
        assert daily["resets_at"] == datetime.fromtimestamp(next_midnight(), UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        assert (monthly["group"], monthly["is_active"], monthly["percent"]) == ("monthly", False, 0)
        assert {daily["severity"], monthly["severity"]} == {"normal"}
        assert stack.rows(2)[-1]["path"] == "/api/oauth/usage"


def test_person_without_a_budget_gets_no_budget_headers_and_no_limits(policy_stack: PolicyStack) -> None:
    with policy_stack({"daily_budget_usd": 5}, default={"requests_per_minute": 100}) as stack:
        stack.upstream.reply = costly

        response = send(stack, MALLORY)
        usage = httpx.get(stack.url + "/api/oauth/usage", headers=stack.headers(MALLORY), timeout=10)

        assert response.status_code == 200
        assert unified(response) == {}
        assert response.headers["anthropic-ratelimit-requests-limit"] == "4000"  # passed through unchanged
        assert usage.json() == {"limits": []}


def test_each_threshold_crossing_is_logged_once(policy_stack: PolicyStack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.budget")
    with policy_stack({"daily_budget_usd": 0.95}) as stack:
        stack.upstream.reply = costly
        for count in range(1, 5):
            assert send(stack).status_code == 200
            stack.rows(count)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
            r.message == "budget_threshold_crossed" and r.json_fields["threshold"] == 1.0
            for r in caplog.records
            if hasattr(r, "json_fields")
        ):
            time.sleep(0.05)
        total = spent(stack, 4)

    events = [r.json_fields for r in caplog.records if r.message == "budget_threshold_crossed"]
    # Spend after each request: about 32 %, 63 %, 95 %, 127 % of the budget.
    assert [e["threshold"] for e in events] == [0.7, 0.9, 1.0]  # one per admins' alert
    first = events[0]
    assert first["user"] == ADA and first["groups"] == ["eng@example.com"] and first["period"] == "daily"
    assert first["budget_usd"] == 0.95
    assert first["resets_at"] == datetime.fromtimestamp(next_midnight(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert events[-1]["spent_usd"] == pytest.approx(total, abs=1e-6)
