# ---------------------------------------------------------------------------------------------------------------------
# Captured content BigQuery has not taken in time is logged as audit_content_fallback entries, so that none is lost
# (docs/security-teams.md, "Prompt capture"). Those entries hold prompt text: they are kept out of the _Default log
# bucket, which everyone who reads the project's logs can read, and routed to a bucket of their own that only
# content_reader_groups may read, kept as long as the content table keeps its rows.
# ---------------------------------------------------------------------------------------------------------------------

locals {
  content_fallback_filter = join(" AND ", [
    "resource.type=\"cloud_run_revision\"",
    "resource.labels.service_name=\"${var.name}\"",
    "jsonPayload.message=\"audit_content_fallback\"",
  ])
}

resource "google_logging_project_bucket_config" "content_fallback" {
  project = var.project_id
  # The entries hold prompt text: keep them where the captured content itself is kept (US/EU become Cloud
  # Logging's us/eu multi-regions, a region stays that region).
  location       = lower(local.bigquery_location)
  bucket_id      = "${var.name}-content-fallback"
  retention_days = var.content_retention_days > 0 ? var.content_retention_days : 3650
  description    = "audit_content_fallback entries of ${var.name}: captured prompts BigQuery had not taken in time."

  depends_on = [google_project_service.enabled]
}

resource "google_logging_project_sink" "content_fallback" {
  name                   = "${var.name}-content-fallback"
  description            = "Routes ${var.name}'s audit_content_fallback entries to their own bucket."
  destination            = "logging.googleapis.com/${google_logging_project_bucket_config.content_fallback.id}"
  filter                 = local.content_fallback_filter
  unique_writer_identity = true
}

# An exclusion on the _Default sink: the entries are routed above, and stored nowhere else.
resource "google_logging_project_exclusion" "content_fallback" {
  name        = "${var.name}-content-fallback"
  description = "Keeps ${var.name}'s audit_content_fallback entries (prompt text) out of the _Default bucket."
  filter      = local.content_fallback_filter
}

resource "google_project_iam_member" "content_readers_read_fallback" {
  for_each = toset(var.content_reader_groups)

  project = var.project_id
  role    = "roles/logging.viewAccessor"
  member  = "group:${each.value}"

  condition {
    title       = "content-fallback-bucket-only"
    description = "Only the view of the bucket holding audit_content_fallback entries."
    expression  = "resource.name == \"${google_logging_project_bucket_config.content_fallback.id}/views/_AllLogs\""
  }
}
