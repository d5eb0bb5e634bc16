"""HTTP errors of the embedded server and the JSON response helper.

Every error leaves the server as a FastAPI-style body: ``{"detail": "message"}``, or for
schema validation failures (422) ``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}``.
That is what the official service and the FastAPI-based compatible servers send, so the
client's error mapping is exercised against the real shape.

Handlers raise :class:`ApiError` (or one of the helpers below); the outer middleware in
``_app.py`` turns it into a response. Nothing here knows about routes or state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
from aiohttp import web

__all__ = [
    "ApiError",
    "ValidationIssue",
    "bad_request",
    "conflict",
    "error_response",
    "gone",
    "json_response",
    "no_content",
    "not_found",
    "unauthorized",
    "unprocessable",
]

# One shared encoder: msgspec encoders are reusable and faster than creating one per call.
_ENCODER = msgspec.json.Encoder()

ValidationIssue = dict[str, Any]
"""One FastAPI-style validation error: ``{"loc": [...], "msg": str, "type": str, ...}``."""


class ApiError(Exception):
    """An error that becomes an HTTP response with a ``{"detail": ...}`` body."""

    def __init__(
        self,
        status: int,
        detail: str | Sequence[ValidationIssue],
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail if isinstance(detail, str) else f"{len(detail)} validation errors")
        self.status = status
        self.detail = detail
        self.headers = dict(headers or {})

    def to_response(self) -> web.Response:
        """The HTTP response for this error."""
        detail: Any = self.detail if isinstance(self.detail, str) else list(self.detail)
        return error_response(self.status, detail, self.headers)


def bad_request(detail: str) -> ApiError:
    """400: a well-formed request that asks for something invalid (a TTL out of range, ...)."""
    return ApiError(400, detail)


def unauthorized(detail: str, *, invalid_token: bool = False) -> ApiError:
    """401: missing or wrong credential.

    ``invalid_token`` adds the ``WWW-Authenticate`` challenge that makes the official SDK
    exchange its credential for a fresh JWT and replay the request once.
    """
    headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'} if invalid_token else None
    return ApiError(401, detail, headers=headers)


def not_found(detail: str) -> ApiError:
    """404: an unknown run, checkpoint, session, sampler or future."""
    return ApiError(404, detail)


def conflict(detail: str) -> ApiError:
    """409: the request conflicts with existing state (a reused sequence id, ...)."""
    return ApiError(409, detail)


def gone(detail: str) -> ApiError:
    """410: the session (or promise) finished or expired."""
    return ApiError(410, detail)


def unprocessable(issues: Sequence[ValidationIssue]) -> ApiError:
    """422 with a FastAPI-style list of validation issues."""
    return ApiError(422, list(issues))


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON response encoded with msgspec (datetimes as RFC 3339, no NaN surprises)."""
    return web.Response(
        body=_ENCODER.encode(data),
        status=status,
        headers=dict(headers or {}),
        content_type="application/json",
    )


def error_response(
    status: int, detail: Any, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A ``{"detail": ...}`` error response."""
    return json_response({"detail": detail}, status=status, headers=headers)


def no_content() -> web.Response:
    """204: the answer of calls whose SDK method returns ``None`` (finish, delete, ...)."""
    return web.Response(status=204)
