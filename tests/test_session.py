"""Session lifecycle: handshake, create_session, heartbeats, 410, finish, context managers."""

from __future__ import annotations

import logging
import time

import pytest
from _waiting import wait_until

from tinker_async import ClientClosedError, ServiceClient, SessionExpiredError
from tinker_async.local import LocalServer


def test_handshake_and_session_creation(fresh_server: LocalServer, api_key: str) -> None:
    with ServiceClient(base_url=fresh_server.url, api_key=api_key, tags=["a", "b", "a"],
                       user_metadata={"who": "test"}, project_id="p1") as client:
        session_id = client.connect().result(60)
        assert client.session_id == session_id
        paths = [r.path for r in fresh_server.requests]
        assert paths[:3] == ["/api/v1/client/config", "/api/v1/client/dynamic_config",
                             "/api/v1/create_session"]
        info = client.create_rest_client().get_session(session_id).result(60)
        assert info.training_run_ids == []
    finish = [r for r in fresh_server.requests if r.path == f"/api/v1/sessions/{session_id}/finish"]
    assert len(finish) == 1 and b'"success"' in finish[0].body


def test_heartbeat_sent_on_schedule(
    fresh_server: LocalServer, api_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    interval = 0.1
    with caplog.at_level(logging.WARNING, logger="tinker_async"):
        with ServiceClient(base_url=fresh_server.url, api_key=api_key,
                           heartbeat_interval=interval) as client:
            client.connect().result(60)
            wait_until(lambda: fresh_server.count(r"/session_heartbeat$") >= 5, "5 heartbeats")
        created = next(r.time for r in fresh_server.requests if r.path.endswith("/create_session"))
        beats = sorted(r.time for r in fresh_server.requests
                       if r.path.endswith("/session_heartbeat"))
        # On schedule, never early: beat k is sent k intervals or more after the session
        # was created (each waits an interval after the last one ended), so the k-th
        # arrival is no earlier. A loaded machine only makes them later: no upper bound.
        for k, arrived in enumerate(beats[:5], start=1):
            assert arrived - created >= k * interval * 0.9, (k, arrived - created)
        # Stopped on close: a heartbeat sent after the finish would meet the finished
        # session's 410 and say so in a warning. (A slow machine can only hide such a bug
        # here, never make this fail: the wait is a lower bound.)
        time.sleep(5 * interval)
    assert not [r for r in caplog.records if "ended by the server" in r.getMessage()]


def test_410_on_heartbeat_ends_the_session(fresh_server: LocalServer, api_key: str) -> None:
    client = ServiceClient(base_url=fresh_server.url, api_key=api_key, heartbeat_interval=0.1)
    session_id = client.connect().result(60)
    fresh_server.expire_session(session_id)

    def refused() -> bool:
        try:
            client.connect().result(60)
        except SessionExpiredError:
            return True
        return False

    wait_until(refused, "a heartbeat to meet the 410")
    with pytest.raises(SessionExpiredError, match="410"):
        client.connect().result(60)
    with pytest.raises(SessionExpiredError):
        client.get_server_capabilities()  # blocks, as the official one does
    client.close().result(60)


@pytest.mark.anyio
async def test_async_with_closes_and_refuses_reuse(fresh_server: LocalServer, api_key: str) -> None:
    async with ServiceClient(base_url=fresh_server.url, api_key=api_key) as client:
        session_id = await client.connect_async()
        caps = await client.get_server_capabilities_async()
        assert caps.supported_models
    assert fresh_server.count(rf"/sessions/{session_id}/finish$") == 1
    with pytest.raises(ClientClosedError):
        await client.connect_async()
    await client.close_async()  # idempotent


def test_errored_status_on_exception(fresh_server: LocalServer, api_key: str) -> None:
    with pytest.raises(KeyError):
        with ServiceClient(base_url=fresh_server.url, api_key=api_key) as client:
            client.connect().result(60)
            raise KeyError("boom")
    finish = [r for r in fresh_server.requests if r.path.endswith("/finish")]
    assert b'"errored"' in finish[0].body


def test_unused_client_closes_without_requests(fresh_server: LocalServer, api_key: str) -> None:
    with ServiceClient(base_url=fresh_server.url, api_key=api_key):
        pass
    assert fresh_server.requests == []


def test_legacy_server_without_client_config(fresh_server: LocalServer, api_key: str) -> None:
    fresh_server.faults.add(r"/client/config$", status=404, count=1)
    with ServiceClient(base_url=fresh_server.url, api_key=api_key) as client:
        client.connect().result(60)
        assert client.dialect == "legacy"


def test_a_header_override_replaces_ours_whatever_its_case(
    fresh_server: LocalServer, api_key: str
) -> None:
    with ServiceClient(base_url=fresh_server.url, api_key=api_key,
                       default_headers_overrides={"user-agent": "mine/1.0", "x-extra": "1"}
                       ) as client:
        client.connect().result(60)
    for request in fresh_server.requests:
        assert request.headers.getall("User-Agent") == ["mine/1.0"]
        assert request.headers.getall("X-Extra") == ["1"]
        assert len(request.headers.getall("X-API-Key")) == 1


def test_410_on_any_call_is_session_expired_and_later_calls_send_nothing(
    fresh_server: LocalServer, api_key: str
) -> None:
    import tinker_async as tinker

    client = ServiceClient(base_url=fresh_server.url, api_key=api_key, heartbeat_interval=3600)
    training = client.create_lora_training_client("local/byte-lm", rank=2).result(60)
    datum = tinker.Datum(model_input=tinker.ModelInput.from_ints([1, 2, 3]),
                         loss_fn_inputs={"target_tokens": [2, 3, 4], "weights": [1.0] * 3})
    fresh_server.expire_session(client.session_id or "")
    # The heartbeat has not noticed yet: the first training call meets the 410 itself.
    with pytest.raises(SessionExpiredError, match="create a new ServiceClient"):
        training.forward_backward([datum], "cross_entropy").result(60)
    fresh_server.clear_requests()
    for call in (lambda: training.optim_step(tinker.AdamParams(learning_rate=1e-3)),
                 lambda: client.create_sampling_client(base_model="local/byte-lm"),
                 lambda: training.save_state("x")):
        with pytest.raises(SessionExpiredError):
            call().result(60)
    assert fresh_server.requests == []  # failed at once, nothing sent
    client.close().result(60)
