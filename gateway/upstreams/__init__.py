"""Where requests go: an upstream turns a Claude request into its own HTTP request."""

from __future__ import annotations

from gateway.upstreams.base import Upstream, UpstreamCall, UpstreamError, UpstreamResult, UpstreamUnavailable

__all__ = ["Upstream", "UpstreamCall", "UpstreamError", "UpstreamResult", "UpstreamUnavailable"]
