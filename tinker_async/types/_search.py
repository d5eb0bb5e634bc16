"""Session search: the request, its filters, and session statuses."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal

import msgspec

from ._base import Model
from ._codec import keep

__all__ = [
    "AccessibleSearchOwner",
    "ActiveSessionStatusQuery",
    "CancelledSessionStatusQuery",
    "ClientFinishedSessionStatusQuery",
    "ClientSessionFinishErrored",
    "ClientSessionFinishInterrupted",
    "ClientSessionFinishReason",
    "ClientSessionFinishReasonType",
    "ClientSessionFinishSuccess",
    "ClientSessionFinished",
    "FailedSessionStatusQuery",
    "FinishSessionRequest",
    "OwnSearchOwner",
    "SearchOwner",
    "SessionActive",
    "SessionCancelled",
    "SessionFailed",
    "SessionFailedReason",
    "SessionFailedRequestReason",
    "SessionFailedSamplingSessionReason",
    "SessionFailedTrainingRunReason",
    "SessionSearchCursor",
    "SessionSearchRequest",
    "SessionSearchResponse",
    "SessionStatus",
    "SessionStatusQuery",
    "SessionSummary",
    "UserSearchOwner",
]

# --- statuses --------------------------------------------------------------------------


class SessionFailedRequestReason(Model, kw_only=True, frozen=True, tag="request", tag_field="type"):
    """A request failed the session."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    request_id: str
    request_type: str
    type: ClassVar[Literal["request"]] = "request"


class SessionFailedTrainingRunReason(
    Model, kw_only=True, frozen=True, tag="training_run", tag_field="type"
):
    """A training run failed the session."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    training_run_id: str
    type: ClassVar[Literal["training_run"]] = "training_run"


class SessionFailedSamplingSessionReason(
    Model, kw_only=True, frozen=True, tag="sampling_session", tag_field="type"
):
    """A sampling session failed the session."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    sampling_session_id: str
    type: ClassVar[Literal["sampling_session"]] = "sampling_session"


SessionFailedReason = (
    SessionFailedRequestReason | SessionFailedTrainingRunReason | SessionFailedSamplingSessionReason
)
"""What failed a session, told apart by ``type``."""


class SessionFailed(Model, kw_only=True, frozen=True, tag="failed", tag_field="type"):
    """The session was failed by one of its requests, training runs or samplers."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    category: Literal["user", "internal"]
    reason: SessionFailedReason
    message: str
    type: ClassVar[Literal["failed"]] = "failed"


class SessionCancelled(Model, kw_only=True, frozen=True, tag="cancelled", tag_field="type"):
    """The session was cancelled (from the console)."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    detail: str | None = None
    type: ClassVar[Literal["cancelled"]] = "cancelled"


class ClientSessionFinishSuccess(Model, kw_only=True, frozen=True, tag="success", tag_field="type"):
    """The client finished normally."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    type: ClassVar[Literal["success"]] = "success"


class ClientSessionFinishErrored(Model, kw_only=True, frozen=True, tag="errored", tag_field="type"):
    """The client finished with an error."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    type: ClassVar[Literal["errored"]] = "errored"


class ClientSessionFinishInterrupted(
    Model, kw_only=True, frozen=True, tag="interrupted", tag_field="type"
):
    """The client was interrupted."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    type: ClassVar[Literal["interrupted"]] = "interrupted"


ClientSessionFinishReason = (
    ClientSessionFinishSuccess | ClientSessionFinishErrored | ClientSessionFinishInterrupted
)
"""Why the client finished, told apart by ``type``."""


class ClientSessionFinished(
    Model, kw_only=True, frozen=True, tag="client_finished", tag_field="type"
):
    """The session's client reported it was done."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    reason: ClientSessionFinishReason
    detail: str | None = None
    type: ClassVar[Literal["client_finished"]] = "client_finished"


class FinishSessionRequest(Model, kw_only=True, frozen=True):
    """Body of ``POST sessions/{id}/finish`` (the SDK sends it as a bare dict, with
    ``detail`` as an explicit null; there is no official request model)."""

    reason: ClientSessionFinishReason
    # Sent as null when there is none, as the SDK sends it (a default_factory default
    # is never left out).
    detail: str | None = keep(None)


