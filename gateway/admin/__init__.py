"""Admin tools, apart from the request path: BigQuery set-up, the security views, export, replay, local queries."""
