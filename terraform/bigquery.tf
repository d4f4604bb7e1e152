locals {
  bigquery_location = coalesce(var.bigquery_location, var.region)
  # The security views' .sql files: the repository's, beside terraform/, unless var.security_views_dir names others.
  views_dir         = "${path.module}/../gateway/admin/views"
  view_sources      = coalesce(var.security_views_dir, local.views_dir)
  partition_days_ms = 24 * 60 * 60 * 1000
}

# ---------------------------------------------------------------------------------------------------------------------
# Who may reach which dataset. Every dataset has an explicit `access` list: without one, BigQuery adds its defaults
# (project Viewers read, Editors write, the creator owns), which would let every Viewer read raw audit rows and
# captured prompts. Each list holds the project's Owners as OWNER (they can grant themselves anything in the project
# anyway; the entry keeps the list from ever being empty, which would bring those defaults back), the security
# readers on the views dataset, and the views dataset authorised on the audit dataset; nobody else. The gateway's
# account and the content readers hold grants on their tables only (below), narrower than any dataset role. These
# lists are authoritative: no google_bigquery_dataset_access or dataset IAM resource may be added beside them (they
# would fight over the same list).
# ---------------------------------------------------------------------------------------------------------------------

locals {
  dataset_owners = { role = "OWNER", special_group = "projectOwners" }
}

# ---------------------------------------------------------------------------------------------------------------------
# Audit dataset and table: one row per gateway request. The gateway's account may write rows to this table and
# nothing else; people read through the security views (below), not here.
# ---------------------------------------------------------------------------------------------------------------------

resource "google_bigquery_dataset" "audit" {
  #checkov:skip=CKV_GCP_81:Google-managed encryption at rest; CMEK needs a key ring and a grant to the BigQuery service agent, an organisation-level choice left to the admin.
  dataset_id                 = var.bigquery_dataset_id
  friendly_name              = "Claude gateway audit"
  description                = "Audit log of requests through ${var.name}: who, which model, tokens, cost, outcome."
  location                   = local.bigquery_location
  delete_contents_on_destroy = false

  access {
    role          = local.dataset_owners.role
    special_group = local.dataset_owners.special_group
  }

  # The security views read the audit table on their readers' behalf: the views dataset is authorised here, so
  # its views can read the table while their readers cannot query the table directly.
  access {
    dataset {
      dataset {
        project_id = var.project_id
        dataset_id = google_bigquery_dataset.security.dataset_id
      }
      target_types = ["VIEWS"]
    }
  }

  depends_on = [google_project_service.enabled]
}

resource "google_bigquery_table" "audit" {
  #checkov:skip=CKV_GCP_80:Google-managed encryption at rest, as for the dataset (CKV_GCP_81).
  dataset_id  = google_bigquery_dataset.audit.dataset_id
  table_id    = var.audit_table_id
  description = "One row per request through ${var.name}. Queries must filter on timestamp (partition filter required)."

  # Generated from gateway.audit.schema.bigquery_schema_json(), the single source of truth; a test keeps them equal.
  schema = file("${path.module}/audit_schema.json")

  deletion_protection      = true
  require_partition_filter = true

  time_partitioning {
    type          = "DAY"
    field         = "timestamp"
    expiration_ms = var.audit_retention_days > 0 ? var.audit_retention_days * local.partition_days_ms : null
  }

  # The columns reports filter and group by: per person, per model, per outcome.
  clustering = ["user_email", "requested_model", "outcome"]
}

resource "google_bigquery_table_iam_member" "gateway_writes_audit" {
  project    = var.project_id
  dataset_id = google_bigquery_table.audit.dataset_id
  table_id   = google_bigquery_table.audit.table_id
  role       = "roles/bigquery.dataEditor"
  member     = google_service_account.gateway.member
}

# Claude Code's OpenTelemetry (OTLP at /v1/metrics, /v1/logs, /v1/traces), one row per data point, event or span,
# stamped with the verified sender. Beside the audit table, under its name `telemetry` (the gateway derives it from
# GATEWAY_AUDIT_SINK), read like it through the security views.
resource "google_bigquery_table" "telemetry" {
  #checkov:skip=CKV_GCP_80:Google-managed encryption at rest, as for the dataset (CKV_GCP_81).
  dataset_id  = google_bigquery_dataset.audit.dataset_id
  table_id    = "telemetry"
  description = "Claude Code's OpenTelemetry through ${var.name}, stamped with the verified sender. Queries must filter on timestamp."

  # Generated from gateway.telemetry.schema.telemetry_schema_json(); a test keeps them equal.
  schema = file("${path.module}/telemetry_schema.json")

  deletion_protection      = true
  require_partition_filter = true

  time_partitioning {
    type          = "DAY"
    field         = "timestamp"
    expiration_ms = var.audit_retention_days > 0 ? var.audit_retention_days * local.partition_days_ms : null
  }

  clustering = ["user_email", "signal"]
}

resource "google_bigquery_table_iam_member" "gateway_writes_telemetry" {
  project    = var.project_id
  dataset_id = google_bigquery_table.telemetry.dataset_id
  table_id   = google_bigquery_table.telemetry.table_id
  role       = "roles/bigquery.dataEditor"
  member     = google_service_account.gateway.member
}

# ---------------------------------------------------------------------------------------------------------------------
# Security views: one view per gateway/admin/views/*.sql, in a dataset of their own that the security team can
# read (and nobody else). The views dataset is authorised on the audit dataset (above). A new .sql file becomes a
# view on the next apply, with no Terraform change.
# ---------------------------------------------------------------------------------------------------------------------

