"""Where requests go: an upstream turns a Claude request into its own HTTP request."""

from __future__ import annotations

from gateway.upstreams.base import Upstream, UpstreamCall, UpstreamResult

__all__ = ["Upstream", "UpstreamCall", "UpstreamResult"]
