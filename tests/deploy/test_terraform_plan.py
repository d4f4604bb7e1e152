"""What `terraform plan` would create, read from the planned values of a real plan (tests/deploy/offline_plan.py)."""

from __future__ import annotations

import json
from typing import Any

from tests.deploy.conftest import REQUIRED_VARIABLES
from tests.deploy.offline_plan import VIEWS, Plan, Planner

GATEWAY = "ref:google_service_account.gateway.member"
CUSTOM_ROLE = "google_project_iam_custom_role.vertex_predict[0].name"


# --- the plan runs ----------------------------------------------------------------------------------------------------


def test_plan_succeeds_offline(plan: Plan) -> None:
    assert plan.to_add == len(plan.resources) > 0
    assert plan.shown["errored"] is False


# --- datasets: closed by default --------------------------------------------------------------------------------------


def _grants_by_dataset(plan: Plan) -> dict[str, set[str]]:
    """Every grant on each dataset and on the tables in it, as `ROLE principal` lines."""
    grants: dict[str, set[str]] = {}
    for values in plan.of_type("google_bigquery_dataset").values():
        entries = grants.setdefault(values["dataset_id"], set())
        for entry in values["access"]:
            if entry["dataset"]:
                (authorised,) = entry["dataset"]
                (dataset,) = authorised["dataset"]
                kinds = "+".join(authorised["target_types"])
                entries.add(f"{kinds} dataset:{dataset['project_id']}.{dataset['dataset_id']}")
                continue
            principals = [
                f"{key}:{entry[key]}"
                for key in ("special_group", "group_by_email", "user_by_email", "domain", "iam_member")
                if entry[key]
            ]
            assert len(principals) == 1 and not entry["view"] and not entry["routine"], f"unexpected entry {entry}"
            entries.add(f"{entry['role']} {principals[0]}")
    for address, values in plan.of_type("google_bigquery_table_iam_member").items():
        member = plan.value(address, "member")
        grants[values["dataset_id"]].add(f"{values['role']} on table {values['table_id']} {member}")
    return grants


def test_every_dataset_grants_exactly_the_intended_accounts(plan: Plan) -> None:
    variables = plan.variables
    dataset = variables["bigquery_dataset_id"]
    content_readers = variables["content_reader_groups"]
    owners = "OWNER special_group:projectOwners"
    assert _grants_by_dataset(plan) == {
        dataset: {
            owners,
            f"VIEWS dataset:{variables['project_id']}.{dataset}_security",
            f"roles/bigquery.dataEditor on table {variables['audit_table_id']} {GATEWAY}",
            f"roles/bigquery.dataEditor on table telemetry {GATEWAY}",
        },
        f"{dataset}_security": {owners} | {f"READER group_by_email:{g}" for g in variables["security_reader_groups"]},
        f"{dataset}_content": {
            owners,
            f"roles/bigquery.dataEditor on table {variables['content_table_id']} {GATEWAY}",
        }
        | {f"roles/bigquery.dataViewer on table {variables['content_table_id']} group:{g}" for g in content_readers},
    }


def test_no_other_bigquery_grant_exists(plan: Plan) -> None:
    """Dataset access resources or dataset IAM beside the access lists would fight over them; project-wide
    BigQuery data roles would reach every dataset. Readers only get to run query jobs in the project."""
    kinds = {address.split(".")[0] for address in plan.resources}
    grants = {kind for kind in kinds if kind.startswith(("google_bigquery_dataset_", "google_bigquery_table_iam_"))}
    assert grants <= {"google_bigquery_table_iam_member"}
    project_bigquery_roles = {
        (values["role"], values["member"])
        for values in plan.of_type("google_project_iam_member").values()
        if "bigquery" in str(values.get("role"))
    }
    readers = {*plan.variables["security_reader_groups"], *plan.variables["content_reader_groups"]}
    assert project_bigquery_roles == {("roles/bigquery.jobUser", f"group:{group}") for group in readers}


def test_datasets_and_the_prompt_log_bucket_share_one_location(plan: Plan) -> None:
    location = plan.variables["bigquery_location"] or plan.variables["region"]
    assert {values["location"] for values in plan.of_type("google_bigquery_dataset").values()} == {location}
    (bucket,) = plan.of_type("google_logging_project_bucket_config").values()
    assert bucket["location"] == location.lower()


