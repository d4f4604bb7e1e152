"""The audit trail: one row per request, written off the response path."""
