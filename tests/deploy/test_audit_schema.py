"""terraform/audit_schema.json is generated from the package; a stale copy would create the wrong table."""

from __future__ import annotations

import json

from gateway.audit.schema import bigquery_schema_json
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
