"""`claude-shim usage`: the person's own spend and what is left of their budgets, from the gateway's
`GET /api/oauth/usage` (the endpoint Claude Code's `/usage` reads), asked with the same ID token the shim forwards
with, so the gateway answers for the person IAP verified and for no one else."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from local_shim.auth import IdToken, build_provider
from local_shim.config import ShimSettings
from local_shim.errors import ShimError

USAGE_PATH = "/api/oauth/usage"


@dataclass(frozen=True)
class Budget:
    """One of the person's dollar budgets, as the gateway reports it."""

    period: str
    percent: int
    resets_at: datetime
    severity: str
    active: bool
    limit_cents: int | None = None
    """Dollars only for the active budget: the protocol's `extra_usage` describes that one."""
    used_cents: int | None = None


@dataclass(frozen=True)
class Usage:
    email: str | None
    gateway: str
    budgets: list[Budget]


async def fetch_usage(settings: ShimSettings, *, http: httpx.AsyncClient | None = None) -> Usage:
    """The signed-in person's budgets, or ShimError with one readable line."""
    url = settings.require_gateway() + USAGE_PATH
    client = http or httpx.AsyncClient(timeout=httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout))
    try:
        async with build_provider(settings, http=client) as provider:
            token = await provider.get()
            response = await _get(client, url, settings, token)
            if response.status_code == 401 and not _gateway_error(response):
                token = await provider.get(rejected=token.value)  # IAP may hold an older token to be stale
                response = await _get(client, url, settings, token)
    finally:
        if http is None:
            await client.aclose()
    return Usage(token.email, settings.require_gateway(), _budgets(_checked(response, token)))


async def _get(client: httpx.AsyncClient, url: str, settings: ShimSettings, token: IdToken) -> httpx.Response:
    bearer = f"Bearer {token.value}"
    headers = {"accept": "application/json"}
    if settings.token_header in {"authorization", "both"}:
        headers["authorization"] = bearer
    if settings.token_header in {"proxy-authorization", "both"}:
        headers["proxy-authorization"] = bearer
    try:
        return await client.get(url, headers=headers)
    except httpx.HTTPError as error:
        raise ShimError(
            f"Cannot reach the gateway at {url} ({type(error).__name__}): check your network or VPN, and the URL "
            "with `claude-shim status`."
        ) from None


def _checked(response: httpx.Response, token: IdToken) -> dict[str, Any]:
    who = token.email or "your account"
    if response.status_code == 200:
        try:
            body = json.loads(response.content)
        except ValueError:
            body = None
        if isinstance(body, dict):
            return body
        raise ShimError(f"The gateway's usage answer is not JSON (HTTP 200, {len(response.content)} bytes).")
    message = _gateway_error(response)
    if message:
        raise ShimError(f"The gateway refused the usage request (HTTP {response.status_code}): {message}")
    if response.status_code == 401:
        raise ShimError(f"IAP rejected the ID token for {who}: run `claude-shim doctor`.")
    if response.status_code == 403:
        raise ShimError(f"IAP denied {who} access to the gateway: ask your admin for roles/iap.httpsResourceAccessor.")
    if response.status_code == 404:
        raise ShimError(f"The gateway has no {USAGE_PATH}: it may be older than this claude-shim.")
    raise ShimError(f"The gateway answered HTTP {response.status_code} to the usage request.")


def _gateway_error(response: httpx.Response) -> str | None:
    """The message of the gateway's own Anthropic-shaped error, or None (IAP's refusals are plain text)."""
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    if isinstance(body, dict) and body.get("type") == "error" and isinstance(body.get("error"), dict):
        return str(body["error"].get("message") or "no message")[:500]
    return None


def _budgets(body: dict[str, Any]) -> list[Budget]:
    extra = body.get("extra_usage")
    if not isinstance(extra, dict):
        extra = {}
    budgets = []
    for row in body.get("limits") or []:
        if not isinstance(row, dict) or row.get("kind") != "spend":
            continue
        try:
            resets_at = datetime.fromisoformat(str(row["resets_at"]).replace("Z", "+00:00"))
            percent = int(row["percent"])
        except (KeyError, TypeError, ValueError):
            raise ShimError(f"The gateway's usage answer has a budget row it cannot read: {str(row)[:200]}") from None
        active = row.get("is_active") is True
        budgets.append(
            Budget(
                period=str(row.get("group") or "?"),
                percent=percent,
                resets_at=resets_at,
                severity=str(row.get("severity") or ""),
                active=active,
                limit_cents=_whole(extra.get("monthly_limit")) if active else None,
                used_cents=_whole(extra.get("used_credits")) if active else None,
            )
        )
    return budgets


def _whole(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def table(usage: Usage, now: float | None = None) -> list[str]:
    """The lines `claude-shim usage` prints."""
    now = time.time() if now is None else now
    lines = [f"Usage for {usage.email or 'this account'} at {usage.gateway}"]
    if not usage.budgets:
        lines.append("No dollar budget applies to you: nothing to run out of.")
        return lines
    rows = [("budget", "used", "spent", "limit", "left", "resets")]
    for budget in usage.budgets:
        limit, used = budget.limit_cents, budget.used_cents
        left = None if limit is None or used is None else max(limit - used, 0)
        wait = max(0, math.ceil(budget.resets_at.timestamp() - now))
        resets = f"{budget.resets_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC (in {_duration(wait)})"
        rows.append((budget.period, f"{budget.percent}%", _dollars(used), _dollars(limit), _dollars(left), resets))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for row in rows:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    spent = [budget for budget in usage.budgets if budget.percent >= 100]
    if spent:
        lines.append(f"The {spent[0].period} budget is used up: requests are refused until it resets.")
    return lines


def _dollars(cents: int | None) -> str:
    return "-" if cents is None else f"${cents / 100:,.2f}"


def _duration(seconds: int) -> str:
    """`9 h 3 min`, `2 d 4 h`, `12 min`: as the gateway's billing message writes it."""
    hours, minutes = divmod(math.ceil(seconds / 60), 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{max(minutes, 1)} min"
