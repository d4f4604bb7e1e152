# IAP, after checking a user's identity and roles/iap.httpsResourceAccessor, calls the service as its own
# service agent; Cloud Run's IAM check then needs that agent to be an invoker. Nobody else is.
resource "google_cloud_run_v2_service_iam_member" "iap_invoker" {
  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_service.gateway.name
  role     = "roles/run.invoker"
  member   = local.iap_service_agent

  depends_on = [google_project_service_identity.iap]
}

# Who may use the gateway. Revoking = removing the person from the group (or the entry from the list).
resource "google_iap_web_cloud_run_service_iam_member" "access" {
  for_each = toset(local.iap_members)

  project                = var.project_id
  location               = var.region
  cloud_run_service_name = google_cloud_run_v2_service.gateway.name
  role                   = "roles/iap.httpsResourceAccessor"
  member                 = each.value
}

# The Google-managed OAuth client IAP uses for browsers cannot mint tokens for a CLI: claude-shim signs users in
# with a Desktop OAuth client, whose ID tokens IAP accepts only if the client is on this allowlist.
resource "google_iap_settings" "gateway" {
  name = "projects/${local.project_number}/iap_web/cloud_run-${var.region}/services/${google_cloud_run_v2_service.gateway.name}"

  access_settings {
    oauth_settings {
      programmatic_clients = [var.oauth_desktop_client_id]
    }
  }
}
