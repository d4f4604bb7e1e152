"""The parser names each command by module and function, so that only the chosen command's imports load."""

from __future__ import annotations

import subprocess
import sys
from importlib import import_module

import pytest

from gateway.cli.parser import Command, build_parser

COMMANDS = [
    ["serve"],
    ["dev"],
    ["audit", "tail"],
    ["audit", "summary"],
    ["audit", "replay", "spill.jsonl"],
    ["audit", "export", "--user", "ada@example.com", "--from", "2026-01-01", "--to", "2026-01-31"],
    ["audit", "report", "--period", "month", "--out", "report.html"],
    ["bq", "schema"],
    ["bq", "init"],
    ["policy", "validate", "policy.yaml"],
    ["policy", "explain", "ada@example.com"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(argv[:2]) for argv in COMMANDS])
def test_every_command_names_a_function_of_its_module(argv: list[str]) -> None:
    command = build_parser().parse_args(argv).func
    assert isinstance(command, Command)
    assert callable(getattr(import_module(f"gateway.cli.{command.module}"), command.function))


@pytest.mark.parametrize(
    ("module", "unwanted"),
    [
        # Cloud Run's cold start: the gateway does not wait for the report's charts or the BigQuery admin client.
        ("serve", ["matplotlib", "google.cloud.bigquery"]),
        ("audit", ["fastapi", "matplotlib", "google.cloud.bigquery"]),
        ("bq", ["fastapi", "matplotlib", "google.cloud.bigquery"]),
        ("policy", ["fastapi", "matplotlib", "google.cloud.bigquery"]),
    ],
)
def test_a_command_module_leaves_out_what_it_does_not_use(module: str, unwanted: list[str]) -> None:
    code = f"import sys, gateway.cli.{module}; print(' '.join(m for m in {unwanted!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.split() == []
