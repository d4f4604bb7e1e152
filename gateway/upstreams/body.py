"""Request bodies an upstream re-shapes (Vertex's model in the URL, the Vertex protocol's model in the body): read
and written back as the upstream would take them, with bad JSON a 400 and never a crash."""

from __future__ import annotations

from typing import Any

from gateway import jsonish
from gateway.errors import GatewayError


def loads_object(body: bytes) -> dict[str, Any]:
    """The JSON object a request body holds, or a 400. Like the proxy, this accepts what only the standard library
    reads: a lone surrogate escape (`"\\ud83d"`, a string a JavaScript client cut mid-emoji), a 65-bit integer."""
    try:
        data = jsonish.loads(body)
    except ValueError as exc:
        raise GatewayError(400, f"Request body is not valid JSON: {exc}", outcome="bad_request") from None
    if not isinstance(data, dict):
        raise GatewayError(400, "Request body must be a JSON object.", outcome="bad_request")
    return data
