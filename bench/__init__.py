"""Loopback benchmark: direct, nginx, a bare relay, the gateway and shim + gateway under the same load."""
