"""What a request sent: non-content facts for `metadata+`, and its messages, capped, for `full`."""

from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
from typing import Any

import orjson

from gateway.capture.assemble import DEFAULT_CAP_BYTES
from gateway.jsonish import NESTING_LIMIT, TRUNCATION_MARKER, clean_json, clean_text, loads, utf8

# Anthropic accepts request bodies up to 32 MB; beyond twice that nothing is parsed (the proxy's own body limit
# normally stops such a request first).
MAX_REQUEST_BYTES = 64 * 1024 * 1024
# Lists of names stay bounded whatever a body holds.
_MAX_NAMES = 512
_MAX_NAME_CHARS = 200
_TOOL_USE_TYPES = frozenset(("tool_use", "server_tool_use", "mcp_tool_use"))


def _parse(body: object, max_bytes: int) -> tuple[dict[str, Any] | None, str | None]:
    """The body as a JSON object, or None and why not."""
    if not isinstance(body, bytes | bytearray | memoryview):
        return None, "request body is not bytes"
    if len(body) > max_bytes:
        return None, f"request body of {len(body)} bytes is larger than {max_bytes}; not parsed"
    try:
        value = loads(bytes(body), replace=True)
    except ValueError as exc:
        return None, f"request body is not valid JSON: {exc}"[:500]
    if not isinstance(value, dict):
        return None, "request body is not a JSON object"
    return value, None


def _blocks(content: object) -> list[dict[str, Any]]:
    """The content blocks of a message or system prompt; a bare string is one text block."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [block for block in content if isinstance(block, dict)]
    return []


def system_sha256(system: object) -> str | None:
    """SHA-256 of the system prompt's text, alike whether it came as a string or as text blocks."""
    if system is None:
        return None
    texts = [block["text"] for block in _blocks(system) if isinstance(block.get("text"), str)]
    # Joined with a newline so that a prompt split into blocks differently (or cache_control moved) still hashes
    # alike when its text is the same.
    return hashlib.sha256(utf8("\n".join(texts))).hexdigest()


def _name(value: object) -> str | None:
    return value[:_MAX_NAME_CHARS] if isinstance(value, str) and value else None


def _add(names: list[str], seen: set[str], name: str | None) -> None:
    if name is not None and name not in seen and len(names) < _MAX_NAMES:
        seen.add(name)
        names.append(name)


def summarise_request(body: bytes, *, max_bytes: int = MAX_REQUEST_BYTES) -> dict[str, Any]:
    """Non-content facts about a Messages request (the `metadata+` level); never raises."""
    summary: dict[str, Any] = {
        "system_sha256": None,
        "message_count": 0,
        "tools_offered": [],
        "tools_used": [],
        "has_images": False,
        "has_documents": False,
        "error": None,
    }
    request, error = _parse(body, max_bytes)
    if request is None:
        summary["error"] = error
        return summary
    try:
        summary["system_sha256"] = system_sha256(request.get("system"))
        offered: list[str] = []
        seen: set[str] = set()
        tools = request.get("tools")
        for tool in tools if isinstance(tools, list) else ():
            if isinstance(tool, dict):
                _add(offered, seen, _name(tool.get("name")))
        summary["tools_offered"] = offered

        used: list[str] = []
        seen = set()
        kinds: set[str] = set()
        messages = request.get("messages")
        messages = messages if isinstance(messages, list) else []
        summary["message_count"] = len(messages)
        for message in messages:
            if not isinstance(message, dict):
                continue
            for block in _blocks(message.get("content")):
                kind = block.get("type")
                if kind in _TOOL_USE_TYPES and message.get("role") == "assistant":
                    _add(used, seen, _name(block.get("name")))
                elif isinstance(kind, str):
                    kinds.add(kind)
                    if kind == "tool_result":
                        # A screenshot or a PDF the model read through a tool arrives inside the tool's result.
                        kinds.update(str(inner.get("type")) for inner in _blocks(block.get("content")))
        summary["tools_used"] = used
        summary["has_images"] = "image" in kinds
        summary["has_documents"] = "document" in kinds
    except Exception as exc:  # a body shaped in a way not foreseen still yields what was read so far
        summary["error"] = f"request summary failed: {type(exc).__name__}: {exc}"[:500]
    return summary


# Payloads that are bytes, not text, whatever their media type says: their size and hash are kept instead.
_BINARY_MAGIC = (b"%PDF-", b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"RIFF", b"PK\x03\x04", b"\x1f\x8b")


