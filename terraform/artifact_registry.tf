resource "google_artifact_registry_repository" "default" {
  #checkov:skip=CKV_GCP_84:Images hold no customer data; Google-managed encryption is enough and CMEK would add a key ring to run.
  repository_id = var.artifact_registry_repository_id
  location      = var.region
  format        = "DOCKER"
  description   = "Images of ${var.name}, tagged with the commit they were built from."

  docker_config {
    # A commit tag always names the same image: what was tested is what runs.
    immutable_tags = true
  }

  cleanup_policy_dry_run = false

  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"

    most_recent_versions {
      keep_count = var.keep_image_versions
    }
  }

  cleanup_policies {
    id     = "delete-old"
    action = "DELETE"

    condition {
      tag_state  = "ANY"
      older_than = "2592000s" # 30 days; the keep-recent policy wins for the newest versions
    }
  }

  depends_on = [google_project_service.enabled]
}
