"""The REST surface: training runs, checkpoints, weights info, sessions, admin, capacity.

These are the ``RestClient`` and ``AdminClient`` endpoints of SDK 0.38 (reference §1.6,
§1.7) plus tinkercloud's and Twinkle's. Checkpoint ids in paths are ``<kind>/<name>`` with
an unencoded slash, which is why routes spell ``{kind}/{name}``; run ids contain ``:``.

Twinkle mounts a subset of these same handlers; :mod:`._render` gives each surface its
field names.
"""

from __future__ import annotations

import asyncio
import email.utils
import secrets
import tarfile
import time
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

import msgspec
from aiohttp import web

from .. import types as t
from ._auth import LOCAL_OWNER
from ._errors import ValidationIssue, bad_request, json_response, no_content, not_found
from ._render import cursor, iso, page, render_checkpoint, render_run, render_weights_info
from ._routing import Route, ServerContext, context, route, surface_of
from ._state import KIND_TO_TYPE, CheckpointRecord, SessionRecord, validate_ttl
from ._validate import (
    at_least,
    aware,
    convert_query,
    convert_request,
    finish,
    non_empty,
    read_json_object,
    read_request,
)

__all__ = ["ROUTES"]

_MAX_PAGE = 1000
_URL_TTL_S = 3600.0
_MAX_IDEMPOTENCY_ENTRIES = 10_000
_DEFAULT_PROJECT = "default"


# ------------------------------------------------------------------------- query strings
# One Struct per query string, converted by ``convert_query`` (422s at ``["query", name]``).
# Unknown parameters are ignored. ``access_scope`` is checked but changes nothing: every
# local record is the caller's.

_Limit = Annotated[int, msgspec.Meta(ge=1, le=_MAX_PAGE)]
_Offset = Annotated[int, msgspec.Meta(ge=0)]
_AccessScope = Literal["owned", "accessible"]


class _ScopeQuery(msgspec.Struct, kw_only=True, frozen=True):
    """``?access_scope`` of ``GET training_runs/{id}`` and ``GET sessions/{id}``."""

    access_scope: _AccessScope | None = None


class _SessionsQuery(msgspec.Struct, kw_only=True, frozen=True):
    """``GET sessions?limit&offset&access_scope``."""

    limit: _Limit = 20
    offset: _Offset = 0
    access_scope: _AccessScope | None = None


class _RunsQuery(msgspec.Struct, kw_only=True, frozen=True):
    """``GET training_runs?limit&offset&access_scope&project_id`` (Twinkle: ``all_users``)."""

    limit: _Limit = 20
    offset: _Offset = 0
    access_scope: _AccessScope | None = None
    project_id: str | None = None
    all_users: bool = False


class _RunCheckpointsQuery(msgspec.Struct, kw_only=True, frozen=True):
    """``GET training_runs/{id}/checkpoints[?limit&offset]`` (paged only if given)."""

    limit: _Limit = _MAX_PAGE
    offset: _Offset = 0


class _UserCheckpointsQuery(msgspec.Struct, kw_only=True, frozen=True):
    """``GET checkpoints?limit&offset``."""

    limit: _Limit = 100
    offset: _Offset = 0


class _AuditQuery(msgspec.Struct, kw_only=True, frozen=True):
    """``GET audit?event_type[&day]``."""

    event_type: Literal["all", "checkpoints", "projects", "teams", "organizations"] = "all"
    day: date | None = None


# ------------------------------------------------------------------------------- helpers


def _checkpoint_from_path(request: web.Request) -> CheckpointRecord:
    info = request.match_info
    if info["kind"] not in KIND_TO_TYPE:
        raise not_found(f"Unknown checkpoint kind: {info['kind']}")
    return context(request).state.get_checkpoint(info["run_id"], info["kind"], info["name"])


def _origin(request: web.Request) -> str:
    return str(request.url.origin())


def _string_map(values: dict[str, Any] | None) -> dict[str, str] | None:
    """User metadata as the SDK's ``dict[str, str]`` (``create_session`` accepts any values)."""
    if values is None:
        return None
    return {key: value if isinstance(value, str) else str(value) for key, value in values.items()}


# ---------------------------------------------------------------------------------- runs


