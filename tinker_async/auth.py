"""Helpers for the authentication state, as ``tinker.auth`` has them."""

from __future__ import annotations

from ._config import DEFAULT_BASE_URL, _env, credential_sources
from .errors import TinkerError

__all__ = ["get_tinker_token", "raise_if_tinker_not_accessible", "tinker_has_credentials"]


def _base_url() -> str:
    return _env("TINKER_BASE_URL") or DEFAULT_BASE_URL


def get_tinker_token() -> str | None:
    """The configured static token (``TINKER_API_KEY``, or the key the official CLI stored
    for the Tinker service), or None. Local only: ``TINKER_CREDENTIAL_CMD`` is not run."""
    try:
        key, _ = credential_sources(None, _base_url(), None)
    except (OSError, TinkerError, ValueError):
        return None
    return key or None


def tinker_has_credentials() -> bool:
    """Whether a credential is configured (a key, a stored key, or a credential command,
    which counts without being run). Local only."""
    try:
        key, command = credential_sources(None, _base_url(), None)
    except (OSError, TinkerError, ValueError):
        return False
    return bool(key or command)


def raise_if_tinker_not_accessible() -> None:
    """Raise unless the server accepts the configured credential: one request to the
    server capabilities endpoint, not retried. ``TinkerError`` without a credential,
    ``AuthenticationError`` when it is refused, ``BillingError`` for a 402,
    ``APIConnectionError`` when the server cannot be reached."""
    from .rest import RestClient

    if not tinker_has_credentials():
        raise TinkerError("No Tinker credential is configured: set TINKER_API_KEY (or pass "
                          "api_key=...), or log in with the official CLI")
    client = RestClient(max_retries=0)
    try:
        client.get_server_capabilities().result()
    except TinkerError:
        raise
    except Exception as exc:  # credential resolution and the like: the documented type
        raise TinkerError(str(exc)) from exc
