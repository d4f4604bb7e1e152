# ---------------------------------------------------------------------------------------------------------------------
# Project and naming
# ---------------------------------------------------------------------------------------------------------------------

variable "project_id" {
  description = "Google Cloud project id to deploy into. The project must belong to an organisation (IAP on Cloud Run requires one)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "The project_id must be a Google Cloud project id: 6-30 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "region" {
  description = "Region for Cloud Run, Artifact Registry, Cloud Build and (optionally) Memorystore, e.g. europe-west1."
  type        = string
  default     = "us-central1"

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "The region must be a Google Cloud region name such as us-central1 or europe-west1."
  }
}

variable "name" {
  description = "Name of the Cloud Run service; also the gateway service account id and the prefix of every derived resource name."
  type        = string
  default     = "claude-gateway"

  validation {
    # 6-20 characters: a service account id needs at least 6, and "<name>-deployer" must stay within 30.
    condition     = can(regex("^[a-z][a-z0-9-]{4,18}[a-z0-9]$", var.name))
    error_message = "The name must be 6-20 lowercase letters, digits or hyphens, starting with a letter and not ending with a hyphen."
  }
}

variable "labels" {
  description = "Extra labels put on every resource that takes labels (merged over app and managed-by)."
  type        = map(string)
  default     = {}
}

# ---------------------------------------------------------------------------------------------------------------------
# Access: who may reach the gateway, and how the laptop shim authenticates
# ---------------------------------------------------------------------------------------------------------------------

variable "access_groups" {
  description = "Workspace group emails granted roles/iap.httpsResourceAccessor on the gateway. Adding or removing a person from one of these groups is how access is granted and revoked."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for g in var.access_groups : can(regex("^[^@\\s:]+@[^@\\s:]+\\.[^@\\s:]+$", g))])
    error_message = "Each access_groups entry must be a bare group email (no 'group:' prefix); allUsers and allAuthenticatedUsers are not accepted."
  }

  validation {
    condition     = length(var.access_groups) + length(var.access_users) > 0
    error_message = "Name at least one group in access_groups (or a person in access_users): otherwise nobody can pass IAP."
  }
}

variable "access_users" {
  description = "Individual user emails granted roles/iap.httpsResourceAccessor (exceptions; prefer access_groups)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for u in var.access_users : can(regex("^[^@\\s:]+@[^@\\s:]+\\.[^@\\s:]+$", u))])
    error_message = "Each access_users entry must be a bare user email (no 'user:' prefix); allUsers and allAuthenticatedUsers are not accepted."
  }
}

variable "allowed_domains" {
  description = "Workspace domains the gateway itself accepts (GATEWAY_ALLOWED_DOMAINS), checked against the IAP assertion as a second line behind IAP. Empty: any domain IAP lets through."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for d in var.allowed_domains : can(regex("^[a-z0-9.-]+\\.[a-z]{2,}$", d))])
    error_message = "Each allowed_domains entry must be a lowercase DNS domain such as example.com."
  }
}

variable "oauth_desktop_client_id" {
  description = "Client id of the Desktop OAuth client that claude-shim uses to get ID tokens; put in the IAP programmatic-access allowlist. Create it by hand (APIs & Services > Credentials > Desktop app)."
  type        = string

  validation {
    condition     = can(regex("^[0-9]+-[a-z0-9]+\\.apps\\.googleusercontent\\.com$", var.oauth_desktop_client_id))
    error_message = "The oauth_desktop_client_id must look like 123456789-abc123.apps.googleusercontent.com."
  }
}

variable "oauth_desktop_client_secret" {
  description = "Secret of the Desktop OAuth client, only used to print the shim_configure_command output (Google treats desktop-client secrets as non-confidential, but it is kept sensitive). Null: the command shows a placeholder."
  type        = string
  default     = null
  nullable    = true
  sensitive   = true
}

variable "security_reader_groups" {
  description = "Group emails (security team) granted read access to the security views dataset only, plus BigQuery job user to run queries. They get no access to the raw audit table."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for g in var.security_reader_groups : can(regex("^[^@\\s:]+@[^@\\s:]+\\.[^@\\s:]+$", g))])
    error_message = "Each security_reader_groups entry must be a bare group email (no 'group:' prefix)."
  }
}

