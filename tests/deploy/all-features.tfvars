# Variables with every optional part switched on, for scripts/checkov and the offline plan tests: checkov leaves out
# resources whose count or for_each is empty, so a scan with the defaults would never look at them.
project_id                  = "example-gateway"
region                      = "europe-west1"
oauth_desktop_client_id     = "123456789012-abcdefghijklmnopqrstuvwxyz012345.apps.googleusercontent.com"
oauth_desktop_client_secret = "not-a-real-secret"
access_groups               = ["claude-users@example.com"]
access_users                = ["someone@example.com"]
allowed_domains             = ["example.com"]
security_reader_groups      = ["security@example.com"]
upstream                    = ["anthropic", "vertex", "vertex:us-east5"]
vertex_project_id           = "example-vertex"
policy_enabled              = true
redis_enabled               = true
redis_tier                  = "STANDARD_HA"
audit_retention_days        = 400
extra_env                   = { GATEWAY_LOG_LEVEL = "INFO" }
content_reader_groups       = ["compliance@example.com"]
content_retention_days      = 90
bigquery_location           = "EU"
access_policy_number        = "123456789"
access_level_ip_ranges      = ["203.0.113.0/24", "2001:db8::/32"]
access_level_device_policy  = { require_corp_owned = true, os_types = ["DESKTOP_MAC", "DESKTOP_LINUX"] }
alert_notification_channels = ["projects/example-gateway/notificationChannels/1234567890"]
alert_emails                = ["gateway-admins@example.com"]
