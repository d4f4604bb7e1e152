"""Enterprise SSO gateway for Claude Code: IAP identity, group policy, streaming relay, audit."""

__version__ = "0.1.0"