async def list_training_runs(request: web.Request) -> web.Response:
    """``GET training_runs?limit&offset&access_scope[&project_id]`` (Twinkle: ``all_users``)."""
    ctx, surface = context(request), surface_of(request)
    query = convert_query(request.query, _RunsQuery)
    limit, offset = query.limit, query.offset
    runs = ctx.state.list_runs(query.project_id)
    return json_response(
        {
            "training_runs": [render_run(r, ctx.state, surface) for r in page(runs, offset, limit)],
            "cursor": cursor(offset, limit, len(runs)),
        }
    )


async def get_training_run(request: web.Request) -> web.Response:
    """``GET training_runs/{run_id}?access_scope``."""
    ctx = context(request)
    convert_query(request.query, _ScopeQuery)
    run = ctx.state.get_run(request.match_info["run_id"])
    return json_response(render_run(run, ctx.state, surface_of(request)))


# --------------------------------------------------------------------------- checkpoints


async def list_run_checkpoints(request: web.Request) -> web.Response:
    """``GET training_runs/{run_id}/checkpoints``: all of them, oldest first.

    Not paginated for the SDK; a ``limit`` or ``offset`` (Twinkle) pages and adds a cursor.
    """
    ctx, surface = context(request), surface_of(request)
    query = convert_query(request.query, _RunCheckpointsQuery)
    paged = "limit" in request.query or "offset" in request.query
    limit, offset = query.limit, query.offset
    run = ctx.state.get_run(request.match_info["run_id"])
    checkpoints = ctx.state.list_checkpoints(run.training_run_id)
    shown = page(checkpoints, offset, limit) if paged else checkpoints
    body: dict[str, Any] = {"checkpoints": [render_checkpoint(c, surface, run) for c in shown]}
    if paged:
        body["cursor"] = cursor(offset, limit, len(checkpoints))
    return json_response(body)


async def list_user_checkpoints(request: web.Request) -> web.Response:
    """``GET checkpoints?limit&offset``: every checkpoint of the user, newest first."""
    ctx, surface = context(request), surface_of(request)
    query = convert_query(request.query, _UserCheckpointsQuery)
    limit, offset = query.limit, query.offset
    checkpoints = ctx.state.list_user_checkpoints()
    shown = [
        render_checkpoint(c, surface, ctx.state.get_run(c.training_run_id))
        for c in page(checkpoints, offset, limit)
    ]
    return json_response({"checkpoints": shown, "cursor": cursor(offset, limit, len(checkpoints))})


async def delete_checkpoint(request: web.Request) -> web.Response:
    """``DELETE training_runs/{run_id}/checkpoints/{kind}/{name}``."""
    ckpt = _checkpoint_from_path(request)
    context(request).state.delete_checkpoint(ckpt.training_run_id, ckpt.kind, ckpt.name)
    if surface_of(request).delete_reply_body:
        return json_response(
            {"success": True, "message": f"Deleted checkpoint {ckpt.checkpoint_id}"}
        )
    return no_content()


async def publish_checkpoint(request: web.Request) -> web.Response:
    """``POST`` (publish) / ``DELETE`` (unpublish) ``.../checkpoints/{kind}/{name}/publish``."""
    ckpt = _checkpoint_from_path(request)
    context(request).state.update_checkpoint(ckpt, public=request.method == "POST")
    return no_content()


async def set_checkpoint_ttl(request: web.Request) -> web.Response:
    """``PUT .../checkpoints/{kind}/{name}/ttl {"ttl_seconds": n | null}`` (null: no expiry)."""
    ctx = context(request)
    body = await read_request(request, t.SetCheckpointTTLRequest,
                              strict=ctx.dialect.strict_fields)
    ttl_seconds = body.ttl_seconds
    validate_ttl(ttl_seconds)
    ckpt = _checkpoint_from_path(request)
    ctx.state.update_checkpoint(ckpt, ttl_seconds=ttl_seconds, clear_ttl=ttl_seconds is None)
    return no_content()


async def external_weights_urls(request: web.Request) -> web.Response:
    """``GET .../checkpoints/external_weights/{name}/external_weights_urls``: local signed URLs."""
    ctx = context(request)
    ckpt = _checkpoint_from_path(request)
    if ckpt.kind != "external_weights":
        raise bad_request("Signed URLs exist only for external_weights checkpoints")
    root = ctx.state.checkpoint_dir(ckpt.training_run_id, ckpt.kind, ckpt.name)
    urls: dict[str, str] = {}
    expires = time.time() + _URL_TTL_S
    for path in ctx.state.checkpoint_files(ckpt):
        token, expires = ctx.files.sign(path, _URL_TTL_S)
        urls[path.relative_to(root).as_posix()] = (
            f"{_origin(request)}/files/{token}/{quote(path.name)}"
        )
    return json_response({"urls": urls, "expires": iso(expires)})


