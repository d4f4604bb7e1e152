# ---------------------------------------------------------------------------------------------------------------------
# Alerts and a dashboard on Cloud Monitoring, from the gateway's own log lines (docs/admin-guide.md, "Alerts and the
# dashboard"). Every metric below is a log-based metric on JSON lines the gateway writes to stdout with Cloud
# Logging's StructuredLogHandler: the Python logger's name arrives as the entry label `python_logger`, the message
# as jsonPayload.message, and the record's json_fields as jsonPayload fields.
#   - gateway.access, one line per request (gateway/access_log.py): outcome, model, groups, tokens, cost, latency;
#   - gateway.audit, `audit_fallback` / `audit_content_fallback` entries: rows BigQuery had not taken in time;
#   - gateway.budget, `budget_threshold_crossed`: a person's spend crossing 70, 90 or 100 % of a budget, once per
#     person, threshold and budget period (fields user, groups, period, threshold, spent_usd, budget_usd, resets_at).
# Alerts go to var.alert_notification_channels and to an email channel per var.alert_emails.
# ---------------------------------------------------------------------------------------------------------------------

locals {
  monitoring = var.monitoring_enabled ? 1 : 0

  service_filter = "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=\"${var.name}\""
  access_filter  = "${local.service_filter} AND labels.python_logger=\"gateway.access\""
  budget_filter  = "${local.service_filter} AND labels.python_logger=\"gateway.budget\" AND jsonPayload.message=\"budget_threshold_crossed\""
  # Metric names are PromQL names too once `-` is `_` (logging.googleapis.com/user/NAME is logging_googleapis_com:user_NAME).
  metric_prefix = replace(var.name, "-", "_")
  metric_names = {
    requests       = "${local.metric_prefix}_requests"
    tokens         = "${local.metric_prefix}_tokens"
    cost           = "${local.metric_prefix}_cost_usd"
    ttfb           = "${local.metric_prefix}_ttfb_ms"
    failovers      = "${local.metric_prefix}_upstream_failovers"
    audit_fallback = "${local.metric_prefix}_audit_fallback"
    budget         = "${local.metric_prefix}_budget_crossings"
  }
  metric_types = { for key, name in local.metric_names : key => "logging.googleapis.com/user/${name}" }
  promql       = { for key, name in local.metric_names : key => "logging_googleapis_com:user_${name}" }
  # Every PromQL selector names the service, so two gateways in one project keep apart.
  promql_selector = "{monitored_resource=\"cloud_run_revision\",service_name=\"${var.name}\"}"

  notification_channels = concat(
    var.alert_notification_channels,
    [for channel in google_monitoring_notification_channel.email : channel.id],
  )

  # The rule of gateway/admin/views/unusual_daily_tokens.sql: a day at least 3 times the person's median day over the
  # 30 days before, at least 100,000 tokens, with at least 5 earlier days of use.
  unusual_tokens = { factor = 3, min_tokens = 100000, min_history_days = 5 }
  daily_tokens   = "sum by (user) (increase(${local.promql.tokens}_sum${local.promql_selector}[1d]))"

  budget_thresholds = {
    "70"  = { filter = "jsonPayload.threshold>=0.7 AND jsonPayload.threshold<0.9", severity = "WARNING" }
    "90"  = { filter = "jsonPayload.threshold>=0.9 AND jsonPayload.threshold<1", severity = "ERROR" }
    "100" = { filter = "jsonPayload.threshold>=1", severity = "CRITICAL" }
  }
}

resource "google_monitoring_notification_channel" "email" {
  for_each = var.monitoring_enabled ? toset(var.alert_emails) : toset([])

  display_name = "${var.name} alerts: ${each.value}"
  type         = "email"
  labels       = { email_address = each.value }

  depends_on = [google_project_service.enabled]
}

# --- log-based metrics ------------------------------------------------------------------------------------------------

