"""Tests of the embedded Tinker-compatible server, ``tinker_async.local``.

They talk to it over real HTTP on 127.0.0.1 only: with plain ``aiohttp`` (to check exact
shapes, statuses and faults) and with the official ``tinker`` 0.38 SDK, unmodified (to
check that the server speaks the real protocol). The server runs in its own thread, so
blocking SDK calls in the test thread cannot stall it. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from _waiting import HANG_GUARD_S, close_official
from aiohttp import web

from tinker_async.local import LocalServer
from tinker_async.local._errors import json_response
from tinker_async.local._routing import context, route

KEY = "tml-test-key-0123456789"
AUTH = {"X-API-Key": KEY}
MODEL = "local/byte-lm"
_T = TypeVar("_T")

# The SDK's telemetry would only add noise to the request logs these tests read.
os.environ.setdefault("TINKER_TELEMETRY", "0")


# ------------------------------------------------------------------------------ helpers


@pytest.fixture
def srv() -> Iterator[LocalServer]:
    with LocalServer(api_key=KEY, poll_hold_s=2.0).in_thread() as server:
        yield server


def with_http(
    server: LocalServer,
    body: Callable[[aiohttp.ClientSession], Awaitable[_T]],
    *,
    force_close: bool = False,
) -> _T:
    """Run ``body`` with an aiohttp session on the server's URL (in a fresh loop)."""

    async def main() -> _T:
        connector = aiohttp.TCPConnector(force_close=force_close)
        timeout = aiohttp.ClientTimeout(total=HANG_GUARD_S)  # hang guards only
        async with aiohttp.ClientSession(
            base_url=server.url, connector=connector, timeout=timeout
        ) as session:
            return await body(session)

    return asyncio.run(asyncio.wait_for(main(), 1.5 * HANG_GUARD_S))


