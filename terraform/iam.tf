# ---------------------------------------------------------------------------------------------------------------------
# The gateway's identity: only what it needs, each grant on the narrowest resource that carries it.
#   - write rows to the audit table (bigquery.tf: table-level dataEditor)
#   - read the Anthropic key and the policy (secrets.tf: accessor on those two secrets)
#   - call Claude on Vertex AI, only when var.upstream includes vertex: a custom role holding the one permission
#     rawPredict/streamRawPredict check, on the Vertex project (publisher models carry no IAM policy of their own,
#     so the project is the narrowest resource Google offers)
# No logging role: the gateway logs JSON lines to stdout, which Cloud Run itself sends to Cloud Logging.
# Reading Workspace group memberships is not an IAM role: an admin gives this account the Groups Reader admin
# role in the Admin console (docs/admin-guide.md, "Let the gateway read groups").
# ---------------------------------------------------------------------------------------------------------------------

resource "google_service_account" "gateway" {
  account_id   = var.name
  display_name = "Claude gateway (${var.name})"
  description  = "Runs the ${var.name} Cloud Run service."

  depends_on = [google_project_service.enabled]
}

# roles/aiplatform.user would also let the account create datasets, endpoints and training jobs in that project.
resource "google_project_iam_custom_role" "vertex_predict" {
  count = local.use_vertex ? 1 : 0

  project     = local.vertex_project
  role_id     = "${replace(var.name, "-", "_")}_vertex_predict"
  title       = "Claude gateway: call models (${var.name})"
  description = "Only what ${var.name} needs to call Claude on Vertex AI: rawPredict and streamRawPredict on publisher models."
  permissions = ["aiplatform.endpoints.predict"]
}

resource "google_project_iam_member" "gateway_vertex_predict" {
  count = local.use_vertex ? 1 : 0

  project = local.vertex_project
  role    = google_project_iam_custom_role.vertex_predict[0].name
  member  = google_service_account.gateway.member
}

# ---------------------------------------------------------------------------------------------------------------------
# The deployer: the identity Cloud Build runs cloudbuild.yaml as. It pushes images to the one repository and
# rolls new revisions of the one service; it cannot change IAM, IAP or any other service.
# ---------------------------------------------------------------------------------------------------------------------

resource "google_service_account" "deployer" {
  account_id   = "${var.name}-deployer"
  display_name = "Claude gateway deployer (${var.name})"
  description  = "Cloud Build identity for cloudbuild.yaml: pushes images and deploys revisions of ${var.name}."

  depends_on = [google_project_service.enabled]
}

resource "google_artifact_registry_repository_iam_member" "deployer_pushes_images" {
  project    = var.project_id
  location   = google_artifact_registry_repository.default.location
  repository = google_artifact_registry_repository.default.name
  role       = "roles/artifactregistry.writer"
  member     = google_service_account.deployer.member
}

resource "google_cloud_run_v2_service_iam_member" "deployer_deploys_revisions" {
  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_service.gateway.name
  role     = "roles/run.developer"
  member   = google_service_account.deployer.member
}

# Deploying a revision that runs as the gateway account requires acting as that account (and only that one).
resource "google_service_account_iam_member" "deployer_acts_as_gateway" {
  service_account_id = google_service_account.gateway.name
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.deployer.member
}

# A build run as a user-specified service account writes its logs with that account.
resource "google_project_iam_member" "deployer_log_writer" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = google_service_account.deployer.member
}

# `gcloud builds submit` uploads the source here (--gcs-source-staging-dir); the build reads it back.
resource "google_storage_bucket" "build_source" {
  #checkov:skip=CKV_GCP_62:Holds only source tarballs of this repository (no data, no secrets), deleted after 7 days; Cloud Build records who submitted each build.
  #checkov:skip=CKV_GCP_78:Versioning would keep copies of throw-away source tarballs that the lifecycle rule is meant to delete.
  name                        = "${var.project_id}-${var.name}-build"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true

  lifecycle_rule {
    condition {
      age = 7
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.enabled]
}

resource "google_storage_bucket_iam_member" "deployer_reads_build_source" {
  bucket = google_storage_bucket.build_source.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.deployer.member
}
