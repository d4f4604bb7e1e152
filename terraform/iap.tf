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

# Who may use the gateway. Revoking = removing the person from the group (or the entry from the list). With an
# access level, each grant holds only for requests that satisfy it (context-aware access, below).
resource "google_iap_web_cloud_run_service_iam_member" "access" {
  for_each = toset(local.iap_members)

  project                = var.project_id
  location               = var.region
  cloud_run_service_name = google_cloud_run_v2_service.gateway.name
  role                   = "roles/iap.httpsResourceAccessor"
  member                 = each.value

  dynamic "condition" {
    for_each = local.access_level == null ? [] : [local.access_level]
    content {
      title       = "required-access-level"
      description = "Only requests that satisfy the access level ${condition.value}."
      expression  = "\"${condition.value}\" in request.auth.access_levels"
    }
  }
}

# ---------------------------------------------------------------------------------------------------------------------
# Context-aware access (optional). IAP evaluates an Access Context Manager access level for every request: the
# network it comes from (access_level_ip_ranges) and/or the device it comes from (access_level_device_policy, which
# needs Endpoint Verification on the device). Either an existing level (var.access_level) or one created here in
# the organisation's access policy (IAP does not support scoped policies).
# ---------------------------------------------------------------------------------------------------------------------

locals {
  create_access_level = length(var.access_level_ip_ranges) > 0 || var.access_level_device_policy != null
  access_level        = local.create_access_level ? google_access_context_manager_access_level.gateway[0].name : var.access_level
}

resource "google_access_context_manager_access_level" "gateway" {
  count = local.create_access_level ? 1 : 0

  parent      = "accessPolicies/${var.access_policy_number}"
  name        = "accessPolicies/${var.access_policy_number}/accessLevels/${replace(var.name, "-", "_")}"
  title       = "${var.name} developers"
  description = "Where and from which devices developers may reach ${var.name} (its IAP access grants require this level)."

  basic {
    combining_function = var.access_level_combining

    dynamic "conditions" {
      for_each = length(var.access_level_ip_ranges) > 0 ? [var.access_level_ip_ranges] : []
      content {
        ip_subnetworks = conditions.value
      }
    }

    dynamic "conditions" {
      for_each = var.access_level_device_policy == null ? [] : [var.access_level_device_policy]
      content {
        device_policy {
          require_screen_lock         = conditions.value.require_screen_lock
          require_corp_owned          = conditions.value.require_corp_owned
          require_admin_approval      = conditions.value.require_admin_approval
          allowed_encryption_statuses = conditions.value.allowed_encryption_statuses

          dynamic "os_constraints" {
            for_each = toset(conditions.value.os_types)
            content {
              os_type = os_constraints.value
            }
          }
        }
      }
    }
  }

  depends_on = [google_project_service.enabled]
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