async def checkpoint_archive(request: web.Request) -> web.Response:
    """``GET .../checkpoints/{kind}/{name}/archive``: 302 to a signed tar of the checkpoint,
    with an ``Expires`` header (the archive URL of the API before SDK 0.38)."""
    ctx = context(request)
    ckpt = _checkpoint_from_path(request)
    root = ctx.state.checkpoint_dir(ckpt.training_run_id, ckpt.kind, ckpt.name)
    files = ctx.state.checkpoint_files(ckpt)
    archive = ctx.state.data_dir / "archives" / f"{secrets.token_hex(8)}.tar"
    await asyncio.to_thread(_write_tar, archive, root, files)
    token, expires = ctx.files.sign(archive, _URL_TTL_S)
    name = quote(f"{ckpt.name}.tar")
    return web.Response(status=302, headers={
        "Location": f"{_origin(request)}/files/{token}/{name}",
        "Expires": email.utils.formatdate(expires, usegmt=True),
    })


def _write_tar(archive: Path, root: Path, files: list[Path]) -> None:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w") as tar:
        for path in files:
            tar.add(path, arcname=path.relative_to(root).as_posix())


async def checkpoint_path(request: web.Request) -> web.Response:
    """``GET checkpoint_path/{run_id}/{kind}/{name}`` -> ``{"path", "tinker_path"}``.

    ``path`` is the checkpoint's directory on this machine (Twinkle: ``twinkle_path``).
    """
    ctx, surface = context(request), surface_of(request)
    ckpt = _checkpoint_from_path(request)
    directory = ctx.state.checkpoint_dir(ckpt.training_run_id, ckpt.kind, ckpt.name)
    return json_response({"path": str(directory), surface.path_field: ckpt.path(surface.scheme)})


async def weights_info(request: web.Request) -> web.Response:
    """``POST weights_info`` with ``{"tinker_path"}``, or Twinkle's ``{"twinkle_path"}``
    (on either surface: the body's field tells which)."""
    ctx = context(request)
    strict = ctx.dialect.strict_fields
    obj = await read_json_object(request)
    if "twinkle_path" in obj and "tinker_path" not in obj:
        path = convert_request(obj, t.TwinkleWeightsInfoRequest, strict=strict).twinkle_path
    else:
        path = convert_request(obj, t.WeightsInfoRequest, strict=strict).tinker_path
    ckpt = ctx.state.checkpoint_by_path(path)
    run = ctx.state.get_run(ckpt.training_run_id)
    return json_response(render_weights_info(run, ckpt, surface_of(request)))


async def copy_weights(request: web.Request) -> web.Response:
    """``POST copy_weights``: a read-only run holding a copy (idempotent per key)."""
    ctx = context(request)
    body = await read_request(request, t.CopyWeightsRequest, strict=ctx.dialect.strict_fields)
    issues: list[ValidationIssue] = []
    at_least(issues, "model_seq_id", body.model_seq_id, 0)
    finish(issues)
    # weights_access_token is not checked: every local checkpoint is readable.
    source_path, destination_project_id = body.source_path, body.destination_project_id
    session_id, model_seq_id, ttl_seconds = body.session_id, body.model_seq_id, body.ttl_seconds

    key = request.headers.get("X-Idempotency-Key")
    if key and key in ctx.idempotent_results:
        return json_response(ctx.idempotent_results[key])
    if destination_project_id is None and session_id is None:
        raise bad_request("Provide destination_project_id, or session_id with model_seq_id")
    validate_ttl(ttl_seconds)
    source = ctx.state.checkpoint_by_path(source_path)
    if session_id is not None:
        ctx.state.live_session(session_id)
    copy = ctx.state.copy_checkpoint(
        source,
        session_id=session_id,
        model_seq_id=model_seq_id,
        project_id=destination_project_id,
        ttl_seconds=ttl_seconds,
    )
    result = {"tinker_path": copy.path(surface_of(request).scheme)}
    if key:
        _remember(ctx, key, result)
    return json_response(result)


