"""Static configuration of one embedded server (what ``LocalServer(...)`` was given)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._dialects import Dialect

__all__ = [
    "DEFAULT_CLIENT_CONFIG",
    "DEFAULT_DYNAMIC_CONFIG",
    "DEFAULT_MODEL",
    "SampleCapacity",
    "ServerConfig",
    "normalize_models",
]

DEFAULT_MODEL = "local/byte-lm"
"""Name of the embedded numpy model."""

# The official SDK 0.38 defaults (types/client_config_response.py), except that the session
# long-poll is on: the server implements it and the clients should be tested against it.
DEFAULT_CLIENT_CONFIG: Mapping[str, Any] = {
    "pjwt_auth_enabled": False,
    "credential_default_source": "api_key",
    "sample_dispatch_bytes_semaphore_size": 10 * 1024 * 1024,
    "inflight_response_bytes_semaphore_size": 50 * 1024 * 1024,
    "parallel_fwdbwd_chunks": True,
    "proto_compress_fwdbwd": False,
    "fwdbwd_max_chunk_len": 1024,
    "fwdbwd_max_chunk_bytes_count": 5_000_000,
    "fwdbwd_dispatch_bytes_semaphore_size": 50 * 1000 * 1000,
    "billing_exception_max_pause_duration_sec": 60 * 60,
    "sample_no_retries": False,
    "sample_enable_stuck_detection": True,
    "sample_max_concurrent_requests": 2000,
    "use_pyqwest_transport": True,
    "sample_use_retrieve_futures": True,
    "custom_loss_server_side": False,
    "sample_join_sampling_session": False,
}

# SDK defaults, except cancellation: the server implements cancel_future.
DEFAULT_DYNAMIC_CONFIG: Mapping[str, Any] = {
    "refresh_interval_sec": 300,
    "sample_cancel_enabled": True,
    "sample_cancel_max_batch_size": 64,
}


def normalize_models(models: Sequence[str | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``SupportedModel`` records from names or partial records.

    A bare name is trainable and sampleable; a mapping may set any ``SupportedModel``
    field (``model_name``, ``max_context_length``, ``trainable``, ``sampleable``).
    """
    records: list[dict[str, Any]] = []
    for model in models:
        record: dict[str, Any] = {"trainable": True, "sampleable": True}
        if isinstance(model, str):
            record["model_name"] = model
        else:
            record.update(model)
            if not isinstance(record.get("model_name"), str):
                raise ValueError(f"model record without a model_name: {model!r}")
        records.append(record)
    if not records:
        raise ValueError("the server needs at least one model")
    return records


@dataclass(frozen=True)
class SampleCapacity:
    """How many samples the embedded server serves at once (by default: no limit).

    Above a capacity the server answers as real servers do: a submit that carries
    ``X-Tinker-Sampling-Backpressure: 1`` (the official SDK and tinker_async send it) gets
    a 429 with ``Retry-After`` and a ``paused_rate_limit`` queue state; one without it is
    accepted and waits in the server's queue, its polls answering ``paused_rate_limit``.
    See ``_capacity``.
    """

    per_model: int | None = None
    """Samples in flight per base model, over every key (None: no limit)."""
    per_key: int | None = None
    """Samples in flight per credential, over every model (None: no limit)."""
    service_time_s: float = 0.0
    """Every sample takes at least this long (in zero-compute mode: exactly this long),
    so that a capacity binds; 0 leaves the time to the model."""
    retry_after_s: float | None = None
    """The ``Retry-After`` of a 429; None estimates when a slot frees (the service time
    over the capacity, or 1 s without a service time)."""

    def __post_init__(self) -> None:
        for name in ("per_model", "per_key"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"SampleCapacity.{name} must be at least 1 (or None)")
        if self.service_time_s < 0:
            raise ValueError("SampleCapacity.service_time_s must be >= 0")
        if self.retry_after_s is not None and self.retry_after_s < 0:
            raise ValueError("SampleCapacity.retry_after_s must be >= 0 (or None)")

    @property
    def enabled(self) -> bool:
        """Whether the server limits or slows samples at all."""
        return (self.per_model is not None or self.per_key is not None
                or self.service_time_s > 0)


@dataclass
class ServerConfig:
    """Everything fixed at construction. ``api_key`` is kept out of ``repr``."""

    dialect: Dialect
    models: list[dict[str, Any]]
    client_config: dict[str, Any]
    dynamic_config: dict[str, Any]
    session_timeout_s: float = 60.0
    zero_compute: bool = False
    twinkle_prefix: str = "/twinkle"
    max_loras: int = 64
    inline_payload_limit: int = 8 * 1024 * 1024
    """Results bigger than this are announced with ``complete_metadata`` first."""
    max_body_bytes: int = 64 * 1024 * 1024
    jwt_ttl_s: float = 3600.0
    api_key: str | None = field(default=None, repr=False)
    sample_capacity: SampleCapacity = field(default_factory=SampleCapacity)
    """Concurrent samples served (default: no limit); may be replaced while serving."""

    @property
    def model_names(self) -> list[str]:
        """The supported model names, in order."""
        return [str(record["model_name"]) for record in self.models]
