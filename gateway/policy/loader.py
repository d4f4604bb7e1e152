"""Reading the policy file: YAML to a `Policy`, refusing anything odd with the file, line and reason."""

from __future__ import annotations

import difflib
import math
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from gateway.capture.levels import CaptureLevel
from gateway.identity import fold_case
from gateway.policy.model import BUDGET_FIELDS, RULE_FIELDS, ModelPattern, Policy, Rule

TOP_LEVEL_KEYS = ("version", "default", "groups", "users", "members", "budget_help")
EXTENSION_PREFIX = "x-"
UNLIMITED = "unlimited"

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_MERGE = "tag:yaml.org,2002:merge"


class PolicyFileError(ValueError):
    """The policy file cannot be used; `errors` holds one `file:line:column: reason` per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyFileError([f"{path}: cannot read the policy file: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise PolicyFileError([f"{path}: the policy file is not UTF-8 text ({exc.reason})"]) from None
    return parse_policy(text, str(path))


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Validate policy YAML; every problem found is reported, not only the first."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise PolicyFileError([f"{where}: not valid YAML: {exc.problem or exc.context}"]) from None
    except yaml.YAMLError as exc:
        raise PolicyFileError([f"{source}: not valid YAML: {exc}"]) from None
    if root is None:
        raise PolicyFileError([f"{source}: the policy file is empty"])
    reader = _Reader(loader, source)
    try:
        policy = reader.policy(root)
    finally:
        loader.dispose()
    if reader.errors:
        raise PolicyFileError(reader.errors)
    return policy


class _Reader:
    def __init__(self, loader: yaml.SafeLoader, source: str) -> None:
        self.loader = loader
        self.source = source
        self._errors: list[tuple[int, int, str]] = []

    @property
    def errors(self) -> list[str]:
        return [f"{self.source}:{line}:{column}: {reason}" for line, column, reason in sorted(self._errors)]

    def fail(self, node: Node, reason: str) -> None:
        self._errors.append((node.start_mark.line + 1, node.start_mark.column + 1, reason))

    def policy(self, root: Node) -> Policy:
        top = self.mapping(root, "the policy file", TOP_LEVEL_KEYS)
        if top is None:
            return Policy(self.source)
        if "version" in top:
            version_node = top["version"][1]
            version = self.scalar(version_node)
            if type(version) is not int or version != 1:
                self.fail(version_node, "version must be 1, the only policy file format there is")
        default = self.rule(top["default"][1], "default", "the default rule") if "default" in top else None
        groups = self.rules(top["groups"][1], "group") if "groups" in top else {}
        users = self.rules(top["users"][1], "user") if "users" in top else {}
        members = self.members(top["members"][1]) if "members" in top else None
        budget_help = None
        if "budget_help" in top:
            node = top["budget_help"][1]
            budget_help = self.scalar(node)
            if not isinstance(budget_help, str) or not budget_help.strip():
                self.fail(node, "budget_help must be text, e.g. `ask #claude-admins for more`")
                budget_help = None
        return Policy(self.source, default, groups, users, members, budget_help)

    def mapping(self, node: Node, what: str, allowed: tuple[str, ...] | None) -> dict[str, tuple[Node, Node]] | None:
        """A mapping's entries by key (with their nodes), refusing duplicates and, if `allowed`, unknown keys."""
        if not isinstance(node, MappingNode):
            self.fail(node, f"{what} must be a mapping of `key: value` lines, not {_kind(node)}")
            return None
        own = {id(key) for key, _ in node.value if key.tag != _MERGE}
        try:
            # `<<: *anchor` merge keys: PyYAML puts the merged entries first, so the mapping's own keys win.
            self.loader.flatten_mapping(node)
        except yaml.MarkedYAMLError as exc:
            self.fail(node, f"bad merge key in {what}: {exc.problem}")
            return None
        entries: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node)
            if not isinstance(key, str):
                self.fail(key_node, f"keys in {what} must be text, not {key!r}")
                continue
            if allowed is TOP_LEVEL_KEYS and key.startswith(EXTENSION_PREFIX):
                continue  # a place for YAML anchors shared by several rules
            if allowed is not None and key not in allowed:
                self.fail(key_node, f"unknown key {key!r} in {what}{_suggest(key, allowed)}")
                continue
            if key in entries and id(entries[key][0]) in own and id(key_node) in own:
                first = entries[key][0].start_mark.line + 1
                self.fail(key_node, f"duplicate key {key!r} in {what} (first on line {first})")
                continue
            entries[key] = (key_node, value_node)
        return entries

    def scalar(self, node: Node) -> Any:
        if not isinstance(node, ScalarNode):
            return node
        try:
            return self.loader.construct_object(node)
        except yaml.constructor.ConstructorError as exc:
            return _Bad(str(exc.problem))

    def rules(self, node: Node, kind: str) -> dict[str, Rule]:
        section = "groups" if kind == "group" else "users"
        entries = self.mapping(node, f"`{section}`", None)
        if entries is None:
            return {}
        rules: dict[str, Rule] = {}
        first_line: dict[str, int] = {}
        for key, (key_node, value_node) in entries.items():
            email = fold_case(key.strip())
            if not _EMAIL.match(email):
                self.fail(key_node, f"{key!r} in `{section}` is not an email address ({kind} emails are the keys)")
                continue
            if email in rules:
                self.fail(key_node, f"{kind} {email} appears twice (also on line {first_line[email]}; case is ignored)")
                continue
            first_line[email] = key_node.start_mark.line + 1
            rule = self.rule(value_node, f"{kind}:{email}", f"the rule for {kind} {email}")
            if rule is not None:
                rules[email] = rule
        return rules

    def rule(self, node: Node, name: str, what: str) -> Rule | None:
        if isinstance(node, ScalarNode) and node.tag == _NULL:
            self.fail(node, f"{what} is empty; write {{}} for a rule without limits")
            return None
        entries = self.mapping(node, what, RULE_FIELDS)
        if entries is None:
            return None
        values: dict[str, Any] = {}
        for key, (_, value_node) in entries.items():
            ok, value = self.field(key, value_node, what)
            if ok:
                values[key] = value
        return Rule(name=name, given=frozenset(k for k in values if k != "description"), **values)

    def field(self, key: str, node: Node, what: str) -> tuple[bool, Any]:
        if key == "models":
            return self.models(node, what)
        if key == "managed_settings":
            return self.managed_settings(node, what)
        value = self.scalar(node)
        if key == "description":
            if not isinstance(value, str):
                self.fail(node, f"description in {what} must be text")
                return False, None
            return True, value
        if key == "capture":
            if not (isinstance(node, ScalarNode) and node.tag == _STR and value in tuple(CaptureLevel)):
                hint = f" (YAML reads {node.value!r} as {value}; write none)" if isinstance(value, bool) else ""
                levels = ", ".join(CaptureLevel)
                self.fail(node, f"capture in {what} must be one of {levels}, not {_shown(node, value)}{hint}")
                return False, None
            return True, CaptureLevel(value)
        if value is None or isinstance(node, ScalarNode) and node.tag == _NULL:
            self.fail(node, f"{key} in {what} has no value; write a number or `{UNLIMITED}`, or remove the line")
            return False, None
        if value == UNLIMITED:
            return True, None
        if key in BUDGET_FIELDS:
            if isinstance(node, ScalarNode) and node.tag in (_INT, _FLOAT) and not isinstance(value, bool):
                if not math.isfinite(value):
                    self.fail(node, f"{key} in {what} must be a finite amount of US dollars, not {value}")
                    return False, None
                if value < 0:
                    self.fail(node, f"{key} in {what} may not be negative ({value})")
                    return False, None
                return True, Decimal(str(value))
            self.fail(node, f"{key} in {what} must be an amount of US dollars (e.g. 25 or 7.50) or `{UNLIMITED}`")
            return False, None
        if not (isinstance(node, ScalarNode) and node.tag == _INT and isinstance(value, int)):
            self.fail(node, f"{key} in {what} must be a whole number or `{UNLIMITED}`, not {_shown(node, value)}")
            return False, None
        if value < 0:
            self.fail(node, f"{key} in {what} may not be negative ({value})")
            return False, None
        if key == "max_tokens" and value == 0:
            self.fail(node, f"max_tokens in {what} must be at least 1")
            return False, None
        return True, value

    def models(self, node: Node, what: str) -> tuple[bool, Any]:
        if isinstance(node, ScalarNode) and self.scalar(node) == UNLIMITED:
            return True, None
        if not isinstance(node, SequenceNode):
            self.fail(node, f"models in {what} must be a list of patterns, e.g. [claude-sonnet-*, claude-haiku-*]")
            return False, None
        patterns: list[ModelPattern] = []
        ok = True
        for item in node.value:
            text = self.scalar(item)
            if not isinstance(text, str):
                self.fail(item, f"model pattern in {what} must be text, not {_shown(item, text)}")
                ok = False
                continue
            try:
                patterns.append(ModelPattern.parse(text.strip()))
            except ValueError as exc:
                self.fail(item, f"{exc} in {what}")
                ok = False
        return ok, tuple(patterns)

    def managed_settings(self, node: Node, what: str) -> tuple[bool, Any]:
        """A mapping of Claude Code settings, as JSON values; `availableModels` comes from `models` instead."""
        entries = self.mapping(node, f"managed_settings in {what}", None)
        if entries is None:
            return False, None
        if "availableModels" in entries:
            self.fail(
                entries["availableModels"][0],
                f"availableModels in {what} is derived from the rule's `models` "
                "patterns (one declaration for the gateway and Claude Code's /model); list the models there",
            )
            return False, None
        try:
            value = self.loader.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:
            self.fail(node, f"managed_settings in {what}: {exc.problem}")
            return False, None
        problem = _not_json(value, "managed_settings")
        if problem:
            self.fail(
                node, f"{problem} in {what}; settings must be JSON values (text, numbers, true/false, lists, mappings)"
            )
            return False, None
        return True, value

    def members(self, node: Node) -> dict[str, tuple[str, ...]]:
        entries = self.mapping(node, "`members`", None)
        if entries is None:
            return {}
        members: dict[str, tuple[str, ...]] = {}
        for key, (key_node, value_node) in entries.items():
            group = fold_case(key.strip())
            if not _EMAIL.match(group):
                self.fail(key_node, f"{key!r} in `members` is not a group email address")
                continue
            if group in members:
                self.fail(key_node, f"group {group} appears twice in `members` (case is ignored)")
                continue
            if not isinstance(value_node, SequenceNode):
                self.fail(value_node, f"members of {group} must be a list of email addresses")
                continue
            emails: list[str] = []
            for item in value_node.value:
                email = self.scalar(item)
                if not isinstance(email, str) or not _EMAIL.match(email.strip()):
                    self.fail(item, f"{_shown(item, email)} in the members of {group} is not an email address")
                    continue
                emails.append(fold_case(email.strip()))
            members[group] = tuple(emails)
        return members


