"""One schema in the package; Terraform, SQLite and the audit record all follow it."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from gateway.admin.bq_admin import PLACEHOLDER, view_templates
from gateway.audit.bigquery import CLUSTERING_FIELDS, PARTITION_FIELD
from gateway.audit.record import AuditRecord
from gateway.audit.schema import COLUMN_NAMES
from gateway.audit.sqlite import TABLE, create_table_sql
from gateway.cli import main
from tests.deploy.conftest import TERRAFORM, parse_terraform


def test_terraform_schema_file_is_what_bq_schema_prints(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bq", "schema"]) == 0
    printed = capsys.readouterr().out

    assert (TERRAFORM / "audit_schema.json").read_text() == printed, (
        "terraform/audit_schema.json is stale: claude-gateway bq schema > terraform/audit_schema.json"
    )


def test_terraform_lays_out_the_table_as_bq_init_does() -> None:
    terraform = parse_terraform()
    table = terraform.resource("google_bigquery_table", "audit")
    views = terraform.resource("google_bigquery_table", "security_views")

    assert table["clustering"] == list(CLUSTERING_FIELDS)
    (partitioning,) = table["time_partitioning"]
    assert (partitioning["type"], partitioning["field"]) == ("DAY", PARTITION_FIELD)
    assert table["require_partition_filter"] is True
    assert "audit_schema.json" in table["schema"]
    assert f'"{PLACEHOLDER}"' in views["view"][0]["query"] and "*.sql" in views["for_each"]
    assert terraform.locals["views_dir"].endswith("gateway/admin/views")


def test_the_sqlite_table_and_the_audit_record_have_the_bigquery_columns(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "audit.db") as connection:
        connection.execute(create_table_sql())
        columns = [row[1] for row in connection.execute(f"PRAGMA table_info({TABLE})")]
    connection.close()

    assert columns == list(COLUMN_NAMES)
    assert {field.name for field in dataclasses.fields(AuditRecord)} == set(COLUMN_NAMES)


def test_the_security_teams_guide_explains_every_column_and_view() -> None:
    guide = (Path(__file__).parents[3] / "docs" / "security-teams.md").read_text()

    undocumented = [name for name in COLUMN_NAMES if f"| `{name}` |" not in guide]
    assert undocumented == [], "add these columns to the table in docs/security-teams.md#the-columns"
    unexplained = [name for name in view_templates() if f"| `{name}` |" not in guide]
    assert unexplained == [], "add these views to the table in docs/security-teams.md#the-views"
