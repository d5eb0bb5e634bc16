"""Local telemetry: the official ``Telemetry`` surface, recording events in memory only.

The official SDK sends events (and, for some poll errors, request headers with the API
key) to ``/api/v1/telemetry``. tinker_async sends nothing: :class:`Telemetry` keeps the
last events in a bounded buffer that the program can read (``events``), so code that
calls ``client.get_telemetry().log(...)`` or ``capture_exceptions()`` runs unchanged.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Literal

import msgspec

__all__ = ["Severity", "Telemetry", "TelemetryEvent"]

Severity = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

#: events kept per client family (the official queue holds 10,000 too)
MAX_EVENTS = 10_000


class TelemetryEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One recorded event."""

    event_name: str
    severity: Severity
    timestamp: float
    session_id: str | None
    event_data: dict[str, object]


class Telemetry:
    """Events of one client family, kept in memory (never sent anywhere)."""

    def __init__(self, session_id: Callable[[], str | None]) -> None:
        self._session_id = session_id
        self._events: collections.deque[TelemetryEvent] = collections.deque(maxlen=MAX_EVENTS)
        self._lock = threading.Lock()
        self.dropped = 0

    def __repr__(self) -> str:
        return f"<Telemetry local-only, {len(self._events)} events>"

    @property
    def events(self) -> list[TelemetryEvent]:
        """The recorded events, oldest first (at most the last 10,000)."""
        with self._lock:
            return list(self._events)

    def log(
        self,
        event_name: str,
        event_data: dict[str, object] | None = None,
        severity: Severity = "INFO",
    ) -> bool:
        """Record an event. True (it is always kept, the oldest dropping out when full)."""
        event = TelemetryEvent(event_name=event_name, severity=severity, timestamp=time.time(),
                               session_id=self._session_id(), event_data=dict(event_data or {}))
        with self._lock:
            if len(self._events) == MAX_EVENTS:
                self.dropped += 1
            self._events.append(event)
        return True

    def log_exception_sync(self, exception: BaseException, severity: Severity = "ERROR") -> bool:
        """Record an exception (its type, message and traceback)."""
        return self.log("exception", _describe(exception), severity)

    async def log_exception(self, exception: BaseException, severity: Severity = "ERROR") -> bool:
        """Async form of :meth:`log_exception_sync`."""
        return self.log_exception_sync(exception, severity)

    def log_fatal_exception_sync(
        self, exception: BaseException, severity: Severity = "ERROR"
    ) -> bool:
        """Record an exception that ends the program's use of the client."""
        return self.log("fatal_exception", _describe(exception), severity)

    async def log_fatal_exception(
        self, exception: BaseException, severity: Severity = "ERROR"
    ) -> bool:
        """Async form of :meth:`log_fatal_exception_sync`."""
        return self.log_fatal_exception_sync(exception, severity)

    @contextlib.contextmanager
    def capture_exceptions(self, fatal: bool = False, severity: Severity = "ERROR") -> Iterator[None]:
        """Record any exception raised in the block, then let it propagate."""
        try:
            yield
        except Exception as exc:
            (self.log_fatal_exception_sync if fatal else self.log_exception_sync)(exc, severity)
            raise

    @contextlib.asynccontextmanager
    async def acapture_exceptions(
        self, fatal: bool = False, severity: Severity = "ERROR"
    ) -> AsyncIterator[None]:
        """Async form of :meth:`capture_exceptions`."""
        with self.capture_exceptions(fatal, severity):
            yield

    def stop(self) -> None:
        """Nothing to flush: events never leave the process."""

    async def close(self) -> None:
        """Nothing to flush: events never leave the process."""


def _describe(exception: BaseException) -> dict[str, Any]:
    return {
        "error_type": type(exception).__name__,
        "error_message": str(exception),
        "traceback": "".join(traceback.format_exception(exception)),
    }