def _remember(ctx: ServerContext, key: str, result: dict[str, Any]) -> None:
    results = ctx.idempotent_results
    results[key] = result
    while len(results) > _MAX_IDEMPOTENCY_ENTRIES:
        del results[next(iter(results))]  # dicts keep insertion order: drop the oldest


# ------------------------------------------------------------------------------ sessions


async def list_sessions(request: web.Request) -> web.Response:
    """``GET sessions?limit&offset&access_scope`` -> ``{"sessions": [ids]}``, newest first."""
    ctx = context(request)
    query = convert_query(request.query, _SessionsQuery)
    sessions = ctx.state.list_sessions()
    shown = page(sessions, query.offset, query.limit)
    return json_response({"sessions": [s.session_id for s in shown]})


async def get_session(request: web.Request) -> web.Response:
    """``GET sessions/{session_id}?access_scope``."""
    ctx = context(request)
    convert_query(request.query, _ScopeQuery)
    record = ctx.state.get_session(request.match_info["session_id"])
    body: dict[str, Any] = {
        "training_run_ids": list(record.training_run_ids),
        "sampler_ids": list(record.sampler_ids),
    }
    if record.user_metadata is not None:
        body["user_metadata"] = _string_map(record.user_metadata)
    if record.display_name is not None:
        body["display_name"] = record.display_name
    return json_response(body)


async def assign_session_project(request: web.Request) -> web.Response:
    """``PUT sessions/{session_id}/project {"project_id"}``."""
    ctx = context(request)
    body = await read_request(request, t.SetSessionProjectRequest,
                              strict=ctx.dialect.strict_fields)
    issues: list[ValidationIssue] = []
    non_empty(issues, "project_id", body.project_id)
    finish(issues)
    ctx.state.assign_project(request.match_info["session_id"], body.project_id)
    return no_content()


async def trace_export(request: web.Request) -> web.Response:
    """``GET sessions/{session_id}/trace_export``: ready at once, with a local signed URL.

    The trace is an empty Perfetto file: the local server records no timeline.
    """
    ctx = context(request)
    record = ctx.state.get_session(request.match_info["session_id"])
    path = ctx.state.data_dir / "traces" / f"{quote(record.session_id, safe='')}.pftrace"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    token, _ = ctx.files.sign(path, _URL_TTL_S)
    return json_response(
        {"status": "ready", "url": f"{_origin(request)}/files/{token}/{path.name}"}
    )


def _session_summary(ctx: ServerContext, record: SessionRecord) -> dict[str, Any]:
    count, size = ctx.state.session_checkpoint_stats(record.session_id)
    summary: dict[str, Any] = {
        "session_id": record.session_id,
        "created_at": iso(record.created_at),
        "owner": LOCAL_OWNER,
        "project_id": record.project_id or _DEFAULT_PROJECT,
        "status": record.status(),
        "checkpoints_count": count,
        "checkpoint_storage_bytes": size,
    }
    if record.display_name is not None:
        summary["display_name"] = record.display_name
    if record.user_metadata is not None:
        summary["user_metadata"] = _string_map(record.user_metadata)
    return summary


def _status_matches(record: SessionRecord, wanted: list[t.SessionStatusQuery]) -> bool:
    status = record.status()
    for query in wanted:
        if status["type"] != query.type:
            continue
        if isinstance(query, t.ClientFinishedSessionStatusQuery) and query.reasons is not None:
            if status["reason"]["type"] in query.reasons:
                return True
            continue
        return True
    return False


def _search_keeps(search: t.SessionSearchRequest, record: SessionRecord) -> bool:
    """Whether the session matches every filter of ``search``."""
    if search.session_id is not None or search.display_name is not None:
        by_id = search.session_id is not None and record.session_id == search.session_id
        words = (search.display_name or "").lower().split()
        name = (record.display_name or "").lower()
        by_name = search.display_name is not None and all(w in name for w in words)
        if not (by_id or by_name):
            return False
    if search.project_ids is not None and (
            record.project_id or _DEFAULT_PROJECT) not in search.project_ids:
        return False
    user_metadata = _string_map(record.user_metadata) or {}
    if any(user_metadata.get(k) != v for k, v in search.user_metadata.items()):
        return False
    owner = search.owner
    if isinstance(owner, t.UserSearchOwner) and LOCAL_OWNER not in owner.owner_urns:
        return False
    return search.statuses is None or _status_matches(record, search.statuses)


