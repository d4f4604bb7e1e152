"""Who is calling: verification of IAP's signed header (`x-goog-iap-jwt-assertion`) into a `Principal`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import string
import time
from collections.abc import Mapping
from dataclasses import dataclass

import anyio.to_thread
import httpx
from google.auth import exceptions as google_exceptions
from google.auth import jwt as google_jwt

from gateway.errors import GatewayError

logger = logging.getLogger("gateway.identity")

IAP_ASSERTION_HEADER = b"x-goog-iap-jwt-assertion"
IAP_ISSUER = "https://cloud.google.com/iap"
IAP_ALGORITHM = "ES256"

# Printable ASCII with one `@` and a dotted domain, matched against the whole string (`fullmatch`: `$` would let a
# trailing newline through). Workspace addresses are ASCII; anything else is refused outright.
_EMAIL = re.compile(r"[!-?A-~]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\.[A-Za-z0-9-]+")
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def fold_case(text: str) -> str:
    """Lower-case ASCII letters only: `str.lower` would also fold, say, the Kelvin sign U+212A into `k`, making
    `\u212aate@` someone else's `kate@`. Everything else is kept as it is."""
    return text.translate(_ASCII_LOWER)


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
        super().__init__(f"{principal.email} is not in an allowed Workspace domain.", status=403, outcome="denied")
        self.principal = principal


class IAPKeys:
    """IAP's public keys (kid -> PEM), fetched once and refreshed when they age or an unknown kid shows up.

    One fetch at a time, shared by everyone who needs it; each has a total deadline and a size cap. Known keys keep
    verifying while a refresh runs: only a token whose kid is unknown (or the very first request) waits for one."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        *,
        max_age: float = 3600.0,
        min_refetch_interval: float = 30.0,
        fetch_deadline: float = 5.0,
        max_bytes: int = 256 * 1024,
    ) -> None:
        self._client = client
        self._url = url
        self._max_age = max_age
        self._min_refetch_interval = min_refetch_interval
        self._fetch_deadline = fetch_deadline
        self._max_bytes = max_bytes
        self._keys: dict[str, str] = {}
        self._fetched_at = float("-inf")
        self._failed_at = float("-inf")
        self._unknown_kid_fetched_at = float("-inf")
        self._fetch: asyncio.Task[None] | None = None

    async def for_kid(self, kid: str | None) -> Mapping[str, str]:
        """Keys that can verify a token with this kid: the cached ones when they have it, else after a fetch."""
        now = time.monotonic()
        if self._keys and (kid is None or kid in self._keys):
            stale = now - self._fetched_at > self._max_age
            # In the background: the cached keys serve meanwhile. After a failed refresh, wait before the next.
            if stale and self._fetch is None and now - self._failed_at >= self._min_refetch_interval:
                self._start_fetch()
            return self._keys
        if self._fetch is None:
            # A flood of tokens with made-up kids must not turn into a flood of fetches: after one fetch for an
            # unknown kid, the next waits out the interval (unless there are no keys at all).
            if self._keys:
                if now - self._unknown_kid_fetched_at < self._min_refetch_interval:
                    return self._keys
                self._unknown_kid_fetched_at = now
            self._start_fetch()
        assert self._fetch is not None
        await asyncio.shield(self._fetch)  # a waiter that gives up does not cancel the fetch for the others
        if not self._keys:
            raise AuthenticationError(
                "The gateway cannot verify identity right now (IAP keys unavailable).",
                status=503,
                outcome="gateway_error",
            )
        return self._keys

    async def aclose(self) -> None:
        """Stop a fetch in flight (before its HTTP client closes)."""
        fetch = self._fetch
        if fetch is not None:
            fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fetch

    def _start_fetch(self) -> None:
        self._fetch = asyncio.create_task(self._fetch_keys(), name="iap-keys-fetch")

    async def _fetch_keys(self) -> None:
        try:
            async with asyncio.timeout(self._fetch_deadline):
                keys = await self._download()
        except Exception as exc:  # whatever went wrong, the last good keys stay and identity still fails closed
            reason = f"no answer within {self._fetch_deadline:g} s" if isinstance(exc, TimeoutError) else exc
            logger.error("could not fetch IAP keys from %s: %s", self._url, reason)
            self._failed_at = time.monotonic()
            return  # keep the last good keys
        finally:
            self._fetch = None
        self._keys = keys
        self._fetched_at = time.monotonic()

    async def _download(self) -> dict[str, str]:
        headers = {"accept-encoding": "identity"}
        async with self._client.stream("GET", self._url, headers=headers, timeout=self._fetch_deadline) as response:
            response.raise_for_status()
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self._max_bytes:
                raise ValueError(f"key file of {declared} bytes is over the {self._max_bytes}-byte cap")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self._max_bytes:
                    raise ValueError(f"key file is over the {self._max_bytes}-byte cap")
        keys = json.loads(body)
        if not isinstance(keys, dict) or not keys or not all(isinstance(v, str) for v in keys.values()):
            raise ValueError("expected a JSON object of key id to PEM")
        return keys


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
        self._allowed_domains = frozenset(fold_case(d) for d in allowed_domains or ())
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
        except (ValueError, TypeError, google_exceptions.GoogleAuthError) as exc:
            # TypeError: google-auth does arithmetic on `iat` and `exp` as they come, e.g. a string.
            raise self._refuse("invalid assertion", exc) from None

        expires = self._check_times(claims)
        principal = self._principal(claims)
        if len(self._verified) >= self._cache_size:
            self._evict()
        self._verified[token] = (principal, expires)
        return principal

    def _decode(self, token: str, certs: dict[str, str]) -> Mapping[str, object]:
        claims: Mapping[str, object] = google_jwt.decode(  # type: ignore[no-untyped-call]
            token, certs=certs, audience=self._audiences, clock_skew_in_seconds=self._clock_skew
        )
        return claims

    def _check_times(self, claims: Mapping[str, object]) -> float:
        """The expiry, once `exp`, `iat` and `nbf` are plain finite numbers and `nbf` has come (google-auth checks
        `exp` and `iat` but not `nbf`, and takes `true` or infinity for a number)."""
        times: dict[str, float] = {}
        for name in ("exp", "iat", "nbf"):
            value = claims.get(name)
            if value is None and name == "nbf":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise self._refuse(f"assertion `{name}` is not a number")
            times[name] = float(value)
        if "nbf" in times and times["nbf"] > time.time() + self._clock_skew:
            raise self._refuse("assertion is not valid yet (nbf)")
        return times["exp"]

    def _principal(self, claims: Mapping[str, object]) -> Principal:
        if claims.get("iss") != IAP_ISSUER:
            raise self._refuse(f"assertion issuer {claims.get('iss')!r} is not {IAP_ISSUER}")
        email = claims.get("email")
        subject = claims.get("sub")
        if not isinstance(email, str) or not _EMAIL.fullmatch(email):
            raise self._refuse("assertion email is missing or malformed")
        if not isinstance(subject, str) or not subject:
            raise self._refuse("assertion has no subject")
        hosted_domain = claims.get("hd")
        hosted_domain = fold_case(hosted_domain) if isinstance(hosted_domain, str) and hosted_domain else None
        principal = Principal(
            email=fold_case(email), subject=subject, domain=hosted_domain or fold_case(email.rsplit("@", 1)[1])
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
