"""TwinkleClient: Twinkle's manager-client API (seed 000) against the embedded server's
Twinkle surface, with blocking plain methods and ``_async`` forms."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import tinker_async as tinker
from tinker_async.local import LocalServer
from tinker_async.twinkle import ParsedCheckpointTwinklePath, TwinkleClient

MODEL = "local/byte-lm"


def _run_with_checkpoints(server: LocalServer, api_key: str) -> str:
    service = tinker.ServiceClient(base_url=server.url, api_key=api_key)
    training = service.create_lora_training_client(MODEL, rank=2).result(60)
    training.save_state("first").result(60)
    training.save_state("second").result(60)
    service.close().result(60)
    return training.model_id


def test_twinkle_client_sync_api(fresh_server: LocalServer, api_key: str) -> None:
    run_id = _run_with_checkpoints(fresh_server, api_key)
    client = TwinkleClient(base_url=fresh_server.url, api_key=api_key,
                           session_metadata={"user": "alice"}, session_heartbeat_interval=30)
    assert client.session_id  # created by the constructor, as Twinkle's client does
    assert client.health_check() is True
    assert MODEL in [m.model_name for m in client.get_server_capabilities().supported_models]
    runs = client.list_training_runs(limit=100)
    assert isinstance(runs, list) and run_id in {r.training_run_id for r in runs}
    page, cursor = client.list_training_runs_with_cursor(limit=1)
    assert len(page) == 1 and cursor is not None
    assert client.get_training_run(run_id=run_id).base_model == MODEL
    assert run_id in {r.training_run_id for r in client.find_training_run_by_model(MODEL)}
    checkpoints = client.list_checkpoints(run_id=run_id)
    assert {c.checkpoint_id for c in checkpoints} == {"weights/first", "weights/second"}
    parsed = client.get_checkpoint_path(run_id, "weights/first")
    assert isinstance(parsed, ParsedCheckpointTwinklePath)
    assert parsed.twinkle_path.startswith("twinkle://") and Path(parsed.path).is_dir()
    assert (parsed.checkpoint_type, parsed.checkpoint_id) == ("weights", "weights/first")
    assert client.get_checkpoint_twinkle_path(run_id, "weights/first") == parsed.twinkle_path
    latest = client.get_latest_checkpoint_path(run_id)
    assert latest is not None and latest.endswith("second")
    capacity = client.get_capacity_info()
    assert capacity.max_loras >= capacity.used_loras >= 0
    assert client.get_weights_info(parsed.twinkle_path).base_model == MODEL
    assert client.delete_checkpoint(run_id, "weights/first").success
    assert {c.checkpoint_id for c in client.list_checkpoints(run_id)} == {"weights/second"}
    with pytest.raises(tinker.NotFoundError):
        client.get_training_run("no-such-run")
    client.close()
    client.close()  # idempotent
    twinkle_requests = [r for r in fresh_server.requests if r.path.startswith("/twinkle/")]
    # Twinkle's bearer headers (the log redacts their values), and no X-API-Key.
    assert twinkle_requests and all(
        "Authorization" in r.headers and "X-API-Key" not in r.headers for r in twinkle_requests)
    assert any(r.path == "/twinkle/create_session" for r in twinkle_requests)


@pytest.mark.anyio
async def test_twinkle_client_async_forms(fresh_server: LocalServer, api_key: str) -> None:
    async with TwinkleClient(base_url=fresh_server.url, api_key=api_key) as client:
        assert client.session_id  # made on entering, inside the loop
        healthy, runs = await asyncio.gather(client.health_check_async(),
                                             client.list_training_runs_async(limit=5))
        assert healthy and isinstance(runs, list)


def test_twinkle_client_reads_the_twinkle_environment(
    fresh_server: LocalServer, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWINKLE_SERVER_URL", fresh_server.url)
    monkeypatch.setenv("TWINKLE_SERVER_TOKEN", api_key)
    with TwinkleClient() as client:
        assert client.base_url == fresh_server.url
        assert client.health_check()
