"""Polling of server futures: ``retrieve_future``, ``retrieve_futures``, cancel, cleanup.

Answers of ``retrieve_future`` (official dialect; reference §2.3):

- pending after the hold: ``{"type": "try_again", "request_id", "queue_state": "active"}``
  with status 200 (or the dialect's ``pending_status``, e.g. 408);
- failed: ``{"error": message, "category": "user"|"server"|"unknown"}``;
- expired promise: 410;
- finished: the result, protobuf when the request accepts ``application/x-protobuf`` and a
  protobuf form exists, else JSON; or ``{"status": "complete_metadata",
  "response_payload_size": n}`` first, for a big result polled with
  ``allow_metadata_only``.

The tinkercloud dialect answers ``{"status": "pending"|"completed"|"failed", ...}`` instead,
and also at ``POST retrieve_future/{request_id}``.
"""

from __future__ import annotations

from aiohttp import web

from .. import types as t
from ._capacity import queue_state_of
from ._errors import ApiError, ValidationIssue, gone, json_response, no_content, not_found
from ._futures import PROTOBUF, ServerFuture
from ._routing import Route, ServerContext, context, route
from ._validate import at_least, convert_request, finish, read_json_object, read_request

__all__ = ["ROUTES"]


async def retrieve_future(request: web.Request) -> web.Response:
    """``POST retrieve_future`` (and tinkercloud's ``retrieve_future/{request_id}``)."""
    ctx = context(request)
    strict = ctx.dialect.strict_fields
    in_path = request.match_info.get("request_id")
    if in_path is None:
        body = await read_request(request, t.FutureRetrieveRequest, strict=strict)
    else:  # tinkercloud: the id is in the path; the body need not repeat it
        obj = await read_json_object(request)
        obj.setdefault("request_id", in_path)
        body = convert_request(obj, t.FutureRetrieveRequest, strict=strict)
    request_id = in_path or body.request_id
    allow_metadata_only = body.allow_metadata_only

    store = ctx.futures
    future = store.get(request_id)
    if future is None:
        raise not_found(f"Future not found: {request_id}")
    await store.wait(future, store.poll_hold_s)
    if store.get(request_id) is None:  # acknowledged or cleaned up while we waited
        raise not_found(f"Future not found: {request_id}")
    if ctx.dialect.future_shape == "tinkercloud":
        return _tinkercloud_answer(future)
    return _official_answer(ctx, future, request, allow_metadata_only)


def _official_answer(
    ctx: ServerContext, future: ServerFuture, request: web.Request, allow_metadata_only: bool
) -> web.Response:
    if future.state == "pending":
        return json_response(
            {"type": "try_again", "request_id": future.request_id,
             **queue_state_of(ctx, future.request_id)},
            status=ctx.dialect.pending_status,
        )
    if future.state == "expired":
        raise gone(f"Promise expired: {future.request_id}")
    if future.state == "failed":
        return json_response({"error": future.error, "category": future.category})
    want_proto = PROTOBUF in request.headers.get("Accept", "")
    body, content_type = future.payload(want_proto=want_proto, allow_proto=ctx.futures.allow_proto)
    if allow_metadata_only and len(body) > ctx.config.inline_payload_limit:
        # Lets the client reserve memory before the big payload arrives (SDK §2.3).
        return json_response({"status": "complete_metadata", "response_payload_size": len(body)})
    return web.Response(body=body, content_type=content_type)


def _tinkercloud_answer(future: ServerFuture) -> web.Response:
    if future.state == "pending":
        return json_response({"status": "pending", "result": None})
    if future.state == "expired":
        raise gone(f"Promise expired: {future.request_id}")
    if future.state == "failed":
        return json_response({"status": "failed", "error": future.error})
    # Splice the cached JSON result in rather than decoding and re-encoding it.
    body = b'{"status":"completed","result":' + future.json_bytes() + b"}"
    return web.Response(body=body, content_type="application/json")


async def retrieve_futures(request: web.Request) -> web.Response:
    """``POST retrieve_futures``: the long-poll of one sampling session's completions."""
    ctx = context(request)
    body = await read_request(request, t.FuturesRetrieveRequest, strict=ctx.dialect.strict_fields)
    sampler_id, clone = body.target.sampling_session_id, body.target.cloned_sampler_id
    prev_cursor, timeout, retrieved = body.prev_cursor, body.timeout, body.retrieved_request_ids
    issues: list[ValidationIssue] = []  # bounds the official schema does not state
    at_least(issues, "prev_cursor", prev_cursor, 0)
    at_least(issues, "timeout", timeout, 0)
    finish(issues)
    if clone < 0:
        finish([{"loc": ["body", "target", "cloned_sampler_id"], "type": "greater_than_equal",
                 "msg": "Input should be greater than or equal to 0", "input": clone}])

    try:
        sampler = ctx.state.get_sampler(sampler_id)
        ctx.state.touch_session(sampler.session_id)
    except ApiError:
        # Futures made with the test helper may name a sampler the state does not know.
        if not ctx.futures.has_queue(sampler_id):
            raise
    completions, cursor = await ctx.futures.poll_completions(
        sampler_id,
        clone,
        prev_cursor=prev_cursor,
        timeout=timeout,
        retrieved_request_ids=retrieved,
    )
    return json_response({"completions": completions, "cursor": cursor})


async def cancel_future(request: web.Request) -> web.Response:
    """``POST cancel_future {"request_id"}``: stop pending work (404 if unknown)."""
    ctx = context(request)
    body = await read_request(request, t.CancelFutureRequest, strict=ctx.dialect.strict_fields)
    request_id = body.request_id
    if not ctx.futures.cancel(request_id):
        raise not_found(f"Future not found: {request_id}")
    return no_content()


async def cleanup_futures(request: web.Request) -> web.Response:
    """``POST cleanup_futures {"max_age_hours"}`` -> ``{"cleaned_count"}`` (tinkercloud)."""
    ctx = context(request)
    body = await read_request(request, t.CleanupFuturesRequest, strict=ctx.dialect.strict_fields)
    max_age_hours = body.max_age_hours
    issues: list[ValidationIssue] = []
    at_least(issues, "max_age_hours", max_age_hours, 0)
    finish(issues)
    hours = 24.0 if max_age_hours is None else max_age_hours
    return json_response({"cleaned_count": ctx.futures.cleanup(hours * 3600.0)})


ROUTES: tuple[Route, ...] = (
    route("POST", "/retrieve_future", retrieve_future),
    route(
        "POST",
        "/retrieve_future/{request_id}",
        retrieve_future,
        when=lambda d: d.future_shape == "tinkercloud",
    ),
    route("POST", "/retrieve_futures", retrieve_futures, when=lambda d: d.retrieve_futures),
    route("POST", "/cancel_future", cancel_future, when=lambda d: d.cancel_future),
    route("POST", "/cleanup_futures", cleanup_futures),
)
