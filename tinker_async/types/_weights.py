"""Saving and loading weights: requests and responses."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from ._base import Model
from ._optim import OptimizerConfig
from ._paths import checkpoint_console_url, checkpoint_playground_url, parse_checkpoint_path

__all__ = [
    "LoadWeightsRequest",
    "LoadWeightsResponse",
    "SamplingClientKind",
    "SaveWeightsExternalRequest",
    "SaveWeightsExternalResponse",
    "SaveWeightsExternalResponseInternal",
    "SaveWeightsForSamplerRequest",
    "SaveWeightsForSamplerResponse",
    "SaveWeightsForSamplerResponseInternal",
    "SaveWeightsRequest",
    "SaveWeightsResponse",
]

SamplingClientKind = Literal["snapshot", "inflight"]
"""``snapshot`` samples fixed saved weights; ``inflight`` follows later saves."""


class SaveWeightsRequest(Model, kw_only=True, frozen=True, tag="save_weights", tag_field="type"):
    """Save a training checkpoint (wire ``type: "save_weights"``)."""

    model_id: str
    path: str | None = None
    seq_id: int | None = None
    ttl_seconds: int | None = None
    overwrite: bool = False
    user_metadata: dict[str, str] | None = None
    type: ClassVar[Literal["save_weights"]] = "save_weights"


def _console_url(path: str) -> str:
    parsed = parse_checkpoint_path(path)
    return checkpoint_console_url(parsed.training_run_id, parsed.checkpoint_id)


class SaveWeightsResponse(Model, kw_only=True, frozen=True):
    """Result of ``save_weights``: the checkpoint's path.

    tinkercloud returns a filesystem ``path`` plus ``tinker_path``; the latter is kept.
    """

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    path: str
    tinker_path: str | None = None
    type: str | None = None

    def get_console_url(self) -> str:
        """The Tinker console page of this checkpoint."""
        return _console_url(self.path)


class SaveWeightsForSamplerRequest(
    Model, kw_only=True, frozen=True, tag="save_weights_for_sampler", tag_field="type"
):
    """Save weights for sampling (wire ``type: "save_weights_for_sampler"``).

    Named form: ``path``; ephemeral form: ``sampling_session_seq_id``.
    """

    model_id: str
    path: str | None = None
    sampling_session_seq_id: int | None = None
    kind: SamplingClientKind = "snapshot"
    seq_id: int | None = None
    ttl_seconds: int | None = None
    user_metadata: dict[str, str] | None = None
    type: ClassVar[Literal["save_weights_for_sampler"]] = "save_weights_for_sampler"


class SaveWeightsForSamplerResponseInternal(Model, kw_only=True, frozen=True):
    """The raw result of ``save_weights_for_sampler`` (a path, or a sampling session)."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    path: str | None = None
    sampling_session_id: str | None = None
    tinker_path: str | None = None
    type: str | None = None


class SaveWeightsForSamplerResponse(Model, kw_only=True, frozen=True):
    """The public result of ``save_weights_for_sampler``: the sampler weights' path."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    path: str
    type: str | None = None

    def get_console_url(self) -> str:
        """The Tinker console page of this checkpoint."""
        return _console_url(self.path)

    def get_playground_url(self) -> str:
        """A Tinker playground URL set up with this checkpoint."""
        return checkpoint_playground_url(self.path)


class SaveWeightsExternalRequest(
    Model, kw_only=True, frozen=True, tag="save_weights_external", tag_field="type"
):
    """Export HF-format weights (wire ``type: "save_weights_external"``)."""

    model_id: str
    path: str
    seq_id: int | None = None
    ttl_seconds: int | None = None
    age_encryption_recipients: list[str] | None = None
    type: ClassVar[Literal["save_weights_external"]] = "save_weights_external"


class SaveWeightsExternalResponseInternal(Model, kw_only=True, frozen=True):
    """The raw result of ``save_weights_external``."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    path: str | None = None
    size_bytes: int | None = None
    type: str | None = None


class SaveWeightsExternalResponse(Model, kw_only=True, frozen=True):
    """The public result of ``save_weights_external``: the export's path."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    path: str
    type: str | None = None


class LoadWeightsRequest(Model, kw_only=True, frozen=True, tag="load_weights", tag_field="type"):
    """Load weights (wire ``type: "load_weights"``).

    Legacy addressing: ``model_id`` + ``seq_id``. Create-via-load: ``session_id`` +
    ``model_seq_id`` (the load is the model's first request and replaces create_model).
    """

    path: str
    optimizer: bool
    model_id: str | None = None
    seq_id: int | None = None
    session_id: str | None = None
    model_seq_id: int | None = None
    base_model: str | None = None
    user_metadata: dict[str, Any] | None = None
    optimizer_config: OptimizerConfig | None = None
    weights_access_token: str | None = None
    type: ClassVar[Literal["load_weights"]] = "load_weights"


class LoadWeightsResponse(Model, kw_only=True, frozen=True):
    """Result of ``load_weights``."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    path: str | None = None
    model_id: str | None = None
    type: str | None = None
