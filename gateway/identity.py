"""Who is calling: verification of IAP's signed header (`x-goog-iap-jwt-assertion`) into a `Principal`."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import anyio.to_thread
import httpx
from google.auth import exceptions as google_exceptions
from google.auth import jwt as google_jwt

from gateway.errors import GatewayError

logger = logging.getLogger("gateway.identity")

IAP_ASSERTION_HEADER = b"x-goog-iap-jwt-assertion"
IAP_ISSUER = "https://cloud.google.com/iap"
IAP_ALGORITHM = "ES256"

# One `@`, no whitespace or control characters, a dotted domain: anything else is refused outright.
_EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\.[A-Za-z0-9-]+$")


@dataclass(frozen=True, slots=True)
class Principal:
    """A person IAP vouched for."""

    email: str
    subject: str
    domain: str


class AuthenticationError(GatewayError):
    """The request carries no valid IAP assertion: 401, outcome `unauthenticated`."""

    def __init__(self, message: str, *, status: int = 401, outcome: str = "unauthenticated") -> None:
        super().__init__(status, message, outcome=outcome)


class DomainNotAllowed(AuthenticationError):
    """A valid assertion for an account outside `GATEWAY_ALLOWED_DOMAINS`: 403, outcome `denied`."""

    def __init__(self, principal: Principal) -> None:
        super().__init__(
            f"{principal.email} is not in an allowed Workspace domain.", status=403, outcome="denied"
        )
        self.principal = principal


class IAPKeys:
    """IAP's public keys (kid -> PEM), fetched once and refetched only when an unknown kid shows up or they age."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        *,
        max_age: float = 3600.0,
        min_refetch_interval: float = 30.0,
    ) -> None:
        self._client = client
        self._url = url
        self._max_age = max_age
        self._min_refetch_interval = min_refetch_interval
        self._keys: dict[str, str] = {}
        self._fetched_at = float("-inf")
        self._unknown_kid_fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def for_kid(self, kid: str | None) -> Mapping[str, str]:
        """Keys that can verify a token with this kid, refetching if the kid is new or the keys are old."""
        stale = time.monotonic() - self._fetched_at > self._max_age
        if stale or (kid is not None and kid not in self._keys):
            await self._refetch(kid, stale=stale)
        return self._keys

    async def _refetch(self, kid: str | None, *, stale: bool) -> None:
        async with self._lock:
            now = time.monotonic()
            if stale and now - self._fetched_at <= self._max_age:
                return  # another task refreshed while this one waited for the lock
            if not stale:
                if kid in self._keys:
                    return
                # A flood of tokens with made-up kids must not turn into a flood of fetches: after one
                # fetch for an unknown kid, the next waits out the interval.
                if now - self._unknown_kid_fetched_at < self._min_refetch_interval:
                    return
                self._unknown_kid_fetched_at = now
            try:
                response = await self._client.get(self._url, timeout=10.0)
                response.raise_for_status()
                keys = response.json()
                if not isinstance(keys, dict) or not all(isinstance(v, str) for v in keys.values()):
                    raise ValueError("expected a JSON object of key id to PEM")
            except (httpx.HTTPError, ValueError) as exc:
                logger.error("could not fetch IAP keys from %s: %s", self._url, exc)
                if not self._keys:
                    raise AuthenticationError(
                        "The gateway cannot verify identity right now (IAP keys unavailable).",
                        status=503,
                        outcome="gateway_error",
                    ) from exc
                return  # keep the last good keys
            self._keys = keys
            self._fetched_at = now


