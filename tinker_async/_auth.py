"""The credential a request carries: the API key, or the JWT it is exchanged for.

Servers whose ``client/config`` sets ``pjwt_auth_enabled`` want a short-lived JWT instead
of the API key, as the official SDK 0.38 does it: ``POST auth/token`` with the key in
``X-API-Key`` answers ``{"jwt": ...}``, and every later request sends the JWT in that same
header. Renewal, measured on the local clock from when the token arrived (so that a skewed
clock does not matter):

- at 45-55% of the token's lifetime a renewal starts in the background, and requests go
  on with the current token meanwhile;
- only when the token is about to expire (a minute, or a quarter of a short lifetime)
  do requests wait for the new one;
- a failed renewal keeps the current token while it is valid and is tried again a
  minute later;
- a 401 whose ``WWW-Authenticate`` says ``error="invalid_token"`` gets a new token and
  the request is replayed once (by the transport); a burst of such 401s exchanges once.

A client copied into another process (unpickled, or made from a sampler handle) carries
no credential: it is looked up in that process (``tinker_async.configure()``, the
environment, a credential command) when the first request needs it, so a key given after
the copy was made still serves it. With none there, that first request fails with a
:class:`ConfigurationError` that says how to give one; unpickling itself never fails.

The key may also come from ``TINKER_CREDENTIAL_CMD``: a shell command whose standard
output is the credential, run again for every exchange (in its own process group, killed
whole on timeout or cancel). It only works with servers in JWT mode, as in the official SDK.

Every credential is kept in a :class:`Secret` (masked in reprs, never pickled) and
scrubbed from error bodies; a command's output is never shown.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ._config import KEY_CHARS, ClientConfig, Secret, check_api_key, credential_sources
from ._loops import LoopLock
from .errors import ConfigurationError

__all__ = ["Credentials", "jwt_claims"]

log = logging.getLogger("tinker_async")

_RETRY_FAILED_RENEWAL_S = 60.0
_WAIT_WHEN_LEFT_S = 60.0
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
    """What goes in the auth header now, and keeping it valid."""

    def __init__(self, config: ClientConfig, exchange: Exchange) -> None:
        self._exchange = exchange
        self._base_url = config.base_url
        self._dialect = config.dialect
        self._command = config.credential_cmd
        #: the credential sent before (or without) JWT mode: the key, or the command's output
        self._static: Secret | None = config.api_key if config.api_key.get() else None
        self._printed: list[Secret] = []  # command outputs seen, for scrubbing
        self._jwt: Secret | None = None
        self._renew_at = float("inf")  # local clock
        self._wait_at = float("inf")  # from here on, requests wait for the renewal
        self._expires_at = float("inf")
        self._background: asyncio.Task[None] | None = None
        self._loop_lock = LoopLock()

    @property
    def jwt_mode(self) -> bool:
        return self._jwt is not None

    def current(self) -> str:
        """The credential to send now (the JWT in JWT mode, else the key); "" before a
        credential command has run."""
        held = self._jwt or self._static
        return held.get() if held is not None else ""

    def secrets(self) -> list[str]:
        """Every credential value held or seen, for scrubbing server answers."""
        held = [self._static, self._jwt, *self._printed]
        return [s.get() for s in held if s is not None and s.get()]

    def ready(self, wants_jwt: bool) -> bool:
        """Whether :meth:`current` can be sent as it is (the cheap check per request)."""
        if self._jwt is None:
            if self._static is None and not self._command:
                self._find_missing()  # before the transport's checks of the command
            return self._static is not None and not wants_jwt
        return time.time() < self._renew_at

    def _find_missing(self) -> None:
        """A copy made without a credential looks for one in this process now (it may have
        been configured since), and fails the call if there is none."""
        key, command = credential_sources(None, self._base_url, self._dialect)
        if key:
            self._static = Secret(check_api_key(key, self._base_url))
        elif command:
            self._command = command
        else:
            raise ConfigurationError(
                "No API key in this process. Keys are never pickled or put in sampler "
                "handles, so a client copied into a worker (multiprocessing, Ray) needs the "
                "worker's own: set TINKER_API_KEY (or TINKER_CREDENTIAL_CMD) in its "
                "environment (on Ray: ray.init(runtime_env={'env_vars': {'TINKER_API_KEY': "
                "...}})), or call tinker_async.configure(api_key=...) in the worker before "
                "this call.")

    async def prepare(self, wants_jwt: bool) -> None:
        """Make :meth:`current` right for the next request (see the module docstring)."""
        if self._static is None and not self._command:
            self._find_missing()
        if self._jwt is None:
            if wants_jwt:
                await self.renew(rejected=None)
            elif self._static is None:
                async with self._loop_lock():
                    if self._static is None:
                        self._static = Secret(await self._run_command())
            return
        now = time.time()
        if now >= self._wait_at:
            await self.renew(rejected=None)
        elif now >= self._renew_at and (self._background is None or self._background.done()):
            self._background = asyncio.get_running_loop().create_task(
                self._renew_quietly(), name="tinker-async-jwt-renewal")

    def refuse_command_without_jwt(self) -> None:
        """For a server that is not in JWT mode."""
        if self._command:
            raise ConfigurationError(
                "TINKER_CREDENTIAL_CMD only works with servers in JWT mode "
                "(pjwt_auth_enabled), and this one is not; set TINKER_API_KEY instead."
            )

    async def renew(self, *, rejected: str | None) -> None:
        """Exchange for a new JWT, once however many requests ask at the same time.

        ``rejected`` is the credential a 401 refused: nothing is done if another request
        has replaced it meanwhile. Without it, nothing is done unless a renewal is due.
        """
        async with self._loop_lock():
            held = self.current()
            if rejected is not None and self._jwt is not None and held != rejected:
                return
            if rejected is None and self._jwt is not None and time.time() < self._renew_at:
                return
            try:
                credential = (self._static.get() if self._static is not None
                              and not self._command else await self._run_command())
                token = await self._exchange(credential)
            except Exception as exc:
                if self._jwt is None or time.time() >= self._expires_at or rejected is not None:
                    raise
                log.warning("renewing the JWT failed (%s); the current one is still valid, "
                            "retrying in %.0f s", exc, _RETRY_FAILED_RENEWAL_S)
                self._renew_at = time.time() + _RETRY_FAILED_RENEWAL_S
                return
            self._set_jwt(token)

    async def _renew_quietly(self) -> None:
        try:
            await self.renew(rejected=None)
        except Exception as exc:  # the next request that must wait will raise it
            log.warning("renewing the JWT failed: %s", exc)

    def _set_jwt(self, token: str) -> None:
        claims = jwt_claims(token) or {}
        now = time.time()
        exp, iat = claims.get("exp"), claims.get("iat")
        lifetime: float | None = None
        if isinstance(exp, (int, float)) and isinstance(iat, (int, float)) and exp > iat:
            lifetime = float(exp - iat)
        elif isinstance(exp, (int, float)):
            lifetime = max(0.0, float(exp) - now)  # no iat: the local clock is all there is
        self._jwt = Secret(token)
        if lifetime is None:
            self._renew_at = self._wait_at = self._expires_at = float("inf")
            return
        # Timed from now, not from the server's iat: the two clocks may disagree.
        self._expires_at = now + lifetime
        self._wait_at = self._expires_at - min(_WAIT_WHEN_LEFT_S, lifetime / 4)
        self._renew_at = min(now + lifetime * random.uniform(0.45, 0.55), self._wait_at)

    async def _run_command(self) -> str:
        command = self._command
        if not command:
            raise ConfigurationError("No API key and no TINKER_CREDENTIAL_CMD to get one from.")
        proc = await asyncio.create_subprocess_shell(
            command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True)  # its own process group: killed whole below
        try:
            out, err = await asyncio.wait_for(proc.communicate(), _COMMAND_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise ConfigurationError(
                f"TINKER_CREDENTIAL_CMD did not finish within {_COMMAND_TIMEOUT_S:.0f} s"
            ) from None
        finally:
            if proc.returncode is None:  # timed out or cancelled: leave nothing running
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(proc.wait(), 5)
        credential = out.decode("utf-8", "replace").strip()
        if proc.returncode != 0 or not credential:
            # Its stderr may say why; its stdout may hold a credential and is never shown.
            reason = err.decode("utf-8", "replace").strip()[-300:]
            raise ConfigurationError(
                f"TINKER_CREDENTIAL_CMD exited with status {proc.returncode} and "
                f"{'no output' if not credential else 'output'}"
                + (f": {reason}" if reason else "")
            )
        if not KEY_CHARS.match(credential):
            raise ConfigurationError(
                "TINKER_CREDENTIAL_CMD printed more than one credential-like line (or spaces "
                "or control characters); it must print the credential alone"
            )
        self._printed = [*self._printed[-3:], Secret(credential)]
        return credential
