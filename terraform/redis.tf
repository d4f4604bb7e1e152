# Optional Memorystore Redis for rate limits shared by all instances (var.redis_enabled, off by default), reached
# from Cloud Run through Direct VPC egress (cloud_run.tf). It holds only counters: no prompts, keys or identities
# beyond what a rate-limit key names.

locals {
  create_network = var.redis_enabled && var.vpc_network == null
  vpc_network    = local.create_network ? google_compute_network.egress[0].id : var.vpc_network
  vpc_subnetwork = local.create_network ? google_compute_subnetwork.egress[0].id : var.vpc_subnetwork
}

resource "google_compute_network" "egress" {
  #checkov:skip=CKV2_GCP_18:No firewall rule is needed: nothing is exposed on this network; Cloud Run only sends from it and Redis is reached over peering. The implied deny-ingress rule applies.
  count = local.create_network ? 1 : 0

  name                    = "${var.name}-vpc"
  description             = "Direct VPC egress from ${var.name} to its Memorystore Redis."
  auto_create_subnetworks = false

  depends_on = [google_project_service.enabled]
}

resource "google_compute_subnetwork" "egress" {
  count = local.create_network ? 1 : 0

  name                     = "${var.name}-run"
  region                   = var.region
  network                  = google_compute_network.egress[0].id
  ip_cidr_range            = var.vpc_subnet_cidr
  private_ip_google_access = true

  log_config {
    aggregation_interval = "INTERVAL_10_MIN"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

resource "google_redis_instance" "rate_limits" {
  #checkov:skip=CKV_GCP_95:No AUTH: the AUTH string would sit in Terraform state and in the plain GATEWAY_REDIS_URL; the instance is reachable only from this private network and holds only rate-limit counters.
  #checkov:skip=CKV_GCP_97:No in-transit TLS: it needs the instance's CA certificate in the container; traffic stays on Google's private network (Direct VPC egress to a peered private IP) and carries only counters.
  count = var.redis_enabled ? 1 : 0

  name               = "${var.name}-ratelimit"
  display_name       = "${var.name} rate limits"
  tier               = var.redis_tier
  memory_size_gb     = var.redis_memory_size_gb
  region             = var.region
  redis_version      = "REDIS_7_2"
  authorized_network = local.vpc_network
  connect_mode       = "DIRECT_PEERING"

  # Counters are cheap to lose; keep Redis from writing them to disk.
  persistence_config {
    persistence_mode = "DISABLED"
  }

  lifecycle {
    precondition {
      condition     = (var.vpc_network == null) == (var.vpc_subnetwork == null)
      error_message = "Set vpc_network and vpc_subnetwork together, or neither."
    }
  }

  depends_on = [google_project_service.enabled]
}