async def req(
    session: aiohttp.ClientSession,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> tuple[int, Any, Any]:
    """``(status, parsed JSON or None, headers)``."""
    async with session.request(
        method, path, json=body, headers=AUTH if headers is None else headers, **kwargs
    ) as response:
        raw = await response.read()
        data = await response.json(content_type=None) if raw else None
        return response.status, data, response.headers


def sdk() -> Any:
    """The official SDK, or skip (it needs Python 3.11+)."""
    tinker = pytest.importorskip("tinker")
    warnings.simplefilter("ignore", FutureWarning)  # deprecations we do not exercise
    return tinker


# --------------------------------------------------------------------- basics and auth


def test_health_request_ids_and_auth(srv: LocalServer) -> None:
    async def body(s: aiohttp.ClientSession) -> None:
        status, data, headers = await req(s, "GET", "/health", headers={})
        assert (status, data) == (200, {"status": "healthy"})
        assert headers["x-request-id"]

        status, data, headers = await req(s, "GET", "/api/v1/healthz", headers={})
        assert (status, data) == (401, {"detail": "Missing API key"})
        assert headers["x-request-id"]
        status, data, _ = await req(s, "GET", "/api/v1/healthz", headers={"X-API-Key": "tml-x"})
        assert (status, data) == (401, {"detail": "Invalid API key"})
        status, data, headers = await req(
            s, "GET", "/api/v1/healthz", headers={**AUTH, "x-request-id": "abc"}
        )
        assert (status, data, headers["x-request-id"]) == (200, {"status": "ok"}, "abc")

        # Twinkle reads a bearer token, not X-API-Key.
        status, _, _ = await req(s, "GET", "/twinkle/healthz")
        assert status == 401
        status, data, _ = await req(
            s, "GET", "/twinkle/healthz", headers={"Authorization": f"Bearer {KEY}"}
        )
        assert (status, data) == (200, {"status": "ok"})

        status, data, _ = await req(s, "GET", "/api/v1/health")
        assert status == 200 and data["status"] == "healthy" and "active_sessions" in data

        # The key never reaches the log, even inside a body.
        await req(s, "POST", "/api/v1/telemetry", {"events": [{"x-api-key": KEY}]})

    with_http(srv, body)
    recorded = srv.requests
    assert len(recorded) == 8
    assert all(KEY not in str(dict(r.headers)) and KEY.encode() not in r.body for r in recorded)
    assert recorded[-1].headers["X-API-Key"] == "***"
    assert [r.status for r in recorded[:3]] == [200, 401, 401]
    assert srv.count(r"/healthz$") == 5 and srv.count(r"/healthz$", method="POST") == 0
    srv.clear_requests()
    assert srv.requests == []


def test_client_config_flags_are_configurable() -> None:
    server = LocalServer(client_config={"fwdbwd_max_chunk_len": 2}, poll_hold_s=0.5)
    with server.in_thread():

        async def body(s: aiohttp.ClientSession) -> None:
            status, flags, _ = await req(
                s, "POST", "/api/v1/client/config", {"sdk_version": "0.38.0"}
            )
            assert status == 200
            assert flags["fwdbwd_max_chunk_len"] == 2
            assert flags["sample_use_retrieve_futures"] is True
            assert flags["parallel_fwdbwd_chunks"] is True  # an SDK default kept
            status, dynamic, _ = await req(s, "POST", "/api/v1/client/dynamic_config", {})
            assert status == 200 and dynamic["refresh_interval_sec"] == 300

        with_http(server, body)


# ---------------------------------------------------------------------------- sessions


def test_session_lifecycle_finish_and_expiry() -> None:
    # Expiry is the one thing here that needs time to pass: the server's session clock
    # is injected, so the test moves it instead of waiting (and a slow machine cannot
    # make a gap between heartbeats look like an expiry).
    timeout_s = 1.0
    server = LocalServer(api_key=KEY, session_timeout_s=timeout_s)
    now = [time.monotonic()]
    server.state._monotonic = lambda: now[0]  # session liveness reads only this clock
    with server.in_thread():

        async def body(s: aiohttp.ClientSession) -> None:
            async def new_session() -> str:
                status, data, _ = await req(
                    s,
                    "POST",
                    "/api/v1/create_session",
                    {
                        "tags": ["t"],
                        "user_metadata": {"k": "v"},
                        "sdk_version": "0.38.0",
                        "display_name": "demo",
                        "type": "create_session",
                    },
                )
                assert status == 200 and data["type"] == "create_session"
                return str(data["session_id"])

            async def heartbeat(session_id: str) -> tuple[int, Any]:
                status, data, _ = await req(
                    s,
                    "POST",
                    "/api/v1/session_heartbeat",
                    {"session_id": session_id, "type": "session_heartbeat"},
                )
                return status, data

            sid = await new_session()
            # Heartbeats keep it alive past the timeout (12 beats, 0.5 timeouts apart).
            for _ in range(12):
                assert await heartbeat(sid) == (200, {"type": "session_heartbeat"})
                now[0] += timeout_s / 2
            status, data, _ = await req(s, "GET", f"/api/v1/sessions/{sid}")
            assert data == {
                "training_run_ids": [],
                "sampler_ids": [],
                "user_metadata": {"k": "v"},
                "display_name": "demo",
            }

            finish = {"reason": {"type": "success"}, "detail": None}
            status, data, _ = await req(s, "POST", f"/api/v1/sessions/{sid}/finish", finish)
            assert (status, data) == (204, None)
            status, data = await heartbeat(sid)
            assert status == 410 and "finished" in data["detail"]
            # First reason wins; finishing again is harmless.
            status, _, _ = await req(
                s, "POST", f"/api/v1/sessions/{sid}/finish", {"reason": {"type": "errored"}}
            )
            assert status == 204
            status, found, _ = await req(s, "POST", "/api/v1/sessions/search", {"session_id": sid})
            assert found["sessions"][0]["status"] == {
                "type": "client_finished",
                "reason": {"type": "success"},
            }

            # Without heartbeats a session expires.
            idle = await new_session()
            now[0] += 1.2 * timeout_s
            status, data = await heartbeat(idle)
            assert status == 410 and "expired" in data["detail"]

            forced = await new_session()
            server.expire_session(forced)
            assert (await heartbeat(forced))[0] == 410
            assert (await heartbeat("no-such-session"))[0] == 404

        with_http(server, body)


def test_expired_session_expires_its_pending_futures() -> None:
    server = LocalServer(session_timeout_s=0.3, poll_hold_s=0.2)
    with server.in_thread():
        sid = server.state.create_session().session_id
        rid = server.create_future({"never": True}, delay_s=30, session_id=sid)

        async def body(s: aiohttp.ClientSession) -> None:
            # The reaper expires it after at least 0.3 s; the deadline is a hang guard.
            deadline = time.monotonic() + HANG_GUARD_S
            status = 200
            while status == 200 and time.monotonic() < deadline:
                status, data, _ = await req(
                    s, "POST", "/api/v1/retrieve_future", {"request_id": rid}
                )
            assert status == 410 and "expired" in data["detail"].lower()

        with_http(server, body)


# ---------------------------------------------------------------------- error shapes


def test_error_shapes(srv: LocalServer) -> None:
    async def body(s: aiohttp.ClientSession) -> None:
        status, data, _ = await req(s, "GET", "/api/v1/training_runs/nope:train:0")
        assert status == 404 and isinstance(data["detail"], str)
        status, data, _ = await req(s, "GET", "/api/v1/no/such/route")
        assert (status, data) == (404, {"detail": "Not Found"})

        status, data, _ = await req(s, "POST", "/api/v1/create_sampling_session", {"session_id": 5})
        assert status == 422
        assert {(tuple(i["loc"]), i["type"]) for i in data["detail"]} == {
            (("body", "session_id"), "string_type"),
            (("body", "sampling_session_seq_id"), "missing"),
        }
        status, data, _ = await req(s, "GET", "/api/v1/training_runs", params={"limit": "abc"})
        assert status == 422 and data["detail"][0]["loc"] == ["query", "limit"]

        status, data, _ = await req(
            s,
            "POST",
            "/api/v1/create_session",
            headers={**AUTH, "Content-Type": "application/json"},
            data=b"{not json",
        )
        assert status == 400 and "Invalid JSON" in data["detail"]

        # 409: a sampling_session_seq_id is used once per session.
        _, created, _ = await req(s, "POST", "/api/v1/create_session", {"tags": []})
        sampler = {
            "session_id": created["session_id"],
            "sampling_session_seq_id": 0,
            "base_model": MODEL,
        }
        assert (await req(s, "POST", "/api/v1/create_sampling_session", sampler))[0] == 200
        status, data, _ = await req(s, "POST", "/api/v1/create_sampling_session", sampler)
        assert status == 409 and "already used" in data["detail"]
        status, data, _ = await req(
            s,
            "POST",
            "/api/v1/create_sampling_session",
            {**sampler, "sampling_session_seq_id": 1, "base_model": "other/model"},
        )
        assert status == 400 and "Unsupported base model" in data["detail"]

    with_http(srv, body)


def test_strict_dialect_rejects_unknown_fields() -> None:
    with LocalServer(dialect="strict").in_thread() as server:

        async def body(s: aiohttp.ClientSession) -> None:
            status, data, _ = await req(
                s, "POST", "/api/v1/create_session", {"tags": [], "surprise": 1}
            )
            assert status == 422
            assert data["detail"][0]["type"] == "extra_forbidden"
            assert data["detail"][0]["loc"] == ["body", "surprise"]
            # ...and it is a third-party dialect: no handshake endpoint.
            assert (await req(s, "POST", "/api/v1/client/config", {}))[0] == 404

        with_http(server, body)


# -------------------------------------------------------------------------- pagination


def test_pagination_cursors(srv: LocalServer) -> None:
    start = time.time() - 1000
    runs = []
    for i in range(25):
        run = srv.seed_training_run()
        srv.seed_checkpoint(run, f"c{i}", time=start + i)
        runs.append(run)

    async def body(s: aiohttp.ClientSession) -> None:
        seen: list[str] = []
        for offset in (0, 10, 20):
            status, data, _ = await req(
                s,
                "GET",
                "/api/v1/training_runs",
                params={"limit": "10", "offset": str(offset), "access_scope": "owned"},
            )
            assert status == 200
            assert data["cursor"] == {"offset": offset, "limit": 10, "total_count": 25}
            seen += [r["training_run_id"] for r in data["training_runs"]]
        assert seen == list(reversed(runs))  # newest first, each exactly once

        status, data, _ = await req(
            s, "GET", "/api/v1/checkpoints", params={"limit": "7", "offset": "21"}
        )
        assert data["cursor"] == {"offset": 21, "limit": 7, "total_count": 25}
        assert [c["checkpoint_id"] for c in data["checkpoints"]] == [
            f"weights/c{i}" for i in (3, 2, 1, 0)
        ]
        assert (await req(s, "GET", "/api/v1/checkpoints", params={"limit": "0"}))[0] == 422

        # Session search pages by cursor until next_cursor is absent.
        ids: list[str] = []
        request: dict[str, Any] = {"limit": 10}
        for _ in range(10):
            status, data, _ = await req(s, "POST", "/api/v1/sessions/search", request)
            assert status == 200
            ids += [x["session_id"] for x in data["sessions"]]
            if "next_cursor" not in data:
                break
            request["cursor"] = data["next_cursor"]
        assert len(ids) == len(set(ids)) == 25
        assert sorted(ids) == sorted(r.split(":")[0] for r in runs)

    with_http(srv, body)


# ------------------------------------------------------------------------------ faults


def test_fault_429_with_retry_after_fires_exactly_count_times(srv: LocalServer) -> None:
    rule = srv.faults.add(r"/healthz$", status=429, count=2, retry_after=0.5)
    srv.faults.add(r"/healthz$", status=503, method="POST")  # never matches a GET

    async def body(s: aiohttp.ClientSession) -> None:
        answers = [await req(s, "GET", "/api/v1/healthz") for _ in range(3)]
        assert [a[0] for a in answers] == [429, 429, 200]
        assert answers[0][1] == {"detail": "Injected fault: HTTP 429"}
        assert answers[0][2]["Retry-After"] == "0.5"
        assert answers[0][2]["x-request-id"]

    with_http(srv, body)
    assert rule.hits == 2 and rule.remaining == 0
    assert len(srv.faults.rules) == 1  # the spent rule is gone; the POST-only one remains
    srv.faults.clear()
    assert srv.faults.rules == []


def test_fault_drop_connection_and_delay(srv: LocalServer) -> None:
    srv.faults.add(r"/create_session$", drop_connection=True)
    srv.faults.add(r"/healthz$", delay_s=0.3)

    async def body(s: aiohttp.ClientSession) -> None:
        with pytest.raises(aiohttp.ClientError):
            await req(s, "POST", "/api/v1/create_session", {"tags": []})
        assert (await req(s, "POST", "/api/v1/create_session", {"tags": []}))[0] == 200
        started = time.monotonic()
        assert (await req(s, "GET", "/api/v1/healthz"))[0] == 200
        assert time.monotonic() - started >= 0.3

    with_http(srv, body, force_close=True)
    dropped = [r for r in srv.requests if r.path.endswith("/create_session")]
    assert [r.status for r in dropped] == [None, 200]


# ----------------------------------------------------------------------------- futures


def test_retrieve_future_long_poll_is_woken_by_completion(srv: LocalServer) -> None:
    # Held longer than the client waits: only a wake-up by the completion can answer it.
    srv.set_poll_hold(10 * HANG_GUARD_S)
    rid = srv.create_future({"never": "on its own"}, delay_s=10 * HANG_GUARD_S)
    timer = threading.Timer(0.3, srv.complete_future, args=(rid, {"ok": True}))

    async def body(s: aiohttp.ClientSession) -> None:
        timer.start()
        status, data, _ = await req(s, "POST", "/api/v1/retrieve_future", {"request_id": rid})
        assert (status, data) == (200, {"ok": True})  # not try_again at the end of the hold

    with_http(srv, body)
    timer.join(HANG_GUARD_S)


def test_retrieve_future_answers(srv: LocalServer) -> None:
    srv.set_poll_hold(0.1)
    pending = srv.create_future(delay_s=60)
    failed = srv.create_future(error="boom", category="user")
    to_fail = srv.create_future(delay_s=60)
    to_expire = srv.create_future(delay_s=60)
    proto = srv.create_future(b"\x08\x01")
    to_cancel = srv.create_future(delay_s=60)

    async def body(s: aiohttp.ClientSession) -> None:
        async def poll(rid: str, **headers: str) -> tuple[int, Any, Any]:
            return await req(
                s,
                "POST",
                "/api/v1/retrieve_future",
                {"request_id": rid, "allow_metadata_only": True},
                headers={**AUTH, **headers},
            )

        status, data, _ = await poll(pending)
        assert (status, data) == (
            200,
            {"type": "try_again", "request_id": pending, "queue_state": "active"},
        )
        assert (await poll("no-such-id"))[:2] == (404, {"detail": "Future not found: no-such-id"})
        assert (await poll(failed))[:2] == (200, {"error": "boom", "category": "user"})

        srv.fail_future(to_fail, "stopped", "server")
        assert (await poll(to_fail))[:2] == (200, {"error": "stopped", "category": "server"})
        srv.expire_future(to_expire)
        assert (await poll(to_expire))[0] == 410

        async with s.post(
            "/api/v1/retrieve_future",
            json={"request_id": proto},
            headers={**AUTH, "Accept": "application/x-protobuf"},
        ) as response:
            assert response.content_type == "application/x-protobuf"
            assert await response.read() == b"\x08\x01"

        assert (await req(s, "POST", "/api/v1/cancel_future", {"request_id": to_cancel}))[0] == 204
        assert (await poll(to_cancel))[1] == {"error": "Request was cancelled", "category": "user"}
        assert (await req(s, "POST", "/api/v1/cancel_future", {"request_id": "nope"}))[0] == 404

        status, data, _ = await req(s, "POST", "/api/v1/cleanup_futures", {"max_age_hours": 0})
        assert status == 200 and data["cleaned_count"] == 5  # every finished one
        assert (await poll(failed))[0] == 404
        assert (await poll(pending))[1]["type"] == "try_again"  # pending work is kept

    with_http(srv, body)


def test_big_results_are_announced_with_metadata_first() -> None:
    with LocalServer(inline_payload_limit=10).in_thread() as server:
        rid = server.create_future({"text": "x" * 100})

        async def body(s: aiohttp.ClientSession) -> None:
            _, first, _ = await req(
                s,
                "POST",
                "/api/v1/retrieve_future",
                {"request_id": rid, "allow_metadata_only": True},
            )
            assert first == {"status": "complete_metadata", "response_payload_size": 111}
            _, second, _ = await req(
                s,
                "POST",
                "/api/v1/retrieve_future",
                {"request_id": rid, "allow_metadata_only": False},
            )
            assert second == {"text": "x" * 100}

        with_http(server, body)


def test_retrieve_futures_session_long_poll_and_acks(srv: LocalServer) -> None:
    srv.set_poll_hold(5.0)

    async def body(s: aiohttp.ClientSession) -> None:
        _, session, _ = await req(s, "POST", "/api/v1/create_session", {"tags": []})
        _, sampler, _ = await req(
            s,
            "POST",
            "/api/v1/create_sampling_session",
            {
                "session_id": session["session_id"],
                "sampling_session_seq_id": 0,
                "base_model": MODEL,
            },
        )
        sampler_id = sampler["sampling_session_id"]
        target = {"type": "sampling_session", "sampling_session_id": sampler_id}

        async def poll(**fields: Any) -> tuple[int, Any]:
            status, data, _ = await req(
                s, "POST", "/api/v1/retrieve_futures", {"target": target, **fields}
            )
            return status, data

        ok = srv.create_future({"a": 1}, sampling_session_id=sampler_id)
        bad = srv.create_future(error="x", sampling_session_id=sampler_id)
        other_clone = srv.create_future(sampling_session_id=sampler_id, cloned_sampler_id=1)
        completions: dict[str, Any] = {}
        cursor = 0
        for _ in range(10):  # both may not have completed at the first poll
            status, data = await poll(prev_cursor=0)
            assert status == 200
            completions = {c["request_id"]: c for c in data["completions"]}
            cursor = data["cursor"]
            if len(completions) == 2:
                break
        assert completions[ok] == {
            "state": "finished",
            "request_id": ok,
            "response_payload_uncompressed_size": 7,
        }
        assert completions[bad] == {"state": "failed", "request_id": bad}
        assert other_clone not in completions and cursor == 2

        # Acknowledge everything and drop ok's payload.
        assert await poll(prev_cursor=cursor, timeout=0, retrieved_request_ids=[ok]) == (
            200,
            {"completions": [], "cursor": 2},
        )
        assert (await req(s, "POST", "/api/v1/retrieve_future", {"request_id": ok}))[0] == 404

        # A held poll is woken by the next completion (held longer than the client waits,
        # so only a wake-up can answer it).
        srv.set_poll_hold(10 * HANG_GUARD_S)
        late = srv.create_future({"late": True}, delay_s=60, sampling_session_id=sampler_id)
        timer = threading.Timer(0.3, srv.complete_future, args=(late, {"late": True}))
        timer.start()
        status, data = await poll(prev_cursor=2)
        timer.join(HANG_GUARD_S)
        srv.set_poll_hold(5.0)
        assert [c["request_id"] for c in data["completions"]] == [late] and data["cursor"] == 3

        status, data, _ = await req(
            s,
            "POST",
            "/api/v1/retrieve_futures",
            {"target": {**target, "cloned_sampler_id": 1}, "timeout": 0},
        )
        assert [c["request_id"] for c in data["completions"]] == [other_clone]
        status, _, _ = await req(
            s,
            "POST",
            "/api/v1/retrieve_futures",
            {"target": {"type": "sampling_session", "sampling_session_id": "nope"}, "timeout": 0},
        )
        assert status == 404

    with_http(srv, body)


# ------------------------------------------------------------------------ official SDK


def test_official_rest_and_admin_clients(srv: LocalServer) -> None:
    tinker = sdk()
    from tinker.types import SessionSearchRequest

    run = srv.seed_training_run(user_metadata={"purpose": "test"})
    path = srv.seed_checkpoint(run, "step-1", time=time.time() - 60)
    sampler_path = srv.seed_checkpoint(run, "s-1", kind="sampler_weights")
    external = srv.seed_checkpoint(run, "e-1", kind="external_weights", size_bytes=4096)
    session_id = run.split(":")[0]

    rest = tinker.RestClient(base_url=srv.url, api_key=KEY)
    caps = rest.get_server_capabilities().result(60)
    assert [m.model_name for m in caps.supported_models] == [MODEL]

    runs = rest.list_training_runs(limit=5).result(60)
    assert runs.cursor.total_count == 1 and runs.training_runs[0].training_run_id == run
    fetched = rest.get_training_run(run).result(60)
    assert fetched.lora_rank == 8 and fetched.user_metadata == {"purpose": "test"}
    assert fetched.last_checkpoint.tinker_path == path
    assert fetched.last_sampler_checkpoint.tinker_path == sampler_path

    listed = rest.list_checkpoints(run).result(60)
    assert [c.checkpoint_type for c in listed.checkpoints] == ["training", "sampler", "external"]
    assert rest.list_user_checkpoints().result(60).cursor.total_count == 3

    rest.publish_checkpoint_from_tinker_path(path).result(60)
    rest.set_checkpoint_ttl_from_tinker_path(path, 7200).result(60)
    checkpoint = rest.list_checkpoints(run).result(60).checkpoints[0]
    assert checkpoint.public and checkpoint.expires_at is not None
    rest.unpublish_checkpoint_from_tinker_path(path).result(60)
    rest.set_checkpoint_ttl_from_tinker_path(path, None).result(60)
    checkpoint = rest.list_checkpoints(run).result(60).checkpoints[0]
    assert not checkpoint.public and checkpoint.expires_at is None
    with pytest.raises(tinker.BadRequestError, match="ttl_seconds"):
        rest.set_checkpoint_ttl_from_tinker_path(path, 60).result(60)

    info = rest.get_weights_info_by_tinker_path(path).result(60)
    assert (info.base_model, info.is_lora, info.lora_rank) == (MODEL, True, 8)
    urls = rest.get_external_weights_urls(external).result(60)
    assert sorted(urls.urls) == ["adapter_config.json", "adapter_model.safetensors"]

    async def download(url: str) -> bytes:
        async with aiohttp.ClientSession() as s, s.get(url) as response:
            assert response.status == 200
            return await response.read()

    total = sum(len(asyncio.run(download(u))) for u in urls.urls.values())
    assert total == 4096

    assert rest.get_session(session_id).result(60).training_run_ids == [run]
    assert rest.list_sessions().result(60).sessions == [session_id]
    found = rest.search_sessions(SessionSearchRequest()).result(60)
    assert found.sessions[0].checkpoints_count == 3
    assert rest.export_session_trace(session_id).result(60).startswith(srv.url + "/files/")

    copy = rest.copy_weights(path, "project-b").result(60)
    assert copy.endswith("/weights/step-1") and copy != path
    rest.delete_checkpoint_from_tinker_path(sampler_path).result(60)
    remaining = [c.checkpoint_id for c in rest.list_checkpoints(run).result(60).checkpoints]
    assert remaining == ["weights/step-1", "external_weights/e-1"]
    with pytest.raises(tinker.NotFoundError):
        rest.get_training_run("missing:train:0").result(60)

    admin = tinker.AdminClient(base_url=srv.url, api_key=KEY)
    assert admin.get_audit_log().result(60).entries == []
    usage = admin.get_billing_usage("2025-01-01T00:00:00Z", "2025-01-02T00:00:00Z").result(60)
    assert usage.data == []
    assert admin.get_current_checkpoint_storage_usage().result(60).data == []

    # The SDK sends the run id with its ':' and the checkpoint id's '/' unencoded.
    assert srv.count(rf"/training_runs/{run}/checkpoints/weights/step-1/ttl$", "PUT") == 3


def test_official_service_client_session_and_sampler(srv: LocalServer) -> None:
    tinker = sdk()
    service = tinker.ServiceClient(base_url=srv.url, api_key=KEY, user_metadata={"who": "test"})
    sampler = service.create_sampling_client(base_model=MODEL).result(60)
    assert sampler.get_base_model() == MODEL

    created = [r for r in srv.requests if r.path == "/api/v1/create_session"]
    assert len(created) == 1
    sent = json.loads(created[0].body)
    assert sent["type"] == "create_session" and sent["user_metadata"] == {"who": "test"}
    assert sent["sdk_version"] == "0.38.0" and isinstance(sent["tags"], list)
    session_id = srv.state.list_sessions()[0].session_id

    rest = tinker.RestClient(base_url=srv.url, api_key=KEY)
    sampler_ids = rest.get_session(session_id).result(60).sampler_ids
    assert sampler_ids == [f"{session_id}:sample:0"]
    assert rest.get_sampler(sampler_ids[0]).result(60).base_model == MODEL

    close_official(service, srv, session_id)
    assert srv.count(rf"/sessions/{session_id}/finish$", "POST") == 1
    assert srv.state.get_session(session_id).finish_reason == "success"
    paths = [r.path for r in srv.requests]
    assert paths.index("/api/v1/client/config") < paths.index("/api/v1/create_session")


def _fake_asample_route() -> Any:
    """An ``asample`` built on the future store, as the follow-up's real one will be."""
    from tinker.proto import tinker_public_pb2 as pb

    async def asample(request: web.Request) -> web.Response:
        ctx = context(request)
        body = await request.json()
        sampler = ctx.state.get_sampler(body["sampling_session_id"])
        count = int(body["num_samples"])

        async def work() -> bytes:
            await asyncio.sleep(0.05)
            response = pb.SampleResponse()
            for i in range(count):
                sequence = response.sequences.add()
                sequence.tokens = bytes([i, 0, 0, 0, 7, 0, 0, 0])  # int32 LE: [i, 7]
            return bytes(response.SerializeToString())

        rid = ctx.futures.submit(
            work,
            kind="Sample",
            session_id=sampler.session_id,
            sampling_session_id=sampler.sampler_id,
            cloned_sampler_id=int(body["seq_id"]) // 1_000_000_000,
        )
        return json_response(
            {"request_id": rid, "sample_sequence_ids": [f"{rid}:{i}" for i in range(count)]}
        )

    return route("POST", "/asample", asample)


def test_official_sdk_samples_through_the_future_store() -> None:
    tinker = sdk()
    server = LocalServer(api_key=KEY, routes=[_fake_asample_route()], poll_hold_s=5.0)
    with server.in_thread():
        service = tinker.ServiceClient(base_url=server.url, api_key=KEY)
        sampler = service.create_sampling_client(base_model=MODEL).result(60)
        prompt = tinker.ModelInput.from_ints([1, 2, 3])
        params = tinker.SamplingParams(max_tokens=2)
        futures = [sampler.sample(prompt, num_samples=2, sampling_params=params) for _ in range(3)]
        results = [f.result(60) for f in futures]
        for result in results:
            assert [s.tokens for s in result.sequences] == [[0, 7], [1, 7]]
            assert all(s.sequence_id for s in result.sequences)
        close_official(service, server)
        # The SDK used the session long-poll, then fetched each payload as protobuf.
        log = [(r.path, r.status, r.body[:120]) for r in server.requests]
        assert server.count(r"/retrieve_futures$") >= 1, log
        fetches = [r for r in server.requests if r.path == "/api/v1/retrieve_future"]
        fetched_ids = {json.loads(r.body)["request_id"] for r in fetches if r.status == 200}
        submitted = [r for r in server.requests if r.path == "/api/v1/asample"]
        assert len(submitted) == 3 and len(fetched_ids) == 3, log
        assert all(r.headers["Accept"] == "application/x-protobuf" for r in fetches), log


def test_official_sdk_jwt_mode() -> None:
    tinker = sdk()
    server = LocalServer(api_key=KEY, client_config={"pjwt_auth_enabled": True})
    with server.in_thread():
        rest = tinker.RestClient(base_url=server.url, api_key=KEY)
        assert rest.list_training_runs().result(60).cursor.total_count == 0
        assert server.count(r"/auth/token$", "POST") == 1
        jwt = server.context.auth.issue_jwt()

        async def body(s: aiohttp.ClientSession) -> None:
            assert (await req(s, "GET", "/api/v1/healthz", headers={"X-API-Key": jwt}))[0] == 200
            tampered = jwt[:-4] + ("AAAA" if not jwt.endswith("AAAA") else "BBBB")
            status, _, headers = await req(
                s, "GET", "/api/v1/healthz", headers={"X-API-Key": tampered}
            )
            assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]

        with_http(server, body)


