"""The `claude-gateway` command: `main` parses the command line (parser.py) and runs the chosen command."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.cli.output import CLIError, fail
from gateway.cli.parser import build_parser

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except CLIError as exc:
        fail(exc)
        return 2
    except KeyboardInterrupt:
        return 130
