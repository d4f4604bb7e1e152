"""The bearer Claude Code holds after signing in to the shim: an HS256 JWT keyed by this install's local secret.

The token names the Google account that approved the sign-in, but it is only a key to this shim: identity still
comes from the person's Google ID token, which the shim adds to every request for IAP to check.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import OctKey

from local_shim.store import write_private_file

logger = logging.getLogger("local_shim.bearer")

ACCESS_SECONDS = 3600
REFRESH_SECONDS = 30 * 24 * 3600
REVOCATIONS_FILE = "revoked-sign-ins.json"
ISSUER = "claude-shim"
_KEY_CONTEXT = b"claude-shim sign-in bearer v1"
_ALGORITHMS = ["HS256"]

Kind = Literal["access", "refresh"]


def looks_like_jwt(value: str) -> bool:
    """True for a compact JWS (three dot-separated parts, a JSON header): a sign-in token rather than the secret."""
    return value.startswith("eyJ") and value.count(".") == 2


class InvalidBearer(Exception):
    """A token this install did not issue, or one that expired or was revoked; the message says which."""


@dataclass(frozen=True)
class Grant:
    """What a valid token says: whose sign-in it is, which sign-in (session), and until when."""

    email: str
    session: str
    kind: Kind
    issued_at: float
    expires_at: float


class Revocations:
    """Revoked sign-ins, kept on disk so a restarted shim still refuses them; read again only when the file changes."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / REVOCATIONS_FILE
        self._seen: tuple[int, int] | None = None
        self._not_before = 0.0
        self._sessions: dict[str, float] = {}

    def _load(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._seen, self._not_before, self._sessions = None, 0.0, {}
            return
        if self._seen == (stat.st_mtime_ns, stat.st_size):
            return
        try:
            data = json.loads(self.path.read_text())
            not_before = float(data.get("not_before", 0.0))
            sessions = {str(key): float(value) for key, value in dict(data.get("sessions", {})).items()}
        except (OSError, ValueError, TypeError, AttributeError):
            # An unreadable list must not let revoked tokens back in: refuse everything issued so far.
            logger.warning("%s is unreadable; treating every earlier sign-in as revoked", self.path)
            not_before, sessions = time.time(), {}
        self._seen, self._not_before, self._sessions = (stat.st_mtime_ns, stat.st_size), not_before, sessions

    def is_revoked(self, grant: Grant) -> bool:
        self._load()
        return grant.issued_at < self._not_before or grant.session in self._sessions

    def revoke_session(self, session: str, until: float) -> None:
        self._load()
        now = time.time()
        sessions = {key: value for key, value in self._sessions.items() if value > now}
        sessions[session] = until
        self._write(self._not_before, sessions)

    def revoke_all(self) -> None:
        """Every sign-in issued until now stops working (sign-out, or a different Google account)."""
        self._load()
        now = time.time()
        self._write(now, {key: value for key, value in self._sessions.items() if value > now})

    def _write(self, not_before: float, sessions: dict[str, float]) -> None:
        write_private_file(self.path, json.dumps({"not_before": not_before, "sessions": sessions}).encode())
        self._seen = None


def revoke_all_sign_ins(directory: Path) -> None:
    """Invalidate every bearer this install has issued to Claude Code."""
    Revocations(directory).revoke_all()


class Bearers:
    """Issues, checks and revokes the shim's sign-in tokens; another install's secret gives another key."""

    def __init__(self, local_secret: str, directory: Path) -> None:
        derived = hmac.new(local_secret.encode(), _KEY_CONTEXT, hashlib.sha256).digest()
        self._key = OctKey.import_key(derived)
        self.revocations = Revocations(directory)

    def issue(self, email: str, *, session: str | None = None) -> dict[str, Any]:
        """A token endpoint reply: access and refresh token for one sign-in of `email`."""
        session = session or secrets.token_urlsafe(16)
        now = time.time()  # a fraction of a second matters: a sign-out and a new sign-in can share a second
        return {
            "access_token": self._encode(email, session, "access", now, ACCESS_SECONDS),
            "token_type": "Bearer",
            "expires_in": ACCESS_SECONDS,
            "refresh_token": self._encode(email, session, "refresh", now, REFRESH_SECONDS),
            "email": email,
        }

    def _encode(self, email: str, session: str, kind: Kind, now: float, lifetime: int) -> str:
        claims = {
            "iss": ISSUER,
            "sub": email,
            "email": email,
            "sid": session,
            "typ": kind,
            "iat": now,
            "exp": int(now) + lifetime,
            "jti": secrets.token_urlsafe(8),
        }
        return jwt.encode({"alg": "HS256"}, claims, self._key, algorithms=_ALGORITHMS)

    def verify(self, token: str, kind: Kind) -> Grant:
        """The grant a token carries, or InvalidBearer."""
        try:
            claims = jwt.decode(token, self._key, algorithms=_ALGORITHMS).claims
        except (JoseError, ValueError, TypeError):
            raise InvalidBearer("it was not issued by this claude-shim install") from None
        email, session, issued, expires = (claims.get(name) for name in ("email", "sid", "iat", "exp"))
        if claims.get("iss") != ISSUER or claims.get("typ") != kind:
            raise InvalidBearer(f"it is not a claude-shim {kind} token")
        if not isinstance(email, str) or not isinstance(session, str):
            raise InvalidBearer("it names no account")
        if not isinstance(issued, int | float) or not isinstance(expires, int | float):
            raise InvalidBearer("it carries no lifetime")
        grant = Grant(email, session, kind, float(issued), float(expires))
        if grant.expires_at <= time.time():
            raise InvalidBearer("it has expired")
        if self.revocations.is_revoked(grant):
            raise InvalidBearer("it was revoked")
        return grant

    def revoke(self, token: str) -> bool:
        """Revoke the sign-in a token of either kind belongs to; False if the token is not ours (RFC 7009: no error)."""
        kinds: tuple[Kind, ...] = ("access", "refresh")
        for kind in kinds:
            try:
                grant = self.verify(token, kind)
            except InvalidBearer:
                continue
            self.revocations.revoke_session(grant.session, time.time() + REFRESH_SECONDS)
            return True
        return False