resource "google_logging_metric" "requests" {
  count = local.monitoring

  name        = local.metric_names.requests
  description = "Requests through ${var.name}, by outcome, model and matched Workspace groups (access log lines)."
  filter      = local.access_filter
  label_extractors = {
    outcome = "EXTRACT(jsonPayload.outcome)"
    model   = "EXTRACT(jsonPayload.model)"
    groups  = "EXTRACT(jsonPayload.groups)"
  }

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "INT64"
    display_name = "${var.name} requests"
    labels {
      key         = "outcome"
      description = "ok, denied, rate_limited, upstream_error, ... (the audit table's outcome)"
    }
    labels {
      key         = "model"
      description = "Model served, else requested"
    }
    labels {
      key         = "groups"
      description = "Workspace groups the person matched, comma-separated; (no group) when none"
    }
  }

  depends_on = [google_project_service.enabled]
}

resource "google_logging_metric" "tokens" {
  count = local.monitoring

  name            = local.metric_names.tokens
  description     = "Tokens per request through ${var.name} (input + output + cache writes + cache reads, as the views count them)."
  filter          = "${local.access_filter} AND jsonPayload.tokens>0"
  value_extractor = "EXTRACT(jsonPayload.tokens)"
  label_extractors = {
    user   = "EXTRACT(jsonPayload.user)"
    model  = "EXTRACT(jsonPayload.model)"
    groups = "EXTRACT(jsonPayload.groups)"
  }

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "DISTRIBUTION"
    unit         = "1"
    display_name = "${var.name} tokens"
    labels {
      key         = "user"
      description = "Verified email of the person (for the unusual-tokens alert)"
    }
    labels {
      key         = "model"
      description = "Model served, else requested"
    }
    labels {
      key         = "groups"
      description = "Workspace groups the person matched, comma-separated"
    }
  }

  bucket_options {
    exponential_buckets {
      num_finite_buckets = 24
      growth_factor      = 2
      scale              = 100
    }
  }

  depends_on = [google_project_service.enabled]
}

resource "google_logging_metric" "cost" {
  count = local.monitoring

  name            = local.metric_names.cost
  description     = "Cost in USD at list prices per request through ${var.name} (the audit row's cost_usd)."
  filter          = "${local.access_filter} AND jsonPayload.cost_usd>0"
  value_extractor = "EXTRACT(jsonPayload.cost_usd)"
  label_extractors = {
    model  = "EXTRACT(jsonPayload.model)"
    groups = "EXTRACT(jsonPayload.groups)"
  }

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "DISTRIBUTION"
    unit         = "{USD}" # UCUM has no currency: an annotation of the unit 1
    display_name = "${var.name} cost"
    labels {
      key         = "model"
      description = "Model served, else requested"
    }
    labels {
      key         = "groups"
      description = "Workspace groups the person matched, comma-separated"
    }
  }

  bucket_options {
    exponential_buckets {
      num_finite_buckets = 24
      growth_factor      = 2
      scale              = 0.0001
    }
  }

  depends_on = [google_project_service.enabled]
}

resource "google_logging_metric" "ttfb" {
  count = local.monitoring

  name            = local.metric_names.ttfb
  description     = "Milliseconds from a request's receipt to its first response byte (what a person waits for), ${var.name}."
  filter          = "${local.access_filter} AND jsonPayload.ttfb_ms>0"
  value_extractor = "EXTRACT(jsonPayload.ttfb_ms)"
  label_extractors = {
    model  = "EXTRACT(jsonPayload.model)"
    groups = "EXTRACT(jsonPayload.groups)"
  }

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "DISTRIBUTION"
    unit         = "ms"
    display_name = "${var.name} time to first byte"
    labels {
      key         = "model"
      description = "Model served, else requested"
    }
    labels {
      key         = "groups"
      description = "Workspace groups the person matched, comma-separated"
    }
  }

  bucket_options {
    exponential_buckets {
      num_finite_buckets = 30
      growth_factor      = 1.5
      scale              = 10
    }
  }

  depends_on = [google_project_service.enabled]
}

