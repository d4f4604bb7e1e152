"""Text for a person's terminal, safe whatever a caller chose to send: control characters escaped, and fields cut
short, so that a model string, a path or a user agent cannot move the cursor, clear the screen, reorder text or
forge a line in an admin's terminal. Both CLIs print through this module.

Escapes are JSON's (`\\n`, `\\u001b`), so a JSON line stays valid JSON, and means the same, once escaped."""

from __future__ import annotations

import re

# C0 and C1 controls and DEL; Unicode's bidirectional controls (which reorder what follows them on screen), the
# zero-width and invisible formatting characters, and the line and paragraph separators.
_UNSAFE_BEYOND_C0 = "\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
_UNSAFE_IN_FIELD = re.compile(f"[\x00-\x1f{_UNSAFE_BEYOND_C0}]")
# What a message of our own may hold: its line breaks are ours.
_UNSAFE_IN_TEXT = re.compile(f"[\x00-\x09\x0b-\x1f{_UNSAFE_BEYOND_C0}]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

# How much of a caller-chosen field a table or a summary shows.
FIELD_LIMIT = 120
ELLIPSIS = "..."


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    return _NAMED.get(char) or f"\\u{ord(char):04x}"


def escape(text: str) -> str:
    """The text with every control and invisible formatting character escaped, line breaks included: for one
    field, or one line that must stay one line."""
    return _UNSAFE_IN_FIELD.sub(_escape, text)


def escape_text(text: str) -> str:
    """The text with every control and invisible formatting character escaped except its line breaks: for our
    own messages, which may run over several lines."""
    return _UNSAFE_IN_TEXT.sub(_escape, text)


def field(value: object, limit: int = FIELD_LIMIT) -> str:
    """A caller-chosen value for a table cell or a message: escaped, and cut to `limit` characters (ending in
    `...` when cut). None shows as `-`."""
    if value is None:
        return "-"
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        text = text[: max(limit - len(ELLIPSIS), 0)] + ELLIPSIS
    return escape(text)
