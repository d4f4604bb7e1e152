"""docs/admin-guide.md names outputs, resources and variables that exist, and covers every task it must."""

from __future__ import annotations

import re

import pytest

from tests.deploy.conftest import ROOT, Terraform

GUIDE = (ROOT / "docs" / "admin-guide.md").read_text()


def test_outputs_named_in_the_guide_exist(terraform: Terraform) -> None:
    named = set(re.findall(r"terraform(?: -chdir=\S+)? output (?:-raw )?([a-z_]+)", GUIDE))
    assert named, "the guide should use terraform outputs"
    assert named <= set(terraform.outputs), f"unknown outputs: {sorted(named - set(terraform.outputs))}"


def test_target_addresses_in_the_guide_exist(terraform: Terraform) -> None:
    for address in re.findall(r"-target=([a-z0-9_]+)\.([a-z0-9_]+)", GUIDE):
        assert address in terraform.resources, f"-target={'.'.join(address)} does not exist"


def test_variables_set_in_the_guide_exist(terraform: Terraform) -> None:
    named = set(re.findall(r"`([a-z_]+) = [^`]+`", GUIDE))
    assert named <= set(terraform.variables), f"unknown variables: {sorted(named - set(terraform.variables))}"


@pytest.mark.parametrize(
    "topic",
    [
        "Prerequisites",
        "organisation",
        "Desktop app",
        "terraform apply",
        "gcloud secrets versions add",
        "Build and deploy",
        "Grant access",
        "claude-shim doctor",
        "Rotate the Anthropic key",
        "Revoke a person",
        "costs per group",
        "Groups Reader",
        "Manual steps, in one place",
        "Who can read the audit data",
        "Context-aware access",
        "What a developer sees when refused",
        "Alerts and the dashboard",
        "claude-gateway audit report",
    ],
)
def test_guide_covers(topic: str) -> None:
    assert topic in GUIDE


# BigQuery's reserved keywords (GoogleSQL lexical structure); a column named like one must be backquoted.
RESERVED = set(
    """
    all and any array as asc assert_rows_modified at between by case cast collate contains create cross cube current
    default define desc distinct else end enum escape except exclude exists extract false fetch following for from
    full group grouping groups hash having if ignore in inner intersect interval into is join lateral left like limit
    lookup merge natural new no not null nulls of on or order outer over partition preceding proto qualify range
    recursive respect right rollup rows select set some struct tablesample then to treat true unbounded union unnest
    using when where window with within
    """.split()
)


def test_guide_queries_backquote_columns_named_like_reserved_words() -> None:
    from gateway.audit.schema import COLUMN_NAMES

    reserved_columns = RESERVED & set(COLUMN_NAMES)
    assert "groups" in reserved_columns
    queries = re.findall(r"```sql\n(.*?)```", GUIDE, re.S) + re.findall(r"bq query [^']*'(.*?)'", GUIDE, re.S)
    assert queries
    for query in queries:
        bare = re.sub(r"`[^`]*`|'[^']*'", "", query)
        used = reserved_columns & {word.lower() for word in re.findall(r"[A-Za-z_]+", bare)}
        assert not used, f"unquoted reserved column(s) {sorted(used)} in:\n{query}"


# The role a deployer without Owner needs for each kind of resource terraform/ creates (section 1 lists them).
ROLE_FOR_RESOURCES = {
    "google_project_service": "roles/serviceusage.serviceUsageAdmin",
    "google_cloud_run_": "roles/run.admin",
    "google_iap_": "roles/iap.admin",
    "google_project_iam_member": "roles/resourcemanager.projectIamAdmin",
    "google_project_iam_custom_role": "roles/iam.roleAdmin",
    "google_service_account": "roles/iam.serviceAccountAdmin",
    "google_bigquery_": "roles/bigquery.admin",
    "google_secret_manager_": "roles/secretmanager.admin",
    "google_artifact_registry_": "roles/artifactregistry.admin",
    "google_storage_": "roles/storage.admin",
    "google_logging_": "roles/logging.configWriter",
    "google_monitoring_": "roles/monitoring.editor",
    "google_redis_": "roles/redis.admin",
    "google_compute_": "roles/compute.networkAdmin",
    "google_access_context_manager_": "roles/accesscontextmanager.policyEditor",
}


def test_guide_names_the_deployer_role_for_every_kind_of_resource(terraform: Terraform) -> None:
    for kind in {kind for kind, _ in terraform.resources}:
        prefixes = [prefix for prefix in ROLE_FOR_RESOURCES if kind.startswith(prefix)]
        assert prefixes, f"{kind}: which role creates it? Add it to the guide's role list and to this table"
        role = ROLE_FOR_RESOURCES[max(prefixes, key=len)]
        assert f"`{role}`" in GUIDE, f"the guide's role list lacks {role} (for {kind})"
