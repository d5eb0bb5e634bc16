"""Sessions, sampling sessions, client configuration and server info."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import msgspec

from ._base import Model

__all__ = [
    "ClientConfigRequest",
    "ClientConfigResponse",
    "ClientDynamicConfigResponse",
    "CreateSamplingSessionRequest",
    "CreateSamplingSessionResponse",
    "CreateSessionRequest",
    "CreateSessionResponse",
    "GetSamplerResponse",
    "GetServerCapabilitiesResponse",
    "GetSessionResponse",
    "HealthResponse",
    "HealthStatus",
    "JoinSamplingSessionRequest",
    "JoinSamplingSessionResponse",
    "ListSessionsResponse",
    "SessionHeartbeatRequest",
    "SessionHeartbeatResponse",
    "SupportedModel",
    "TwinkleCreateSessionRequest",
]


class CreateSessionRequest(
    Model, kw_only=True, frozen=True, tag="create_session", tag_field="type"
):
    """Open a client session (wire ``type: "create_session"``)."""

    tags: list[str]
    user_metadata: dict[str, Any] | None = None
    sdk_version: str
    project_id: str | None = None
    display_name: str | None = None
    type: ClassVar[Literal["create_session"]] = "create_session"


class TwinkleCreateSessionRequest(Model, kw_only=True, frozen=True):
    """Twinkle's ``create_session`` body: ``{"metadata": {...}}`` (its clients send no
    tags, version or type). Not an official type."""

    metadata: dict[str, Any] | None = None


class CreateSessionResponse(Model, kw_only=True, frozen=True):
    """The new session id, with optional messages the SDK logs at INFO/WARNING/ERROR."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    session_id: str
    info_message: str | None = None
    warning_message: str | None = None
    error_message: str | None = None
    type: str = "create_session"


class SessionHeartbeatRequest(
    Model, kw_only=True, frozen=True, tag="session_heartbeat", tag_field="type"
):
    """Keep a session alive (wire ``type: "session_heartbeat"``)."""

    session_id: str
    type: ClassVar[Literal["session_heartbeat"]] = "session_heartbeat"


class SessionHeartbeatResponse(Model, kw_only=True, frozen=True):
    """Answer to a heartbeat (``{}`` on some servers)."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    type: str = "session_heartbeat"


class CreateSamplingSessionRequest(
    Model, kw_only=True, frozen=True, tag="create_sampling_session", tag_field="type"
):
    """Open a sampling session in a session (wire ``type: "create_sampling_session"``)."""

    session_id: str
    sampling_session_seq_id: int
    base_model: str | None = None
    model_path: str | None = None
    type: ClassVar[Literal["create_sampling_session"]] = "create_sampling_session"


class CreateSamplingSessionResponse(Model, kw_only=True, frozen=True):
    """The new sampling session id."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    sampling_session_id: str
    type: str = "create_sampling_session"


class JoinSamplingSessionRequest(
    Model, kw_only=True, frozen=True, tag="join_sampling_session", tag_field="type"
):
    """Ask for a clone id in an existing sampling session."""

    sampling_session_id: str
    type: ClassVar[Literal["join_sampling_session"]] = "join_sampling_session"


class JoinSamplingSessionResponse(Model, kw_only=True, frozen=True):
    """The server-allocated clone id (the original client is 0)."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    client_counter: int
    type: str = "join_sampling_session"


class ClientConfigRequest(Model, kw_only=True, frozen=True):
    """Body of ``client/config`` and ``client/dynamic_config``."""

    sdk_version: str


class ClientConfigResponse(Model, kw_only=True, frozen=True):
    """Server feature flags, fetched once per client; defaults as in SDK 0.38."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    pjwt_auth_enabled: bool = False
    credential_default_source: str = "api_key"
    sample_dispatch_bytes_semaphore_size: int = 10 * 1024 * 1024
    inflight_response_bytes_semaphore_size: int = 50 * 1024 * 1024
    parallel_fwdbwd_chunks: bool = True
    proto_compress_fwdbwd: bool = False
    fwdbwd_max_chunk_len: int = 1024
    fwdbwd_max_chunk_bytes_count: int = 5_000_000
    fwdbwd_dispatch_bytes_semaphore_size: int = 50 * 1000 * 1000
    billing_exception_max_pause_duration_sec: int = 60 * 60
    sample_no_retries: bool = False
    sample_enable_stuck_detection: bool = True
    sample_max_concurrent_requests: int = 2000
    use_pyqwest_transport: bool = True
    sample_use_retrieve_futures: bool = False
    custom_loss_server_side: bool = False
    sample_join_sampling_session: bool = False


class ClientDynamicConfigResponse(Model, kw_only=True, frozen=True):
    """Server flags refreshed every ``refresh_interval_sec``; defaults as in SDK 0.38."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    refresh_interval_sec: int = 300
    sample_cancel_enabled: bool = False
    sample_cancel_max_batch_size: int = 64


class GetSamplerResponse(Model, kw_only=True, frozen=True):
    """A sampler (sampling session): its base model and weights path."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    sampler_id: str
    base_model: str
    model_path: str | None = None


class SupportedModel(Model, kw_only=True, frozen=True):
    """A model the server offers."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    model_name: str | None = None
    max_context_length: int | None = None
    trainable: bool | None = None
    sampleable: bool | None = None


class GetServerCapabilitiesResponse(Model, kw_only=True, frozen=True):
    """The server's models (tinkercloud lists plain names; they decode as SupportedModel)
    and, on tinkercloud, ``max_batch_size`` and ``features``."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    supported_models: list[SupportedModel] = msgspec.field(default_factory=list)
    max_batch_size: int | None = None
    features: list[str] | None = None


class GetSessionResponse(Model, kw_only=True, frozen=True):
    """A session's training runs and samplers."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    training_run_ids: list[str] = msgspec.field(default_factory=list)
    sampler_ids: list[str] = msgspec.field(default_factory=list)
    user_metadata: dict[str, str] | None = None
    display_name: str | None = None


class ListSessionsResponse(Model, kw_only=True, frozen=True):
    """Session ids."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    sessions: list[str] = msgspec.field(default_factory=list)


class HealthResponse(Model, kw_only=True, frozen=True):
    """A health check answer: ``{"status": "ok"}`` officially; tinkercloud says
    ``"healthy"`` and adds details. Extra fields are ignored."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    status: str = "ok"
    version: str | None = None
    ray_status: str | None = None
    active_models: int | None = None
    active_sessions: int | None = None

    @property
    def is_healthy(self) -> bool:
        """True for the "ok" / "healthy" spellings."""
        return self.status.lower() in ("ok", "healthy")


HealthStatus = HealthResponse
"""Alias of :class:`HealthResponse`."""
