"""Signed download links for local files (external-weights files, session traces).

The service hands out signed URLs that need no credential; the local equivalent is an
unguessable token mapped to one file, served at ``GET /files/{token}/{file_name}`` until it
expires. Only files the server chose can be reached: the URL carries no path.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["FileSigner"]


class FileSigner:
    """Tokens for files, each valid for a limited time. Thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[Path, float]] = {}

    def sign(self, path: Path, ttl_s: float) -> tuple[str, float]:
        """A token for ``path`` and its expiry time (wall clock)."""
        token = secrets.token_urlsafe(24)
        expires = self._clock() + ttl_s
        with self._lock:
            self._drop_expired()
            self._tokens[token] = (path, expires)
        return token, expires

    def resolve(self, token: str) -> Path | None:
        """The file of a valid token, or ``None``."""
        with self._lock:
            entry = self._tokens.get(token)
            if entry is None or entry[1] <= self._clock():
                return None
            return entry[0]

    def _drop_expired(self) -> None:
        now = self._clock()
        for token in [t for t, (_, expires) in self._tokens.items() if expires <= now]:
            del self._tokens[token]
