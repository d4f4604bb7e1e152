"""Claude Code's OpenTelemetry, received over OTLP/HTTP and kept with the verified identity of who sent it."""