def _not_json(value: Any, where: str) -> str | None:
    """What in `value` JSON cannot carry (a date, a non-text key, an infinite number), or None."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where} has a key that is not text ({key!r})"
            problem = _not_json(item, f"{where}.{key}")
            if problem:
                return problem
        return None
    if isinstance(value, list):
        return next((p for i, item in enumerate(value) if (p := _not_json(item, f"{where}[{i}]"))), None)
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where} is {value}, which JSON cannot carry"
    if value is None or isinstance(value, (str, int, float, bool)):
        return None
    return f"{where} is {type(value).__name__} {value!r}, which JSON cannot carry"


class _Bad:
    """A scalar PyYAML could not construct (e.g. an unknown `!tag`)."""

    def __init__(self, problem: str) -> None:
        self.problem = problem

    def __repr__(self) -> str:
        return f"<{self.problem}>"


def _kind(node: Node) -> str:
    if isinstance(node, SequenceNode):
        return "a list"
    if isinstance(node, ScalarNode):
        return "a single value" if node.value else "nothing"
    return "a mapping"


def _shown(node: Node, value: Any) -> str:
    if isinstance(node, ScalarNode):
        return repr(node.value) if node.tag == _STR else node.value or "nothing"
    return _kind(node)


def _suggest(key: str, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f"; expected one of: {', '.join(allowed)}"
