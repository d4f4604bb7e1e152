# The secrets exist in Terraform; their values never do. An admin adds versions with
# `gcloud secrets versions add` (docs/admin-guide.md), so no key or policy lands in Terraform state.

resource "google_secret_manager_secret" "anthropic_api_key" {
  secret_id = "${var.name}-anthropic-api-key"

  replication {
    auto {}
  }

  depends_on = [google_project_service.enabled]
}

resource "google_secret_manager_secret_iam_member" "gateway_reads_api_key" {
  secret_id = google_secret_manager_secret.anthropic_api_key.id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.gateway.member
}

# The access policy (YAML), mounted as a file at GATEWAY_POLICY_FILE when var.policy_enabled. A secret rather than
# a file in the image: policy changes without a rebuild, and group names stay out of the container registry.
resource "google_secret_manager_secret" "policy" {
  secret_id = "${var.name}-policy"

  replication {
    auto {}
  }

  depends_on = [google_project_service.enabled]
}

resource "google_secret_manager_secret_iam_member" "gateway_reads_policy" {
  secret_id = google_secret_manager_secret.policy.id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.gateway.member
}
