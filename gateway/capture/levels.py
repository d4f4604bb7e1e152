"""Prompt capture levels: the words of the policy file and of the audit rows' `capture_level` column."""

from __future__ import annotations

from enum import StrEnum


class CaptureLevel(StrEnum):
    """How much of a Messages request and its response is kept, from least to most."""

    NONE = "none"
    METADATA = "metadata+"  # facts about the request in the content table, no text
    FULL = "full"  # the request's messages and the response, redacted

    @property
    def rank(self) -> int:
        """Its place from least to most kept: across several rules the most capture wins."""
        return tuple(CaptureLevel).index(self)