def test_all_features_keeps_data_in_the_eu(all_features_plan: Plan) -> None:
    assert all_features_plan.variables["bigquery_location"] == "EU"
    (bucket,) = all_features_plan.of_type("google_logging_project_bucket_config").values()
    assert bucket["location"] == "eu"


def test_one_security_view_per_sql_file(plan: Plan) -> None:
    views = plan.of_type("google_bigquery_table")
    planned = {values["table_id"]: values for values in views.values() if values.get("view")}
    assert set(planned) == {path.stem for path in VIEWS.glob("*.sql")} and planned
    variables = plan.variables
    table = f"`{variables['project_id']}.{variables['bigquery_dataset_id']}.{variables['audit_table_id']}`"
    telemetry = f"`{variables['project_id']}.{variables['bigquery_dataset_id']}.telemetry`"
    for name, values in planned.items():
        (view,) = values["view"]
        assert table in view["query"] or telemetry in view["query"], name
        assert "{audit_table}" not in view["query"] and "{telemetry_table}" not in view["query"], name
        assert values["dataset_id"] == f"{variables['bigquery_dataset_id']}_security"


# --- least privilege --------------------------------------------------------------------------------------------------


def test_gateway_account_holds_only_what_it_uses(all_features_plan: Plan) -> None:
    plan = all_features_plan
    held = sorted(
        (address.split("[")[0], str(plan.value(address, "role")))
        for address in plan.resources
        if plan.value(address, "member") == GATEWAY
    )
    assert held == [
        ("google_bigquery_table_iam_member.gateway_writes_audit", "roles/bigquery.dataEditor"),
        ("google_bigquery_table_iam_member.gateway_writes_content", "roles/bigquery.dataEditor"),
        ("google_bigquery_table_iam_member.gateway_writes_telemetry", "roles/bigquery.dataEditor"),
        ("google_project_iam_member.gateway_vertex_predict", f"ref:{CUSTOM_ROLE}"),
        ("google_secret_manager_secret_iam_member.gateway_reads_api_key", "roles/secretmanager.secretAccessor"),
        ("google_secret_manager_secret_iam_member.gateway_reads_policy", "roles/secretmanager.secretAccessor"),
    ]
    (role,) = plan.of_type("google_project_iam_custom_role").values()
    assert role["permissions"] == ["aiplatform.endpoints.predict"]
    grant = plan.resources["google_project_iam_member.gateway_vertex_predict[0]"]
    assert role["project"] == grant["project"] == plan.variables["vertex_project_id"]


def test_no_project_wide_logging_or_vertex_role_for_the_gateway(plan: Plan) -> None:
    for address, values in plan.of_type("google_project_iam_member").items():
        if plan.value(address, "member") == GATEWAY:
            assert address.startswith("google_project_iam_member.gateway_vertex_predict"), address
        assert values.get("role") not in {"roles/aiplatform.user", "roles/owner", "roles/editor", "roles/viewer"}


# --- IAP and context-aware access -------------------------------------------------------------------------------------


def test_no_public_principal_anywhere_in_the_plan(plan: Plan) -> None:
    planned = json.dumps(plan.shown["planned_values"])
    for public in ("allUsers", "allAuthenticatedUsers"):
        assert public not in planned


def test_iap_guards_the_service_and_only_its_agent_may_invoke_it(plan: Plan) -> None:
    (service,) = plan.of_type("google_cloud_run_v2_service").values()
    assert service["iap_enabled"] is True and service["invoker_iam_disabled"] is False
    invokers = plan.of_type("google_cloud_run_v2_service_iam_member").values()
    assert {(values["role"], values["member"]) for values in invokers if values["role"] == "roles/run.invoker"} == {
        ("roles/run.invoker", "serviceAccount:service-123456789012@gcp-sa-iap.iam.gserviceaccount.com")
    }  # 123456789012: the stand-in provider's project number
    (settings,) = plan.of_type("google_iap_settings").values()
    (access,) = settings["access_settings"]
    (oauth,) = access["oauth_settings"]
    assert oauth["programmatic_clients"] == [plan.variables["oauth_desktop_client_id"]]