variable "ingress" {
  description = "Cloud Run ingress. INGRESS_TRAFFIC_ALL is required for laptops to reach the run.app URL (IAP guards it); use INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER only behind your own load balancer."
  type        = string
  default     = "INGRESS_TRAFFIC_ALL"

  validation {
    condition     = contains(["INGRESS_TRAFFIC_ALL", "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER", "INGRESS_TRAFFIC_INTERNAL_ONLY"], var.ingress)
    error_message = "The ingress must be INGRESS_TRAFFIC_ALL, INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER or INGRESS_TRAFFIC_INTERNAL_ONLY."
  }
}

# ---------------------------------------------------------------------------------------------------------------------
# Context-aware access (optional): on top of group membership, IAP also requires an Access Context Manager access
# level (networks the request comes from, and/or the state of the device). docs/admin-guide.md, "Context-aware access".
# ---------------------------------------------------------------------------------------------------------------------

variable "access_level" {
  description = "Full name of an existing access level every IAP accessor must satisfy, accessPolicies/POLICY_NUMBER/accessLevels/NAME. Null: none, unless this configuration creates one (access_level_ip_ranges or access_level_device_policy)."
  type        = string
  default     = null
  nullable    = true

  validation {
    condition     = can(regex("^accessPolicies/[0-9]+/accessLevels/[A-Za-z][A-Za-z0-9_]{0,49}$", coalesce(var.access_level, "accessPolicies/0/accessLevels/x")))
    error_message = "The access_level must be null or a full access level name such as accessPolicies/123456789/accessLevels/corp_network."
  }

  validation {
    condition     = var.access_level == null || (length(var.access_level_ip_ranges) == 0 && var.access_level_device_policy == null)
    error_message = "Set either access_level (an existing level) or access_level_ip_ranges / access_level_device_policy (a level created here), not both."
  }
}

variable "access_policy_number" {
  description = "Number of the organisation's access policy (gcloud access-context-manager policies list --organization=ORG_ID), in which an access level is created when access_level_ip_ranges or access_level_device_policy is set."
  type        = string
  default     = null
  nullable    = true

  validation {
    condition     = can(regex("^[0-9]+$", coalesce(var.access_policy_number, "0")))
    error_message = "The access_policy_number must be null or the access policy's number (digits only, without accessPolicies/)."
  }

  validation {
    condition     = var.access_policy_number != null || (length(var.access_level_ip_ranges) == 0 && var.access_level_device_policy == null)
    error_message = "Creating an access level (access_level_ip_ranges or access_level_device_policy) needs access_policy_number, the organisation's access policy."
  }
}

variable "access_level_ip_ranges" {
  description = "CIDR ranges (IPv4 or IPv6) requests must come from, e.g. the office's and the VPN's public egress ranges. Non-empty: an access level is created and required on every IAP accessor."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for r in var.access_level_ip_ranges : can(regex("/[0-9]+$", r)) && can(cidrhost(r, 0))])
    error_message = "Each access_level_ip_ranges entry must be a CIDR range such as 203.0.113.0/24 or 2001:db8::/32."
  }

  validation {
    # The range's first address, compared with its own address written as a single-host range.
    condition     = alltrue([for r in var.access_level_ip_ranges : try(cidrhost(r, 0) == cidrhost("${split("/", r)[0]}/${strcontains(r, ":") ? 128 : 32}", 0), true)])
    error_message = "Each access_level_ip_ranges entry must have its host bits zero (203.0.113.0/24, not 203.0.113.7/24): Access Context Manager refuses the others."
  }
}

