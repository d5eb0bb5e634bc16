"""Session lifecycle: handshake, create_session, heartbeats, 410, finish, context managers."""

from __future__ import annotations

import itertools
import time

import pytest

from tinker_async import ClientClosedError, ServiceClient, SessionExpiredError
from tinker_async.local import LocalServer


def _wait_for(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def test_handshake_and_session_creation(fresh_server: LocalServer, api_key: str) -> None:
    with ServiceClient(base_url=fresh_server.url, api_key=api_key, tags=["a", "b", "a"],
                       user_metadata={"who": "test"}, project_id="p1") as client:
        session_id = client.connect().result(10)
        assert client.session_id == session_id
        paths = [r.path for r in fresh_server.requests]
        assert paths[:3] == ["/api/v1/client/config", "/api/v1/client/dynamic_config",
                             "/api/v1/create_session"]
        info = client.create_rest_client().get_session(session_id).result(10)
        assert info.training_run_ids == []
    finish = [r for r in fresh_server.requests if r.path == f"/api/v1/sessions/{session_id}/finish"]
    assert len(finish) == 1 and b'"success"' in finish[0].body


def test_heartbeat_sent_on_schedule(fresh_server: LocalServer, api_key: str) -> None:
    with ServiceClient(base_url=fresh_server.url, api_key=api_key, heartbeat_interval=0.1) as client:
        client.connect().result(10)
        assert _wait_for(lambda: fresh_server.count(r"/session_heartbeat$") >= 5)
        beats = [r.time for r in fresh_server.requests if r.path.endswith("/session_heartbeat")]
        gaps = [b - a for a, b in itertools.pairwise(beats)]
        # on schedule: never two beats back to back, never a long silence
        assert min(gaps) > 0.05
    count = fresh_server.count(r"/session_heartbeat$")
    time.sleep(0.4)
    assert fresh_server.count(r"/session_heartbeat$") == count  # stopped on close


def test_410_on_heartbeat_ends_the_session(fresh_server: LocalServer, api_key: str) -> None:
    client = ServiceClient(base_url=fresh_server.url, api_key=api_key, heartbeat_interval=0.1)
    session_id = client.connect().result(10)
    fresh_server.expire_session(session_id)
    assert _wait_for(lambda: client._session.gone is not None)
    with pytest.raises(SessionExpiredError, match="410"):
        client.connect().result(10)
    with pytest.raises(SessionExpiredError):
        client.get_server_capabilities()  # blocks, as the official one does
    client.close().result(10)


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
            client.connect().result(10)
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
        client.connect().result(10)
        assert client.dialect == "legacy"


def test_a_header_override_replaces_ours_whatever_its_case(
    fresh_server: LocalServer, api_key: str
) -> None:
    with ServiceClient(base_url=fresh_server.url, api_key=api_key,
                       default_headers_overrides={"user-agent": "mine/1.0", "x-extra": "1"}
                       ) as client:
        client.connect().result(10)
    for request in fresh_server.requests:
        assert request.headers.getall("User-Agent") == ["mine/1.0"]
        assert request.headers.getall("X-Extra") == ["1"]
        assert len(request.headers.getall("X-API-Key")) == 1


def test_410_on_any_call_is_session_expired_and_later_calls_send_nothing(
    fresh_server: LocalServer, api_key: str
) -> None:
    import tinker_async as tinker

    client = ServiceClient(base_url=fresh_server.url, api_key=api_key, heartbeat_interval=3600)
    training = client.create_lora_training_client("local/byte-lm", rank=2).result(30)
    datum = tinker.Datum(model_input=tinker.ModelInput.from_ints([1, 2, 3]),
                         loss_fn_inputs={"target_tokens": [2, 3, 4], "weights": [1.0] * 3})
    fresh_server.expire_session(client.session_id or "")
    # The heartbeat has not noticed yet: the first training call meets the 410 itself.
    with pytest.raises(SessionExpiredError, match="create a new ServiceClient"):
        training.forward_backward([datum], "cross_entropy").result(30)
    fresh_server.clear_requests()
    for call in (lambda: training.optim_step(tinker.AdamParams(learning_rate=1e-3)),
                 lambda: client.create_sampling_client(base_model="local/byte-lm"),
                 lambda: training.save_state("x")):
        with pytest.raises(SessionExpiredError):
            call().result(30)
    assert fresh_server.requests == []  # failed at once, nothing sent
    client.close().result(10)
