resource "google_cloud_run_v2_service" "gateway" {
  name                = var.name
  location            = var.region
  description         = "Claude SSO gateway: IAP identity, group policy, streaming relay to Claude, BigQuery audit."
  deletion_protection = var.deletion_protection

  # IAP directly on the service: every ingress path (run.app URL included) goes through IAP first.
  iap_enabled = true
  # Keep Cloud Run's IAM check on as well: only the IAP service agent holds run.invoker (iap.tf), so a
  # request that did not come through IAP is refused even if IAP were switched off by mistake.
  invoker_iam_disabled = false
  ingress              = var.ingress

  template {
    service_account                  = google_service_account.gateway.email
    timeout                          = "${var.request_timeout_seconds}s"
    max_instance_request_concurrency = var.concurrency
    execution_environment            = "EXECUTION_ENVIRONMENT_GEN2"

    scaling {
      min_instance_count = var.min_instances
      max_instance_count = var.max_instances
    }

    dynamic "vpc_access" {
      for_each = var.redis_enabled ? [1] : []
      content {
        # Direct VPC egress (no connector): only private ranges go to the VPC, so Redis is reached privately
        # and Anthropic/Google APIs keep their direct route.
        egress = "PRIVATE_RANGES_ONLY"
        network_interfaces {
          network    = local.vpc_network
          subnetwork = local.vpc_subnetwork
        }
      }
    }

    dynamic "volumes" {
      for_each = var.policy_enabled ? [1] : []
      content {
        name = "policy"
        secret {
          secret       = google_secret_manager_secret.policy.secret_id
          default_mode = 292 # 0444: read-only for the non-root user the image runs as
          items {
            version = var.policy_version
            path    = "policy.yaml"
          }
        }
      }
    }

    containers {
      name  = "gateway"
      image = local.initial_image

      ports {
        container_port = 8080 # Cloud Run passes it as PORT; `claude-gateway serve` listens there
      }

      resources {
        limits = {
          cpu    = var.cpu
          memory = var.memory
        }
        # CPU always allocated: the audit writer flushes rows to BigQuery from a background task, which
        # would starve between requests with request-only CPU.
        cpu_idle          = false
        startup_cpu_boost = true
      }

      env {
        name  = "GATEWAY_IAP_AUDIENCE"
        value = local.iap_audience
      }
      env {
        name  = "GATEWAY_PROJECT"
        value = var.project_id
      }
      env {
        name  = "GATEWAY_AUDIT_SINK"
        value = local.audit_sink
      }
      env {
        name  = "GATEWAY_CONTENT_SINK"
        value = local.content_sink
      }
      env {
        name  = "GATEWAY_UPSTREAM"
        value = join(",", var.upstream)
      }

      dynamic "env" {
        for_each = length(var.allowed_domains) > 0 ? [1] : []
        content {
          name  = "GATEWAY_ALLOWED_DOMAINS"
          value = join(",", var.allowed_domains)
        }
      }

      dynamic "env" {
        for_each = local.use_anthropic ? [1] : []
        content {
          name = "GATEWAY_ANTHROPIC_API_KEY"
          # A reference, resolved by Cloud Run when an instance starts: the key is never in Terraform or its state.
          value_source {
            secret_key_ref {
              secret  = google_secret_manager_secret.anthropic_api_key.secret_id
              version = var.anthropic_api_key_version
            }
          }
        }
      }

      dynamic "env" {
        for_each = local.use_vertex ? {
          GATEWAY_VERTEX_PROJECT = local.vertex_project
          GATEWAY_VERTEX_REGION  = var.vertex_region
        } : {}
        content {
          name  = env.key
          value = env.value
        }
      }

      dynamic "env" {
        for_each = var.policy_enabled ? [1] : []
        content {
          name  = "GATEWAY_POLICY_FILE"
          value = local.policy_file
        }
      }

      dynamic "env" {
        for_each = var.redis_enabled ? [1] : []
        content {
          name  = "GATEWAY_REDIS_URL"
          value = "redis://${google_redis_instance.rate_limits[0].host}:${google_redis_instance.rate_limits[0].port}/0"
        }
      }

      dynamic "env" {
        for_each = var.extra_env
        content {
          name  = env.key
          value = env.value
        }
      }

      dynamic "volume_mounts" {
        for_each = var.policy_enabled ? [1] : []
        content {
          name       = "policy"
          mount_path = local.policy_mount_dir
        }
      }

      # Probes go straight to the container. (From outside, Google's front end reserves some paths ending in
      # "z" on run.app URLs, so /healthz is for Cloud Run's probes, not for checks over the public URL.)
      startup_probe {
        http_get {
          path = "/healthz"
        }
        period_seconds    = 2
        timeout_seconds   = 2
        failure_threshold = 30
      }

      liveness_probe {
        http_get {
          path = "/healthz"
        }
        period_seconds    = 30
        timeout_seconds   = 5
        failure_threshold = 3
      }
    }
  }

  lifecycle {
    # Cloud Build deploys new images (cloudbuild.yaml); Terraform owns everything else about the service. A
    # `gcloud run services update` also stamps its client name and version on the service and annotations on
    # the revision template: ignored too, or every plan after a deploy would show them as drift.
    ignore_changes = [
      template[0].containers[0].image,
      template[0].annotations,
      client,
      client_version,
    ]

    precondition {
      condition     = (var.vpc_network == null) == (var.vpc_subnetwork == null)
      error_message = "Set vpc_network and vpc_subnetwork together, or neither."
    }
  }

  depends_on = [
    google_project_service.enabled,
    # The revision must be able to read its secrets and write its table the moment it starts.
    google_secret_manager_secret_iam_member.gateway_reads_api_key,
    google_secret_manager_secret_iam_member.gateway_reads_policy,
    google_bigquery_table_iam_member.gateway_writes_audit,
  ]
}