# --------------------------------------------------------------------- other surfaces


def test_twinkle_surface_shares_handlers(srv: LocalServer) -> None:
    bearer = {"Authorization": f"Bearer {KEY}", "Twinkle-Authorization": f"Bearer {KEY}"}
    run = srv.seed_training_run(lora_rank=4)
    srv.seed_checkpoint(run, "first", time=time.time() - 10)
    srv.seed_checkpoint(run, "latest")
    directories: list[str] = []

    async def body(s: aiohttp.ClientSession) -> None:
        status, created, _ = await req(
            s, "POST", "/twinkle/create_session", {"metadata": {"user": "alice"}}, headers=bearer
        )
        assert status == 200
        sid = created["session_id"]
        assert srv.state.get_session(sid).user_metadata == {"user": "alice"}
        assert (
            await req(s, "POST", "/twinkle/session_heartbeat", {"session_id": sid}, headers=bearer)
        )[0] == 200

        _, caps, _ = await req(s, "GET", "/twinkle/get_server_capabilities", headers=bearer)
        assert caps["supported_models"][0]["model_name"] == MODEL
        _, runs, _ = await req(
            s,
            "GET",
            "/twinkle/training_runs",
            headers=bearer,
            params={"limit": "20", "offset": "0", "all_users": "true"},
        )
        assert runs["cursor"]["total_count"] == 1 and runs["training_runs"][0]["save_dir"]
        _, listed, _ = await req(
            s, "GET", f"/twinkle/training_runs/{run}/checkpoints", headers=bearer
        )
        latest = listed["checkpoints"][-1]
        assert latest["twinkle_path"] == f"twinkle://{run}/weights/latest"
        assert "tinker_path" not in latest and latest["lora_rank"] == 4
        _, where, _ = await req(
            s, "GET", f"/twinkle/checkpoint_path/{run}/weights/latest", headers=bearer
        )
        assert where["twinkle_path"] == latest["twinkle_path"]
        directories.append(where["path"])
        _, v1_where, _ = await req(s, "GET", f"/api/v1/checkpoint_path/{run}/weights/latest")
        assert v1_where["tinker_path"] == f"tinker://{run}/weights/latest"
        _, info, _ = await req(
            s,
            "POST",
            "/twinkle/weights_info",
            {"twinkle_path": latest["twinkle_path"]},
            headers=bearer,
        )
        assert info["weights_info"]["lora_rank"] == 4
        _, capacity, _ = await req(s, "GET", "/twinkle/capacity_info", headers=bearer)
        assert capacity["max_loras"] == capacity["used_loras"] + capacity["free_loras"]
        status, deleted, _ = await req(
            s, "DELETE", f"/twinkle/training_runs/{run}/checkpoints/weights/first", headers=bearer
        )
        assert status == 200 and deleted["success"] is True
        status, _, _ = await req(
            s, "DELETE", f"/api/v1/training_runs/{run}/checkpoints/weights/latest"
        )
        assert status == 204

    with_http(srv, body)
    assert Path(directories[0]).name == "latest"  # the checkpoint's own directory