variable "access_level_device_policy" {
  description = "Device requirements (Endpoint Verification on the developer's machine; Chrome Enterprise Premium for most attributes). Non-null: an access level is created and required on every IAP accessor. os_types: DESKTOP_MAC, DESKTOP_WINDOWS, DESKTOP_LINUX, DESKTOP_CHROME_OS."
  type = object({
    require_screen_lock         = optional(bool, true)
    require_corp_owned          = optional(bool, false)
    require_admin_approval      = optional(bool, false)
    allowed_encryption_statuses = optional(list(string), ["ENCRYPTED"])
    os_types                    = optional(list(string), [])
  })
  default  = null
  nullable = true

  validation {
    condition     = var.access_level_device_policy == null || alltrue([for s in try(var.access_level_device_policy.allowed_encryption_statuses, []) : contains(["ENCRYPTION_UNSPECIFIED", "ENCRYPTION_UNSUPPORTED", "UNENCRYPTED", "ENCRYPTED"], s)])
    error_message = "Each allowed_encryption_statuses entry must be ENCRYPTED, UNENCRYPTED, ENCRYPTION_UNSUPPORTED or ENCRYPTION_UNSPECIFIED."
  }

  validation {
    condition     = var.access_level_device_policy == null || alltrue([for o in try(var.access_level_device_policy.os_types, []) : contains(["DESKTOP_MAC", "DESKTOP_WINDOWS", "DESKTOP_LINUX", "DESKTOP_CHROME_OS"], o)])
    error_message = "Each os_types entry must be DESKTOP_MAC, DESKTOP_WINDOWS, DESKTOP_LINUX or DESKTOP_CHROME_OS."
  }
}

variable "access_level_combining" {
  description = "With both IP ranges and a device policy: AND (the device must comply and be on a listed network) or OR (either is enough)."
  type        = string
  default     = "AND"

  validation {
    condition     = contains(["AND", "OR"], var.access_level_combining)
    error_message = "The access_level_combining must be AND or OR."
  }
}

# ---------------------------------------------------------------------------------------------------------------------
# Upstream and gateway settings
# ---------------------------------------------------------------------------------------------------------------------

variable "upstream" {
  description = "Upstreams in failover order (GATEWAY_UPSTREAM): anthropic (API key from Secret Manager), vertex (Claude on Vertex AI in vertex_region, as the gateway's service account) or vertex:REGION for another Vertex AI region."
  type        = list(string)
  default     = ["anthropic"]

  validation {
    condition     = length(var.upstream) > 0 && alltrue([for u in var.upstream : can(regex("^(anthropic|vertex(:[a-z0-9-]+)?)$", u))])
    error_message = "The upstream list must be non-empty, each entry anthropic, vertex or vertex:REGION."
  }
}

variable "vertex_project_id" {
  description = "Project whose Vertex AI quota serves Claude when upstream includes vertex (GATEWAY_VERTEX_PROJECT). Null: project_id."
  type        = string
  default     = null
  nullable    = true

  validation {
    condition     = var.vertex_project_id == null || can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.vertex_project_id))
    error_message = "The vertex_project_id must be null or a Google Cloud project id."
  }
}

variable "vertex_region" {
  description = "Vertex AI region for the plain vertex upstream (GATEWAY_VERTEX_REGION), e.g. global, us, eu, us-east5 or europe-west1."
  type        = string
  default     = "global"

  validation {
    condition     = contains(["global", "us", "eu"], var.vertex_region) || can(regex("^[a-z]+-[a-z]+[0-9]+$", var.vertex_region))
    error_message = "The vertex_region must be global, the us or eu multi-region, or a region name such as us-east5."
  }
}

variable "anthropic_api_key_version" {
  description = "Secret Manager version of the Anthropic API key the service reads. Pin a number (\"2\") to rotate deliberately: Cloud Run resolves the version when an instance starts."
  type        = string
  default     = "latest"

  validation {
    condition     = var.anthropic_api_key_version == "latest" || can(regex("^[1-9][0-9]*$", var.anthropic_api_key_version))
    error_message = "The anthropic_api_key_version must be latest or a version number."
  }
}

variable "policy_version" {
  description = "Secret Manager version of the policy file mounted at GATEWAY_POLICY_FILE. Pin a number to roll a new policy out deliberately (a new revision reads it)."
  type        = string
  default     = "latest"

  validation {
    condition     = var.policy_version == "latest" || can(regex("^[1-9][0-9]*$", var.policy_version))
    error_message = "The policy_version must be latest or a version number."
  }
}

variable "policy_enabled" {
  description = "Mount the policy secret as a file and point GATEWAY_POLICY_FILE at it. Turn on only after a version of the policy secret exists; off, the gateway lets every IAP-authorised user use every model."
  type        = bool
  default     = false
}

