"""The exception hierarchy, with the official SDK's names.

Every error the library raises on purpose derives from :class:`TinkerError`. HTTP status
errors keep the status code, the server's message and the request id; connection errors
also subclass the matching stdlib type (``ConnectionError`` / ``TimeoutError``) so generic
handlers keep working, as aiohttp's own exceptions do.

All of them pickle (a worker process can send one back to its parent), and none of them
ever holds an API key: messages are built from server bodies, which the transport scrubs.
"""

from __future__ import annotations

from typing import Any, Literal

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BillingError",
    "ClientClosedError",
    "ConfigurationError",
    "ConflictError",
    "ExperimentalWarning",
    "InsecureTransportWarning",
    "InternalServerError",
    "InvalidRequestError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestFailedError",
    "RequestNotFoundError",
    "SessionExpiredError",
    "TinkerError",
    "UnprocessableEntityError",
    "UnsupportedByServerError",
    "status_error_class",
]



class ExperimentalWarning(FutureWarning):
    """Emitted for features the server marks experimental (the official SDK's name)."""

class InsecureTransportWarning(UserWarning):
    """The API key is about to go over plain HTTP to a host that is not this machine."""


class TinkerError(Exception):
    """Base class of every error raised by tinker_async."""


class ConfigurationError(TinkerError, ValueError):
    """A setting (base URL, API key, option) is missing or malformed. Raised before any request."""


class InvalidRequestError(TinkerError, ValueError):
    """An argument is invalid; the message says which and why. Nothing was sent."""


class ClientClosedError(TinkerError, RuntimeError):
    """The client was closed; create a new one."""


class SessionExpiredError(TinkerError, RuntimeError):
    """The server ended this client's session (HTTP 410), e.g. after missed heartbeats."""

    def __init__(self, message: str, session_id: str | None = None) -> None:
        super().__init__(message)
        self.session_id = session_id

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.session_id))


class APIError(TinkerError):
    """An error talking to the API. ``method`` and ``url`` say which call failed."""

    def __init__(
        self,
        message: str,
        *,
        method: str | None = None,
        url: str | None = None,
        body: object | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.method = method
        self.url = url
        self.body = body
        self.request_id = request_id

    def _kwargs(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "url": self.url,
            "body": self.body,
            "request_id": self.request_id,
        }

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self._kwargs()))


def _rebuild(cls: type[APIError], message: str, kwargs: dict[str, Any]) -> APIError:
    return cls(message, **kwargs)


class APIStatusError(APIError):
    """The server answered with an error status. ``status_code`` holds it."""

    status_code: int

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        method: str | None = None,
        url: str | None = None,
        body: object | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, method=method, url=url, body=body, request_id=request_id)
        self.status_code = status_code

    def _kwargs(self) -> dict[str, Any]:
        return {**super()._kwargs(), "status_code": self.status_code}


class BadRequestError(APIStatusError):
    """HTTP 400."""

    status_code: int = 400


class AuthenticationError(APIStatusError):
    """HTTP 401: the API key is missing or not accepted."""

    status_code: int = 401


class BillingError(APIStatusError):
    """HTTP 402."""

    status_code: int = 402


class PermissionDeniedError(APIStatusError):
    """HTTP 403."""

    status_code: int = 403


class NotFoundError(APIStatusError):
    """HTTP 404."""

    status_code: int = 404


class UnsupportedByServerError(NotFoundError):
    """The server lacks the endpoint a call needs (an API it predates, or one it dropped;
    also HTTP 405, a route that exists only for other methods). Where there is another
    way, the message names it."""


class ConflictError(APIStatusError):
    """HTTP 409 (for example a sequence-id conflict)."""

    status_code: int = 409


class UnprocessableEntityError(APIStatusError):
    """HTTP 422: the server rejected the request body."""

    status_code: int = 422


class RateLimitError(APIStatusError):
    """HTTP 429."""

    status_code: int = 429


class InternalServerError(APIStatusError):
    """HTTP 5xx."""


class APIConnectionError(APIError, ConnectionError):
    """The server could not be reached, or the connection broke."""

    def __init__(self, message: str = "Connection error.", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)


class APITimeoutError(APIConnectionError, TimeoutError):
    """A request took longer than its timeout."""

    def __init__(self, message: str = "Request timed out.", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)


class APIResponseValidationError(APIError):
    """The server's answer did not have the expected shape."""


class RequestFailedError(TinkerError):
    """A server-side future completed in failure."""

    def __init__(
        self,
        message: str,
        request_id: str | None = None,
        category: Literal["unknown", "server", "user"] | str = "unknown",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id
        self.category = category

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.request_id, self.category))


class RequestNotFoundError(NotFoundError, RequestFailedError):
    """A server future failed because what it names does not exist (a checkpoint to load,
    a model): a :class:`NotFoundError`, as a 404 from any other method is, and still the
    :class:`RequestFailedError` that the official SDK raises for a failed future."""

    def __init__(
        self,
        message: str,
        request_id: str | None = None,
        category: Literal["unknown", "server", "user"] | str = "user",
    ) -> None:
        NotFoundError.__init__(self, message, status_code=404, request_id=request_id)
        self.category = category

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.request_id, self.category))


_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: BillingError,
    403: PermissionDeniedError,
    404: NotFoundError,
    # A route that exists for other methods only: the server lacks this operation, the
    # same condition as a missing route (tuft and skyrl-tx answer TTL and publish so).
    405: UnsupportedByServerError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def status_error_class(status: int) -> type[APIStatusError]:
    """The error class for an HTTP status (the official mapping; other 4xx are plain)."""
    if status >= 500:
        return InternalServerError
    return _STATUS_ERRORS.get(status, APIStatusError)