def test_third_party_dialects() -> None:
    with LocalServer(dialect="legacy", poll_hold_s=0.1).in_thread() as legacy:
        pending = legacy.create_future(delay_s=60)

        async def legacy_body(s: aiohttp.ClientSession) -> None:
            assert (await req(s, "POST", "/api/v1/client/config", {}))[:2] == (
                404,
                {"detail": "Not Found"},
            )
            assert (await req(s, "POST", "/api/v1/retrieve_futures", {}))[0] == 404
            status, data, _ = await req(
                s, "POST", "/api/v1/retrieve_future", {"request_id": pending}
            )
            assert status == 408 and data["type"] == "try_again"

        with_http(legacy, legacy_body)

    with LocalServer(dialect="tinkercloud", poll_hold_s=0.1).in_thread() as cloud:
        done = cloud.create_future({"x": 1})
        waiting = cloud.create_future(delay_s=60)

        async def cloud_body(s: aiohttp.ClientSession) -> None:
            assert (await req(s, "POST", f"/api/v1/retrieve_future/{done}"))[1] == {
                "status": "completed",
                "result": {"x": 1},
            }
            assert (await req(s, "POST", "/api/v1/retrieve_future", {"request_id": waiting}))[
                1
            ] == {"status": "pending", "result": None}
            _, caps, _ = await req(s, "GET", "/api/v1/get_server_capabilities")
            assert caps["supported_models"] == [MODEL] and "features" in caps

        with_http(cloud, cloud_body)

    with LocalServer(dialect="twinkle").in_thread() as twinkle:
        run = twinkle.seed_training_run()
        assert twinkle.seed_checkpoint(run, "a") == f"twinkle://{run}/weights/a"


