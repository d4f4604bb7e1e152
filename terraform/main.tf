provider "google" {
  project        = var.project_id
  region         = var.region
  default_labels = local.labels
}

provider "google-beta" {
  project        = var.project_id
  region         = var.region
  default_labels = local.labels
}

data "google_project" "this" {
  project_id = var.project_id
}

locals {
  labels = merge({ app = var.name, managed-by = "terraform" }, var.labels)

  project_number = data.google_project.this.number
  use_anthropic  = contains(var.upstream, "anthropic")
  use_vertex     = anytrue([for u in var.upstream : startswith(u, "vertex")])
  vertex_project = coalesce(var.vertex_project_id, var.project_id)

  # The `aud` of the IAP assertion when IAP is enabled directly on the Cloud Run service.
  iap_audience = "/projects/${local.project_number}/locations/${var.region}/services/${var.name}"

  # The IAP service agent: the identity IAP uses to call the service once a request passed IAP.
  iap_service_agent = "serviceAccount:service-${local.project_number}@gcp-sa-iap.iam.gserviceaccount.com"

  # Who may pass IAP: Workspace groups first (the way access is meant to be managed), single users as an exception.
  iap_members = concat(
    [for group in var.access_groups : "group:${group}"],
    [for user in var.access_users : "user:${user}"],
  )

  audit_table_fqn = "${var.project_id}.${google_bigquery_dataset.audit.dataset_id}.${google_bigquery_table.audit.table_id}"
  audit_sink      = "bigquery://${var.project_id}/${google_bigquery_dataset.audit.dataset_id}/${google_bigquery_table.audit.table_id}"

  content_table_fqn = "${var.project_id}.${google_bigquery_dataset.content.dataset_id}.${google_bigquery_table.content.table_id}"
  content_sink      = "bigquery://${var.project_id}/${google_bigquery_dataset.content.dataset_id}/${google_bigquery_table.content.table_id}"

  image_repository = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.default.repository_id}"

  # Until the first Cloud Build deploy, the service runs Google's sample container so `terraform apply`
  # can create it before an image exists; Cloud Build owns the image from then on (see cloud_run.tf).
  initial_image = coalesce(var.image, "us-docker.pkg.dev/cloudrun/container/hello")

  policy_mount_dir = "/etc/claude-gateway/policy"
  policy_file      = "${local.policy_mount_dir}/policy.yaml"
}
