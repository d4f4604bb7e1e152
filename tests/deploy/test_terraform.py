"""The security-critical facts of terraform/, read from the parsed configuration (no provider plugins needed)."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import pytest

from tests.deploy.conftest import ROOT, TERRAFORM, Terraform, dynamic_blocks, load_hcl, one
from tests.deploy.offline_plan import skip_or_fail

SERVICE = ("google_cloud_run_v2_service", "gateway")


def _container(terraform: Terraform) -> dict[str, Any]:
    template = one(terraform.resource(*SERVICE)["template"])
    containers = template["containers"]
    assert len(containers) == 1, "the service runs exactly one container"
    return dict(containers[0])


def _env(terraform: Terraform) -> dict[str, dict[str, Any]]:
    """Every environment variable the container may get, static or dynamic, by name."""
    container = _container(terraform)
    env = {item["name"]: item for item in container.get("env", [])}
    for item in dynamic_blocks(container, "env"):
        names = re.findall(r"\b(GATEWAY_[A-Z_]+)\s*=", item["__for_each__"]) or [item["name"]]
        for name in names:
            env[name] = item
    return env


def _version_bounds(constraint: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    lower = re.search(r">=\s*([0-9.]+)", constraint)
    upper = re.search(r"<\s*([0-9.]+)", constraint)
    assert lower and upper, f"{constraint!r} must have a lower (>=) and an upper (<) bound"
    return (
        tuple(int(part) for part in lower.group(1).split(".")),
        tuple(int(part) for part in upper.group(1).split(".")),
    )


# --- versions -----------------------------------------------------------------------------------------------------


def test_terraform_and_providers_are_pinned_to_bounded_ranges(terraform: Terraform) -> None:
    settings = one(terraform.settings)
    _version_bounds(settings["required_version"])
    providers = one(settings["required_providers"])
    for name in ("google", "google-beta"):
        assert providers[name]["source"] == f"hashicorp/{name}"
        lower, upper = _version_bounds(providers[name]["version"])
        # google_cloud_run_v2_service.iap_enabled is GA from provider 7.21.
        assert lower >= (7, 21), f"{name} must be at least 7.21"
        assert upper[0] <= 8, f"{name} must stay below the next major version"


# --- Cloud Run and IAP --------------------------------------------------------------------------------------------


def test_cloud_run_service_has_iap_enabled(terraform: Terraform) -> None:
    assert terraform.resource(*SERVICE)["iap_enabled"] is True


def test_cloud_run_keeps_the_invoker_iam_check(terraform: Terraform) -> None:
    assert terraform.resource(*SERVICE).get("invoker_iam_disabled", False) is False


def test_ingress_comes_from_a_validated_variable(terraform: Terraform) -> None:
    assert terraform.resource(*SERVICE)["ingress"] == "${var.ingress}"
    variable = terraform.variables["ingress"]
    assert variable["default"] == "INGRESS_TRAFFIC_ALL"
    condition = one(variable["validation"])["condition"]
    for allowed in ("INGRESS_TRAFFIC_ALL", "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER", "INGRESS_TRAFFIC_INTERNAL_ONLY"):
        assert allowed in condition


def test_no_public_principal_is_granted_anything(terraform: Terraform) -> None:
    public = re.compile(r"allUsers|allAuthenticatedUsers", re.I)
    for (kind, name), body in terraform.resources.items():
        for key in ("member", "members", "special_group", "iam_member"):
            if key in body:
                assert not public.search(str(body[key])), f"{kind}.{name}.{key} grants a public principal"
    for name, value in terraform.locals.items():
        assert not public.search(str(value)), f"local.{name} names a public principal"


def test_only_the_iap_service_agent_may_invoke_the_service(terraform: Terraform) -> None:
    service_agent = terraform.locals["iap_service_agent"]
    assert service_agent == "serviceAccount:service-${local.project_number}@gcp-sa-iap.iam.gserviceaccount.com"
    invokers = [
        body for body in terraform.of_type("google_cloud_run_v2_service_iam_member").values()
        if body["role"] == "roles/run.invoker"
    ]  # fmt: skip
    assert [body["member"] for body in invokers] == ["${local.iap_service_agent}"]
    assert not terraform.of_type("google_cloud_run_v2_service_iam_binding")
    assert not terraform.of_type("google_cloud_run_v2_service_iam_policy")
    assert not terraform.of_type("google_cloud_run_service_iam_member"), "use the v2 IAM resources only"


def test_gateway_checks_the_audience_of_iap_on_cloud_run(terraform: Terraform) -> None:
    assert terraform.resource(*SERVICE)["name"] == "${var.name}"
    audience = terraform.locals["iap_audience"]
    assert audience == "/projects/${local.project_number}/locations/${var.region}/services/${var.name}"
    assert _env(terraform)["GATEWAY_IAP_AUDIENCE"]["value"] == "${local.iap_audience}"


def test_groups_get_the_iap_accessor_role(terraform: Terraform) -> None:
    (access,) = terraform.of_type("google_iap_web_cloud_run_service_iam_member").values()
    assert access["role"] == "roles/iap.httpsResourceAccessor"
    assert access["for_each"] == "${toset(local.iap_members)}"
    assert access["cloud_run_service_name"] == "${google_cloud_run_v2_service.gateway.name}"
    members = terraform.locals["iap_members"]
    assert 'for group in var.access_groups : "group:${group}"' in members
    assert 'for user in var.access_users : "user:${user}"' in members


def test_desktop_oauth_client_is_allowed_programmatic_access(terraform: Terraform) -> None:
    settings = terraform.resource("google_iap_settings", "gateway")
    assert settings["name"] == (
        "projects/${local.project_number}/iap_web/cloud_run-${var.region}/services/"
        "${google_cloud_run_v2_service.gateway.name}"
    )
    oauth = one(one(settings["access_settings"])["oauth_settings"])
    assert oauth["programmatic_clients"] == ["${var.oauth_desktop_client_id}"]


# --- secrets --------------------------------------------------------------------------------------------------------


def test_no_secret_value_is_in_terraform(terraform: Terraform) -> None:
    assert not terraform.of_type("google_secret_manager_secret_version"), "secret values are set with gcloud"
    for kind, name in terraform.data:
        assert not kind.startswith("google_secret_manager_secret_version"), (
            f"data.{kind}.{name} reads a secret into state"
        )
    for text in terraform.files.values():
        assert "secret_data" not in text


def test_api_key_reaches_the_container_as_a_secret_reference(terraform: Terraform) -> None:
    key = _env(terraform)["GATEWAY_ANTHROPIC_API_KEY"]
    assert "value" not in key
    reference = one(one(key["value_source"])["secret_key_ref"])
    assert reference["secret"] == "${google_secret_manager_secret.anthropic_api_key.secret_id}"


def test_policy_file_is_a_mounted_secret(terraform: Terraform) -> None:
    template = one(terraform.resource(*SERVICE)["template"])
    (volume,) = dynamic_blocks(template, "volumes")
    assert volume["__for_each__"] == "${var.policy_enabled ? [1] : []}"
    assert one(volume["secret"])["secret"] == "${google_secret_manager_secret.policy.secret_id}"
    (mount,) = dynamic_blocks(_container(terraform), "volume_mounts")
    assert mount["name"] == volume["name"]
    assert terraform.locals["policy_file"].startswith("${local.policy_mount_dir}/")
    assert terraform.variables["policy_enabled"]["default"] is False


# --- the container's settings ---------------------------------------------------------------------------------------


def test_every_gateway_setting_is_wired(terraform: Terraform) -> None:
    expected = {
        "GATEWAY_IAP_AUDIENCE",
        "GATEWAY_ALLOWED_DOMAINS",
        "GATEWAY_AUDIT_SINK",
        "GATEWAY_ANTHROPIC_API_KEY",
        "GATEWAY_UPSTREAM",
        "GATEWAY_VERTEX_PROJECT",
        "GATEWAY_VERTEX_REGION",
        "GATEWAY_POLICY_FILE",
        "GATEWAY_REDIS_URL",
        "GATEWAY_PROJECT",
        "GATEWAY_CONTENT_SINK",
    }
    env = _env(terraform)
    assert expected <= set(env), f"not wired: {sorted(expected - set(env))}"
    assert "GATEWAY_DEV_MODE" not in env
    assert terraform.locals["audit_sink"].startswith("bigquery://${var.project_id}/")


def test_cpu_is_always_allocated_for_the_audit_flusher(terraform: Terraform) -> None:
    resources = one(_container(terraform)["resources"])
    assert resources["cpu_idle"] is False


def test_probes_use_the_health_endpoint(terraform: Terraform) -> None:
    container = _container(terraform)
    for probe in ("startup_probe", "liveness_probe"):
        assert one(one(container[probe])["http_get"])["path"] == "/healthz"


def test_cloud_build_owns_the_image_after_the_first_apply(terraform: Terraform) -> None:
    lifecycle = one(terraform.resource(*SERVICE)["lifecycle"])
    assert "${template[0].containers[0].image}" in lifecycle["ignore_changes"]
    # What `gcloud run services update` stamps on the service besides the image: no drift after each deploy.
    for stamped in ("${template[0].annotations}", "client", "client_version"):
        assert stamped in lifecycle["ignore_changes"]


# --- BigQuery -------------------------------------------------------------------------------------------------------


def test_audit_table_is_partitioned_clustered_and_protected(terraform: Terraform) -> None:
    table = terraform.resource("google_bigquery_table", "audit")
    partitioning = one(table["time_partitioning"])
    assert partitioning["type"] == "DAY"
    assert partitioning["field"] == "timestamp"
    assert table["require_partition_filter"] is True
    assert table["deletion_protection"] is True
    assert table["clustering"][:2] == ["user_email", "requested_model"]
    assert len(table["clustering"]) <= 4
    assert table["schema"] == '${file("${path.module}/audit_schema.json")}'


def test_audit_columns_used_by_terraform_exist_in_the_schema(terraform: Terraform) -> None:
    from gateway.audit.schema import COLUMN_NAMES

    table = terraform.resource("google_bigquery_table", "audit")
    for column in [*table["clustering"], one(table["time_partitioning"])["field"]]:
        assert column in COLUMN_NAMES


def test_views_come_from_the_repository_views_folder_by_default(terraform: Terraform) -> None:
    assert terraform.locals["views_dir"] == "${path.module}/../gateway/admin/views"
    assert terraform.locals["view_sources"] == "${coalesce(var.security_views_dir, local.views_dir)}"
    views = terraform.resource("google_bigquery_table", "security_views")
    assert views["for_each"] == '${fileset(local.view_sources, "*.sql")}'
    assert one(views["view"])["use_legacy_sql"] is False


def test_content_table_is_apart_partitioned_and_expires(terraform: Terraform) -> None:
    dataset = terraform.resource("google_bigquery_dataset", "content")
    assert dataset["dataset_id"] == "${var.bigquery_dataset_id}_content"  # no audit-dataset grant reaches it
    table = terraform.resource("google_bigquery_table", "content")
    assert table["dataset_id"] == "${google_bigquery_dataset.content.dataset_id}"
    assert table["schema"] == '${file("${path.module}/content_schema.json")}'
    assert table["require_partition_filter"] is True and table["deletion_protection"] is True
    partitioning = one(table["time_partitioning"])
    assert (partitioning["type"], partitioning["field"]) == ("DAY", "timestamp")
    assert "var.content_retention_days * local.partition_days_ms" in partitioning["expiration_ms"]
    assert terraform.variables["content_retention_days"]["default"] == 30
    assert _env(terraform)["GATEWAY_CONTENT_SINK"]["value"] == "${local.content_sink}"
    assert terraform.locals["content_sink"].startswith("bigquery://${var.project_id}/${google_bigquery_dataset.content")


def test_content_fallback_entries_stay_out_of_the_default_log_bucket(terraform: Terraform) -> None:
    filter_ = terraform.locals["content_fallback_filter"]
    assert "audit_content_fallback" in filter_
    exclusion = terraform.resource("google_logging_project_exclusion", "content_fallback")
    sink = terraform.resource("google_logging_project_sink", "content_fallback")
    assert exclusion["filter"] == sink["filter"] == "${local.content_fallback_filter}"
    assert sink["destination"] == "logging.googleapis.com/${google_logging_project_bucket_config.content_fallback.id}"
    readers = terraform.resource("google_project_iam_member", "content_readers_read_fallback")
    assert readers["role"] == "roles/logging.viewAccessor"
    assert "content_fallback.id}/views/_AllLogs" in one(readers["condition"])["expression"]


# --- least privilege ------------------------------------------------------------------------------------------------


def test_no_basic_or_admin_roles_anywhere(terraform: Terraform) -> None:
    for (kind, name), body in terraform.resources.items():
        role = str(body.get("role", ""))
        assert role not in {"roles/owner", "roles/editor", "roles/viewer"}, f"{kind}.{name}"
        assert not role.endswith(".admin"), f"{kind}.{name} grants {role}"


# --- optional parts -------------------------------------------------------------------------------------------------


def test_redis_is_optional_and_off_by_default(terraform: Terraform) -> None:
    assert terraform.variables["redis_enabled"]["default"] is False
    redis = terraform.resource("google_redis_instance", "rate_limits")
    assert redis["count"] == "${var.redis_enabled ? 1 : 0}"
    template = one(terraform.resource(*SERVICE)["template"])
    (vpc_access,) = dynamic_blocks(template, "vpc_access")
    assert vpc_access["__for_each__"] == "${var.redis_enabled ? [1] : []}"
    assert "network_interfaces" in vpc_access, "Direct VPC egress, not a connector"
    assert "connector" not in vpc_access


# --- variables, outputs, layout -------------------------------------------------------------------------------------


def test_every_variable_has_a_description_and_a_type(terraform: Terraform) -> None:
    for name, variable in terraform.variables.items():
        assert str(variable.get("description", "")).strip(), f"var.{name} has no description"
        assert variable.get("type"), f"var.{name} has no type"


def test_every_output_is_described(terraform: Terraform) -> None:
    for name, output in terraform.outputs.items():
        assert str(output.get("description", "")).strip(), f"output.{name} has no description"


def test_outputs_built_from_sensitive_variables_are_sensitive(terraform: Terraform) -> None:
    sensitive = {name for name, variable in terraform.variables.items() if variable.get("sensitive") is True}
    assert "oauth_desktop_client_secret" in sensitive
    for name, output in terraform.outputs.items():
        if any(f"var.{variable}" in str(output["value"]) for variable in sensitive):
            assert output.get("sensitive") is True, f"output.{name} must be sensitive"


def test_shim_configure_command_has_the_exact_flags(terraform: Terraform) -> None:
    value = str(terraform.outputs["shim_configure_command"]["value"])
    for part in ("claude-shim configure", "--gateway-url", "--oauth-client-id", "--oauth-client-secret"):
        assert part in value
    assert "google_cloud_run_v2_service.gateway.uri" in value


@pytest.mark.parametrize("output", ["service_url", "iap_audience", "shim_configure_command"])
def test_required_outputs_exist(terraform: Terraform, output: str) -> None:
    assert output in terraform.outputs


def test_one_file_per_concern(terraform: Terraform) -> None:
    expected = {
        "versions.tf", "variables.tf", "outputs.tf", "main.tf", "apis.tf", "cloud_run.tf", "iap.tf",
        "bigquery.tf", "iam.tf", "secrets.tf", "redis.tf", "artifact_registry.tf",
    }  # fmt: skip
    assert expected <= set(terraform.files)


def test_tfvars_example_sets_declared_variables_and_every_required_one(terraform: Terraform) -> None:
    example = load_hcl(TERRAFORM / "examples" / "terraform.tfvars.example")
    assert set(example) <= set(terraform.variables), f"unknown: {sorted(set(example) - set(terraform.variables))}"
    required = {name for name, variable in terraform.variables.items() if "default" not in variable}
    assert required <= set(example), f"missing required: {sorted(required - set(example))}"


def test_every_checkov_skip_is_justified(terraform: Terraform) -> None:
    skips = [
        (file_name, line.strip())
        for file_name, text in terraform.files.items()
        for line in text.splitlines()
        if "checkov:skip" in line
    ]
    assert skips, "no skips at all is fine, but then drop this test"
    for file_name, line in skips:
        assert re.fullmatch(r"#checkov:skip=CKV2?_GCP_\d+:\S.{29,}", line), f"{file_name}: unjustified {line!r}"


def test_terraform_fmt_is_clean() -> None:
    binary = shutil.which("terraform")
    if binary is None:
        skip_or_fail("no terraform binary on PATH")
    result = subprocess.run(
        [binary, "fmt", "-check", "-recursive", "-diff", str(TERRAFORM)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, f"terraform fmt would change files:\n{result.stdout}"
