"""Prompt and response capture for audit: redaction, response assembly, request summaries."""
