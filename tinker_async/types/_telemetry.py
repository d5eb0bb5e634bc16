"""Telemetry events the official SDK reports (``POST /telemetry``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal

import msgspec

from ._base import Model

__all__ = [
    "EventType",
    "GenericEvent",
    "SessionEndEvent",
    "SessionStartEvent",
    "Severity",
    "TelemetryBatch",
    "TelemetryEvent",
    "TelemetryResponse",
    "TelemetrySendRequest",
    "UnhandledExceptionEvent",
]

Severity = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
"""Log severity of an event."""

EventType = Literal["SESSION_START", "SESSION_END", "UNHANDLED_EXCEPTION", "GENERIC_EVENT"]
"""Kind of a telemetry event (the ``event`` field, which tells the kinds apart)."""


class _Event(Model, kw_only=True, frozen=True, tag_field="event"):
    event_id: str
    event_session_index: int
    severity: Severity
    timestamp: datetime


class SessionStartEvent(_Event, kw_only=True, frozen=True, tag="SESSION_START"):
    """A session started."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    event: ClassVar[Literal["SESSION_START"]] = "SESSION_START"


class SessionEndEvent(_Event, kw_only=True, frozen=True, tag="SESSION_END"):
    """A session ended; ``duration`` is an ISO 8601 duration."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    duration: str
    event: ClassVar[Literal["SESSION_END"]] = "SESSION_END"


class UnhandledExceptionEvent(_Event, kw_only=True, frozen=True, tag="UNHANDLED_EXCEPTION"):
    """An exception escaped user code."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    error_message: str
    error_type: str
    traceback: str | None = None
    event: ClassVar[Literal["UNHANDLED_EXCEPTION"]] = "UNHANDLED_EXCEPTION"


class GenericEvent(_Event, kw_only=True, frozen=True, tag="GENERIC_EVENT"):
    """A named event with a free-form payload."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    event_name: str
    event_data: dict[str, Any] = msgspec.field(default_factory=dict)
    event: ClassVar[Literal["GENERIC_EVENT"]] = "GENERIC_EVENT"


TelemetryEvent = SessionStartEvent | SessionEndEvent | UnhandledExceptionEvent | GenericEvent
"""One telemetry event, told apart by ``event``."""


class TelemetryBatch(Model, kw_only=True, frozen=True):
    """A batch of events from one process and session."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    events: list[TelemetryEvent]
    platform: str
    sdk_version: str
    session_id: str
    process_uuid: str


class TelemetrySendRequest(TelemetryBatch, kw_only=True, frozen=True):
    """Body of ``POST /telemetry``."""

    _ignore_extra: ClassVar[bool] = False  # a request type, as in the SDK


class TelemetryResponse(Model, kw_only=True, frozen=True):
    """Answer to ``POST /telemetry``."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    status: str = "accepted"
