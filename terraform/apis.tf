locals {
  required_apis = toset(concat(
    [
      "artifactregistry.googleapis.com",
      "bigquery.googleapis.com",
      "cloudbuild.googleapis.com",
      "cloudidentity.googleapis.com", # the gateway reads Workspace group memberships for policy
      "cloudresourcemanager.googleapis.com",
      "iam.googleapis.com",
      "iap.googleapis.com",
      "logging.googleapis.com",
      "monitoring.googleapis.com", # alerts and the dashboard (monitoring.tf)
      "run.googleapis.com",
      "secretmanager.googleapis.com",
      "storage.googleapis.com",
    ],
    local.use_vertex ? ["aiplatform.googleapis.com"] : [],
    var.redis_enabled ? ["compute.googleapis.com", "redis.googleapis.com"] : [],
    # Access levels are created through this API, billed to this project.
    length(var.access_level_ip_ranges) > 0 || var.access_level_device_policy != null ? ["accesscontextmanager.googleapis.com"] : [],
  ))
}

resource "google_project_service" "enabled" {
  for_each = local.required_apis

  project = var.project_id
  service = each.key

  # Other workloads in the project may use these APIs too: never switch them off on destroy.
  disable_on_destroy         = false
  disable_dependent_services = false
}

# Vertex AI may be served from another project; its API must be on there.
resource "google_project_service" "vertex" {
  count = local.use_vertex && local.vertex_project != var.project_id ? 1 : 0

  project                    = local.vertex_project
  service                    = "aiplatform.googleapis.com"
  disable_on_destroy         = false
  disable_dependent_services = false
}

# Creates the IAP service agent (service-PROJECT_NUMBER@gcp-sa-iap) now, so the invoker grant in iap.tf has a
# principal to bind to before anyone has opened IAP in the console.
resource "google_project_service_identity" "iap" {
  provider = google-beta

  project = var.project_id
  service = "iap.googleapis.com"

  depends_on = [google_project_service.enabled]
}
