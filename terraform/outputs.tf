output "service_url" {
  description = "URL of the gateway (IAP in front). Developers point claude-shim at it."
  value       = google_cloud_run_v2_service.gateway.uri
}

output "iap_audience" {
  description = "Audience of the IAP signed header that the gateway checks (passed to it as GATEWAY_IAP_AUDIENCE)."
  value       = local.iap_audience
}

output "shim_configure_command" {
  description = "The exact command developers run once to point claude-shim at this gateway. Sensitive because it carries the desktop OAuth client secret: print it with `terraform output -raw shim_configure_command`."
  sensitive   = true
  value = join(" ", [
    "claude-shim configure",
    "--gateway-url", google_cloud_run_v2_service.gateway.uri,
    "--oauth-client-id", var.oauth_desktop_client_id,
    "--oauth-client-secret", coalesce(var.oauth_desktop_client_secret, "DESKTOP_CLIENT_SECRET"),
  ])
}

output "cloud_build_command" {
  description = "Command that runs cloudbuild.yaml (test, build, push, deploy) for the checked-out commit, as the deployer service account. Run it from the repository root."
  value = join(" ", [
    "gcloud builds submit",
    "--project=${var.project_id}",
    "--region=${var.region}",
    "--config=cloudbuild.yaml",
    "--service-account=${google_service_account.deployer.id}",
    "--gcs-source-staging-dir=gs://${google_storage_bucket.build_source.name}/source",
    "--substitutions=_REGION=${var.region},_REPOSITORY=${google_artifact_registry_repository.default.repository_id},_SERVICE=${google_cloud_run_v2_service.gateway.name},COMMIT_SHA=$(git rev-parse HEAD)",
  ])
}

output "image_repository" {
  description = "Artifact Registry path images are pushed to (append /IMAGE:TAG)."
  value       = local.image_repository
}

output "gateway_service_account" {
  description = "Email of the service account the gateway runs as. Give it the Groups Reader admin role in the Google Admin console."
  value       = google_service_account.gateway.email
}

output "deployer_service_account" {
  description = "Email of the service account Cloud Build runs as."
  value       = google_service_account.deployer.email
}

output "anthropic_api_key_secret" {
  description = "Secret Manager secret id for the Anthropic API key; add its value with `gcloud secrets versions add`."
  value       = google_secret_manager_secret.anthropic_api_key.secret_id
}

output "policy_secret" {
  description = "Secret Manager secret id for the gateway policy YAML (mounted when policy_enabled = true)."
  value       = google_secret_manager_secret.policy.secret_id
}

output "audit_table" {
  description = "Fully qualified audit table (project.dataset.table)."
  value       = local.audit_table_fqn
}

output "content_table" {
  description = "Fully qualified table of captured prompts and responses (project.dataset.table), readable by content_reader_groups only."
  value       = local.content_table_fqn
}

output "security_views_dataset" {
  description = "Dataset holding the security views that security_reader_groups can read."
  value       = "${var.project_id}.${google_bigquery_dataset.security.dataset_id}"
}

output "redis_host" {
  description = "Private address of the Memorystore Redis instance, or null when redis_enabled is false."
  value       = var.redis_enabled ? google_redis_instance.rate_limits[0].host : null
}

output "monitoring_dashboard" {
  description = "The Cloud Monitoring dashboard (usage, cost, errors and latency by model and group), or null when monitoring_enabled is false."
  value       = var.monitoring_enabled ? google_monitoring_dashboard.default[0].id : null
}
