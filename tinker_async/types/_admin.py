"""Admin and account types: audit log, billing usage, checkpoint storage, identity."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal

import msgspec

from ._base import Model

__all__ = [
    "AuditLogEntry",
    "AuditLogResponse",
    "AuthTokenResponse",
    "BillingEventInfo",
    "BillingUsageEvent",
    "BillingUsageResponse",
    "BillingUsageSession",
    "CheckpointBillingEvent",
    "CurrentCheckpointStorageUsageItem",
    "CurrentCheckpointStorageUsageResponse",
    "GetBillingUsageRequest",
    "GetCurrentCheckpointStorageUsageRequest",
    "SamplingPrefillBillingEvent",
    "SamplingSampleBillingEvent",
    "StorageBillingEvent",
    "TrainingBillingEvent",
    "WhoamiResponse",
]


class AuditLogEntry(Model, kw_only=True, frozen=True):
    """One audit log entry; ``event`` is ``<resource>_<action>``."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    timestamp: datetime
    event: str
    event_details: dict[str, Any] = msgspec.field(default_factory=dict)
    model_id: str | None = None
    tinker_path: str | None = None
    purpose: str | None = None


class AuditLogResponse(Model, kw_only=True, frozen=True):
    """Audit log entries, sorted by time."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    entries: list[AuditLogEntry] = msgspec.field(default_factory=list)


class GetBillingUsageRequest(Model, kw_only=True, frozen=True):
    """Query of ``billing/usage/events``: an hour-aligned UTC window (at most 14 days)."""

    starting_on: datetime
    ending_before: datetime


class TrainingBillingEvent(Model, kw_only=True, frozen=True, tag="training", tag_field="type"):
    """Training tokens in a bucket."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    token_count: int
    type: ClassVar[Literal["training"]] = "training"


class SamplingPrefillBillingEvent(
    Model, kw_only=True, frozen=True, tag="sampling_prefill", tag_field="type"
):
    """Prompt (prefill) tokens in a bucket; ``cached`` ones are billed at the cache rate."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    cached: bool
    token_count: int
    type: ClassVar[Literal["sampling_prefill"]] = "sampling_prefill"


class SamplingSampleBillingEvent(
    Model, kw_only=True, frozen=True, tag="sampling_sample", tag_field="type"
):
    """Generated tokens in a bucket."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    token_count: int
    type: ClassVar[Literal["sampling_sample"]] = "sampling_sample"


class CheckpointBillingEvent(Model, kw_only=True, frozen=True, tag="checkpoint", tag_field="type"):
    """Checkpoint operations in a bucket."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    count: int
    type: ClassVar[Literal["checkpoint"]] = "checkpoint"


class StorageBillingEvent(Model, kw_only=True, frozen=True, tag="storage", tag_field="type"):
    """Checkpoint storage in a bucket."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    gigabyte_hours: float
    free: bool = False
    type: ClassVar[Literal["storage"]] = "storage"


BillingEventInfo = (
    TrainingBillingEvent
    | SamplingPrefillBillingEvent
    | SamplingSampleBillingEvent
    | CheckpointBillingEvent
    | StorageBillingEvent
)
"""The kind and quantity of a usage bucket, told apart by ``type``."""


class BillingUsageEvent(Model, kw_only=True, frozen=True):
    """One hourly usage bucket with its attribution and estimated cost."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    bucket_start: datetime
    bucket_end: datetime
    event_info: BillingEventInfo
    base_model: str | None = None
    user_id: str | None = None
    user_name: str | None = None
    session_id: str | None = None
    project_id: str | None = None
    estimated_cost_usd: float | None = None
    effective_rate_usd_per_million_tokens: float | None = None
    effective_rate_usd_per_gigabyte_month: float | None = None


class BillingUsageSession(Model, kw_only=True, frozen=True):
    """Attributes of a session that appears in the usage data."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    user_metadata: dict[str, str] | None = None


class BillingUsageResponse(Model, kw_only=True, frozen=True):
    """Usage buckets, the sessions they name, and where invoice pricing ends."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    data: list[BillingUsageEvent] = msgspec.field(default_factory=list)
    sessions: dict[str, BillingUsageSession] = msgspec.field(default_factory=dict)
    cost_data_through: datetime | None = None


class GetCurrentCheckpointStorageUsageRequest(Model, kw_only=True, frozen=True):
    """Query of ``billing/usage/checkpoints/current`` (whole org when no project)."""

    project_id: str | None = None


class CurrentCheckpointStorageUsageItem(Model, kw_only=True, frozen=True):
    """Checkpoint storage of one project and session owner."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    checkpoint_count: int
    size_bytes: int
    size_gigabytes: float
    project_id: str | None = None
    org_user_urn: str | None = None
    user_email: str | None = None
    user_name: str | None = None
    estimated_monthly_cost_usd: float | None = None


class CurrentCheckpointStorageUsageResponse(Model, kw_only=True, frozen=True):
    """Current checkpoint storage, grouped by project and owner."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    data: list[CurrentCheckpointStorageUsageItem] = msgspec.field(default_factory=list)
    effective_rate_usd_per_gigabyte_month: float | None = None


class AuthTokenResponse(Model, kw_only=True, frozen=True):
    """A JWT from ``auth/token``."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    jwt: str


class WhoamiResponse(Model, kw_only=True, frozen=True):
    """The calling principal."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    user_urn: str
    org_urn: str
    email: str | None = None
