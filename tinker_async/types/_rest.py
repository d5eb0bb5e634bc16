"""REST resources: training runs, checkpoints, weights info, copies, capacity."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

import msgspec

from ._base import Model
from ._optim import ADAMW_DEFAULT, OptimizerConfig
from ._paths import CheckpointType

__all__ = [
    "CapacityInfo",
    "Checkpoint",
    "CheckpointPath",
    "CheckpointsListResponse",
    "CopyWeightsRequest",
    "CopyWeightsResponse",
    "Cursor",
    "ExternalWeightsUrlsResponse",
    "TrainingRun",
    "TrainingRunsResponse",
    "WeightsInfoResponse",
]


class Checkpoint(Model, kw_only=True, frozen=True):
    """A saved checkpoint of a training run.

    Twinkle sends ``twinkle_path`` (and model facts) instead of ``tinker_path``; the
    path is then copied into ``tinker_path``, so it always holds the path to use.
    """

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    checkpoint_id: str
    checkpoint_type: CheckpointType
    time: datetime
    tinker_path: str = ""
    size_bytes: int | None = None
    public: bool = False
    user_metadata: dict[str, str] | None = None
    expires_at: datetime | None = None
    twinkle_path: str | None = None
    base_model: str | None = None
    is_lora: bool | None = None
    lora_rank: int | None = None
    train_unembed: bool | None = None
    train_mlp: bool | None = None
    train_attn: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.tinker_path and self.twinkle_path:
            msgspec.structs.force_setattr(self, "tinker_path", self.twinkle_path)


class Cursor(Model, kw_only=True, frozen=True):
    """Pagination state of a list answer."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    offset: int = 0
    limit: int = 0
    total_count: int = 0


class CheckpointsListResponse(Model, kw_only=True, frozen=True):
    """Checkpoints, with a cursor when the list is paginated."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    checkpoints: list[Checkpoint] = msgspec.field(default_factory=list)
    cursor: Cursor | None = None


class TrainingRun(Model, kw_only=True, frozen=True):
    """A training run (a training model and its checkpoints)."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    training_run_id: str
    base_model: str
    model_owner: str
    is_lora: bool
    last_request_time: datetime
    corrupted: bool = False
    lora_rank: int | None = None
    last_checkpoint: Checkpoint | None = None
    last_sampler_checkpoint: Checkpoint | None = None
    user_metadata: dict[str, str] | None = None


class TrainingRunsResponse(Model, kw_only=True, frozen=True):
    """A page of training runs."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    training_runs: list[TrainingRun] = msgspec.field(default_factory=list)
    cursor: Cursor = Cursor()


class WeightsInfoResponse(Model, kw_only=True, frozen=True):
    """What is needed to load a checkpoint: base model, LoRA settings, optimizer.

    ``is_lora`` is inferred from ``lora_rank`` when a server leaves it out (tinkercloud).
    """

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    base_model: str
    optimizer_config: OptimizerConfig = ADAMW_DEFAULT
    is_lora: bool = False
    lora_rank: int | None = None
    train_unembed: bool | None = None
    train_mlp: bool | None = None
    train_attn: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.is_lora and self.lora_rank:
            msgspec.structs.force_setattr(self, "is_lora", True)


class ExternalWeightsUrlsResponse(Model, kw_only=True, frozen=True):
    """Signed download URLs of an external-format checkpoint, by relative file path."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    urls: dict[str, str]
    expires: datetime


class CopyWeightsRequest(Model, kw_only=True, frozen=True):
    """Copy weights into another project (give a destination project, or a session id
    with a model sequence id)."""

    source_path: str
    session_id: str | None = None
    model_seq_id: int | None = None
    destination_project_id: str | None = None
    ttl_seconds: int | None = None
    weights_access_token: str | None = None


class WeightsInfoRequest(Model, kw_only=True, frozen=True):
    """``POST weights_info``: what is needed to load the checkpoint at ``tinker_path``.

    The official SDK posts this as a bare dict; it is a Struct here so that the client
    and the embedded server share one schema.
    """

    tinker_path: str


class TwinkleWeightsInfoRequest(Model, kw_only=True, frozen=True):
    """Twinkle's ``weights_info`` body: the same question, with the path as
    ``twinkle_path``."""

    twinkle_path: str


class SetCheckpointTTLRequest(Model, kw_only=True, frozen=True):
    """``PUT .../checkpoints/{kind}/{name}/ttl``: the new time to live in seconds.

    ``ttl_seconds`` has no default, so ``None`` (keep for ever) is sent as ``null``,
    as the official SDK sends it.
    """

    ttl_seconds: int | None


class SetSessionProjectRequest(Model, kw_only=True, frozen=True):
    """``PUT sessions/{id}/project``: move a session (and its runs) to a project."""

    project_id: str


class CopyWeightsResponse(Model, kw_only=True, frozen=True):
    """The path of the copy."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    tinker_path: str


class CheckpointPath(Model, kw_only=True, frozen=True):
    """Result of Twinkle's ``checkpoint_path``: the storage path and the URI forms."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    path: str
    tinker_path: str | None = None
    twinkle_path: str | None = None


class CapacityInfo(Model, kw_only=True, frozen=True):
    """LoRA capacity of a Twinkle server."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    max_loras: int
    used_loras: int
    free_loras: int
