"""Secret redaction for captured prompts and responses: built-in patterns, detect-secrets, operator patterns."""

from __future__ import annotations

import bisect
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from itertools import zip_longest
from typing import Any

from gateway.capture.builtin_patterns import BUILTIN_PATTERNS, MARKER, Pattern, quoted_value_ok
from gateway.capture.detectors import LibraryDetectors, library_detectors

logger = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_NESTING_LIMIT = 128
_MARKER_RUN = re.compile(r"\[REDACTED:[A-Za-z0-9_.\-]{1,64}\]")

# JSON object keys whose string value is a secret whatever it looks like (redact_json only).
_SECRET_FIELDS = frozenset(
    (
        "password",
        "passwd",
        "passphrase",
        "pass",
        "pwd",
        "db_password",
        "secret",
        "client_secret",
        "secret_key",
        "api_key",
        "apikey",
        "token",
        "access_token",
        "refresh_token",
        "auth_token",
        "authorization",
        "authorization_token",
        "private_key",
        "secret_access_key",
        "aws_secret_access_key",
        "account_key",
        "x_api_key",
    )
)


def _compile_operator(name: object, pattern: object) -> Pattern:
    """Compile one operator pattern, or say exactly which one is wrong."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"redaction pattern name {name!r} must be 1-64 letters, digits, '_', '.' or '-'")
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"redaction pattern {name!r} must be a non-empty regular expression string")
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"redaction pattern {name!r} is not a valid regular expression: {exc}") from None
    if regex.fullmatch(""):
        # It would match between every two characters; almost surely a mistake (`.*`, `a*`).
        raise ValueError(f"redaction pattern {name!r} matches the empty string")
    return Pattern(name, (regex,))


def _operator_patterns(config: Iterable[Mapping[str, Any]] | Mapping[str, str] | None) -> list[Pattern]:
    """Operator patterns from `[{name, pattern}, ...]` or `{name: pattern}`."""
    if config is None:
        return []
    if isinstance(config, Mapping):
        return [_compile_operator(name, pattern) for name, pattern in config.items()]
    if isinstance(config, str | bytes):
        raise ValueError("redaction patterns must be a list of {name, pattern} or a mapping of name to pattern")
    patterns = []
    for entry in config:
        if not isinstance(entry, Mapping) or set(entry) - {"name", "pattern"}:
            raise ValueError(f"redaction pattern entry {entry!r} must be a mapping with `name` and `pattern`")
        patterns.append(_compile_operator(entry.get("name"), entry.get("pattern")))
    return patterns


class Redactor:
    """Replaces secrets in text by `[REDACTED:<pattern name>]` and counts them per pattern."""

    __slots__ = ("patterns", "library")

    def __init__(
        self,
        patterns: Iterable[Mapping[str, Any]] | Mapping[str, str] | None = None,
        *,
        builtins: bool = True,
    ) -> None:
        # The detect-secrets detectors run with the built-in patterns, and are left out with them.
        self.library: LibraryDetectors | None = library_detectors() if builtins else None
        by_name: dict[str, Pattern] = {p.name: p for p in BUILTIN_PATTERNS} if builtins else {}
        for pattern in _operator_patterns(patterns):
            # An operator pattern named like a built-in replaces it (to fix a false positive in place); a
            # new name runs after the built-ins.
            by_name[pattern.name] = pattern
        self.patterns: tuple[Pattern, ...] = tuple(by_name.values())

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        """The text with every match replaced by its marker, and the number of replacements per pattern."""
        counts: dict[str, int] = {}
        try:
            if not isinstance(text, str):
                text = str(text, "utf-8", "replace") if isinstance(text, bytes | bytearray) else str(text)
            if not text:
                return text, counts
            lowered = text.lower()
            for pattern in self.patterns:
                for regex, caseless in zip_longest(pattern.regexes, pattern.caseless):
                    if caseless is None:
                        new_text, replaced = _substitute(pattern, regex, text, text)
                    elif len(lowered) == len(text):
                        new_text, replaced = _substitute(pattern, regex, text, lowered)
                    else:
                        new_text, replaced = _substitute(pattern, caseless, text, text)
                    if replaced:
                        text = new_text
                        lowered = text.lower()
                        counts[pattern.name] = counts.get(pattern.name, 0) + replaced
                if pattern.finder is not None:
                    text, found = _replace_spans(
                        text, [(start, end, pattern.name) for start, end in pattern.finder(text)]
                    )
                    if found:
                        lowered = text.lower()
                        _add(counts, found)
            if self.library is not None:
                findings = [(found.start, found.end, found.name) for found in self.library.find(text)]
                text, found = _replace_spans(text, findings)
                _add(counts, found)
            return text, counts
        except Exception:
            # Fail closed: text that could not be checked is not written at all.
            logger.exception("redaction failed; the whole text is withheld")
            return MARKER.format(name="redaction_failed"), {"redaction_failed": 1}

    def redact_json(self, value: Any) -> tuple[Any, dict[str, int]]:
        """A copy of a JSON value (dicts, lists, strings) with every string redacted, and the counts."""
        counts: dict[str, int] = {}
        try:
            return self._walk(value, counts, 0), counts
        except Exception:
            logger.exception("redaction failed; the whole value is withheld")
            return MARKER.format(name="redaction_failed"), {"redaction_failed": 1}

    def _walk(self, value: Any, counts: dict[str, int], depth: int) -> Any:
        if isinstance(value, str):
            text, found = self.redact(value)
            _add(counts, found)
            return text
        if depth >= _NESTING_LIMIT and isinstance(value, dict | list | tuple):
            # Deeper than any real request nests; withheld rather than risk the recursion limit.
            counts["nesting_limit"] = counts.get("nesting_limit", 0) + 1
            return MARKER.format(name="nesting_limit")
        if isinstance(value, dict):
            result: dict[Any, Any] = {}
            for key, item in value.items():
                if (
                    isinstance(item, str)
                    and isinstance(key, str)
                    and key.lower().replace("-", "_") in _SECRET_FIELDS
                    and quoted_value_ok(item)
                ):
                    counts["secret_field"] = counts.get("secret_field", 0) + 1
                    result[key] = MARKER.format(name="secret_field")
                else:
                    result[key] = self._walk(item, counts, depth + 1)
            return result
        if isinstance(value, list | tuple):
            return [self._walk(item, counts, depth + 1) for item in value]
        return value


def _add(counts: dict[str, int], found: dict[str, int]) -> None:
    for name, count in found.items():
        counts[name] = counts.get(name, 0) + count


def _replace_spans(text: str, spans: list[tuple[int, int, str]]) -> tuple[str, dict[str, int]]:
    """The text with each (start, end, name) span replaced by its marker; overlapping spans become one (named for
    the first), and a span touching a marker already there is left alone, so redacting twice changes nothing."""
    counts: dict[str, int] = {}
    if not spans:
        return text, counts
    marker_starts: list[int] = []
    marker_ends: list[int] = []
    for match in _MARKER_RUN.finditer(text):
        marker_starts.append(match.start())
        marker_ends.append(match.end())
    pieces: list[str] = []
    position = 0
    for start, end, name in sorted(spans):
        # The first marker ending after `start` is the only one that can overlap [start, end).
        index = bisect.bisect_right(marker_ends, start)
        if end <= start or (index < len(marker_starts) and marker_starts[index] < end):
            continue
        if start < position:
            position = max(position, end)  # overlaps the span just replaced: widen that one
            continue
        pieces.append(text[position:start])
        pieces.append(MARKER.format(name=name))
        counts[name] = counts.get(name, 0) + 1
        position = end
    if not counts:
        return text, counts
    pieces.append(text[position:])
    return "".join(pieces), counts


def _substitute(pattern: Pattern, regex: re.Pattern[str], text: str, search: str) -> tuple[str, int]:
    """The text with the secrets `regex` finds in `search` (the text or its same-length lower-case) replaced."""
    first = regex.search(search)
    if first is None:
        return text, 0  # nearly always: one cheap search, nothing else
    marker = MARKER.format(name=pattern.name)
    groups = tuple(group for group in regex.groupindex if group.startswith("secret"))
    pieces: list[str] = []
    position = 0
    count = 0
    for match in regex.finditer(search, first.start()):
        spans = _secret_spans(match, groups, pattern.check, text)
        for start, end in spans:
            if start < position:
                continue  # nested or overlapping secret groups (an operator pattern's): the outer one is replaced
            pieces.append(text[position:start])
            pieces.append(marker)
            position = end
        count += bool(spans)
    if not count:
        return text, 0
    pieces.append(text[position:])
    return "".join(pieces), count


def _secret_spans(
    match: re.Match[str], groups: tuple[str, ...], check: Callable[[str, str], bool] | None, text: str
) -> list[tuple[int, int]]:
    """Where the match's secrets are: its `secret*` groups, or all of it; none when it is not a secret after all."""
    start, end = match.span()
    if start == end:
        return []  # A zero-width match replaces nothing and is not counted.
    if not groups:
        return [] if check is not None and not check("", text[start:end]) else [(start, end)]
    spans = []
    for group in groups:
        start, end = match.span(group)
        if start < end and (check is None or check(group, text[start:end])):
            spans.append((start, end))
    return spans


_default: Redactor | None = None


def default_redactor() -> Redactor:
    """The built-in patterns alone, compiled once."""
    global _default
    if _default is None:
        _default = Redactor()
    return _default
