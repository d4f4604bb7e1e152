"""terraform/audit_schema.json and content_schema.json are generated from the package; a stale copy would create
the wrong table."""

from __future__ import annotations

import json

from gateway.audit.schema import bigquery_schema_json
from gateway.capture.schema import content_schema_json
from gateway.telemetry.schema import telemetry_schema_json
from tests.deploy.conftest import TERRAFORM

REGENERATE = (
    '.venv/bin/python -c "import json; from gateway.audit.schema import bigquery_schema_json; '
    'print(json.dumps(bigquery_schema_json(), indent=2))" > terraform/audit_schema.json'
)


def test_schema_file_equals_the_package_schema() -> None:
    on_disk = json.loads((TERRAFORM / "audit_schema.json").read_text())
    assert on_disk == bigquery_schema_json(), f"terraform/audit_schema.json is stale; regenerate it:\n{REGENERATE}"


def test_schema_file_is_formatted_as_generated() -> None:
    expected = json.dumps(bigquery_schema_json(), indent=2) + "\n"
    assert (TERRAFORM / "audit_schema.json").read_text() == expected, f"regenerate it:\n{REGENERATE}"


def test_content_schema_file_equals_the_package_schema() -> None:
    expected = json.dumps(content_schema_json(), indent=2) + "\n"
    assert (TERRAFORM / "content_schema.json").read_text() == expected, (
        "terraform/content_schema.json is stale; regenerate it:\n"
        ".venv/bin/claude-gateway bq schema --content > terraform/content_schema.json"
    )


def test_telemetry_schema_file_equals_the_package_schema() -> None:
    expected = json.dumps(telemetry_schema_json(), indent=2) + "\n"
    assert (TERRAFORM / "telemetry_schema.json").read_text() == expected, (
        "terraform/telemetry_schema.json is stale; regenerate it:\n"
        '.venv/bin/python -c "import json; from gateway.telemetry.schema import telemetry_schema_json; '
        'print(json.dumps(telemetry_schema_json(), indent=2))" > terraform/telemetry_schema.json'
    )
