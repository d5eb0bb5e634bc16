"""Credential checks: the configured API key, and short-lived JWTs the server mints.

When no key is configured every request is accepted. When one is, a request must carry
either that key or a JWT minted by ``POST /api/v1/auth/token`` (the official SDK's JWT mode,
enabled with the ``pjwt_auth_enabled`` client-config flag). JWTs are HS256-signed with a
per-process random secret, so the server never has to remember the tokens it issued: the
only credential kept in plain text is the configured key itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from ._errors import unauthorized

__all__ = ["LOCAL_EMAIL", "LOCAL_OWNER", "Authenticator", "credential_from_headers"]

LOCAL_OWNER = "tml:org_user:local"
"""The one user of the embedded server (``model_owner``, JWT ``sub``)."""
LOCAL_EMAIL = "local@localhost"
_LOCAL_ORG = "local"
_JWT_HEADER = {"alg": "HS256", "typ": "JWT"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def credential_from_headers(headers: Mapping[str, str], *, bearer: bool) -> str | None:
    """The credential a request carries, or ``None``.

    Tinker clients send ``X-API-Key``; Twinkle sends ``Authorization: Bearer <token>`` and
    the same value in ``Twinkle-Authorization``.
    """
    if not bearer:
        return headers.get("X-API-Key") or None
    for name in ("Authorization", "Twinkle-Authorization"):
        value = headers.get(name, "")
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


class Authenticator:
    """Checks credentials against the configured key and the JWTs this server minted."""

    def __init__(
        self, api_key: str | None, *, jwt_ttl_s: float = 3600.0, require_jwt: bool = False
    ) -> None:
        # Keep only a digest of the key: comparisons need no plain text.
        self._key_digest = hashlib.sha256(api_key.encode()).digest() if api_key else None
        self._secret = os.urandom(32)
        self._jwt_ttl_s = jwt_ttl_s
        #: a strict JWT-mode server: the key itself opens only the handshake endpoints
        self.require_jwt = require_jwt

    def revoke_tokens(self) -> None:
        """Invalidate every JWT issued so far (fault injection: a rotated signing key)."""
        self._secret = os.urandom(32)

    @property
    def enabled(self) -> bool:
        """Whether a key is configured (otherwise every request is accepted)."""
        return self._key_digest is not None

    def check(self, credential: str | None, *, key_accepted: bool = True) -> None:
        """Raise a 401 unless ``credential`` is acceptable.

        With ``require_jwt``, the key itself counts only where ``key_accepted`` (the
        handshake and the token exchange); everywhere else a JWT is needed."""
        if self._key_digest is None:
            return
        if not credential:
            raise unauthorized("Missing API key")
        digest = hashlib.sha256(credential.encode()).digest()
        if hmac.compare_digest(digest, self._key_digest):
            if self.require_jwt and not key_accepted:
                raise unauthorized("This server wants a JWT from auth/token, not the API key",
                                   invalid_token=True)
            return
        if credential.startswith("eyJ"):
            self._check_jwt(credential)
            return
        raise unauthorized("Invalid API key")

    def issue_jwt(self) -> str:
        """A fresh JWT for the local user, valid for the configured lifetime."""
        now = int(time.time())
        claims = {
            "iss": "passport-local",
            "sub": LOCAL_OWNER,
            "org_id": _LOCAL_ORG,
            "email": LOCAL_EMAIL,
            "iat": now,
            "exp": now + int(self._jwt_ttl_s),
        }
        signing_input = (
            _b64(msgspec.json.encode(_JWT_HEADER)) + "." + _b64(msgspec.json.encode(claims))
        )
        return signing_input + "." + _b64(self._sign(signing_input))

    def _sign(self, signing_input: str) -> bytes:
        return hmac.new(self._secret, signing_input.encode("ascii"), hashlib.sha256).digest()

    def _check_jwt(self, token: str) -> None:
        try:
            header, payload, signature = token.split(".")
            valid = hmac.compare_digest(_unb64(signature), self._sign(f"{header}.{payload}"))
            claims: Any = msgspec.json.decode(_unb64(payload)) if valid else None
        except (ValueError, msgspec.DecodeError):
            valid, claims = False, None
        if not valid or not isinstance(claims, dict):
            raise unauthorized("Invalid token", invalid_token=True)
        if float(claims.get("exp", 0)) <= time.time():
            raise unauthorized("Token expired", invalid_token=True)
