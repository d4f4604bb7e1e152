"""Operator redaction patterns from `GATEWAY_REDACTION_PATTERNS`, read and checked once at start-up."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from gateway.capture.redact import Redactor


def load_patterns(spec: str) -> Mapping[str, str] | list[Any]:
    """Inline JSON, or the path of a YAML or JSON file; either a mapping of name to regex or a list of
    `{name, pattern}`. A ValueError says what is wrong."""
    text = spec.strip()
    if text.startswith(("{", "[")):
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"GATEWAY_REDACTION_PATTERNS is not valid JSON: {exc}") from None
        where = "GATEWAY_REDACTION_PATTERNS"
    else:
        path = Path(text)
        try:
            value = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValueError(f"GATEWAY_REDACTION_PATTERNS: cannot read {path}: {exc.strerror or exc}") from None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ValueError(f"GATEWAY_REDACTION_PATTERNS: {path} is not valid YAML or JSON: {exc}") from None
        where = str(path)
    if not isinstance(value, Mapping | list):
        raise ValueError(f"{where}: expected a mapping of name to regex, or a list of {{name, pattern}}")
    return value


def load_redactor(spec: str | None) -> Redactor:
    """The built-in patterns plus the operator's; a ValueError names the pattern that does not compile."""
    if not spec:
        return Redactor()
    patterns = load_patterns(spec)
    try:
        return Redactor(patterns)
    except ValueError as exc:
        raise ValueError(f"GATEWAY_REDACTION_PATTERNS: {exc}") from None
