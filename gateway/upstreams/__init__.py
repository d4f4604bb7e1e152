"""Where requests go: an upstream turns a Claude request into its own HTTP request."""