variable "extra_env" {
  description = "Further GATEWAY_* settings for the container (e.g. GATEWAY_LOG_LEVEL). Never put secrets here: they would be readable in the service's configuration."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.extra_env) : can(regex("^GATEWAY_[A-Z0-9_]+$", k))])
    error_message = "Each extra_env key must be a GATEWAY_* variable name."
  }

  validation {
    condition = length(setintersection(keys(var.extra_env), [
      "GATEWAY_IAP_AUDIENCE", "GATEWAY_ALLOWED_DOMAINS", "GATEWAY_AUDIT_SINK", "GATEWAY_ANTHROPIC_API_KEY",
      "GATEWAY_UPSTREAM", "GATEWAY_VERTEX_PROJECT", "GATEWAY_VERTEX_REGION", "GATEWAY_POLICY_FILE",
      "GATEWAY_REDIS_URL", "GATEWAY_PROJECT", "GATEWAY_DEV_MODE", "GATEWAY_IAP_CERTS_URL", "GATEWAY_CONTENT_SINK",
    ])) == 0
    error_message = "The extra_env map must not set a variable Terraform already manages, nor GATEWAY_DEV_MODE or GATEWAY_IAP_CERTS_URL (they would weaken identity checks)."
  }
}

# ---------------------------------------------------------------------------------------------------------------------
# Cloud Run sizing
# ---------------------------------------------------------------------------------------------------------------------

variable "image" {
  description = "Container image for the first revision. Null: Google's sample container until Cloud Build deploys the gateway; Terraform ignores later image changes, which belong to Cloud Build."
  type        = string
  default     = null
  nullable    = true
}

variable "min_instances" {
  description = "Minimum Cloud Run instances. 1 avoids cold starts for the first request of the day (CPU is always allocated, so each warm instance is billed)."
  type        = number
  default     = 1

  validation {
    condition     = var.min_instances >= 0 && var.min_instances <= 100
    error_message = "The min_instances must be between 0 and 100."
  }
}

variable "max_instances" {
  description = "Maximum Cloud Run instances: the ceiling on spend and on concurrent upstream connections."
  type        = number
  default     = 10

  validation {
    condition     = var.max_instances >= 1 && var.max_instances <= 1000
    error_message = "The max_instances must be between 1 and 1000."
  }

  validation {
    condition     = var.min_instances <= var.max_instances
    error_message = "The max_instances must be at least min_instances."
  }
}

variable "concurrency" {
  description = "Requests one instance serves at once. Streams mostly wait on the upstream, so a high value is fine."
  type        = number
  default     = 80

  validation {
    condition     = var.concurrency >= 1 && var.concurrency <= 1000
    error_message = "The concurrency must be between 1 and 1000."
  }
}

variable "cpu" {
  description = "vCPUs per instance (Cloud Run limit string)."
  type        = string
  default     = "1"

  validation {
    condition     = contains(["1", "2", "4", "6", "8"], var.cpu)
    error_message = "The cpu must be one of 1, 2, 4, 6 or 8."
  }
}

variable "memory" {
  description = "Memory per instance (Cloud Run limit string, e.g. 512Mi or 1Gi)."
  type        = string
  default     = "1Gi"

  validation {
    condition     = can(regex("^[0-9]+(Mi|Gi)$", var.memory))
    error_message = "The memory must be a quantity such as 512Mi or 1Gi."
  }
}

variable "request_timeout_seconds" {
  description = "Cloud Run request timeout. Long Claude Code streams need more than the default 300 s; keep it above the gateway's upstream read timeout."
  type        = number
  default     = 900

  validation {
    condition     = var.request_timeout_seconds >= 60 && var.request_timeout_seconds <= 3600
    error_message = "The request_timeout_seconds must be between 60 and 3600."
  }
}

variable "deletion_protection" {
  description = "Refuse to destroy the Cloud Run service from Terraform (set false, apply, then destroy, to remove it deliberately)."
  type        = bool
  default     = true
}

# ---------------------------------------------------------------------------------------------------------------------
# BigQuery audit
# ---------------------------------------------------------------------------------------------------------------------

variable "bigquery_location" {
  description = "BigQuery location for the audit datasets (US, EU or a region); the log bucket for captured prompts follows it. Null: the region variable. Cannot change after creation."
  type        = string
  default     = null
  nullable    = true

  validation {
    condition     = can(regex("^(US|EU|[a-z]+-[a-z]+[0-9]+)$", coalesce(var.bigquery_location, "US")))
    error_message = "The bigquery_location must be null, the US or EU multi-region, or a region name such as europe-west1."
  }
}