resource "google_logging_metric" "failovers" {
  count = local.monitoring

  name        = local.metric_names.failovers
  description = "Requests ${var.name} had to send to more than one upstream attempt (an upstream failed first)."
  filter      = "${local.access_filter} AND jsonPayload.attempts>1"
  label_extractors = {
    upstream = "EXTRACT(jsonPayload.upstream)"
  }

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    labels {
      key         = "upstream"
      description = "Upstream that finally answered"
    }
  }

  depends_on = [google_project_service.enabled]
}

resource "google_logging_metric" "audit_fallback" {
  count = local.monitoring

  name        = local.metric_names.audit_fallback
  description = "Audit rows ${var.name} logged as audit_fallback (or audit_content_fallback) because BigQuery had not taken them in time."
  filter      = "${local.service_filter} AND jsonPayload.message=(\"audit_fallback\" OR \"audit_content_fallback\")"
  label_extractors = {
    kind = "EXTRACT(jsonPayload.message)"
  }

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    labels {
      key         = "kind"
      description = "audit_fallback (metadata rows) or audit_content_fallback (captured content)"
    }
  }

  depends_on = [google_project_service.enabled]
}

resource "google_logging_metric" "budget" {
  count = local.monitoring

  name        = local.metric_names.budget
  description = "Budget thresholds crossed on ${var.name}: one per person, threshold and budget period."
  filter      = local.budget_filter
  label_extractors = {
    threshold = "EXTRACT(jsonPayload.threshold)"
    period    = "EXTRACT(jsonPayload.period)"
  }

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    labels {
      key         = "threshold"
      description = "Share of the budget crossed: 0.7, 0.9 or 1.0"
    }
    labels {
      key         = "period"
      description = "The budget's period"
    }
  }

  depends_on = [google_project_service.enabled]
}

# --- alert policies ---------------------------------------------------------------------------------------------------

# One policy per threshold, so that 100 % can go to a pager and 70 % to a mailbox. A log-match condition: one incident
# per event, naming the person; Cloud Monitoring sends at most one notification per policy per 5 minutes.
resource "google_monitoring_alert_policy" "budget" {
  for_each = var.monitoring_enabled ? local.budget_thresholds : {}

  display_name          = "${var.name}: a budget is ${each.key} % spent"
  combiner              = "OR"
  severity              = each.value.severity
  notification_channels = local.notification_channels

  conditions {
    display_name = "budget_threshold_crossed at ${each.key} %"
    condition_matched_log {
      filter = "${local.budget_filter} AND ${each.value.filter}"
      label_extractors = {
        user       = "EXTRACT(jsonPayload.user)"
        period     = "EXTRACT(jsonPayload.period)"
        spent_usd  = "EXTRACT(jsonPayload.spent_usd)"
        budget_usd = "EXTRACT(jsonPayload.budget_usd)"
        resets_at  = "EXTRACT(jsonPayload.resets_at)"
      }
    }
  }

  alert_strategy {
    notification_rate_limit {
      period = "300s"
    }
    auto_close = "1800s"
  }

  documentation {
    subject   = "${var.name}: $${log.extracted_label.user} has spent ${each.key} % of a budget"
    mime_type = "text/markdown"
    content   = "$${log.extracted_label.user} has spent $${log.extracted_label.spent_usd} USD of a $${log.extracted_label.budget_usd} USD $${log.extracted_label.period} budget, which resets at $${log.extracted_label.resets_at}. ${each.key == "100" ? "Further requests are refused until then." : "At 100 % further requests are refused until the budget resets."} Limits are in the policy file (docs/policy.md); `claude-gateway policy explain EMAIL` shows the person's budgets."
  }

  depends_on = [google_logging_metric.budget]
}

resource "google_monitoring_alert_policy" "audit_fallback" {
  count = local.monitoring

  display_name          = "${var.name}: audit rows are going to the log, not BigQuery"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = local.notification_channels

  conditions {
    display_name = "audit_fallback entries"
    condition_threshold {
      filter          = "metric.type=\"${local.metric_types.audit_fallback}\" AND resource.type=\"cloud_run_revision\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["metric.label.kind"]
      }
      trigger {
        count = 1
      }
    }
  }

  alert_strategy {
    auto_close = "3600s"
  }

  documentation {
    mime_type = "text/markdown"
    content   = "BigQuery did not take audit rows within GATEWAY_AUDIT_RETRY_MAX_SECONDS, so the gateway logged them as audit_fallback entries (nothing is lost: the log holds each complete row). Once BigQuery answers, replay them: docs/security-teams.md, \"Routing audit_fallback entries to BigQuery\" (`claude-gateway audit replay`)."
  }

  depends_on = [google_logging_metric.audit_fallback]
}

