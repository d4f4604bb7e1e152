"""The access policy as data: rules, model patterns, and how the rules that apply to one person combine."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from gateway.capture.levels import CaptureLevel
from gateway.globs import compile_glob
from gateway.identity import fold_case

LIMIT_FIELDS = (
    "requests_per_minute",
    "tokens_per_minute",
    "daily_budget_usd",
    "monthly_budget_usd",
    "max_concurrent_requests",
    "max_tokens",
)
BUDGET_FIELDS = frozenset(("daily_budget_usd", "monthly_budget_usd"))
RULE_FIELDS = ("models", *LIMIT_FIELDS, "capture", "managed_settings", "description")

# Model ids look like `claude-sonnet-4-5-20250929`, `claude-opus-4-1@20250805` (Vertex AI) or
# `anthropic.claude-...:0` (Bedrock); `*` and `?` are the only wildcards, so a pattern never surprises.
_PATTERN_CHARS = re.compile(r"^[A-Za-z0-9._@:/*?-]+$")


@dataclass(frozen=True, slots=True)
class ModelPattern:
    """A model id pattern: `*` any run of characters, `?` one character, matched whole and case-blind."""

    text: str
    regex: re.Pattern[str]

    @classmethod
    def parse(cls, text: str) -> ModelPattern:
        """The pattern, or ValueError saying what is wrong with it."""
        if not text:
            raise ValueError("a model pattern may not be empty")
        if not _PATTERN_CHARS.match(text):
            bad = next(c for c in text if not _PATTERN_CHARS.match(c))
            raise ValueError(
                f"invalid model pattern {text!r}: {bad!r} is not allowed "
                "(use letters, digits, . _ @ : / - and the wildcards * and ?)"
            )
        return cls(text, compile_glob(text))

    def matches(self, model: str) -> bool:
        return self.regex.fullmatch(model.lower()) is not None

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule of the file: `default`, a group's, or a user's override. None means no limit."""

    name: str
    models: tuple[ModelPattern, ...] | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    daily_budget_usd: Decimal | None = None
    monthly_budget_usd: Decimal | None = None
    max_concurrent_requests: int | None = None
    max_tokens: int | None = None
    capture: CaptureLevel | None = None
    """Prompt capture level; None when the rule does not say, which means `none`."""
    managed_settings: Mapping[str, Any] | None = None
    """Claude Code managed settings for the rule's people (JSON values), served at `GET /managed/settings`."""
    description: str | None = None
    given: frozenset[str] = frozenset()
    """The fields written in the file: a user override changes only these."""


@dataclass(frozen=True, slots=True)
class Policy:
    """A validated policy file."""

    source: str
    default: Rule | None = None
    groups: Mapping[str, Rule] = field(default_factory=dict)
    users: Mapping[str, Rule] = field(default_factory=dict)
    members: Mapping[str, tuple[str, ...]] | None = None
    """Static group membership (group -> members, which may be groups), or None to ask Cloud Identity."""
    budget_help: str | None = None
    """Whom to ask for a bigger budget, ended onto the message Claude Code shows at the cap."""

    def rule_named(self, name: str) -> Rule | None:
        """A rule by its audit name: `default`, `group:EMAIL` or `user:EMAIL`."""
        if name == "default":
            return self.default
        kind, _, email = name.partition(":")
        return (self.groups if kind == "group" else self.users if kind == "user" else {}).get(email)

    @property
    def capturing_rules(self) -> list[Rule]:
        """The rules that ask for prompt capture; with any, the gateway writes the content table."""
        rules = (self.default, *self.groups.values(), *self.users.values())
        return [rule for rule in rules if rule is not None and rule.capture not in (None, CaptureLevel.NONE)]


