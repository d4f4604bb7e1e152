"""The budget shapes on their own: which cap the headers describe, when a threshold counts as passed, numbers as
the protocol writes them (the reference is the gateway Claude Code ships, `claude gateway`)."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.policy.budget import Cap, allowed_headers, billing_refusal, binding, notice_threshold, usage_body

DAY_END = datetime(2026, 12, 2, tzinfo=UTC)
MONTH_END = datetime(2027, 1, 1, tzinfo=UTC)


def cap(period: str, spent: int, limit: int = 1_000_000) -> Cap:
    return Cap(period, limit, spent, DAY_END if period == "daily" else MONTH_END, "group:eng@example.com")


def test_the_fullest_cap_is_described_and_once_blocked_the_one_that_resets_last() -> None:
    assert binding([cap("daily", 500_000), cap("monthly", 600_000)]).period == "monthly"
    assert binding([cap("daily", 800_000), cap("monthly", 600_000)]).period == "daily"
    assert binding([cap("daily", 1_000_000), cap("monthly", 600_000)]).period == "daily"
    assert binding([cap("daily", 1_200_000), cap("monthly", 1_000_000)]).period == "monthly"
    assert binding([]) is None


def test_a_threshold_counts_once_passed_not_when_reached() -> None:
    assert notice_threshold(cap("daily", 750_000)) is None
    assert notice_threshold(cap("daily", 750_001)) == 0.75
    assert notice_threshold(cap("daily", 950_001)) == 0.95
    assert notice_threshold(cap("daily", 1_000_000)) == 1.0


def test_utilization_has_two_decimals_and_stays_below_one_while_allowed() -> None:
    headers = dict(allowed_headers(cap("daily", 996_000)))

    assert headers[b"anthropic-ratelimit-unified-overage-utilization"] == b"0.99"
    assert headers[b"anthropic-ratelimit-unified-overage-surpassed-threshold"] == b"0.95"
    assert headers[b"anthropic-ratelimit-unified-status"] == b"allowed_warning"
    assert headers[b"anthropic-ratelimit-unified-reset"] == str(int(DAY_END.timestamp())).encode()


def test_billing_refusal_names_the_budget_the_reset_and_whom_to_ask() -> None:
    now = DAY_END.timestamp() - 3600 * 2 - 60
    refusal = billing_refusal(cap("daily", 1_234_567), "ada@example.com", now, help_text="ask in #claude-admins")

    assert refusal["status"] == 429 and refusal["error_type"] == "billing_error"
    assert refusal["message"] == (
        "Daily budget of $1.00 used up for ada@example.com (rule group:eng@example.com): $1.23 spent today. "
        "It resets at 2026-12-02 00:00 UTC (in 2 h 1 min); to raise it, ask in #claude-admins."
    )
    assert refusal["headers"]["retry-after"] == "7260"


def test_usage_severity_follows_the_thresholds() -> None:
    body = usage_body([cap("daily", 960_000), cap("monthly", 760_000), cap("monthly", 100_000)])

    assert [row["severity"] for row in body["limits"]] == ["critical", "warning", "normal"]
    assert body["extra_usage"]["utilization"] == 96 and body["extra_usage"]["monthly_limit"] == 100
