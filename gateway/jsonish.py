"""Lenient JSON: read what orjson refuses but the upstream or a stored row still takes, and always write back."""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

TRUNCATION_MARKER = "[TRUNCATED]"
# Deeper than any real message nests, and well inside what orjson serialises (254 levels).
NESTING_LIMIT = 64

_SURROGATE = re.compile("[\ud800-\udfff]")


def loads(data: bytes | bytearray | memoryview | str, *, replace: bool = False) -> Any:
    """Decode JSON with orjson, else with the standard library; `replace` reads invalid UTF-8 as U+FFFD.

    The standard library takes what orjson refuses and a client or upstream still sends: lone surrogate escapes
    (`"\\ud83d"`, a string a JavaScript client cut mid-emoji) and integers beyond 64 bits. Raises orjson's
    JSONDecodeError (a ValueError) when neither reads it.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        error = exc
    text: bytes | bytearray | str = bytes(data) if isinstance(data, memoryview) else data
    if replace and not isinstance(text, str):
        text = text.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise error from None


def loads_object(data: bytes | bytearray, *, replace: bool = False) -> dict[str, Any] | None:
    """A JSON object, or None for anything else (not JSON, or JSON that is not an object)."""
    try:
        value = loads(data, replace=replace)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def dumps(value: Any, *, compact: bool = True) -> bytes:
    """Serialise with orjson, else with the standard library: what only it read (a lone surrogate, a 65-bit
    integer) goes back out as the same escape and digits. `compact=False` writes its default `, ` and `: `."""
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(value, separators=(",", ":") if compact else None).encode()


def clean_text(text: str) -> str:
    """The string with lone surrogates replaced by U+FFFD, so that it encodes and serialises."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


def utf8(text: str) -> bytes:
    """UTF-8 bytes of a string, lone surrogates replaced rather than refused."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text).encode()


def clean_json(value: Any, depth: int = 0) -> Any:
    """A copy that serialises: lone surrogates replaced, nesting beyond any real message cut to a marker."""
    if isinstance(value, str):
        return clean_text(value)
    if depth > NESTING_LIMIT:
        return TRUNCATION_MARKER
    if isinstance(value, list | tuple):
        return [clean_json(item, depth + 1) for item in value]
    if isinstance(value, dict):
        return {clean_text(str(key)): clean_json(item, depth + 1) for key, item in value.items()}
    return value


def dumps_clean(value: Any) -> bytes:
    """Serialise JSON-ready data for storage, cleaning it first if it does not serialise as it is."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        return orjson.dumps(clean_json(value), option=orjson.OPT_NON_STR_KEYS)
