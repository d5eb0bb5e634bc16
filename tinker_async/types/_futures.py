"""Server futures: the promise a queued request returns and the polling messages."""

from __future__ import annotations

import enum
from typing import ClassVar, Literal

import msgspec

from ._base import Model
from ._codec import keep
from ._optim import OptimStepResponse
from ._training import CreateModelResponse, ForwardBackwardOutput, UnloadModelResponse
from ._weights import (
    LoadWeightsResponse,
    SaveWeightsExternalResponse,
    SaveWeightsForSamplerResponse,
    SaveWeightsResponse,
)

__all__ = [
    "CancelFutureRequest",
    "CleanupFuturesRequest",
    "CleanupFuturesResponse",
    "FutureCompletion",
    "FutureFailed",
    "FutureFinished",
    "FutureRetrieveRequest",
    "FutureRetrieveResponse",
    "FuturesRetrieveRequest",
    "FuturesRetrieveResponse",
    "RequestErrorCategory",
    "RequestFailedResponse",
    "RequestID",
    "SamplingSessionFuturesTarget",
    "TryAgainResponse",
    "UntypedAPIFuture",
]

RequestID = str
"""A server request id (the handle of a server future)."""


class UntypedAPIFuture(Model, kw_only=True, frozen=True):
    """The promise a queued request returns: poll ``request_id`` for the result.

    ``sample_sequence_ids`` (sampling only) names each requested sample; servers that
    predate it leave it out.
    """

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    request_id: RequestID
    model_id: str | None = None
    sample_sequence_ids: list[str] | None = None


class FutureRetrieveRequest(Model, kw_only=True, frozen=True):
    """Poll one future (``retrieve_future``)."""

    request_id: RequestID
    allow_metadata_only: bool = keep(False)  # sent, as the SDK sends it


class CancelFutureRequest(Model, kw_only=True, frozen=True):
    """Stop pending work (``cancel_future``; the SDK sends it as a bare dict, it has no
    request model of its own)."""

    request_id: RequestID


class CleanupFuturesRequest(Model, kw_only=True, frozen=True):
    """Drop futures older than ``max_age_hours`` (tinkercloud's ``cleanup_futures``;
    the server's default age when left out)."""

    max_age_hours: float | None = None


class TryAgainResponse(Model, kw_only=True, frozen=True, tag="try_again", tag_field="type"):
    """Not done yet, poll again (wire ``type: "try_again"``, always encoded)."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    request_id: str = ""
    queue_state: str = "active"
    """``active``, ``paused_capacity`` or ``paused_rate_limit``."""
    queue_state_reason: str | None = None
    type: ClassVar[Literal["try_again"]] = "try_again"


class RequestErrorCategory(str, enum.Enum):
    """Who caused a failed request (values ``unknown``, ``server``, ``user``)."""

    Unknown = "unknown"
    Server = "server"
    User = "user"

    def __str__(self) -> str:
        # Like the SDK's StrEnum (Python 3.11+), str() is the value.
        return self.value


class RequestFailedResponse(Model, kw_only=True, frozen=True):
    """A server future that failed: the message and who is to blame."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    error: str
    category: RequestErrorCategory = RequestErrorCategory.Unknown


FutureRetrieveResponse = (
    TryAgainResponse
    | ForwardBackwardOutput
    | OptimStepResponse
    | SaveWeightsResponse
    | LoadWeightsResponse
    | SaveWeightsForSamplerResponse
    | SaveWeightsExternalResponse
    | CreateModelResponse
    | UnloadModelResponse
    | RequestFailedResponse
)
"""What polling a future can give (a typing alias; decode with the expected type)."""


class SamplingSessionFuturesTarget(
    Model, kw_only=True, frozen=True, tag="sampling_session", tag_field="type"
):
    """Batch-poll target: one (possibly cloned) sampling session."""

    sampling_session_id: str
    cloned_sampler_id: int = keep(0)
    type: ClassVar[Literal["sampling_session"]] = "sampling_session"


class FuturesRetrieveRequest(Model, kw_only=True, frozen=True):
    """Batch long-poll (``retrieve_futures``) for a sampling session's requests."""

    target: SamplingSessionFuturesTarget
    prev_cursor: int = keep(0)
    timeout: float | None = None
    # Sent even when empty, as the SDK sends it: msgspec leaves out an empty field whose
    # factory is ``list`` itself, never one whose factory it cannot see through.
    retrieved_request_ids: list[str] = msgspec.field(default_factory=lambda: [])


class FutureFinished(Model, kw_only=True, frozen=True, tag="finished", tag_field="state"):
    """A finished request in a batch poll (fetch its payload with ``retrieve_future``)."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    request_id: RequestID
    response_payload_uncompressed_size: int | None = None
    state: ClassVar[Literal["finished"]] = "finished"


class FutureFailed(Model, kw_only=True, frozen=True, tag="failed", tag_field="state"):
    """A failed request in a batch poll."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    request_id: RequestID
    state: ClassVar[Literal["failed"]] = "failed"


FutureCompletion = FutureFinished | FutureFailed
"""One completion in a batch poll, told apart by ``state``."""


class FuturesRetrieveResponse(Model, kw_only=True, frozen=True):
    """Result of a batch poll: completions and the cursor to send next."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    completions: list[FutureCompletion] = msgspec.field(default_factory=list)
    cursor: int = 0


class CleanupFuturesResponse(Model, kw_only=True, frozen=True):
    """Result of tinkercloud's ``cleanup_futures``: how many futures were dropped."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    cleaned_count: int = 0