def _accessor_bindings(plan: Plan) -> dict[str, dict[str, Any]]:
    bindings = plan.of_type("google_iap_web_cloud_run_service_iam_member")
    expected = [f"group:{g}" for g in plan.variables["access_groups"]] + [
        f"user:{u}" for u in plan.variables["access_users"]
    ]
    assert sorted(values["member"] for values in bindings.values()) == sorted(expected)
    assert {values["role"] for values in bindings.values()} == {"roles/iap.httpsResourceAccessor"}
    return bindings


def _services(plan: Plan) -> set[str]:
    return {values["service"] for values in plan.of_type("google_project_service").values()}


def test_default_plan_has_no_access_level(planner: Planner) -> None:
    plan = planner.plan(REQUIRED_VARIABLES)
    assert plan.ok, plan.errors
    assert all(values["condition"] == [] for values in _accessor_bindings(plan).values())
    assert not plan.of_type("google_access_context_manager_access_level")
    assert "accesscontextmanager.googleapis.com" not in _services(plan)


def test_a_created_access_level_is_required_on_every_iap_grant(all_features_plan: Plan) -> None:
    plan = all_features_plan
    (level,) = plan.of_type("google_access_context_manager_access_level").values()
    assert level["parent"] == "accessPolicies/123456789"
    assert level["name"] == "accessPolicies/123456789/accessLevels/claude_gateway"
    (basic,) = level["basic"]
    assert basic["combining_function"] == "AND"
    networks, devices = basic["conditions"]
    assert networks["ip_subnetworks"] == ["203.0.113.0/24", "2001:db8::/32"] and not networks["device_policy"]
    (device,) = devices["device_policy"]
    assert device["require_screen_lock"] is True and device["require_corp_owned"] is True
    assert device["allowed_encryption_statuses"] == ["ENCRYPTED"]
    assert sorted(os["os_type"] for os in device["os_constraints"]) == ["DESKTOP_LINUX", "DESKTOP_MAC"]
    for values in _accessor_bindings(plan).values():
        (condition,) = values["condition"]
        assert condition["expression"] == f'"{level["name"]}" in request.auth.access_levels'
    assert "accesscontextmanager.googleapis.com" in _services(plan)


def test_an_existing_access_level_can_be_required_instead(planner: Planner) -> None:
    existing = "accessPolicies/987654321/accessLevels/corp_network"
    plan = planner.plan({**REQUIRED_VARIABLES, "access_users": ["someone@example.com"], "access_level": existing})
    assert plan.ok, plan.errors
    assert not plan.of_type("google_access_context_manager_access_level")
    bindings = _accessor_bindings(plan)
    assert len(bindings) == 2
    for values in bindings.values():
        (condition,) = values["condition"]
        assert condition["expression"] == f'"{existing}" in request.auth.access_levels'


# --- the container ----------------------------------------------------------------------------------------------------


def test_upstreams_reach_the_gateway_in_failover_order(plan: Plan) -> None:
    (service,) = plan.of_type("google_cloud_run_v2_service").values()
    (template,) = service["template"]
    (container,) = template["containers"]
    env = {item["name"]: item for item in container["env"]}
    upstream = plan.variables["upstream"]
    assert env["GATEWAY_UPSTREAM"]["value"] == ",".join(upstream)
    uses_vertex = any(u.startswith("vertex") for u in upstream)
    assert ("GATEWAY_VERTEX_PROJECT" in env) is uses_vertex
    if uses_vertex:
        vertex_project = plan.variables["vertex_project_id"] or plan.variables["project_id"]
        assert env["GATEWAY_VERTEX_PROJECT"]["value"] == vertex_project
    if "anthropic" in upstream:
        key = env["GATEWAY_ANTHROPIC_API_KEY"]
        assert not key.get("value"), "the key is a Secret Manager reference, never a value"
        (source,) = key["value_source"]
        (reference,) = source["secret_key_ref"]
        assert reference["secret"] == f"{plan.variables['name']}-anthropic-api-key"
    else:
        assert "GATEWAY_ANTHROPIC_API_KEY" not in env
