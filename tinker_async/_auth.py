"""The credential a request carries: the API key, or the JWT it is exchanged for.

Servers whose ``client/config`` sets ``pjwt_auth_enabled`` want a short-lived JWT instead
of the API key, as the official SDK 0.38 does it: ``POST auth/token`` with the key in
``X-API-Key`` answers ``{"jwt": ...}``, and every later request sends the JWT in that same
header. The token is renewed when about half of its lifetime (``exp - iat``) has passed,
or at once when a 401 says ``error="invalid_token"`` (the request is then replayed once).
A failed renewal keeps the current token while it is still valid and tries again a minute
later.

The key may also come from ``TINKER_CREDENTIAL_CMD``: a shell command whose standard
output is the credential, run again for every exchange. It only works with servers in JWT
mode, as in the official SDK.

Every credential is a :class:`Secret`: masked in reprs, never pickled, scrubbed from
error bodies.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ._config import ClientConfig, Secret
from ._sync import LoopLock
from .errors import ConfigurationError

__all__ = ["Credentials", "jwt_claims"]

log = logging.getLogger("tinker_async")

_REFRESH_RETRY_S = 60.0
_REFRESH_WHEN_LEFT_S = 60.0
_COMMAND_TIMEOUT_S = 30.0

#: ``exchange(credential) -> jwt``: one ``POST auth/token`` sent with ``credential``.
Exchange = Callable[[str], Awaitable[str]]


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The claims of a JWT (not verified: that is the server's job), or None if it is not one."""
    parts = token.split(".")
    if len(parts) != 3 or not token.startswith("eyJ"):
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    return claims if isinstance(claims, dict) else None


class Credentials:
    """What goes in the auth header now, and when it must be renewed."""

    def __init__(self, config: ClientConfig) -> None:
        self._key = config.api_key
        self._command = config.credential_cmd
        self._jwt: Secret | None = None
        self._expires_at = 0.0
        self._renew_at = float("inf")
        self._generation = 0
        self._loop_lock = LoopLock()

    @property
    def jwt_mode(self) -> bool:
        return self._jwt is not None

    def current(self) -> str:
        """The credential to send now (the JWT in JWT mode, else the key)."""
        return self._jwt.get() if self._jwt is not None else self._key.get()

    def secrets(self) -> list[str]:
        """Every credential value held, for scrubbing server answers."""
        values = [self._key.get()]
        if self._jwt is not None:
            values.append(self._jwt.get())
        return [v for v in values if v]

    def due(self) -> bool:
        """Whether the JWT should be renewed before the next request."""
        return time.time() >= self._renew_at

    async def static_credential(self) -> str:
        """The credential for requests before (or without) JWT mode."""
        if self._key.get():
            return self._key.get()
        return await self._run_command()

    async def start_jwt_mode(self, exchange: Exchange) -> None:
        """Exchange the credential for a JWT (the server said ``pjwt_auth_enabled``)."""
        await self.renew(exchange, force=True)

    def refuse_command_without_jwt(self) -> None:
        if self._command and not self._key.get():
            raise ConfigurationError(
                "TINKER_CREDENTIAL_CMD only works with servers in JWT mode "
                "(pjwt_auth_enabled), and this one is not; set TINKER_API_KEY instead."
            )

    async def renew(self, exchange: Exchange, *, force: bool = False) -> None:
        """Renew the JWT when due (or now with ``force``), once however many requests ask
        at the same time."""
        generation = self._generation
        async with self._loop_lock():
            if self._generation != generation or not (force or self.due()):
                return  # another request renewed it while this one waited
            try:
                credential = self._key.get() or await self._run_command()
                token = await exchange(credential)
            except Exception as exc:
                if self._jwt is None or time.time() >= self._expires_at - 1.0:
                    raise
                log.warning("renewing the JWT failed (%s); the current one is still valid, "
                            "retrying in %.0f s", exc, _REFRESH_RETRY_S)
                self._renew_at = time.time() + _REFRESH_RETRY_S
                return
            self._set_jwt(token)
            self._generation += 1

    def _set_jwt(self, token: str) -> None:
        claims = jwt_claims(token) or {}
        now = time.time()
        exp, iat = claims.get("exp"), claims.get("iat", now)
        self._jwt = Secret(token)
        if not isinstance(exp, (int, float)) or not isinstance(iat, (int, float)):
            self._expires_at, self._renew_at = float("inf"), float("inf")
            return
        self._expires_at = float(exp)
        lifetime = max(0.0, float(exp) - float(iat))
        # Renew at 45-55% of the lifetime (spread, as the SDK does), and never later than a
        # minute (a quarter of the lifetime, for short ones) before expiry.
        margin = min(_REFRESH_WHEN_LEFT_S, lifetime / 4)
        self._renew_at = min(float(iat) + lifetime * random.uniform(0.45, 0.55),
                             float(exp) - margin)

    async def _run_command(self) -> str:
        command = self._command
        if not command:
            raise ConfigurationError("No API key and no TINKER_CREDENTIAL_CMD to get one from.")
        proc = await asyncio.create_subprocess_shell(
            command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), _COMMAND_TIMEOUT_S)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise ConfigurationError(
                f"TINKER_CREDENTIAL_CMD did not finish within {_COMMAND_TIMEOUT_S:.0f} s"
            ) from None
        credential = out.decode("utf-8", "replace").strip()
        if proc.returncode != 0 or not credential:
            # Its stderr may say why; its stdout may hold a credential and is never shown.
            reason = err.decode("utf-8", "replace").strip()[-300:]
            raise ConfigurationError(
                f"TINKER_CREDENTIAL_CMD exited with status {proc.returncode} and "
                f"{'no output' if not credential else 'output'}"
                + (f": {reason}" if reason else "")
            )
        return credential
