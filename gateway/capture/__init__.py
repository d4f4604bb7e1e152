"""Prompt and response capture for audit: redaction, response assembly, request summaries."""

from __future__ import annotations

from gateway.capture.assemble import DEFAULT_CAP_BYTES, ResponseAssembler
from gateway.capture.redact import Redactor, default_redactor
from gateway.capture.summary import capture_request, summarise_request, system_sha256
from gateway.jsonish import TRUNCATION_MARKER

__all__ = [
    "DEFAULT_CAP_BYTES",
    "TRUNCATION_MARKER",
    "Redactor",
    "ResponseAssembler",
    "capture_request",
    "default_redactor",
    "summarise_request",
    "system_sha256",
]