class SessionActive(Model, kw_only=True, frozen=True, tag="active", tag_field="type"):
    """The session is running."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    type: ClassVar[Literal["active"]] = "active"


SessionStatus = SessionFailed | SessionCancelled | ClientSessionFinished | SessionActive
"""A session's status, told apart by ``type``."""

# --- search filters --------------------------------------------------------------------

ClientSessionFinishReasonType = Literal["success", "errored", "interrupted"]


class ActiveSessionStatusQuery(Model, kw_only=True, frozen=True, tag="active", tag_field="type"):
    """Match running sessions."""

    type: ClassVar[Literal["active"]] = "active"


class CancelledSessionStatusQuery(
    Model, kw_only=True, frozen=True, tag="cancelled", tag_field="type"
):
    """Match cancelled sessions."""

    type: ClassVar[Literal["cancelled"]] = "cancelled"


class FailedSessionStatusQuery(Model, kw_only=True, frozen=True, tag="failed", tag_field="type"):
    """Match failed sessions."""

    type: ClassVar[Literal["failed"]] = "failed"


class ClientFinishedSessionStatusQuery(
    Model, kw_only=True, frozen=True, tag="client_finished", tag_field="type"
):
    """Match sessions whose client finished (optionally for the given reasons)."""

    reasons: Annotated[list[ClientSessionFinishReasonType], msgspec.Meta(min_length=1)] | None = (
        None
    )
    type: ClassVar[Literal["client_finished"]] = "client_finished"


SessionStatusQuery = (
    ActiveSessionStatusQuery
    | CancelledSessionStatusQuery
    | FailedSessionStatusQuery
    | ClientFinishedSessionStatusQuery
)
"""A status filter, told apart by ``type``."""


class OwnSearchOwner(Model, kw_only=True, frozen=True, tag="own", tag_field="type"):
    """The caller's own sessions."""

    type: ClassVar[Literal["own"]] = "own"


class AccessibleSearchOwner(Model, kw_only=True, frozen=True, tag="accessible", tag_field="type"):
    """Every owner's sessions the caller may list."""

    type: ClassVar[Literal["accessible"]] = "accessible"


class UserSearchOwner(Model, kw_only=True, frozen=True, tag="user", tag_field="type"):
    """The listed users' sessions (1 to 10 owner URNs)."""

    owner_urns: Annotated[list[str], msgspec.Meta(min_length=1, max_length=10)]
    type: ClassVar[Literal["user"]] = "user"


SearchOwner = OwnSearchOwner | AccessibleSearchOwner | UserSearchOwner
"""Whose sessions to search, told apart by ``type``."""

_OWN = OwnSearchOwner()


class SessionSearchCursor(Model, kw_only=True, frozen=True):
    """Where the next page starts; pass a response's ``next_cursor`` back unchanged."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    last_created_at: Annotated[datetime, msgspec.Meta(tz=True)]
    last_session_id: str


class SessionSearchRequest(Model, kw_only=True, frozen=True):
    """A session search (restricted to projects the caller may list)."""

    session_id: str | None = None
    project_ids: list[str] | None = None
    user_metadata: dict[str, str] = msgspec.field(default_factory=dict)
    display_name: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    owner: SearchOwner = _OWN
    statuses: Annotated[list[SessionStatusQuery], msgspec.Meta(min_length=1)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=200)] = 50
    cursor: SessionSearchCursor | None = None


class SessionSummary(Model, kw_only=True, frozen=True):
    """One session in search results."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    session_id: str
    created_at: datetime
    owner: str
    project_id: str
    checkpoints_count: int = 0
    status: SessionStatus | None = None
    display_name: str | None = None
    user_metadata: dict[str, str] | None = None
    checkpoint_storage_bytes: int | None = None


class SessionSearchResponse(Model, kw_only=True, frozen=True):
    """One page of search results, newest first."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    sessions: list[SessionSummary] = msgspec.field(default_factory=list)
    next_cursor: SessionSearchCursor | None = None