# ------------------------------------------------------------------ lifecycle and CLI


def test_copy_weights_is_idempotent_per_key(srv: LocalServer) -> None:
    run = srv.seed_training_run()
    path = srv.seed_checkpoint(run, "w")

    async def body(s: aiohttp.ClientSession) -> None:
        headers = {**AUTH, "X-Idempotency-Key": "key-1"}
        request = {"source_path": path, "destination_project_id": "p"}
        first = await req(s, "POST", "/api/v1/copy_weights", request, headers=headers)
        second = await req(s, "POST", "/api/v1/copy_weights", request, headers=headers)
        assert first[0] == second[0] == 200 and first[1] == second[1]
        assert (await req(s, "POST", "/api/v1/copy_weights", {"source_path": path}))[0] == 400

    with_http(srv, body)
    assert len(srv.state.list_runs()) == 2


def test_runs_and_checkpoints_survive_a_restart(tmp_path: Path) -> None:
    with LocalServer(data_dir=tmp_path).in_thread() as first:
        run = first.seed_training_run()
        first.seed_checkpoint(run, "kept", public=True)
    assert tmp_path.is_dir()  # a given data_dir is never removed

    with LocalServer(data_dir=tmp_path).in_thread() as second:

        async def body(s: aiohttp.ClientSession) -> None:
            _, listed, _ = await req(s, "GET", f"/api/v1/training_runs/{run}/checkpoints")
            assert [(c["checkpoint_id"], c["public"]) for c in listed["checkpoints"]] == [
                ("weights/kept", True)
            ]
            status, _, _ = await req(
                s, "POST", "/api/v1/session_heartbeat", {"session_id": run.split(":")[0]}
            )
            assert status == 410  # its client belonged to the earlier process

        with_http(second, body)


def test_async_context_manager_on_the_callers_loop() -> None:
    async def main() -> None:
        async with LocalServer() as server:
            data_dir = server.data_dir
            rid = server.create_future({"direct": True})  # called on the server's own loop
            async with (
                aiohttp.ClientSession() as s,
                s.post(
                    server.url + "/api/v1/retrieve_future", json={"request_id": rid}
                ) as response,
            ):
                assert await response.json() == {"direct": True}
        assert not server.running and not data_dir.exists()

    asyncio.run(asyncio.wait_for(main(), HANG_GUARD_S))


def test_cli_serves_until_interrupted() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "tinker_async.local", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], HANG_GUARD_S)
        assert ready, f"the server printed nothing within {HANG_GUARD_S:g} s"
        line = process.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, (
            process.stderr.read() if process.stderr else ""
        )
        url = line.rsplit(" ", 1)[-1].strip()

        async def health() -> int:
            async with aiohttp.ClientSession() as s, s.get(url + "/health") as response:
                return response.status

        assert asyncio.run(asyncio.wait_for(health(), HANG_GUARD_S)) == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=HANG_GUARD_S) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(HANG_GUARD_S)
