"""The request log tests read: what arrived, and what the server answered.

Secrets never enter the log: credential headers are replaced with ``***``, and their
values are also scrubbed from the recorded body (the official SDK copies request headers,
key included, into some telemetry events it POSTs).
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["SECRET_HEADERS", "RecordedRequest", "RequestLog", "redact"]

SECRET_HEADERS = frozenset(
    {
        "x-api-key",
        "authorization",
        "twinkle-authorization",
        "proxy-authorization",
        "cookie",
        "x-tinker-weights-access-token",
        "cf-access-client-secret",
    }
)
_REDACTED = "***"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it.

    ``status`` is ``None`` when no response was sent (a dropped connection, or a client
    that went away during a long-poll). ``time`` is the arrival time (``time.time()``)
    and ``duration_s`` how long the server took.
    """

    method: str
    path: str
    query: Mapping[str, str]
    headers: CIMultiDictProxy[str]
    body: bytes
    status: int | None
    time: float
    duration_s: float
    request_id: str


def redact(headers: Iterable[tuple[str, str]], body: bytes) -> tuple[CIMultiDictProxy[str], bytes]:
    """Headers with secrets replaced by ``***``, and the body with those secrets scrubbed."""
    clean: CIMultiDict[str] = CIMultiDict()
    secrets: list[bytes] = []
    for name, value in headers:
        if name.lower() in SECRET_HEADERS:
            clean.add(name, _REDACTED)
            # A bearer value is scrubbed both whole and without its scheme.
            token = value.partition(" ")[2] if " " in value else value
            secrets.extend(s.encode() for s in {value, token} if len(s) >= 4)
        else:
            clean.add(name, value)
    for secret in secrets:
        if secret in body:
            body = body.replace(secret, _REDACTED.encode())
    return CIMultiDictProxy(clean), body


class RequestLog:
    """A bounded, thread-safe list of :class:`RecordedRequest` (oldest dropped first)."""

    def __init__(self, max_entries: int = 100_000, *, enabled: bool = True) -> None:
        self._lock = threading.Lock()
        self._entries: deque[RecordedRequest] = deque(maxlen=max_entries)
        self.enabled = enabled

    def append(self, entry: RecordedRequest) -> None:
        """Record one request."""
        if self.enabled:
            with self._lock:
                self._entries.append(entry)

    def snapshot(self) -> list[RecordedRequest]:
        """A copy of the log, oldest first."""
        with self._lock:
            return list(self._entries)

    def count(self, path_pattern: str, method: str | None = None) -> int:
        """How many recorded requests' paths match ``path_pattern`` (``re.search``)."""
        pattern = re.compile(path_pattern)
        wanted = method.upper() if method else None
        with self._lock:
            return sum(
                1
                for entry in self._entries
                if pattern.search(entry.path) and (wanted is None or entry.method == wanted)
            )

    def clear(self) -> None:
        """Forget everything recorded so far."""
        with self._lock:
            self._entries.clear()
