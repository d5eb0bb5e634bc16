"""Handshake, sessions, sampling sessions, capabilities, health and telemetry.

``client/config`` -> ``client/dynamic_config`` -> ``create_session`` -> heartbeats ->
``sessions/{id}/finish`` is the official SDK's session life cycle (reference §2.2, §2.5).
Twinkle shares ``create_session`` (its body says ``metadata`` instead of
``user_metadata``), ``session_heartbeat``, ``healthz`` and ``get_server_capabilities``.
"""

from __future__ import annotations

from aiohttp import web

from .. import types as t
from ._custom_losses import create_custom_loss
from ._errors import ValidationIssue, bad_request, json_response, no_content
from ._routing import Route, context, route, surface_of
from ._validate import at_least, finish, read_json_object, read_request

__all__ = ["ROUTES"]

# Fields the official schema requires that this server has always let clients leave out
# (probes and other servers' clients send ``{}`` or less): filled in on the slow path.
_NO_VERSION = {"sdk_version": ""}
_SESSION_DEFAULTS = {"tags": [], "sdk_version": ""}


async def client_config(request: web.Request) -> web.Response:
    """``POST client/config``: the feature flags (``ClientConfigResponse``)."""
    ctx = context(request)
    await read_request(request, t.ClientConfigRequest, strict=ctx.dialect.strict_fields,
                       defaults=_NO_VERSION)
    return json_response(ctx.config.client_config)


async def client_dynamic_config(request: web.Request) -> web.Response:
    """``POST client/dynamic_config``: the periodically refreshed flags."""
    ctx = context(request)
    await read_request(request, t.ClientConfigRequest, strict=ctx.dialect.strict_fields,
                       defaults=_NO_VERSION)
    return json_response(ctx.config.dynamic_config)


async def auth_token(request: web.Request) -> web.Response:
    """``POST auth/token``: exchange the (already checked) credential for a JWT."""
    return json_response({"jwt": context(request).auth.issue_jwt()})


async def create_session(request: web.Request) -> web.Response:
    """``POST create_session`` (Tinker) and ``POST create_session {"metadata"}`` (Twinkle)."""
    ctx = context(request)
    strict = ctx.dialect.strict_fields
    if surface_of(request).name == "twinkle":
        twinkle = await read_request(request, t.TwinkleCreateSessionRequest, strict=strict)
        record = ctx.state.create_session(tags=[], user_metadata=twinkle.metadata,
                                          sdk_version=None, project_id=None, display_name=None)
    else:
        body = await read_request(request, t.CreateSessionRequest, strict=strict,
                                  defaults=_SESSION_DEFAULTS)
        record = ctx.state.create_session(
            tags=body.tags,
            user_metadata=body.user_metadata,
            sdk_version=body.sdk_version or None,
            project_id=body.project_id,
            display_name=body.display_name,
        )
    return json_response({"type": "create_session", "session_id": record.session_id})


async def session_heartbeat(request: web.Request) -> web.Response:
    """``POST session_heartbeat``: keep a session alive (404 unknown, 410 finished/expired)."""
    ctx = context(request)
    body = await read_request(request, t.SessionHeartbeatRequest,
                              strict=ctx.dialect.strict_fields)
    ctx.state.live_session(body.session_id)
    return json_response({"type": "session_heartbeat"})


async def finish_session(request: web.Request) -> web.Response:
    """``POST sessions/{id}/finish``: the first finish reason wins; later ones are no-ops."""
    ctx = context(request)
    body = await read_request(request, t.FinishSessionRequest, strict=ctx.dialect.strict_fields)
    ctx.state.finish_session(request.match_info["session_id"], body.reason.type, body.detail)
    return no_content()


