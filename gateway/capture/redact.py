"""Secret redaction for captured prompts and responses: built-in patterns plus operator patterns."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any

logger = logging.getLogger(__name__)

MARKER = "[REDACTED:{name}]"
# Every built-in value pattern refuses to start on a marker, so redacting twice changes nothing more.
_NOT_MARKER = r"(?!\[REDACTED:)"
# A JSON string body with its escapes, for values inside JSON text (a file the model read, for example).
_JSON_STRING = r'(?:[^"\\\n]|\\.){1,20000}'
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_NESTING_LIMIT = 128

# Unquoted values that are code or placeholders rather than secrets (`password=None`, `api_key=settings.api_key`):
# an unquoted value must contain a digit or a symbol to count as a secret.
_SECRETISH = re.compile(r"[0-9!@#%^&*+=~?|]")
_PLACEHOLDERS = frozenset(("none", "null", "nil", "true", "false", "undefined", "string", "str", "password", "secret"))

# JSON object keys whose string value is a secret whatever it looks like (redact_json only).
_SECRET_FIELDS = frozenset(
    (
        "password",
        "passwd",
        "passphrase",
        "secret",
        "client_secret",
        "secret_key",
        "api_key",
        "apikey",
        "access_token",
        "refresh_token",
        "auth_token",
        "private_key",
        "secret_access_key",
        "aws_secret_access_key",
        "x_api_key",
    )
)


@dataclass(frozen=True, slots=True)
class Pattern:
    """One named pattern; only the `secret*` groups are replaced when it has any, else the whole match."""

    name: str
    # Applied in turn. Each built-in regex opens with a literal, so the regex engine skips ahead with a fast
    # substring search instead of trying every position (a lookbehind or a case-insensitive start defeats that).
    regexes: tuple[re.Pattern[str], ...]
    # Called with the group name ("" for the whole match) and its text; a value that fails is left alone.
    check: Callable[[str, str], bool] | None = None
    # The regexes are written for lower-cased text (case-insensitive keys keep their literal start that way);
    # these are the same with IGNORECASE, for text whose lower-casing changes its length (and so the offsets).
    caseless: tuple[re.Pattern[str], ...] = ()


def _quoted_value_ok(value: str) -> bool:
    """A quoted assignment value worth redacting: not empty, not a template or placeholder."""
    stripped = value.strip()
    if len(stripped) < 4 or stripped.lower() in _PLACEHOLDERS:
        return False
    return not stripped.startswith(("$", "{{", "<", "%(", "*****", "[REDACTED:"))


def _bare_value_ok(value: str) -> bool:
    """An unquoted assignment value worth redacting: secret-looking, not an identifier or a variable."""
    return _quoted_value_ok(value) and _SECRETISH.search(value) is not None


def _assignment_check(group: str, value: str) -> bool:
    """Quoted values may be anything but a placeholder; bare ones must look like a secret."""
    return _bare_value_ok(value) if group == "secret_bare" else _quoted_value_ok(value)


def _token(prefix: str, width: int, body: str) -> str:
    """A token opening with a literal prefix `width` characters long, only where a run of token characters starts."""
    # The run-start check sits after the prefix, where it looks back past it: placed first it would cost the
    # literal search, and without it a pattern tried inside a megabyte-long run would rescan the run each time.
    return prefix + rf"(?<![A-Za-z0-9_\-][\s\S]{{{width}}})" + body + r"(?![A-Za-z0-9_\-])"


def _builtin(
    name: str,
    regexes: str | Iterable[str],
    check: Callable[[str, str], bool] | None = None,
    *,
    lowered: bool = False,
) -> Pattern:
    sources = (regexes,) if isinstance(regexes, str) else tuple(regexes)
    compiled = tuple(re.compile(source) for source in sources)
    caseless = tuple(re.compile(source, re.IGNORECASE) for source in sources) if lowered else ()
    return Pattern(name, compiled, check, caseless)


# Quotes may come escaped (`\"password\": \"x\"`), as in JSON held inside a JSON string; quoted values end at
# the first closing quote, escaped or not.
_ASSIGNED = r"""(?:\\?["'])?[ \t]*[:=][ \t]*"""
_ASSIGNED_VALUE = (
    _ASSIGNED
    + r'(?:\\?"(?P<secret_dq>(?!\[redacted:)[^"\n]{1,500}?)\\?"'
    + r"""|\\?'(?P<secret_sq>(?!\[redacted:)[^'\n]{1,500}?)\\?'"""
    + r"""|(?P<secret_bare>[^\s"'`,;&<>(){}\[\]\\]{1,500}))"""
)
_TOKEN_KINDS = ("access", "auth", "refresh", "id", "api", "session", "bearer")
_TOKEN_KEYS = "|".join(f"(?<={kind}{sep}token)" for kind in _TOKEN_KINDS for sep in ("_", "-", ""))

# Order matters: specific shapes first, so a key inside `Authorization: Bearer sk-ant-...` or `api_key=...`
# is counted under its own name and the generic patterns then refuse to start on the marker.
BUILTIN_PATTERNS: tuple[Pattern, ...] = (
    _builtin(
        "gcp_service_account_key",
        r'"private_key"[ \t]*:[ \t]*"' + _NOT_MARKER + r"(?P<secret>" + _JSON_STRING + ')"',
    ),
    _builtin(
        "private_key",
        r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
        # A complete block: anything up to the END line that does not cross another `-----` run (so a thousand
        # BEGIN lines without an END stay linear)...
        r"(?:(?:[^-]|-(?!----)){0,100000}?-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
        # ...or a block cut short (a truncated paste): its header lines and base64 lines, escaped or not.
        r"|(?:(?:\s|\\[nr])*(?:[A-Za-z0-9+/=]{8,}|(?:Proc-Type|DEK-Info|Comment|Version):[^\n\\]*)){1,2000})",
    ),
    _builtin("aws_access_key_id", _token("A(?:KIA|SIA|BIA|CCA)", 4, "[A-Z0-9]{16}")),
    _builtin(
        "aws_secret_access_key",
        # Matching from `secret` keeps the literal start; the key before it (`aws_`) is kept anyway.
        r"secret_?(?:access_?)?key" + _ASSIGNED + r"""["']?(?P<secret>[a-z0-9/+=]{40})(?![a-z0-9/+=])""",
        lowered=True,
    ),
    _builtin(
        "aws_session_token",
        r"session_?token" + _ASSIGNED + r"""["']?(?P<secret>[a-z0-9/+=]{100,4000})(?![a-z0-9/+=])""",
        lowered=True,
    ),
    _builtin("google_api_key", _token("AIza", 4, r"[0-9A-Za-z_\-]{35}")),
    _builtin("google_oauth_client_secret", _token("GOCSPX-", 7, r"[0-9A-Za-z_\-]{28}")),
    _builtin(
        "google_oauth_token",
        [_token(r"ya29\.", 5, r"[0-9A-Za-z_\-]{20,4000}"), _token("1//0", 4, r"[0-9A-Za-z_\-]{30,1000}")],
    ),
    _builtin("anthropic_api_key", _token("sk-ant-", 7, r"[A-Za-z0-9_\-]{20,1000}")),
    _builtin(
        "openai_api_key",
        # Legacy keys are one unbroken alphanumeric run; the newer ones say what they are. Hyphenated words such
        # as CSS class names (`sk-fading-circle`) fit neither.
        _token("sk-", 3, r"(?:(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{20,1000}|[A-Za-z0-9]{32,1000})"),
    ),
    _builtin(
        "github_token",
        [_token("gh", 2, "[pousr]_[A-Za-z0-9]{36,255}"), _token("github_pat_", 11, "[A-Za-z0-9_]{22,255}")],
    ),
    _builtin("slack_token", _token("xox", 3, r"[abposr]-[A-Za-z0-9\-]{10,500}")),
    _builtin(
        "slack_webhook",
        r"https://hooks\.slack\.com/services/T[A-Z0-9]{6,20}/B[A-Z0-9]{6,20}/[A-Za-z0-9]{16,40}",
    ),
    _builtin(
        "stripe_key",
        # Publishable keys (pk_live_) are public by design and stay.
        [_token("sk_", 3, "(?:live|test)_[0-9A-Za-z]{20,250}"), _token("rk_", 3, "(?:live|test)_[0-9A-Za-z]{20,250}")],
    ),
    _builtin(
        "jwt",
        _token("eyJ", 3, r"[A-Za-z0-9_\-]{8,20000}\.[A-Za-z0-9_\-]{8,50000}\.[A-Za-z0-9_\-]{16,2000}"),
    ),
    _builtin(
        "bearer_token",
        r"bearer[ \t]+" + _NOT_MARKER.lower() + r"(?P<secret>[a-z0-9\-._~+/]{16,5000}=*)(?![a-z0-9\-._~+/=])",
        lowered=True,
    ),
    _builtin(
        "basic_auth",
        r"authorization[ \t]*:[ \t]*basic[ \t]+(?P<secret>[a-z0-9+/]{8,2000}=*)(?![a-z0-9+/=])",
        lowered=True,
    ),
    _builtin(
        "url_password",
        # Starting at `://` uses a literal search, and the user (kept) may be empty, as in redis://:pw@host.
        r"://[^\s:/?#@\[\]\"'<>]{0,256}:" + _NOT_MARKER + r"(?P<secret>[^\s/?#\"'<>]{1,256})@",
    ),
    _builtin(
        "env_secret",
        # Dotenv, shell and `docker -e` style: an upper-case name ending in a secret word, `=`, any value. One
        # regex per literal again; those ending in KEY share one and check the word before it.
        [
            word + r"""=(?!\[REDACTED:)["']?(?P<secret>[^\s"'$][^\s"']{0,1000})"""
            for word in (
                "PASS(?:WORD|WD)",
                "SECRET",
                "TOKEN",
                "CREDENTIALS",
                "KEY(?:" + "|".join(f"(?<={w}KEY)" for w in ("API_", "API", "SECRET_", "ACCESS_", "PRIVATE_")) + ")",
            )
        ],
        _assignment_check,
    ),
    _builtin(
        "secret_assignment",
        # One regex per key word, each opening with its literal; the key is kept, so a match may start inside it.
        [
            r"pass(?:word|wd|phrase)" + _ASSIGNED_VALUE,
            r"secret(?:_?key)?" + _ASSIGNED_VALUE,
            r"api[_\-]?key" + _ASSIGNED_VALUE,
            r"token(?:" + _TOKEN_KEYS + ")" + _ASSIGNED_VALUE,
        ],
        _assignment_check,
        lowered=True,
    ),
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

    __slots__ = ("patterns",)

    def __init__(
        self,
        patterns: Iterable[Mapping[str, Any]] | Mapping[str, str] | None = None,
        *,
        builtins: bool = True,
    ) -> None:
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
            for name, count in found.items():
                counts[name] = counts.get(name, 0) + count
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
                    and _quoted_value_ok(item)
                ):
                    counts["secret_field"] = counts.get("secret_field", 0) + 1
                    result[key] = MARKER.format(name="secret_field")
                else:
                    result[key] = self._walk(item, counts, depth + 1)
            return result
        if isinstance(value, list | tuple):
            return [self._walk(item, counts, depth + 1) for item in value]
        return value


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