variable "bigquery_dataset_id" {
  description = "Dataset holding the audit table; the security views go to \"<dataset>_security\"."
  type        = string
  default     = "claude_gateway"

  validation {
    # At most 1015 characters, so that "<dataset>_security" stays within BigQuery's 1024. (Terraform's regex
    # engine refuses repeat counts over 1000, hence length() rather than {0,1014}.)
    condition     = can(regex("^[A-Za-z_][A-Za-z0-9_]*$", var.bigquery_dataset_id)) && length(var.bigquery_dataset_id) <= 1015
    error_message = "The bigquery_dataset_id must be at most 1015 letters, digits and underscores, not starting with a digit."
  }
}

variable "security_views_dir" {
  description = "Folder whose *.sql files become the security views (one view per file). Null: gateway/admin/views of this repository, beside terraform/."
  type        = string
  default     = null
  nullable    = true
}

variable "audit_table_id" {
  description = "Name of the audit table (one row per gateway request)."
  type        = string
  default     = "requests"

  validation {
    condition     = can(regex("^[A-Za-z_][A-Za-z0-9_]*$", var.audit_table_id)) && length(var.audit_table_id) <= 1024
    error_message = "The audit_table_id must be at most 1024 letters, digits and underscores, not starting with a digit."
  }
}

variable "audit_retention_days" {
  description = "Days a daily audit partition is kept before BigQuery deletes it. 0 keeps rows forever."
  type        = number
  default     = 0

  validation {
    condition     = var.audit_retention_days >= 0 && floor(var.audit_retention_days) == var.audit_retention_days
    error_message = "The audit_retention_days must be a whole number of days, 0 or more."
  }
}

variable "content_table_id" {
  description = "Name of the table for captured prompts and responses, in the dataset \"<bigquery_dataset_id>_content\"."
  type        = string
  default     = "audit_content"

  validation {
    condition     = can(regex("^[A-Za-z_][A-Za-z0-9_]*$", var.content_table_id)) && length(var.content_table_id) <= 1024
    error_message = "The content_table_id must be at most 1024 letters, digits and underscores, not starting with a digit."
  }
}

variable "content_retention_days" {
  description = "Days a daily partition of captured prompts and responses is kept before BigQuery deletes it (also how long their fallback log entries are kept). 0 keeps them forever."
  type        = number
  default     = 30

  validation {
    condition     = var.content_retention_days >= 0 && var.content_retention_days <= 3650 && floor(var.content_retention_days) == var.content_retention_days
    error_message = "The content_retention_days must be a whole number of days from 0 to 3650."
  }
}

variable "content_reader_groups" {
  description = "Group emails allowed to read captured prompts and responses: read access to the content table only (and its fallback log entries), plus BigQuery job user to run queries. Not implied by security_reader_groups."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for g in var.content_reader_groups : can(regex("^[^@\\s:]+@[^@\\s:]+\\.[^@\\s:]+$", g))])
    error_message = "Each content_reader_groups entry must be a bare group email (no 'group:' prefix)."
  }
}

# ---------------------------------------------------------------------------------------------------------------------
# Artifact Registry
# ---------------------------------------------------------------------------------------------------------------------

