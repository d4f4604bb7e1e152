"""Model id patterns as the policy file writes them: `*` any run of characters, `?` one, matched whole, case-blind."""

from __future__ import annotations

import re


def compile_glob(pattern: str) -> re.Pattern[str]:
    """The regex of a pattern, lowercased: match it with `fullmatch` against a lowercased id."""
    # Every other character is literal (`.` too), so a pattern never surprises.
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower()))
