"""The interface between the proxy and access policy, and the allow-all policy used without a policy file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from gateway.capture.levels import CaptureLevel
from gateway.errors import GatewayError
from gateway.identity import Principal
from gateway.metering import Usage


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What policy may look at before the upstream is called."""

    principal: Principal
    path: str
    model: str | None
    max_tokens: int | None
    stream: bool
    reserve_tokens: int = 0
    """The most tokens the request may use (an input estimate plus max_tokens): held against the person's limits
    while it runs, so requests in flight together cannot overshoot them."""
    reserve_micros: int = 0
    """The most the request may cost, in micro-dollars, held the same way against budgets."""


@dataclass(slots=True)
class Admission:
    """A request let through: the groups and rule that applied, carried to the audit row and to `settle`."""

    groups: list[str] = field(default_factory=list)
    rule: str | None = None
    lease: str | None = None
    """The request's id in the shared counters: its concurrency slot, and the key `settle` accounts under."""
    counted: bool = False
    """Whether `settle` adds the request's tokens and cost to the user's counters and gives back its slot."""
    capture: CaptureLevel = CaptureLevel.NONE
    """Prompt capture level for the person."""
    limits_checked: bool = True
    """False when rates, budgets and concurrency could not be checked (the counters did not answer, fail-open);
    `rule` then ends in `limits-unchecked`, so the audit row says so."""


class PolicyRefusal(GatewayError):
    """A refusal by policy (403 `denied`, 429 `rate_limited`) that still names the groups and rule that applied."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        outcome: str,
        groups: list[str] | None = None,
        rule: str | None = None,
        headers: dict[str, str] | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(status, message, outcome=outcome, headers=headers, error_type=error_type)
        self.groups = groups or []
        self.rule = rule


class AccessPolicy(Protocol):
    def precheck(self, principal: Principal) -> None:
        """Refuse at once (403 `denied`) a person no rule lets in, before the request's body is read."""
        ...

    async def admit(self, facts: RequestFacts) -> Admission:
        """Let the request through, or raise `GatewayError` (403 `denied`, 429 `rate_limited`)."""
        ...

    async def settle(self, facts: RequestFacts, admission: Admission, usage: Usage, cost_usd: float | None) -> None:
        """Account for a finished request (tokens, spend) and release what `admit` held (concurrency)."""
        ...

    async def aclose(self) -> None: ...


class AllowAll:
    """Everyone IAP lets through may use everything: the behaviour without `GATEWAY_POLICY_FILE`."""

    def precheck(self, principal: Principal) -> None:
        return None

    async def admit(self, facts: RequestFacts) -> Admission:
        return Admission()

    async def settle(self, facts: RequestFacts, admission: Admission, usage: Usage, cost_usd: float | None) -> None:
        return None

    async def aclose(self) -> None:
        return None