variable "artifact_registry_repository_id" {
  description = "Artifact Registry Docker repository for gateway images."
  type        = string
  default     = "claude-gateway"

  validation {
    condition     = can(regex("^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$", var.artifact_registry_repository_id))
    error_message = "The artifact_registry_repository_id must be lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "keep_image_versions" {
  description = "Most recent image versions Artifact Registry keeps; older ones are deleted by a cleanup policy."
  type        = number
  default     = 30

  validation {
    condition     = var.keep_image_versions >= 5
    error_message = "The keep_image_versions must be at least 5, so a rollback target always remains."
  }
}

# ---------------------------------------------------------------------------------------------------------------------
# Memorystore Redis for shared rate limits (optional)
# ---------------------------------------------------------------------------------------------------------------------

variable "redis_enabled" {
  description = "Create a Memorystore Redis instance for rate limits shared across instances, reached through Direct VPC egress (GATEWAY_REDIS_URL). Off: each instance counts on its own."
  type        = bool
  default     = false
}

variable "redis_tier" {
  description = "Memorystore tier: BASIC (one node) or STANDARD_HA (replicated, automatic failover)."
  type        = string
  default     = "BASIC"

  validation {
    condition     = contains(["BASIC", "STANDARD_HA"], var.redis_tier)
    error_message = "The redis_tier must be BASIC or STANDARD_HA."
  }
}

variable "redis_memory_size_gb" {
  description = "Memorystore memory in GiB (rate-limit counters need very little)."
  type        = number
  default     = 1

  validation {
    condition     = var.redis_memory_size_gb >= 1 && var.redis_memory_size_gb <= 300
    error_message = "The redis_memory_size_gb must be between 1 and 300."
  }
}

variable "vpc_network" {
  description = "Existing VPC network (name or self link) for Direct VPC egress and Redis. Null with redis_enabled: a dedicated network is created. Set together with vpc_subnetwork."
  type        = string
  default     = null
  nullable    = true
}

variable "vpc_subnetwork" {
  description = "Existing subnetwork (name or self link) in the region for Direct VPC egress. Set together with vpc_network."
  type        = string
  default     = null
  nullable    = true
}

variable "vpc_subnet_cidr" {
  description = "Range of the subnetwork created for Direct VPC egress when vpc_network is null (at least a /26; Cloud Run takes addresses from it as it scales)."
  type        = string
  default     = "10.8.0.0/24"

  validation {
    # try(): a value without "/" has no prefix length to compare, and must give this message, not an index error.
    condition     = can(regex("^[0-9.]+/[0-9]+$", var.vpc_subnet_cidr)) && can(cidrhost(var.vpc_subnet_cidr, 0)) && try(tonumber(split("/", var.vpc_subnet_cidr)[1]) <= 26, false)
    error_message = "The vpc_subnet_cidr must be an IPv4 CIDR range of /26 or larger, such as 10.8.0.0/24."
  }
}

# ---------------------------------------------------------------------------------------------------------------------
# Alerts and the dashboard (monitoring.tf, docs/admin-guide.md "Alerts and the dashboard")
# ---------------------------------------------------------------------------------------------------------------------

variable "monitoring_enabled" {
  description = "Create the log-based metrics, alert policies and dashboard of monitoring.tf."
  type        = bool
  default     = true
}

variable "alert_notification_channels" {
  description = "Existing Cloud Monitoring notification channels every alert goes to, as projects/PROJECT/notificationChannels/ID (Slack, PagerDuty, SMS, ... made in the console or with gcloud)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.alert_notification_channels : can(regex("^projects/[^/]+/notificationChannels/[0-9]+$", c))])
    error_message = "Each alert_notification_channels entry must be a channel name: projects/PROJECT/notificationChannels/ID."
  }
}

variable "alert_emails" {
  description = "Email addresses every alert goes to; Terraform creates an email notification channel for each."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for e in var.alert_emails : can(regex("^[^@\\s:]+@[^@\\s:]+\\.[^@\\s:]+$", e))])
    error_message = "Each alert_emails entry must be an email address."
  }
}

variable "alert_error_ratio" {
  description = "Share of requests ending in upstream_error or gateway_error over 10 minutes that raises the error-rate alert."
  type        = number
  default     = 0.05

  validation {
    condition     = var.alert_error_ratio > 0 && var.alert_error_ratio <= 1
    error_message = "The alert_error_ratio must be above 0 and at most 1."
  }
}

variable "alert_error_min_requests" {
  description = "Requests in the 10 minutes below which the error-rate alert stays quiet (two requests, one failed, is no spike)."
  type        = number
  default     = 20

  validation {
    condition     = var.alert_error_min_requests >= 1 && floor(var.alert_error_min_requests) == var.alert_error_min_requests
    error_message = "The alert_error_min_requests must be a whole number, at least 1."
  }
}

variable "alert_upstream_failovers" {
  description = "Requests that needed a second upstream attempt in 10 minutes above which the upstream-failure alert fires."
  type        = number
  default     = 10

  validation {
    condition     = var.alert_upstream_failovers >= 0
    error_message = "The alert_upstream_failovers must not be negative."
  }
}

variable "alert_policy_refusals" {
  description = "Requests refused by policy (denied or rate_limited) in 10 minutes above which the bulk-refusal alert fires."
  type        = number
  default     = 50

  validation {
    condition     = var.alert_policy_refusals >= 0
    error_message = "The alert_policy_refusals must not be negative."
  }
}