resource "google_bigquery_dataset" "security" {
  #checkov:skip=CKV_GCP_81:Holds only views, which store no data; encryption follows the audit dataset.
  dataset_id                 = "${var.bigquery_dataset_id}_security"
  friendly_name              = "Claude gateway security views"
  description                = "Views over the ${var.name} audit table for the security team."
  location                   = local.bigquery_location
  delete_contents_on_destroy = false

  access {
    role          = local.dataset_owners.role
    special_group = local.dataset_owners.special_group
  }

  dynamic "access" {
    # READER is roles/bigquery.dataViewer in dataset-ACL terms; the API swaps the predefined name for it, which
    # would leave a permanent diff.
    for_each = toset(var.security_reader_groups)
    content {
      role           = "READER"
      group_by_email = access.value
    }
  }

  lifecycle {
    precondition {
      # A copy of terraform/ without the repository beside it would silently plan no views at all.
      condition     = length(fileset(local.view_sources, "*.sql")) > 0
      error_message = "No *.sql file in ${local.view_sources}: run Terraform from terraform/ inside a checkout of the repository, or set security_views_dir."
    }
  }

  depends_on = [google_project_service.enabled]
}

resource "google_bigquery_table" "security_views" {
  #checkov:skip=CKV_GCP_80:A view stores no data to encrypt.
  #checkov:skip=CKV_GCP_121:A view holds no data and is rebuilt from its .sql file; deletion protection would block renaming a file.
  for_each = fileset(local.view_sources, "*.sql")

  dataset_id          = google_bigquery_dataset.security.dataset_id
  table_id            = trimsuffix(each.value, ".sql")
  description         = "Generated from gateway/admin/views/${each.value}."
  deletion_protection = false

  view {
    # Each file is a SELECT in which {audit_table} stands for the fully qualified, backquoted audit table, and
    # {telemetry_table} for the telemetry table beside it.
    query = replace(
      replace(file("${local.view_sources}/${each.value}"), "{audit_table}", "`${local.audit_table_fqn}`"),
      "{telemetry_table}", "`${var.project_id}.${google_bigquery_dataset.audit.dataset_id}.${google_bigquery_table.telemetry.table_id}`"
    )
    use_legacy_sql = false
  }
}

# These entries now live in the datasets' own access lists. Forget the old resources without deleting their
# entries, which the access lists above hold as well.
removed {
  from = google_bigquery_dataset_access.security_views_read_audit
  lifecycle {
    destroy = false
  }
}

removed {
  from = google_bigquery_dataset_access.security_readers
  lifecycle {
    destroy = false
  }
}

# Running a query is a job in some project; the security team and the content readers run theirs here. One grant
# per group even when a group is in both lists: two resources for one binding would remove it when either goes.
resource "google_project_iam_member" "readers_run_queries" {
  for_each = toset(concat(var.security_reader_groups, var.content_reader_groups))

  project = var.project_id
  role    = "roles/bigquery.jobUser"
  member  = "group:${each.value}"
}

moved {
  from = google_project_iam_member.security_readers_run_queries
  to   = google_project_iam_member.readers_run_queries
}

# ---------------------------------------------------------------------------------------------------------------------
# Captured prompts and responses (policy `capture: metadata+` or `full`). A dataset of their own, so that no grant
# on the audit dataset, nor the security views authorised on it, reaches them; partitions expire after
# content_retention_days; content_reader_groups read this one table and nothing else. Seeing content takes a grant
# of its own, apart from seeing usage.
# ---------------------------------------------------------------------------------------------------------------------

resource "google_bigquery_dataset" "content" {
  #checkov:skip=CKV_GCP_81:Google-managed encryption at rest, as for the audit dataset; CMEK is an organisation-level choice left to the admin.
  dataset_id                 = "${var.bigquery_dataset_id}_content"
  friendly_name              = "Claude gateway captured prompts"
  description                = "Prompts and responses captured by ${var.name} for audit (redacted), for the groups whose policy asks for it."
  location                   = local.bigquery_location
  delete_contents_on_destroy = false

  # Nobody but the project's Owners at dataset level: the gateway and content_reader_groups hold grants on the
  # content table itself (below).
  access {
    role          = local.dataset_owners.role
    special_group = local.dataset_owners.special_group
  }

  depends_on = [google_project_service.enabled]
}

resource "google_bigquery_table" "content" {
  #checkov:skip=CKV_GCP_80:Google-managed encryption at rest, as for the dataset (CKV_GCP_81).
  dataset_id  = google_bigquery_dataset.content.dataset_id
  table_id    = var.content_table_id
  description = "Captured prompts and responses, one row per captured request; request_id is the audit table's. Queries must filter on timestamp."

  # Generated from gateway.capture.schema.content_schema_json(); a test keeps them equal.
  schema = file("${path.module}/content_schema.json")

  deletion_protection      = true
  require_partition_filter = true

  time_partitioning {
    type          = "DAY"
    field         = "timestamp"
    expiration_ms = var.content_retention_days > 0 ? var.content_retention_days * local.partition_days_ms : null
  }

  clustering = ["user_email"]
}

resource "google_bigquery_table_iam_member" "gateway_writes_content" {
  project    = var.project_id
  dataset_id = google_bigquery_table.content.dataset_id
  table_id   = google_bigquery_table.content.table_id
  role       = "roles/bigquery.dataEditor"
  member     = google_service_account.gateway.member
}

resource "google_bigquery_table_iam_member" "content_readers" {
  for_each = toset(var.content_reader_groups)

  project    = var.project_id
  dataset_id = google_bigquery_table.content.dataset_id
  table_id   = google_bigquery_table.content.table_id
  role       = "roles/bigquery.dataViewer"
  member     = "group:${each.value}"
}
