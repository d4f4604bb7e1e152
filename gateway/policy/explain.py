"""`policy explain` and `policy validate` in words: a person's groups, effective limits and why; a file's summary."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from gateway.capture.levels import CaptureLevel
from gateway.policy.counters import MICROS, Snapshot
from gateway.policy.model import LIMIT_FIELDS, Decision, Policy, format_value

if TYPE_CHECKING:
    from gateway.managed_settings import ManagedSettings

CAPTURE_MEANING = {
    CaptureLevel.NONE: "no prompt or response text is kept",
    CaptureLevel.METADATA: "facts about each request are kept in the content table, no text",
    CaptureLevel.FULL: "prompts and responses are kept, redacted, in the content table",
}


def summary(policy: Policy) -> str:
    """One line saying what a valid policy file holds."""
    parts = [
        "a default rule" if policy.default else "no default rule (people in none of its groups are refused)",
        _count(len(policy.groups), "group rule"),
        _count(len(policy.users), "user override"),
    ]
    if policy.capturing_rules:
        parts.append(f"prompt capture in {_count(len(policy.capturing_rules), 'rule')}")
    if policy.members is not None:
        parts.append(f"static members for {_count(len(policy.members), 'group')}")
    return f"{policy.source}: valid: " + ", ".join(parts)


def explain(
    decision: Decision, source: str, usage: Snapshot | None = None, settings: ManagedSettings | None = None
) -> list[str]:
    """Lines for a person: their groups (and where that came from), the rules that apply, each limit and why, and
    the Claude Code managed settings they get."""
    lines = [decision.email]
    groups = ", ".join(decision.groups) or "none of the policy's groups"
    lines.append(f"  groups:  {groups}  (from {source})")
    limits = decision.limits
    if limits is None:
        lines.append("  rule:    none, and the policy has no default rule: every request is refused (403 denied)")
        return lines
    group_rules = [rule for rule in decision.rules if not rule.startswith("user:")]
    override = [rule for rule in decision.rules if rule.startswith("user:")]
    if group_rules == ["default"]:
        applied = "default (in none of the groups the policy has rules for)"
    elif len(group_rules) > 1:
        applied = ", ".join(group_rules) + " (the most generous value of each limit wins)"
    else:
        applied = ", ".join(group_rules)
    if override:
        applied = f"{override[0]} override on top of {applied}" if group_rules else f"{override[0]} only"
    lines.append(f"  rules:   {applied}")
    lines.append("  limits:")
    for name in ("models", *LIMIT_FIELDS):
        value = format_value(name, getattr(limits, name))
        lines.append(f"    {name:<24} {value:<28} {limits.why.get(name, '')}".rstrip())
    lines.append(f"  capture: {limits.capture} ({CAPTURE_MEANING[limits.capture]})")
    lines.append(f"           {limits.why.get('capture', '')}")
    lines.extend(_settings_lines(settings))
    if usage is not None:
        lines.append("  usage now (shared counters):")
        lines.append(f"    requests in the last minute  {usage.requests_last_minute}")
        lines.append(f"    tokens in the last minute    {usage.tokens_last_minute}")
        lines.append(f"    spent today (UTC)            ${usage.spent_today_micros / MICROS:,.4f}")
        lines.append(f"    spent this month (UTC)       ${usage.spent_this_month_micros / MICROS:,.4f}")
        lines.append(f"    requests in flight           {usage.in_flight}")
    return lines


def _settings_lines(settings: ManagedSettings | None) -> list[str]:
    if settings is None:
        return ["  managed settings: none (GET /managed/settings answers 404: no managed policy)"]
    merged = " over ".join(settings.sources) or "no rule's managed_settings"
    lines = [
        f"  managed settings: {settings.checksum}",
        f"    merged from {merged}; availableModels {settings.models_note}",
    ]
    text = json.dumps(settings.settings, indent=2, sort_keys=True, ensure_ascii=False)
    lines.extend("    " + line for line in text.splitlines())
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
