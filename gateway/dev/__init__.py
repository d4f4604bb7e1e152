"""Local stand-ins for what the gateway meets in production: IAP in front, Anthropic behind."""
