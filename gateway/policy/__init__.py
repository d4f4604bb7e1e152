"""Access policy: who may use which model, how fast and how much. The proxy asks before and after."""

from __future__ import annotations

from gateway.policy.base import AccessPolicy, Admission, AllowAll, PolicyRefusal, RequestFacts

__all__ = ["AccessPolicy", "Admission", "AllowAll", "PolicyRefusal", "RequestFacts"]
