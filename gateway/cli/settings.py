"""The gateway's settings for a command, refused in one readable line rather than a traceback."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from gateway.cli.output import CLIError
from gateway.config import Settings


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        raise CLIError(f"invalid configuration: {reasons}") from None
