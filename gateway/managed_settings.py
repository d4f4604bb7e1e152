"""Claude Code managed settings per Workspace group, served at `GET /managed/settings`.

A person's settings are the `managed_settings` blocks of the rules that apply to them, merged: their user override
first, then their groups' rules in the order the policy file lists them (the default rule only for someone in none
of them, as for limits). Mappings merge key by key, lists are joined without repeats (earlier rules' items first),
and for any other value the earlier rule wins. `availableModels` is never written by hand: it is derived from the
person's effective `models` patterns, so the gateway's allow-list and Claude Code's `/model` picker agree."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.policy.model import Decision, ModelPattern, Policy

# Claude Code's family aliases: `availableModels: ["sonnet"]` allows every Sonnet version.
FAMILY_ALIASES = frozenset(("opus", "sonnet", "haiku"))
_PLAIN = re.compile(r"^[A-Za-z0-9._@:/-]+$")
_UUID_NAMESPACE = uuid.UUID("6f1c2a8e-3c55-4f0e-9a7e-0c1b6d4e2f10")


@dataclass(frozen=True, slots=True)
class ManagedSettings:
    """A person's merged settings, with the checksum Claude Code computes over them."""

    email: str
    settings: dict[str, Any]
    sources: tuple[str, ...]
    """Rules whose blocks were merged, highest precedence first."""
    models_note: str
    """How `availableModels` was set, or why it was left out."""

    @property
    def checksum(self) -> str:
        return checksum(self.settings)

    @property
    def etag(self) -> str:
        return f'"{self.checksum}"'

    def body(self) -> bytes:
        document = {
            "uuid": str(uuid.uuid5(_UUID_NAMESPACE, f"{self.email}\n{self.checksum}")),
            "checksum": self.checksum,
            "settings": self.settings,
        }
        return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()

    def matches(self, if_none_match: str | None) -> bool:
        """Whether an `If-None-Match` names these settings (`*` does not: the protocol answers it as if absent)."""
        if not if_none_match:
            return False
        tags = (tag.strip().removeprefix("W/").strip('"') for tag in if_none_match.split(","))
        return self.checksum in tags


def checksum(settings: Mapping[str, Any]) -> str:
    """`sha256:` + hex SHA-256 of the settings as JSON with keys sorted at every level and no whitespace, written
    as JavaScript's JSON.stringify writes it (non-ASCII as is, whole numbers without `.0`)."""
    text = json.dumps(_js_numbers(settings), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def settings_for(policy: Policy, decision: Decision) -> ManagedSettings | None:
    """The settings a person gets, or None when nothing applies (the protocol's 404, "no managed policy")."""
    if decision.limits is None:
        return None
    rules = [policy.rule_named(name) for name in _by_precedence(policy, decision.rules)]
    blocks = [(rule.name, rule.managed_settings) for rule in rules if rule and rule.managed_settings is not None]
    available, note = available_models(decision.limits.models)
    if not blocks and available is None:
        return None
    merged: dict[str, Any] = {}
    for _, block in reversed(blocks):  # lowest precedence first, each higher one over it
        merged = merge(merged, _js_numbers(block))
    if available is not None:
        merged["availableModels"] = available
    return ManagedSettings(decision.email, merged, tuple(name for name, _ in blocks), note)


def merge(low: Mapping[str, Any], high: Mapping[str, Any]) -> dict[str, Any]:
    """`high` over `low`: mappings key by key, lists joined without repeats (high's first), else high's value."""
    result = dict(low)
    for key, value in high.items():
        below = result.get(key)
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            result[key] = merge(below, value)
        elif isinstance(value, list) and isinstance(below, list):
            result[key] = _union(value, below)
        else:
            result[key] = value
    return result


def available_models(models: Sequence[ModelPattern] | None) -> tuple[list[str] | None, str]:
    """`availableModels` for the model patterns a person may use, and how it was chosen; None when Claude Code
    cannot express the patterns exactly (the gateway still enforces them, with a 400 naming the allowed ones)."""
    if models is None:
        return None, "not set: every model is allowed"
    if not models:
        return None, "not set: no model is allowed, which availableModels cannot say (requests are refused)"
    entries: list[str] = []
    for pattern in models:
        entry = _entry(pattern.text)
        if entry is None:
            return None, (
                f"not set: pattern {pattern.text!r} has no availableModels equivalent (use a full id or "
                "a prefix ending in -*); the gateway still enforces it"
            )
        if entry not in entries:
            entries.append(entry)
    return entries, "from the models patterns"


def _entry(text: str) -> str | None:
    """A model pattern as an availableModels entry: an id as is, `claude-sonnet-*` as `sonnet`, `claude-opus-5-*` as
    the version prefix `claude-opus-5`."""
    text = text.lower()
    if "*" not in text and "?" not in text:
        return text
    prefix = text.removesuffix("-*")
    if prefix == text or not _PLAIN.match(prefix):
        return None
    family = prefix.removeprefix("claude-")
    return family if family in FAMILY_ALIASES and prefix.startswith("claude-") else prefix


def _by_precedence(policy: Policy, names: Sequence[str]) -> list[str]:
    users = [name for name in names if name.startswith("user:")]
    groups = [f"group:{group}" for group in policy.groups if f"group:{group}" in names]
    return users + groups + [name for name in names if name == "default"]


def _union(first: list[Any], second: list[Any]) -> list[Any]:
    joined: list[Any] = []
    seen: set[str] = set()
    for item in (*first, *second):
        key = json.dumps(item, sort_keys=True)
        if key not in seen:
            seen.add(key)
            joined.append(item)
    return joined


def _js_numbers(value: Any) -> Any:
    """Whole floats as ints, as JavaScript holds every number."""
    if isinstance(value, Mapping):
        return {key: _js_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_js_numbers(item) for item in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