async def search_sessions(request: web.Request) -> web.Response:
    """``POST sessions/search``: filtered, newest first, paged by ``(created_at, id)`` cursor."""
    ctx = context(request)
    search = await read_request(request, t.SessionSearchRequest,
                                strict=ctx.dialect.strict_fields)

    def sort_key(record: SessionRecord) -> tuple[datetime, str]:
        return (datetime.fromtimestamp(record.created_at, timezone.utc), record.session_id)

    matches = [r for r in ctx.state.list_sessions() if _search_keeps(search, r)]
    limit = search.limit
    if search.cursor is not None:
        after = (search.cursor.last_created_at, search.cursor.last_session_id)
        matches = [r for r in matches if sort_key(r) < after]
    shown = matches[:limit]
    body: dict[str, Any] = {"sessions": [_session_summary(ctx, r) for r in shown]}
    if len(matches) > limit:
        last = shown[-1]
        body["next_cursor"] = {
            "last_created_at": iso(last.created_at),
            "last_session_id": last.session_id,
        }
    return json_response(body)


# ------------------------------------------------------------------ admin and capacity


async def audit_log(request: web.Request) -> web.Response:
    """``GET audit?event_type[&day]``: no audit events are kept locally."""
    convert_query(request.query, _AuditQuery)
    return json_response({"entries": []})


async def billing_usage_events(request: web.Request) -> web.Response:
    """``GET billing/usage/events?starting_on&ending_before``: nothing is billed locally.

    Both times must carry a time zone (the SDK sends UTC, ``...Z``).
    """
    query = convert_query(request.query, t.GetBillingUsageRequest)
    issues: list[ValidationIssue] = []
    aware(issues, "starting_on", query.starting_on)
    aware(issues, "ending_before", query.ending_before)
    finish(issues)
    return json_response({"data": [], "sessions": {}})


async def checkpoint_storage_usage(request: web.Request) -> web.Response:
    """``GET billing/usage/checkpoints/current[?project_id]``: no billable storage."""
    convert_query(request.query, t.GetCurrentCheckpointStorageUsageRequest)
    return json_response({"data": []})


async def capacity_info(request: web.Request) -> web.Response:
    """``GET capacity_info`` -> ``{"max_loras", "used_loras", "free_loras"}``."""
    ctx = context(request)
    used = ctx.state.used_loras()
    maximum = ctx.config.max_loras
    return json_response(
        {"max_loras": maximum, "used_loras": used, "free_loras": max(0, maximum - used)}
    )


_CKPT = "/training_runs/{run_id}/checkpoints/{kind}/{name}"

ROUTES: tuple[Route, ...] = (
    route("GET", "/training_runs", list_training_runs, twinkle=True),
    route("GET", "/training_runs/{run_id}", get_training_run, twinkle=True),
    route("GET", "/training_runs/{run_id}/checkpoints", list_run_checkpoints, twinkle=True),
    route("DELETE", _CKPT, delete_checkpoint, twinkle=True),
    route("POST", _CKPT + "/publish", publish_checkpoint),
    route("DELETE", _CKPT + "/publish", publish_checkpoint),
    route("PUT", _CKPT + "/ttl", set_checkpoint_ttl),
    route("GET", _CKPT + "/external_weights_urls", external_weights_urls),
    route("GET", _CKPT + "/archive", checkpoint_archive, when=lambda d: d.checkpoint_archive),
    route("GET", "/checkpoints", list_user_checkpoints),
    route("GET", "/checkpoint_path/{run_id}/{kind}/{name}", checkpoint_path, twinkle=True),
    route("POST", "/weights_info", weights_info, twinkle=True),
    route("POST", "/copy_weights", copy_weights),
    route("GET", "/sessions", list_sessions),
    route("GET", "/sessions/{session_id}", get_session),
    route("PUT", "/sessions/{session_id}/project", assign_session_project),
    route("GET", "/sessions/{session_id}/trace_export", trace_export),
    route("POST", "/sessions/search", search_sessions),
    route("GET", "/audit", audit_log),
    route("GET", "/billing/usage/events", billing_usage_events),
    route("GET", "/billing/usage/checkpoints/current", checkpoint_storage_usage),
    route("GET", "/capacity_info", capacity_info, twinkle=True),
)
