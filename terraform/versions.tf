terraform {
  # 1.9: variable validations that refer to other variables (access_groups with access_users, min/max instances).
  required_version = ">= 1.9.0, < 2.0.0"

  required_providers {
    # 7.21 is the first GA google provider with google_cloud_run_v2_service.iap_enabled.
    google = {
      source  = "hashicorp/google"
      version = ">= 7.21.0, < 8.0.0"
    }
    # google-beta only for google_project_service_identity (the IAP service agent), which GA lacks.
    google-beta = {
      source  = "hashicorp/google-beta"
      version = ">= 7.21.0, < 8.0.0"
    }
  }
}
