"""claude-shim: signs a developer in with Google and carries Claude Code's traffic through IAP to the gateway."""