class IAPVerifier:
    """Verifies IAP assertions with google-auth, checking what google-auth leaves to the caller."""

    def __init__(
        self,
        keys: IAPKeys,
        audiences: list[str],
        *,
        allowed_domains: list[str] | None = None,
        clock_skew: int = 30,
        cache_size: int = 4096,
    ) -> None:
        if not audiences:
            raise ValueError("at least one IAP audience is required")
        self._keys = keys
        self._audiences = list(audiences)
        self._allowed_domains = frozenset(d.lower() for d in allowed_domains or ())
        self._clock_skew = clock_skew
        self._cache_size = cache_size
        # Verified assertions, for their lifetime: token -> (principal, exp).
        self._verified: dict[str, tuple[Principal, float]] = {}

    async def verify(self, token: str | None) -> Principal:
        """The principal named by a valid assertion, or `AuthenticationError`."""
        if not token:
            raise AuthenticationError("Missing IAP assertion: requests must come through Identity-Aware Proxy.")
        cached = self._verified.get(token)
        if cached is not None:
            principal, exp = cached
            if time.time() < exp + self._clock_skew:
                return principal
            del self._verified[token]

        try:
            header = google_jwt._unverified_decode(token)[0]  # type: ignore[no-untyped-call]
        except (ValueError, google_exceptions.GoogleAuthError) as exc:
            raise self._refuse("malformed assertion", exc) from None
        if header.get("alg") != IAP_ALGORITHM:
            raise self._refuse(f"assertion algorithm {header.get('alg')!r} is not {IAP_ALGORITHM}")
        kid = header.get("kid")
        certs = await self._keys.for_kid(kid if isinstance(kid, str) else None)
        if isinstance(kid, str) and kid not in certs:
            raise self._refuse(f"assertion signed with unknown key id {kid!r}")

        # Signature checks are CPU work: keep them off the event loop. Only cache misses get here.
        try:
            claims = await anyio.to_thread.run_sync(self._decode, token, dict(certs))
        except (ValueError, google_exceptions.GoogleAuthError) as exc:
            raise self._refuse("invalid assertion", exc) from None

        principal = self._principal(claims)
        if len(self._verified) >= self._cache_size:
            self._evict()
        self._verified[token] = (principal, float(cast(float, claims["exp"])))
        return principal

    def _decode(self, token: str, certs: dict[str, str]) -> Mapping[str, object]:
        claims: Mapping[str, object] = google_jwt.decode(  # type: ignore[no-untyped-call]
            token, certs=certs, audience=self._audiences, clock_skew_in_seconds=self._clock_skew
        )
        return claims

    def _principal(self, claims: Mapping[str, object]) -> Principal:
        if claims.get("iss") != IAP_ISSUER:
            raise self._refuse(f"assertion issuer {claims.get('iss')!r} is not {IAP_ISSUER}")
        if not isinstance(claims.get("exp"), int | float):
            raise self._refuse("assertion has no expiry")
        email = claims.get("email")
        subject = claims.get("sub")
        if not isinstance(email, str) or not _EMAIL.match(email):
            raise self._refuse("assertion email is missing or malformed")
        if not isinstance(subject, str) or not subject:
            raise self._refuse("assertion has no subject")
        hosted_domain = claims.get("hd")
        hosted_domain = hosted_domain.lower() if isinstance(hosted_domain, str) and hosted_domain else None
        principal = Principal(
            email=email.lower(), subject=subject, domain=hosted_domain or email.rsplit("@", 1)[1].lower()
        )
        # `hd` is what proves a managed Workspace account; an address in the company's domain alone can
        # belong to an unmanaged consumer account, so the email's domain is not enough.
        if self._allowed_domains and hosted_domain not in self._allowed_domains:
            logger.warning("refused %s: hosted domain %r is not allowed", principal.email, hosted_domain)
            raise DomainNotAllowed(principal)
        return principal

    def _evict(self) -> None:
        now = time.time()
        for token, (_, exp) in list(self._verified.items()):
            if now >= exp + self._clock_skew:
                del self._verified[token]
        if len(self._verified) >= self._cache_size:
            self._verified.clear()

    def _refuse(self, reason: str, exc: Exception | None = None) -> AuthenticationError:
        detail = f"{reason}: {exc}" if exc else reason
        logger.warning("refused IAP assertion: %s", detail)
        return AuthenticationError(f"Invalid IAP assertion ({reason}).")