resource "google_monitoring_alert_policy" "error_rate" {
  count = local.monitoring

  display_name          = "${var.name}: upstream or gateway errors spiking"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = local.notification_channels

  conditions {
    display_name = "share of upstream_error and gateway_error outcomes over 10 minutes"
    condition_prometheus_query_language {
      # A minimum of requests keeps one failure out of two requests at night from paging anyone.
      query               = <<-EOT
        (
          sum(increase(${local.promql.requests}{monitored_resource="cloud_run_revision",service_name="${var.name}",outcome=~"upstream_error|gateway_error"}[10m]))
          / sum(increase(${local.promql.requests}${local.promql_selector}[10m]))
        ) > ${var.alert_error_ratio}
        and sum(increase(${local.promql.requests}${local.promql_selector}[10m])) >= ${var.alert_error_min_requests}
      EOT
      duration            = "0s"
      evaluation_interval = "60s"
    }
  }

  alert_strategy {
    auto_close = "3600s"
  }

  documentation {
    mime_type = "text/markdown"
    content   = "More than ${var.alert_error_ratio} of the requests of the last 10 minutes (at least ${var.alert_error_min_requests} of them) ended in upstream_error (the upstream failed, refused or cut the stream) or gateway_error. The audit rows' error_message and upstream_failures say why: SELECT outcome, error_type, error_message, upstream_failures FROM the audit table WHERE timestamp >= TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 1 HOUR) AND outcome IN ('upstream_error', 'gateway_error')."
  }

  depends_on = [google_logging_metric.requests]
}

resource "google_monitoring_alert_policy" "upstream_failovers" {
  count = local.monitoring

  display_name          = "${var.name}: upstream failures (failovers) spiking"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = local.notification_channels

  conditions {
    display_name = "requests that needed another upstream attempt, per 10 minutes"
    condition_threshold {
      filter          = "metric.type=\"${local.metric_types.failovers}\" AND resource.type=\"cloud_run_revision\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.alert_upstream_failovers
      duration        = "0s"
      aggregations {
        alignment_period     = "600s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
      }
      trigger {
        count = 1
      }
    }
  }

  alert_strategy {
    auto_close = "3600s"
  }

  documentation {
    mime_type = "text/markdown"
    content   = "An upstream (Anthropic or a Vertex AI region) keeps failing and requests are being retried on the next one in GATEWAY_UPSTREAM (docs/upstreams.md). The audit column upstream_failures says why each attempt failed."
  }

  depends_on = [google_logging_metric.failovers]
}

resource "google_monitoring_alert_policy" "policy_refusals" {
  count = local.monitoring

  display_name          = "${var.name}: many requests refused by policy"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = local.notification_channels

  conditions {
    display_name = "denied and rate_limited requests per 10 minutes"
    condition_threshold {
      filter          = "metric.type=\"${local.metric_types.requests}\" AND resource.type=\"cloud_run_revision\" AND metric.label.outcome=one_of(\"denied\", \"rate_limited\")"
      comparison      = "COMPARISON_GT"
      threshold_value = var.alert_policy_refusals
      duration        = "0s"
      aggregations {
        alignment_period     = "600s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
      }
      trigger {
        count = 1
      }
    }
  }

  alert_strategy {
    auto_close = "3600s"
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Many requests were refused by the access policy (denied: a model or path not allowed; rate_limited: a limit or budget reached). A policy change, or someone scripting against the gateway. Who and which rule: the refused_requests_daily view (docs/security-teams.md)."
  }

  depends_on = [google_logging_metric.requests]
}

