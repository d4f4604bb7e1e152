"""Enforcement: the policy the proxy asks before each request (`admit`) and tells after it (`settle`)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable
from decimal import Decimal

from gateway.endpoints import Endpoint
from gateway.identity import Principal, fold_case
from gateway.metering import Usage
from gateway.policy.base import Admission, PolicyRefusal, RequestFacts
from gateway.policy.budget import Cap, ThresholdAnnouncer, billing_refusal, format_usd
from gateway.policy.counters import (
    MICROS,
    Counters,
    CountersUnavailable,
    Exceeded,
    Quota,
    Reserve,
    day_ends,
    month_ends,
)
from gateway.policy.groups import GroupResolver
from gateway.policy.model import Decision, Limits, ModelPattern, Policy, decide, format_value

logger = logging.getLogger("gateway.policy")

# Endpoints that name a model in their body; `/v1/models` names none and is only checked for a rule.
MODEL_PATHS = frozenset((Endpoint.MESSAGES, Endpoint.COUNT_TOKENS))
CONCURRENCY_RETRY_AFTER = 2
UNAVAILABLE_RETRY_AFTER = 5
# Added to an admission's `rule` (so to the audit row's `policy_rule`) when it was let through with rates, budgets
# and concurrency unchecked because the counters did not answer (fail-open).
UNCHECKED = "limits-unchecked"
_UNCHECKED_LOG_INTERVAL = 10.0
# Settlements are written in the background; past this many waiting (a slow Redis), new ones are dropped and logged.
_MAX_PENDING_SETTLEMENTS = 10_000


class GroupPolicy:
    """Access by Workspace group: a rule per group (most generous wins), per-user overrides, a default rule.

    Only `/v1/messages` is counted against rates, budgets and concurrency; `count_tokens` and `/v1/models` cost
    nothing upstream, but still need a rule (and `count_tokens` an allowed model)."""

    def __init__(
        self,
        policy: Policy,
        groups: GroupResolver,
        counters: Counters,
        *,
        fail_open: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self.groups = groups
        self.counters = counters
        self.fail_open = fail_open
        self._clock = clock
        self._unchecked = 0
        self._unchecked_logged_at = float("-inf")
        self._settling: set[asyncio.Task[None]] = set()
        self._thresholds = ThresholdAnnouncer()

    async def start(self) -> None:
        await self.groups.start()
        await self.counters.start()

    def decide(self, email: str) -> Decision:
        """The groups, rules and effective limits for a person, as they stand now."""
        return decide(self.policy, email, self.groups.groups_of(fold_case(email)))

    def allowed_models(self, principal: Principal) -> tuple[ModelPattern, ...] | None:
        """The model patterns a person may use (None: any), for the `/v1/models` listing."""
        limits = self.decide(principal.email).limits
        return () if limits is None else limits.models

    def precheck(self, principal: Principal) -> None:
        email = fold_case(principal.email)
        decision = self.decide(email)
        if decision.limits is None:
            raise _no_access(email, list(decision.groups))

    async def admit(self, facts: RequestFacts) -> Admission:
        email = fold_case(facts.principal.email)
        decision = self.decide(email)
        groups, rule = list(decision.groups), decision.rule
        limits = decision.limits
        if limits is None:
            raise _no_access(email, groups)
        if facts.model is not None and facts.path in MODEL_PATHS and not limits.allows_model(facts.model):
            # The gateway protocol's answer to a denied model: 400 invalid_request_error, which Claude Code shows.
            raise PolicyRefusal(
                400, _model_message(facts.model, email, limits), outcome="denied", groups=groups, rule=rule
            )
        if facts.path != Endpoint.MESSAGES:
            return Admission(groups=groups, rule=rule, capture=limits.capture)
        if limits.max_tokens is not None and facts.max_tokens is not None and facts.max_tokens > limits.max_tokens:
            cap = limits.max_tokens
            raise PolicyRefusal(
                403,
                f"max_tokens {facts.max_tokens} is more than the {cap} allowed for {email} "
                f"(rule {limits.source['max_tokens']}). Ask for at most {cap}; in Claude Code, set "
                f"CLAUDE_CODE_MAX_OUTPUT_TOKENS={cap}.",
                outcome="denied",
                groups=groups,
                rule=rule,
            )
        if not limits.counted:
            return Admission(groups=groups, rule=rule, capture=limits.capture)

        lease = uuid.uuid4().hex
        now = self._clock()
        try:
            reserve = Reserve(facts.reserve_tokens, facts.reserve_micros)
            exceeded = await self.counters.acquire(email, lease, _quota(limits), now, reserve)
        except CountersUnavailable as exc:
            if not self.fail_open:
                raise PolicyRefusal(
                    429,
                    "Usage limits cannot be checked right now (the gateway's shared counters are unreachable), so "
                    "requests are refused for safety. Try again shortly; tell your administrator if it lasts.",
                    outcome="rate_limited",
                    groups=groups,
                    rule=rule,
                    headers={"retry-after": str(UNAVAILABLE_RETRY_AFTER)},
                ) from None
            self._note_unchecked(exc)
            return Admission(
                groups=groups,
                rule=f"{rule},{UNCHECKED}" if rule else UNCHECKED,
                lease=lease,
                counted=True,
                capture=limits.capture,
                limits_checked=False,
            )
        if exceeded is not None:
            raise _refusal(exceeded, email, limits, now, groups, rule, self.policy.budget_help)
        return Admission(groups=groups, rule=rule, lease=lease, counted=True, capture=limits.capture)

    async def settle(self, facts: RequestFacts, admission: Admission, usage: Usage, cost_usd: float | None) -> None:
        """Count the request and give back its slot, in the background: the counters never delay a response, nor
        the next request on a kept-alive connection."""
        if not admission.counted or admission.lease is None:
            return
        # Tokens as Anthropic counts them against its own rate limits: cache reads are left out.
        tokens = (usage.input_tokens or 0) + (usage.cache_creation_input_tokens or 0) + (usage.output_tokens or 0)
        micros = max(0, round(cost_usd * MICROS)) if cost_usd is not None else 0
        email = fold_case(facts.principal.email)
        if len(self._settling) >= _MAX_PENDING_SETTLEMENTS:
            logger.error(
                "policy: usage of %s not counted (%d tokens, $%.6f): too many settlements waiting",
                email,
                tokens,
                micros / MICROS,
            )
            return
        task = asyncio.create_task(self._settle(email, admission.lease, tokens, micros), name="policy-settle")
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(self, email: str, lease: str, tokens: int, micros: int) -> None:
        try:
            await self.counters.settle(email, lease, self._clock(), tokens=tokens, micros=micros)
            if micros > 0:
                await self._announce_thresholds(email, micros)
        except CountersUnavailable as exc:
            logger.error("policy: usage of %s not counted (%d tokens, $%.6f): %s", email, tokens, micros / MICROS, exc)
        except Exception:  # a background task: nothing else would see it
            logger.exception("policy: settling the usage of %s failed", email)

    def has_budget(self, email: str) -> bool:
        """Whether a person has a dollar budget (and so gets Claude Code's budget headers)."""
        return _has_budget(self.decide(email).limits)

    async def budget_caps(self, email: str) -> list[Cap]:
        """A person's dollar budgets and their spend against each now ([] without one); for Claude Code's budget
        headers and `/api/oauth/usage`. Raises `CountersUnavailable` when the counters do not answer."""
        limits = self.decide(email).limits
        if limits is None or not _has_budget(limits):
            return []
        now = self._clock()
        usage = await self.counters.snapshot(fold_case(email), now)
        caps: list[Cap] = []
        for name, period, spent, resets in (
            ("daily_budget_usd", "daily", usage.spent_today_micros, day_ends(now)),
            ("monthly_budget_usd", "monthly", usage.spent_this_month_micros, month_ends(now)),
        ):
            amount = getattr(limits, name)
            if amount is not None:
                caps.append(Cap(period, int(amount * MICROS), spent, resets, limits.source.get(name, "")))
        return caps

    async def _announce_thresholds(self, email: str, micros: int) -> None:
        caps = await self.budget_caps(email)
        if caps:
            self._thresholds.settled(email, self.decide(email).groups, caps, micros)

    async def drain(self) -> None:
        """Wait for the settlements already started (each is bounded by the counters' timeout)."""
        while self._settling:
            await asyncio.gather(*list(self._settling), return_exceptions=True)

    async def aclose(self) -> None:
        await self.drain()
        await self.groups.aclose()
        await self.counters.aclose()

    def _note_unchecked(self, exc: CountersUnavailable) -> None:
        self._unchecked += 1
        now = time.monotonic()
        if now - self._unchecked_logged_at >= _UNCHECKED_LOG_INTERVAL:
            logger.error(
                "policy: FAIL-OPEN: %d request(s) let through without checking rate limits, budgets or "
                "concurrency, because the shared counters are unavailable (%s)",
                self._unchecked,
                exc,
            )
            self._unchecked = 0
            self._unchecked_logged_at = now


def _has_budget(limits: Limits | None) -> bool:
    return limits is not None and (limits.daily_budget_usd is not None or limits.monthly_budget_usd is not None)


def _quota(limits: Limits) -> Quota:
    def micros(amount: Decimal | None) -> int | None:
        return None if amount is None else int(amount * MICROS)

    return Quota(
        requests_per_minute=limits.requests_per_minute,
        tokens_per_minute=limits.tokens_per_minute,
        daily_budget_micros=micros(limits.daily_budget_usd),
        monthly_budget_micros=micros(limits.monthly_budget_usd),
        max_concurrent_requests=limits.max_concurrent_requests,
    )


def _model_message(model: str, email: str, limits: Limits) -> str:
    rule = limits.source["models"]
    if not limits.models:
        return f"No models are allowed for {email} (rule {rule})."
    allowed = format_value("models", limits.models)
    return (
        f"Model {model} is not allowed for {email} (rule {rule}). Allowed: {allowed}. "
        "In Claude Code, pick another with /model."
    )


def _no_access(email: str, groups: list[str]) -> PolicyRefusal:
    return PolicyRefusal(
        403,
        f"{email} has no access to Claude through this gateway: none of your groups has a rule in the "
        "access policy, and it has no default rule. Ask your administrator for access.",
        outcome="denied",
        groups=groups,
    )


def _refusal(
    exceeded: Exceeded,
    email: str,
    limits: Limits,
    now: float,
    groups: list[str],
    rule: str | None,
    budget_help: str | None = None,
) -> PolicyRefusal:
    name = exceeded.limit
    limit = getattr(limits, name)
    source = limits.source.get(name, rule or "")
    wait = max(1, math.ceil(exceeded.retry_at - now)) if exceeded.retry_at is not None else None
    headers: dict[str, str] = {}
    if exceeded.held and exceeded.used < limit * (MICROS if name.endswith("_usd") else 1):
        # Under the limit, but the requests still running may use the rest: retry when one has finished.
        if name == "tokens_per_minute":
            amounts = f"{exceeded.used} tokens used in the last minute and up to {exceeded.held} more"
        else:
            amounts = f"{format_usd(exceeded.used)} spent and up to {format_usd(exceeded.held)} more"
        message = (
            f"Your requests still running may use the rest of your {format_value(name, limit)} limit "
            f"({name}, rule {source}): {amounts} held by them. Try again when one finishes."
        )
        headers = {"retry-after": str(CONCURRENCY_RETRY_AFTER)}
    elif name in ("daily_budget_usd", "monthly_budget_usd"):
        # Claude Code's own shape for a spent budget: 429 billing_error, its message shown as it is.
        period, resets = ("daily", day_ends(now)) if name == "daily_budget_usd" else ("monthly", month_ends(now))
        cap = Cap(period, int(limit * MICROS), exceeded.used, resets, source)
        return PolicyRefusal(groups=groups, rule=rule, **billing_refusal(cap, email, now, help_text=budget_help))
    elif name == "max_concurrent_requests":
        message = (
            f"Too many requests at once: at most {limit} at a time for {email} (rule {source}). "
            "Try again when one finishes."
        )
        headers = {"retry-after": str(CONCURRENCY_RETRY_AFTER)}
    else:
        what = "requests" if name == "requests_per_minute" else "tokens (input + output)"
        message = f"Rate limit reached: at most {limit} {what} per minute for {email} (rule {source})."
        if name == "tokens_per_minute":
            message += f" {exceeded.used} used in the last minute."
        if wait is None:  # a limit of zero never frees up
            headers = {"retry-after": "60", "x-should-retry": "false"}
        else:
            message += f" Try again in {wait} s."
            headers = {"retry-after": str(wait)}
    return PolicyRefusal(429, message, outcome="rate_limited", groups=groups, rule=rule, headers=headers)
