"""What route modules share: the per-server context, the route table entry, accessors.

A route module (``_session_routes.py``, ``_rest_routes.py``, and later the training and
sampling ones) exports ``ROUTES: tuple[Route, ...]``. ``_app.build_app`` mounts each route
on the surfaces it names, if the dialect enables it. Handlers are plain aiohttp handlers
that find the server through :func:`context` and the surface through :func:`surface_of`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from ._auth import Authenticator
from ._config import ServerConfig
from ._dialects import Dialect, Surface
from ._faults import FaultInjector
from ._files import FileSigner
from ._futures import FutureStore
from ._recorder import RequestLog
from ._state import ServerState

__all__ = [
    "CONTEXT_KEY",
    "SURFACE_KEY",
    "Handler",
    "Route",
    "ServerContext",
    "context",
    "route",
    "surface_of",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SurfaceName = Literal["tinker", "twinkle"]


@dataclass
class ServerContext:
    """Everything a handler may need, shared by all surfaces of one server."""

    config: ServerConfig
    state: ServerState
    futures: FutureStore
    faults: FaultInjector
    log: RequestLog
    auth: Authenticator
    files: FileSigner
    idempotent_results: dict[str, Any] = field(default_factory=dict)
    """Responses of non-idempotent calls by ``X-Idempotency-Key`` (``copy_weights``)."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Room for follow-up subsystems (the model registry, ...), by name."""

    @property
    def dialect(self) -> Dialect:
        """The server's dialect."""
        return self.config.dialect


CONTEXT_KEY = web.AppKey("tinker_local_context", ServerContext)
SURFACE_KEY = web.AppKey("tinker_local_surface", Surface)


def context(request: web.Request) -> ServerContext:
    """The server context of a request."""
    return request.config_dict[CONTEXT_KEY]


def surface_of(request: web.Request) -> Surface:
    """The surface (``/api/v1`` or Twinkle) a request arrived on."""
    return request.config_dict[SURFACE_KEY]


@dataclass(frozen=True)
class Route:
    """One endpoint: method, path relative to its surface's root, handler, where it lives."""

    method: str
    path: str
    handler: Handler
    surfaces: frozenset[SurfaceName] = frozenset({"tinker"})
    enabled: Callable[[Dialect], bool] | None = None
    """Mounted only if this returns true for the server's dialect."""


def route(
    method: str,
    path: str,
    handler: Handler,
    *,
    twinkle: bool = False,
    when: Callable[[Dialect], bool] | None = None,
) -> Route:
    """A :class:`Route` on ``/api/v1`` (and on the Twinkle surface if ``twinkle``)."""
    surfaces: frozenset[SurfaceName] = frozenset({"tinker", "twinkle"} if twinkle else {"tinker"})
    return Route(method.upper(), path, handler, surfaces, when)
