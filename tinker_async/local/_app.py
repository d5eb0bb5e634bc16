"""The aiohttp application: middlewares, surfaces and the routes mounted on them.

Layout::

    /health                       liveness, no auth
    /files/{token}/{file_name}    signed downloads, no auth (the token is the credential)
    /api/v1/...                   the Tinker protocol        (auth: X-API-Key)
    <twinkle_prefix>/...          the Twinkle management API (auth: Authorization: Bearer)

Middlewares, outermost first, on every request:

1. ``_outer``: turns errors into ``{"detail": ...}`` bodies, stamps ``x-request-id`` on
   every response, and records the request (redacted) in the request log.
2. ``_inject_faults``: applies the first fault rule that fires (before auth, so a fault on
   a path hits every caller; ``_faults.apply_fault`` says what each kind does).
3. per surface, an auth middleware reading that surface's credential header.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable

from aiohttp import web
from aiohttp.typedefs import Handler as _AiohttpHandler
from aiohttp.typedefs import Middleware

from . import (
    _future_routes,
    _rest_routes,
    _sampling_routes,
    _session_routes,
    _tinkercloud_routes,
    _training_routes,
)
from ._auth import credential_from_headers
from ._dialects import Surface
from ._errors import ApiError, error_response, json_response, not_found
from ._faults import DroppedConnection, apply_fault
from ._recorder import RecordedRequest, redact
from ._routing import CONTEXT_KEY, SURFACE_KEY, Route, ServerContext

__all__ = ["DEFAULT_ROUTES", "build_app"]

logger = logging.getLogger(__name__)

DEFAULT_ROUTES: tuple[Route, ...] = (
    *_session_routes.ROUTES,
    *_future_routes.ROUTES,
    *_rest_routes.ROUTES,
    *_training_routes.ROUTES, *_sampling_routes.ROUTES,
    *_tinkercloud_routes.ROUTES,
)
"""Every route of this module set; training and sampling routes get appended here."""


@web.middleware
async def _outer(request: web.Request, handler: _AiohttpHandler) -> web.StreamResponse:
    ctx = request.app[CONTEXT_KEY]
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    arrived, started = time.time(), time.monotonic()
    status: int | None = None
    body = b""
    try:
        try:
            # Read (and cache) the body first, so the log has it even if the handler fails.
            body = await request.read()
            response = await handler(request)
        except ApiError as exc:
            response = exc.to_response()
        except DroppedConnection:
            # The transport is closed; aiohttp gives up writing this without noise.
            return web.Response(status=500)
        except web.HTTPException as exc:
            # Router errors (404, 405) and aiohttp's own (413) in the FastAPI shape.
            allow = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
            response = error_response(exc.status, exc.reason, allow)
        except Exception:
            logger.exception("unhandled error in %s %s", request.method, request.path)
            response = error_response(500, "Internal Server Error")
        response.headers["x-request-id"] = request_id
        status = response.status
        return response
    finally:
        # Runs on cancellation too (a client that went away mid-poll): status stays None.
        if ctx.log.enabled:
            headers, clean_body = redact(request.headers.items(), body)
            ctx.log.append(
                RecordedRequest(
                    method=request.method,
                    path=request.path,
                    query=dict(request.query),
                    headers=headers,
                    body=clean_body,
                    status=status,
                    time=arrived,
                    duration_s=time.monotonic() - started,
                    request_id=request_id,
                )
            )


@web.middleware
async def _inject_faults(request: web.Request, handler: _AiohttpHandler) -> web.StreamResponse:
    faults = request.app[CONTEXT_KEY].faults
    fault = faults.take(request.method, request.path)
    if fault is None:
        return await handler(request)
    return await apply_fault(faults, fault, request, handler)


# What the API key itself opens on a server that requires JWTs: the official SDK sends the
# key to these two before it has a token.
_KEY_ENDPOINTS = ("/client/config", "/auth/token")


def _auth_middleware(surface: Surface) -> Middleware:
    @web.middleware
    async def check_credential(
        request: web.Request, handler: _AiohttpHandler
    ) -> web.StreamResponse:
        credential = credential_from_headers(request.headers, bearer=surface.bearer_auth)
        request.config_dict[CONTEXT_KEY].auth.check(
            credential, key_accepted=request.path.endswith(_KEY_ENDPOINTS))
        return await handler(request)

    return check_credential


async def _health(request: web.Request) -> web.Response:
    """``GET /health``: a liveness probe (tinkercloud's shape), open without a key."""
    return json_response({"status": "healthy"})


async def _serve_file(request: web.Request) -> web.StreamResponse:
    """``GET /files/{token}/{file_name}``: a file behind a signed token."""
    path = request.app[CONTEXT_KEY].files.resolve(request.match_info["token"])
    if path is None or not path.is_file():
        raise not_found("Unknown or expired download link")
    return web.FileResponse(path)


def _surface_app(ctx: ServerContext, surface: Surface, routes: Iterable[Route]) -> web.Application:
    app = web.Application(middlewares=[_auth_middleware(surface)])
    app[SURFACE_KEY] = surface
    # Later routes replace earlier ones with the same method and path, so a follow-up (or
    # a test) can override a default handler.
    mounted: dict[tuple[str, str], Route] = {}
    for entry in routes:
        if surface.name in entry.surfaces and (entry.enabled is None or entry.enabled(ctx.dialect)):
            mounted[(entry.method, entry.path)] = entry
    for entry in mounted.values():
        app.router.add_route(entry.method, entry.path, entry.handler)
    return app


def build_app(ctx: ServerContext, routes: Iterable[Route] = DEFAULT_ROUTES) -> web.Application:
    """The root application of one server, with both surfaces mounted."""
    routes = tuple(routes)
    app = web.Application(
        middlewares=[_outer, _inject_faults], client_max_size=ctx.config.max_body_bytes
    )
    app[CONTEXT_KEY] = ctx
    app.router.add_get("/health", _health)
    app.router.add_get("/files/{token}/{file_name}", _serve_file)
    app.add_subapp("/api/v1", _surface_app(ctx, Surface.tinker(ctx.dialect), routes))
    if ctx.config.twinkle_prefix:
        app.add_subapp(ctx.config.twinkle_prefix, _surface_app(ctx, Surface.twinkle(), routes))
    return app