@dataclass(frozen=True, slots=True)
class Limits:
    """The effective limits for one person, and for each the reason it has that value."""

    models: tuple[ModelPattern, ...] | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    daily_budget_usd: Decimal | None = None
    monthly_budget_usd: Decimal | None = None
    max_concurrent_requests: int | None = None
    max_tokens: int | None = None
    capture: CaptureLevel = CaptureLevel.NONE
    """How much of each `/v1/messages` request and response is kept for audit."""
    source: Mapping[str, str] = field(default_factory=dict)
    """For each field, the rule its value comes from (named in refusals)."""
    why: Mapping[str, str] = field(default_factory=dict)
    """For each field, how its value was chosen (shown by `policy explain`)."""

    def allows_model(self, model: str) -> bool:
        return self.models is None or any(pattern.matches(model) for pattern in self.models)

    @property
    def counted(self) -> bool:
        """Whether any limit needs the shared counters."""
        return any(
            value is not None
            for value in (
                self.requests_per_minute,
                self.tokens_per_minute,
                self.daily_budget_usd,
                self.monthly_budget_usd,
                self.max_concurrent_requests,
            )
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """Which groups and rules apply to a person, and the limits they add up to (None: no rule, denied)."""

    email: str
    groups: tuple[str, ...]
    rules: tuple[str, ...]
    limits: Limits | None

    @property
    def rule(self) -> str | None:
        """The rule names as one audit value, e.g. `user:ada@example.com,group:eng@example.com`."""
        return ",".join(self.rules) or None


def decide(policy: Policy, email: str, groups: frozenset[str] | set[str]) -> Decision:
    """The rules that apply to `email`, who is in `groups`, combined: most generous across groups, then the
    user's override on top; the default rule only for someone in no group with a rule."""
    email = fold_case(email)
    matched = sorted(group for group in groups if group in policy.groups)
    base: list[Rule] = [policy.groups[group] for group in matched]
    if not base and policy.default is not None:
        base = [policy.default]
    override = policy.users.get(email)
    rules = ([override] if override else []) + base
    names = tuple(rule.name for rule in rules)
    if not rules:
        return Decision(email, tuple(matched), names, None)
    limits = _most_generous(base) if base else Limits()
    if override is not None:
        limits = _override(limits, override, has_base=bool(base))
    return Decision(email, tuple(matched), names, limits)


def _most_generous(rules: Sequence[Rule]) -> Limits:
    values: dict[str, Any] = {}
    source: dict[str, str] = {}
    why: dict[str, str] = {}
    for name in LIMIT_FIELDS:
        offered: list[tuple[str, Any]] = [(rule.name, getattr(rule, name)) for rule in rules]
        unlimited = [rule for rule, value in offered if value is None]
        if unlimited:
            values[name], source[name] = None, unlimited[0]
            why[name] = f"{unlimited[0]} sets no limit"
        else:
            source[name], values[name] = max(offered, key=lambda item: item[1])
            why[name] = source[name]
            if len(offered) > 1:
                shown = ", ".join(f"{format_value(name, value)} from {rule}" for rule, value in offered)
                why[name] += f", the most generous of {shown}"
    unrestricted = [rule.name for rule in rules if rule.models is None]
    models: tuple[ModelPattern, ...] | None
    if unrestricted:
        models, source["models"] = None, unrestricted[0]
        why["models"] = f"{unrestricted[0]} allows any model"
    else:
        seen: dict[str, ModelPattern] = {}
        for rule in rules:
            for pattern in rule.models or ():
                seen.setdefault(pattern.text.lower(), pattern)
        models = tuple(seen.values())
        source["models"] = ",".join(rule.name for rule in rules)
        why["models"] = rules[0].name if len(rules) == 1 else "all patterns of " + ", ".join(r.name for r in rules)
    values["capture"], source["capture"], why["capture"] = _most_capture(rules)
    return Limits(models=models, source=source, why=why, **values)


def _most_capture(rules: Sequence[Rule]) -> tuple[CaptureLevel, str, str]:
    """The capture level, its rule and why: the most capture any of the rules asks for (a person in a group whose
    prompts must be kept has them kept, whatever other groups they are in)."""
    offered = [(rule.name, rule.capture or CaptureLevel.NONE) for rule in rules]
    source, level = max(offered, key=lambda item: item[1].rank)
    if not any(rule.capture for rule in rules):
        return level, source, "no rule asks for capture"
    why = source
    if len(offered) > 1:
        why += ", the most capture of " + ", ".join(f"{value} from {rule}" for rule, value in offered)
    return level, source, why


def _override(limits: Limits, override: Rule, *, has_base: bool) -> Limits:
    changes: dict[str, Any] = {}
    source, why = dict(limits.source), dict(limits.why)
    for name in ("models", *LIMIT_FIELDS):
        if name in override.given or not has_base:
            changes[name] = getattr(override, name)
            source[name] = override.name
            why[name] = f"{override.name} override" if name in override.given else f"{override.name} sets no limit"
    if "capture" in override.given or not has_base:
        # An override is a deliberate choice for one person, so it may lower capture as well as raise it.
        changes["capture"] = override.capture or CaptureLevel.NONE
        source["capture"] = override.name
        why["capture"] = f"{override.name} override" if "capture" in override.given else "no rule asks for capture"
    return replace(limits, source=source, why=why, **changes)


def format_value(name: str, value: object) -> str:
    """A limit as people read it: `unlimited`, `$5.00`, `60`."""
    if value is None:
        return "any model" if name == "models" else "unlimited"
    if name in BUDGET_FIELDS:
        amount = Decimal(str(value))
        # Cents as people write them; a budget set below a cent keeps its digits rather than showing $0.00.
        return f"${amount:,.2f}" if amount == amount.quantize(Decimal("0.01")) else f"${amount:,f}"
    if name == "models":
        assert isinstance(value, tuple)
        return ", ".join(str(pattern) for pattern in value) or "none"
    return str(value)