async def create_sampling_session(request: web.Request) -> web.Response:
    """``POST create_sampling_session``: a sampler on a base model or a checkpoint."""
    ctx = context(request)
    body = await read_request(request, t.CreateSamplingSessionRequest,
                              strict=ctx.dialect.strict_fields)
    issues: list[ValidationIssue] = []
    at_least(issues, "sampling_session_seq_id", body.sampling_session_seq_id, 0)
    finish(issues)
    session_id, seq_id = body.session_id, body.sampling_session_seq_id
    base_model, model_path = body.base_model, body.model_path

    state = ctx.state
    state.live_session(session_id)
    if model_path is not None:
        checkpoint = state.checkpoint_by_path(model_path)
        run_model = state.get_run(checkpoint.training_run_id).base_model
        if base_model is not None and base_model != run_model:
            raise bad_request(
                f"base_model {base_model!r} does not match the checkpoint's base model {run_model!r}"
            )
        base_model = run_model
    elif base_model is None:
        raise bad_request("Either base_model or model_path is required")
    elif base_model not in ctx.config.model_names:
        raise bad_request(
            f"Unsupported base model {base_model!r}; supported: {', '.join(ctx.config.model_names)}"
        )
    sampler = state.create_sampler(
        session_id, base_model=base_model, model_path=model_path, sampling_session_seq_id=seq_id
    )
    return json_response(
        {"type": "create_sampling_session", "sampling_session_id": sampler.sampler_id}
    )


async def join_sampling_session(request: web.Request) -> web.Response:
    """``POST join_sampling_session``: a clone number for an unpickled sampling client."""
    ctx = context(request)
    body = await read_request(request, t.JoinSamplingSessionRequest,
                              strict=ctx.dialect.strict_fields)
    counter = ctx.state.join_sampler(body.sampling_session_id)
    return json_response({"type": "join_sampling_session", "client_counter": counter})


async def get_sampler(request: web.Request) -> web.Response:
    """``GET samplers/{sampler_id}``."""
    sampler = context(request).state.get_sampler(request.match_info["sampler_id"])
    body = {"sampler_id": sampler.sampler_id, "base_model": sampler.base_model}
    if sampler.model_path is not None:
        body["model_path"] = sampler.model_path
    return json_response(body)


async def get_server_capabilities(request: web.Request) -> web.Response:
    """``GET get_server_capabilities``: the supported models."""
    ctx = context(request)
    if ctx.dialect.capabilities_shape == "tinkercloud":
        return json_response(
            {
                "supported_models": ctx.config.model_names,
                "max_batch_size": 256,
                "features": ["lora", "sampling"],
            }
        )
    return json_response({"supported_models": ctx.config.models})


async def healthz(request: web.Request) -> web.Response:
    """``GET healthz``: ``{"status": "ok"}``."""
    return json_response({"status": "ok"})


async def health_detailed(request: web.Request) -> web.Response:
    """``GET /api/v1/health``: the tinkercloud shape, with live counts."""
    state = context(request).state
    return json_response(
        {
            "status": "healthy",
            "version": "tinker_async.local",
            "ray_status": "not_used",
            "active_models": state.used_loras(),
            "active_sessions": sum(1 for s in state.list_sessions() if s.live),
        }
    )


async def telemetry(request: web.Request) -> web.Response:
    """``POST telemetry``: accepted and discarded.

    Deliberately not decoded into ``TelemetrySendRequest``: nothing reads it, and a
    refusal would only make the official SDK's background telemetry log errors.
    """
    await read_json_object(request)
    return json_response({"status": "accepted"})


ROUTES: tuple[Route, ...] = (
    route("POST", "/client/config", client_config, when=lambda d: d.client_config),
    route("POST", "/client/dynamic_config", client_dynamic_config, when=lambda d: d.client_config),
    route("POST", "/auth/token", auth_token),
    route("POST", "/create_session", create_session, twinkle=True),
    route("POST", "/session_heartbeat", session_heartbeat, twinkle=True),
    route("POST", "/sessions/{session_id}/finish", finish_session),
    route("POST", "/create_sampling_session", create_sampling_session),
    route("POST", "/create_custom_loss", create_custom_loss, when=lambda d: d.client_config),
    route(
        "POST",
        "/join_sampling_session",
        join_sampling_session,
        when=lambda d: d.join_sampling_session,
    ),
    route("GET", "/samplers/{sampler_id}", get_sampler),
    route("GET", "/get_server_capabilities", get_server_capabilities, twinkle=True),
    route("GET", "/healthz", healthz, twinkle=True),
    route("GET", "/health", health_detailed),
    route("POST", "/telemetry", telemetry),
)
