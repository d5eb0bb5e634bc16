"""``tinker_async.configure()``: process-wide settings made in code, for worker processes.

A client copied into another process (pickled into a ``multiprocessing`` or Ray worker,
or made from a sampler handle) never carries the API key. The worker gets one from its
environment, a credential command, Ray's ``runtime_env``, or by calling
``tinker_async.configure(api_key=...)`` itself. The key given here is looked up when a
client needs it, so it also serves copies unpickled *before* the call (a Ray task's or a
``multiprocessing`` target's arguments are unpickled before its body runs).

The key is held in a :class:`Secret`: masked in reprs and never pickled. A forked child
inherits it, as it inherits the environment.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Final

from ._config import KEY_CHARS, Secret
from .errors import ConfigurationError

__all__ = ["configure", "configured_api_key", "credentials_deferred", "deferred_credentials"]


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Final = _Unset()
_api_key: Secret | None = None

#: set while a client that joins an existing session is made (``ServiceClient._shadow``):
#: a missing key is then no error yet; the client's first call reports it
_deferring: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "tinker_async_deferred_credentials", default=False)


def configure(*, api_key: str | _Unset | None = _UNSET) -> None:
    """Set this process's defaults for clients that get no argument for them.

    ``api_key``: the key of every client in this process made without ``api_key=``,
    ahead of ``TINKER_API_KEY`` and the other sources (an explicit call in code is the
    most specific). Clients unpickled or made from a sampler handle before this call use
    it too, from their next request on. ``api_key=None`` forgets it again; leaving the
    argument out changes nothing.

    Call it in the worker, e.g. at the top of a Ray task or in a ``multiprocessing.Pool``
    ``initializer``; the key is never pickled with a client, so the parent's
    ``configure`` reaches only forked children.
    """
    global _api_key
    if isinstance(api_key, _Unset):
        return
    if api_key is None:
        _api_key = None
        return
    if not isinstance(api_key, str) or not api_key.strip():
        raise ConfigurationError(
            "configure(api_key=...) needs a non-empty string; pass api_key=None to forget "
            "a configured key")
    key = api_key.strip()
    if not KEY_CHARS.match(key):
        raise ConfigurationError(
            "The API key contains spaces or non-ASCII/control characters, so it cannot be "
            "sent in a header; check for a stray newline or quote around it.")
    _api_key = Secret(key)


def configured_api_key() -> str | None:
    """The key given to :func:`configure`, or None."""
    return _api_key.get() if _api_key is not None else None


@contextlib.contextmanager
def deferred_credentials() -> Iterator[None]:
    """Within it, a client made without any credential is not refused at once: its first
    request fails instead, unless the process has a key by then (see the module doc)."""
    token = _deferring.set(True)
    try:
        yield
    finally:
        _deferring.reset(token)


def credentials_deferred() -> bool:
    """Whether a missing credential is reported at the first call (see above)."""
    return _deferring.get()
