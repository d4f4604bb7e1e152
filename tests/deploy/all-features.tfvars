# Variables for scanning terraform/ with every optional part switched on (scripts/checkov): checkov leaves out
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