resource "google_monitoring_alert_policy" "unusual_daily_tokens" {
  count = local.monitoring

  display_name          = "${var.name}: a person's daily tokens far above their usual"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = local.notification_channels

  conditions {
    display_name = "tokens over 24 h against the person's median day of the 30 before"
    condition_prometheus_query_language {
      query               = <<-EOT
        (
          ${local.daily_tokens} >= ${local.unusual_tokens.min_tokens}
        )
        and
        (
          ${local.daily_tokens}
          >= ${local.unusual_tokens.factor} * quantile_over_time(0.5, (${local.daily_tokens})[30d:1d] offset 1d)
        )
        and
        (
          count_over_time((${local.daily_tokens})[30d:1d] offset 1d) >= ${local.unusual_tokens.min_history_days}
        )
      EOT
      duration            = "0s"
      evaluation_interval = "600s"
    }
  }

  alert_strategy {
    auto_close = "86400s"
  }

  documentation {
    mime_type = "text/markdown"
    content   = "A person used at least ${local.unusual_tokens.factor} times their median daily tokens of the 30 days before, and at least ${local.unusual_tokens.min_tokens} tokens, in the last 24 hours: the rule of the unusual_daily_tokens view, which lists the days by UTC day (docs/security-teams.md)."
  }

  depends_on = [google_logging_metric.tokens]
}

# --- the dashboard ----------------------------------------------------------------------------------------------------

locals {
  # [title, PromQL (BY: the label charted by), unit]: requests, tokens, cost, errors and latency.
  dashboard_series = [
    ["Requests", "sum by (BY) (increase(${local.promql.requests}${local.promql_selector}[5m]))", "1"],
    ["Tokens", "sum by (BY) (increase(${local.promql.tokens}_sum${local.promql_selector}[5m]))", "1"],
    ["Cost (USD, list prices)", "sum by (BY) (increase(${local.promql.cost}_sum${local.promql_selector}[5m]))", "{USD}"],
    ["Requests not ok (errors and refusals)", "sum by (BY, outcome) (increase(${local.promql.requests}{monitored_resource=\"cloud_run_revision\",service_name=\"${var.name}\",outcome!=\"ok\"}[5m]))", "1"],
    ["Time to first byte, p95", "histogram_quantile(0.95, sum by (BY, le) (rate(${local.promql.ttfb}_bucket${local.promql_selector}[5m])))", "ms"],
  ]
  # Each series by model (left) and by Workspace groups (right).
  dashboard_charts = flatten([
    for series in local.dashboard_series : [
      for by in ["model", "groups"] : { title = "${series[0]} by ${by}", query = replace(series[1], "BY", by), unit = series[2] }
    ]
  ])
  dashboard_extra = [
    { title = "Budget thresholds crossed", query = "sum by (threshold) (increase(${local.promql.budget}${local.promql_selector}[1h]))", unit = "1" },
    { title = "Requests that failed over to another upstream, by the upstream that answered", query = "sum by (upstream) (increase(${local.promql.failovers}${local.promql_selector}[5m]))", unit = "1" },
    { title = "Audit rows logged instead of written (audit_fallback)", query = "sum by (kind) (increase(${local.promql.audit_fallback}${local.promql_selector}[5m]))", unit = "1" },
  ]
  dashboard = {
    displayName = "${var.name}: usage, cost and errors"
    mosaicLayout = {
      columns = 48
      tiles = [
        for index, chart in concat(local.dashboard_charts, local.dashboard_extra) : {
          xPos   = (index % 2) * 24
          yPos   = floor(index / 2) * 16
          width  = 24
          height = 16
          widget = {
            title = chart.title
            xyChart = {
              chartOptions = { mode = "COLOR" }
              dataSets = [{
                plotType        = "LINE"
                targetAxis      = "Y1"
                timeSeriesQuery = { prometheusQuery = chart.query, unitOverride = chart.unit }
              }]
            }
          }
        }
      ]
    }
  }
}

resource "google_monitoring_dashboard" "default" {
  count = local.monitoring

  dashboard_json = jsonencode(local.dashboard)

  depends_on = [google_logging_metric.requests, google_logging_metric.tokens, google_logging_metric.cost, google_logging_metric.ttfb]
}
