"""The REST surface: training runs, checkpoints, weights info, sessions, admin, capacity.

These are the ``RestClient`` and ``AdminClient`` endpoints of SDK 0.38 (reference §1.6,
§1.7) plus tinkercloud's and Twinkle's. Checkpoint ids in paths are ``<kind>/<name>`` with
an unencoded slash, which is why routes spell ``{kind}/{name}``; run ids contain ``:``.

Twinkle mounts a subset of these same handlers; :mod:`._render` gives each surface its
field names.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import secrets
import tarfile
import time
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from ._auth import LOCAL_OWNER
from ._errors import bad_request, json_response, no_content, not_found
from ._render import cursor, iso, page, render_checkpoint, render_run, render_weights_info
from ._routing import Route, ServerContext, context, route, surface_of
from ._state import KIND_TO_TYPE, CheckpointRecord, SessionRecord, validate_ttl
from ._validate import Fields, read_json_object

__all__ = ["ROUTES"]

_ACCESS_SCOPES = ("owned", "accessible")
_MAX_PAGE = 1000
_URL_TTL_S = 3600.0
_MAX_IDEMPOTENCY_ENTRIES = 10_000
_AUDIT_EVENT_TYPES = ("all", "checkpoints", "projects", "teams", "organizations")
_DEFAULT_PROJECT = "default"


# ------------------------------------------------------------------------------- helpers


def _query(request: web.Request) -> Fields:
    return Fields(request.query, "query", strict=False)


def _page_params(fields: Fields, default_limit: int) -> tuple[int, int]:
    limit = fields.integer("limit", default=default_limit, ge=1, le=_MAX_PAGE)
    offset = fields.integer("offset", default=0, ge=0)
    return limit, offset


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
    fields = _query(request)
    limit, offset = _page_params(fields, 20)
    fields.opt_text("access_scope", choices=_ACCESS_SCOPES)
    project_id = fields.opt_text("project_id")
    fields.flag("all_users")
    fields.finish()
    runs = ctx.state.list_runs(project_id)
    return json_response(
        {
            "training_runs": [render_run(r, ctx.state, surface) for r in page(runs, offset, limit)],
            "cursor": cursor(offset, limit, len(runs)),
        }
    )


async def get_training_run(request: web.Request) -> web.Response:
    """``GET training_runs/{run_id}?access_scope``."""
    ctx = context(request)
    fields = _query(request)
    fields.opt_text("access_scope", choices=_ACCESS_SCOPES)
    fields.finish()
    run = ctx.state.get_run(request.match_info["run_id"])
    return json_response(render_run(run, ctx.state, surface_of(request)))


# --------------------------------------------------------------------------- checkpoints


async def list_run_checkpoints(request: web.Request) -> web.Response:
    """``GET training_runs/{run_id}/checkpoints``: all of them, oldest first.

    Not paginated for the SDK; a ``limit`` or ``offset`` (Twinkle) pages and adds a cursor.
    """
    ctx, surface = context(request), surface_of(request)
    fields = _query(request)
    paged = "limit" in request.query or "offset" in request.query
    limit, offset = _page_params(fields, _MAX_PAGE)
    fields.finish()
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
    fields = _query(request)
    limit, offset = _page_params(fields, 100)
    fields.finish()
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
    body = await read_json_object(request)
    fields = Fields(body, strict=ctx.dialect.strict_fields)
    ttl_seconds = fields.opt_integer("ttl_seconds")
    if "ttl_seconds" not in body:
        fields.add_issue("ttl_seconds", "missing", "Field required", None)
    fields.finish()
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
    """``POST weights_info`` with ``tinker_path``, ``path`` or ``twinkle_path``."""
    ctx = context(request)
    fields = Fields(await read_json_object(request), strict=ctx.dialect.strict_fields)
    candidates = [fields.opt_text(name) for name in ("tinker_path", "twinkle_path", "path")]
    given = [c for c in candidates if c is not None]
    if not given:
        fields.add_issue("tinker_path", "missing", "Field required", None)
    fields.finish()
    ckpt = ctx.state.checkpoint_by_path(given[0])
    run = ctx.state.get_run(ckpt.training_run_id)
    return json_response(render_weights_info(run, ckpt, surface_of(request)))


async def copy_weights(request: web.Request) -> web.Response:
    """``POST copy_weights``: a read-only run holding a copy (idempotent per key)."""
    ctx = context(request)
    fields = Fields(await read_json_object(request), strict=ctx.dialect.strict_fields)
    source_path = fields.text("source_path")
    destination_project_id = fields.opt_text("destination_project_id")
    session_id = fields.opt_text("session_id")
    model_seq_id = fields.opt_integer("model_seq_id", ge=0)
    ttl_seconds = fields.opt_integer("ttl_seconds")
    fields.opt_text("weights_access_token")  # every local checkpoint is readable
    fields.finish()

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
    fields = _query(request)
    limit, offset = _page_params(fields, 20)
    fields.opt_text("access_scope", choices=_ACCESS_SCOPES)
    fields.finish()
    sessions = ctx.state.list_sessions()
    return json_response({"sessions": [s.session_id for s in page(sessions, offset, limit)]})


async def get_session(request: web.Request) -> web.Response:
    """``GET sessions/{session_id}?access_scope``."""
    ctx = context(request)
    fields = _query(request)
    fields.opt_text("access_scope", choices=_ACCESS_SCOPES)
    fields.finish()
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
    fields = Fields(await read_json_object(request), strict=ctx.dialect.strict_fields)
    project_id = fields.text("project_id", min_length=1)
    fields.finish()
    ctx.state.assign_project(request.match_info["session_id"], project_id)
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


def _parse_time(text: str) -> datetime | None:
    try:
        # Python 3.10's fromisoformat does not accept a trailing "Z".
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _status_matches(record: SessionRecord, wanted: list[tuple[str, list[str] | None]]) -> bool:
    status = record.status()
    for kind, reasons in wanted:
        if status["type"] != kind:
            continue
        if kind == "client_finished" and reasons is not None:
            if status["reason"]["type"] in reasons:
                return True
            continue
        return True
    return False


@dataclasses.dataclass
class _SessionSearch:
    """A ``sessions/search`` body, read and checked."""

    session_id: str | None
    project_ids: list[str] | None
    metadata: dict[str, Any]
    display_name: str | None
    owner_type: str
    owner_urns: list[str]
    wanted: list[tuple[str, list[str] | None]] | None
    limit: int
    after: tuple[datetime, str] | None

    def keep(self, record: SessionRecord) -> bool:
        """Whether the session matches every filter given."""
        if self.session_id is not None or self.display_name is not None:
            by_id = self.session_id is not None and record.session_id == self.session_id
            words = (self.display_name or "").lower().split()
            name = (record.display_name or "").lower()
            by_name = self.display_name is not None and all(w in name for w in words)
            if not (by_id or by_name):
                return False
        if self.project_ids is not None and (
                record.project_id or _DEFAULT_PROJECT) not in self.project_ids:
            return False
        user_metadata = _string_map(record.user_metadata) or {}
        if any(user_metadata.get(k) != v for k, v in self.metadata.items()):
            return False
        if self.owner_type == "user" and LOCAL_OWNER not in self.owner_urns:
            return False
        return self.wanted is None or _status_matches(record, self.wanted)


def _read_session_search(fields: Fields) -> _SessionSearch:
    """Read a ``sessions/search`` body, field by field in the order issues are reported."""
    session_id = fields.opt_text("session_id")
    project_ids = fields.opt_strings("project_ids")
    metadata = fields.opt_mapping("user_metadata", str_values=True) or {}
    display_name = fields.opt_text("display_name", min_length=1)
    owner_type = "own"
    owner_urns: list[str] = []
    owner = fields.nested("owner", required=False)
    if owner is not None:
        owner_type = owner.text("type", default="own", choices=("own", "accessible", "user"))
        owner_urns = owner.strings("owner_urns")
    wanted: list[tuple[str, list[str] | None]] | None = None
    status_items = fields.items("statuses")
    if status_items is not None:
        wanted = []
        for item in status_items:
            kind = item.text("type", choices=("active", "cancelled", "failed", "client_finished"))
            wanted.append((kind, item.opt_strings("reasons")))
    limit = fields.integer("limit", default=50, ge=1, le=200)
    after = _read_session_cursor(fields)
    fields.finish()
    return _SessionSearch(session_id, project_ids, metadata, display_name, owner_type,
                          owner_urns, wanted, limit, after)


def _read_session_cursor(fields: Fields) -> tuple[datetime, str] | None:
    """The ``cursor`` of a ``sessions/search`` body: page after this (created_at, id)."""
    cursor_fields = fields.nested("cursor", required=False)
    if cursor_fields is None:
        return None
    last_created = cursor_fields.text("last_created_at")
    last_id = cursor_fields.text("last_session_id")
    parsed = _parse_time(last_created)
    if last_created and parsed is None:
        cursor_fields.add_issue(
            "last_created_at", "timezone_aware", "Input should have timezone info", last_created
        )
    return (parsed, last_id) if parsed is not None else None


async def search_sessions(request: web.Request) -> web.Response:
    """``POST sessions/search``: filtered, newest first, paged by ``(created_at, id)`` cursor."""
    ctx = context(request)
    search = _read_session_search(
        Fields(await read_json_object(request), strict=ctx.dialect.strict_fields))

    def sort_key(record: SessionRecord) -> tuple[datetime, str]:
        return (datetime.fromtimestamp(record.created_at, timezone.utc), record.session_id)

    matches = [r for r in ctx.state.list_sessions() if search.keep(r)]
    after, limit = search.after, search.limit
    if after is not None:
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
    fields = _query(request)
    fields.text("event_type", default="all", choices=_AUDIT_EVENT_TYPES)
    day = fields.opt_text("day")
    if day is not None:
        try:
            date.fromisoformat(day)
        except ValueError:
            fields.add_issue(
                "day", "date_from_datetime_parsing", "Input should be a valid date", day
            )
    fields.finish()
    return json_response({"entries": []})


async def billing_usage_events(request: web.Request) -> web.Response:
    """``GET billing/usage/events?starting_on&ending_before``: nothing is billed locally."""
    fields = _query(request)
    for name in ("starting_on", "ending_before"):
        value = fields.text(name)
        if value and _parse_time(value) is None:
            fields.add_issue(name, "datetime_parsing", "Input should be a valid datetime", value)
    fields.finish()
    return json_response({"data": [], "sessions": {}})


async def checkpoint_storage_usage(request: web.Request) -> web.Response:
    """``GET billing/usage/checkpoints/current[?project_id]``: no billable storage."""
    fields = _query(request)
    fields.opt_text("project_id")
    fields.finish()
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