def _as_text(raw: bytes) -> str | None:
    """The payload as text if it is text (UTF-8, or UTF-16 with its BOM), else None."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError:
            return None
    if raw.startswith(_BINARY_MAGIC) or b"\x00" in raw:
        return None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None


def _decode_payloads(value: Any, depth: int = 0) -> Any:
    """A copy with each base64 payload decoded: text (a `text/plain` document, or anything that decodes as text,
    whatever media type it claims) is kept as `decoded_text`, since the model reads it; images, PDFs and other
    bytes are replaced by their size and SHA-256. Either way `data` itself is dropped."""
    if depth > NESTING_LIMIT:
        return TRUNCATION_MARKER
    if isinstance(value, list):
        return [_decode_payloads(item, depth + 1) for item in value]
    if not isinstance(value, dict):
        return value
    data = value.get("data")
    if value.get("type") == "base64" and isinstance(data, str):
        try:
            raw = base64.b64decode(data, validate=False)
        except (binascii.Error, ValueError):
            raw = utf8(data)
        decoded = {key: item for key, item in value.items() if key != "data"}
        decoded["data_bytes"] = len(raw)
        decoded["data_sha256"] = hashlib.sha256(raw).hexdigest()
        text = _as_text(raw)
        if text is not None:
            decoded["decoded_text"] = text
        return decoded
    return {key: _decode_payloads(item, depth + 1) for key, item in value.items()}


def _size(value: Any) -> int:
    """Serialised size in bytes."""
    return len(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS))


def _sized(value: Any) -> tuple[Any, int]:
    """The value, made serialisable if it was not (lone surrogates from a lenient parse), and its size."""
    try:
        return value, _size(value)
    except orjson.JSONEncodeError:
        value = clean_json(value)
        return value, _size(value)


def _clip(value: Any, budget: int, depth: int = 0) -> tuple[Any, int]:
    """The value cut to `budget` serialised bytes (strings end in the marker, containers end early), and its size."""
    if isinstance(value, str):
        value = clean_text(value)
        size = _size(value)
        if size <= budget:
            return value, size
        keep = max(budget - len(TRUNCATION_MARKER) - 2, 0)
        raw = utf8(value)[:keep]
        # Escapes make the serialised form longer than the UTF-8; shrink until it fits.
        while True:
            clipped = raw.decode("utf-8", "ignore") + TRUNCATION_MARKER
            size = _size(clipped)
            if size <= budget or not raw:
                return clipped, size
            raw = raw[: max(len(raw) - (size - budget), 0)]
    if depth > NESTING_LIMIT:
        return TRUNCATION_MARKER, len(TRUNCATION_MARKER) + 2
    if isinstance(value, list):
        items: list[Any] = []
        used = 2
        for item in value:
            if used + 1 >= budget:
                break
            clipped, size = _clip(item, budget - used - 1, depth + 1)
            items.append(clipped)
            used += size + 1
        return items, used
    if isinstance(value, dict):
        fields: dict[str, Any] = {}
        used = 2
        for key, item in value.items():
            key = clean_text(str(key))
            cost = _size(key) + 2
            if used + cost >= budget:
                break
            clipped, size = _clip(item, budget - used - cost, depth + 1)
            fields[key] = clipped
            used += cost + size
        return fields, used
    size = _size(value)
    return (value, size) if size <= budget else (None, 4)


def _fit(value: Any, budget: int) -> tuple[Any, int, bool]:
    """The value whole if it fits the budget, else clipped to it; and the bytes it takes, and whether it was cut."""
    value, size = _sized(value)
    if size <= budget:
        return value, size, False
    clipped, size = _clip(value, budget)
    return clipped, size, True


# Request fields kept apart in the capture; every other field (model, tool_choice, mcp_servers, thinking, ...)
# goes under `params`, so that nothing a request carries to the model is left out.
_OWN_FIELDS = frozenset(("messages", "system", "tools"))


def capture_request(
    body: bytes, cap_bytes: int = DEFAULT_CAP_BYTES, *, max_bytes: int = MAX_REQUEST_BYTES
) -> dict[str, Any]:
    """What the request gives the model (the `full` level), within about `cap_bytes`; never raises: the system
    prompt, the messages (tool results and decoded text documents included), the tool definitions with their
    descriptions, and the other parameters."""
    # Kept in this order until the cap: the newest message (what the person just sent), the system prompt, the
    # tools, the other parameters, then older messages newest first; the older ones that do not fit are left out
    # and counted in `omitted_messages`.
    capture: dict[str, Any] = {
        "system": None,
        "messages": [],
        "tools": None,
        "params": None,
        "message_count": 0,
        "omitted_messages": 0,
        "truncated": False,
        "raw": None,
        "error": None,
    }
    cap = max(int(cap_bytes), 0)
    request, error = _parse(body, max_bytes)
    if request is None:
        capture["error"] = error
        if isinstance(body, bytes | bytearray | memoryview):
            # Not JSON, but still what was sent: keep its text up to the cap.
            raw = bytes(body[: cap + 4])
            capture["raw"], _, cut = _fit(raw.decode("utf-8", "replace"), cap)
            capture["truncated"] = cut or len(body) > len(raw)
        return capture
    try:
        messages = request.get("messages")
        messages = messages if isinstance(messages, list) else []
        capture["message_count"] = len(messages)
        params = {key: value for key, value in request.items() if key not in _OWN_FIELDS} or None
        parts: list[tuple[str, Any]] = [("system", request.get("system")), ("tools", request.get("tools"))]
        parts.append(("params", params))
        if b'"base64"' in bytes(body):
            messages = _decode_payloads(messages)
            parts = [(name, _decode_payloads(value)) for name, value in parts]
        budget = cap
        kept: list[Any] = []
        truncated = False
        if messages:
            last, size, truncated = _fit(messages[-1], budget)
            kept.append(last)
            budget -= size
        for name, value in parts:
            if value is not None:
                capture[name], size, cut = _fit(value, max(budget, 0))
                truncated |= cut
                budget -= size
        omitted = 0
        for index in range(len(messages) - 2, -1, -1):
            message, size = _sized(messages[index])
            if size > budget:
                omitted = index + 1
                truncated = True
                break
            kept.append(message)
            budget -= size
        kept.reverse()
        capture["messages"] = kept
        capture["omitted_messages"] = omitted
        capture["truncated"] = truncated
    except Exception as exc:  # an unforeseen shape: say so rather than fail the request's audit
        capture["error"] = f"request capture failed: {type(exc).__name__}: {exc}"[:500]
    return capture
