"""Every REST method, in both forms, against the embedded server with seeded data."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from tinker_async import AdminClient, NotFoundError, RestClient, types
from tinker_async.local import LocalServer


@pytest.fixture
def seeded(fresh_server: LocalServer) -> dict[str, Any]:
    run = fresh_server.seed_training_run(base_model="local/byte-lm", lora_rank=4,
                                         user_metadata={"exp": "rest"})
    other = fresh_server.seed_training_run(base_model="other/model", lora_rank=8)
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    first = fresh_server.seed_checkpoint(run, "step-1", kind="weights", time=t0)
    latest = fresh_server.seed_checkpoint(run, "step-2", kind="weights",
                                          time=t0 + dt.timedelta(hours=1))
    sampler = fresh_server.seed_checkpoint(run, "s-1", kind="sampler_weights")
    external = fresh_server.seed_checkpoint(run, "export", kind="external_weights")
    return {"run": run, "other": other, "first": first, "latest": latest,
            "sampler": sampler, "external": external}


@pytest.fixture
def rest(server: LocalServer, api_key: str) -> RestClient:
    return RestClient(base_url=server.url, api_key=api_key)


async def both(rest: RestClient, name: str, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """Call ``name`` in its async form and its sync form; return both results."""
    a = await getattr(rest, f"{name}_async")(*args, **kwargs)
    s = await getattr(rest, name)(*args, **kwargs)
    return a, s


pytestmark = pytest.mark.anyio


async def test_training_runs(rest: RestClient, seeded: dict[str, Any]) -> None:
    a, s = await both(rest, "get_training_run", seeded["run"])
    assert a == s and isinstance(a, types.TrainingRun)
    assert a.training_run_id == seeded["run"] and a.lora_rank == 4 and a.is_lora
    a, s = await both(rest, "get_training_run_by_tinker_path", seeded["first"])
    assert a.training_run_id == seeded["run"] == s.training_run_id
    a, s = await both(rest, "list_training_runs", limit=100)
    ids = {r.training_run_id for r in a.training_runs}
    assert {seeded["run"], seeded["other"]} <= ids and a == s
    (runs, cursor), _ = await both(rest, "list_training_runs_with_cursor", limit=1)
    assert len(runs) == 1 and cursor is not None and cursor.total_count >= 2
    a, s = await both(rest, "find_training_runs_by_model", "other/model")
    assert [r.training_run_id for r in a] == [seeded["other"]] and a == s


async def test_pagination_over_many_pages(rest: RestClient, fresh_server: LocalServer) -> None:
    made = {fresh_server.seed_training_run(base_model="paged/model") for _ in range(23)}
    seen = [r.training_run_id async for r in rest.aiter_training_runs(page_size=5)]
    assert made <= set(seen)
    assert len(seen) == len(set(seen))  # no page read twice
    assert fresh_server.count(r"/training_runs$") >= 5  # several pages were really fetched
    found = await rest.find_training_runs_by_model_async("paged/model")
    assert {r.training_run_id for r in found} == made


def test_sync_iterators(fresh_server: LocalServer, api_key: str) -> None:
    made = {fresh_server.seed_training_run(base_model="iter/model") for _ in range(9)}
    rest = RestClient(base_url=fresh_server.url, api_key=api_key)
    small = [r.training_run_id for r in rest.iter_training_runs(page_size=4)]
    big = [r.training_run_id for r in rest.iter_training_runs(page_size=50)]
    assert made <= set(small) and sorted(small) == sorted(big)
    run = next(iter(made))
    fresh_server.seed_checkpoint(run, "c1")
    assert [c.checkpoint_id for c in rest.iter_checkpoints(run)] == ["weights/c1"]
    assert len(list(rest.iter_sessions(page_size=2))) == len(list(rest.iter_sessions()))


async def test_checkpoints(rest: RestClient, seeded: dict[str, Any]) -> None:
    a, s = await both(rest, "list_checkpoints", seeded["run"])
    assert a == s
    by_path = {c.tinker_path: c for c in a.checkpoints}
    assert set(by_path) == {seeded[k] for k in ("first", "latest", "sampler", "external")}
    assert by_path[seeded["sampler"]].checkpoint_type == "sampler"
    a, s = await both(rest, "list_user_checkpoints", limit=2)
    assert len(a.checkpoints) == 2 and a.cursor is not None and a.cursor.total_count >= 4
    every = [c.tinker_path async for c in rest.aiter_checkpoints(page_size=2)]
    assert set(by_path) <= set(every)
    assert {c.tinker_path async for c in rest.aiter_checkpoints(seeded["run"])} == set(by_path)
    latest, s = await both(rest, "get_latest_checkpoint_path", seeded["run"])
    assert latest == seeded["latest"] == s
    assert await rest.get_latest_checkpoint_path_async(seeded["other"]) is None
    path, s = await both(rest, "get_checkpoint_path", seeded["run"], "weights/step-1")
    assert path.tinker_path == seeded["first"] and path == s
    assert (await rest.get_checkpoint_path_async(seeded["run"], "step-1")).tinker_path == seeded["first"]
    with pytest.raises(NotFoundError):
        await rest.get_checkpoint_path_async(seeded["run"], "weights/missing")


async def test_checkpoint_mutations(rest: RestClient, seeded: dict[str, Any]) -> None:
    path = seeded["first"]
    await rest.publish_checkpoint_from_tinker_path_async(path)
    assert await _ckpt(rest, seeded["run"], path, "public") is True
    await rest.unpublish_checkpoint_from_tinker_path(path)
    assert await _ckpt(rest, seeded["run"], path, "public") is False
    await rest.set_checkpoint_ttl_from_tinker_path_async(path, 7200)
    assert await _ckpt(rest, seeded["run"], path, "expires_at") is not None
    await rest.set_checkpoint_ttl_from_tinker_path(path, None)
    assert await _ckpt(rest, seeded["run"], path, "expires_at") is None
    await rest.delete_checkpoint_from_tinker_path_async(path)
    await rest.delete_checkpoint(seeded["run"], "weights/step-2")
    left = {c.tinker_path for c in (await rest.list_checkpoints_async(seeded["run"])).checkpoints}
    assert path not in left and seeded["latest"] not in left
    with pytest.raises(NotFoundError):
        await rest.delete_checkpoint_from_tinker_path_async(path)


async def _ckpt(rest: RestClient, run: str, path: str, field: str) -> Any:
    for c in (await rest.list_checkpoints_async(run)).checkpoints:
        if c.tinker_path == path:
            return getattr(c, field)
    raise AssertionError(path)


async def test_weights_info_and_copy(rest: RestClient, seeded: dict[str, Any]) -> None:
    a, s = await both(rest, "get_weights_info_by_tinker_path", seeded["first"])
    assert a == s and a.base_model == "local/byte-lm" and a.is_lora and a.lora_rank == 4
    assert (await rest.get_weights_info_async(seeded["first"])) == a
    urls, _ = await both(rest, "get_external_weights_urls", seeded["external"])
    assert urls.urls
    with pytest.raises(ValueError, match="external"):
        await rest.get_external_weights_urls_async(seeded["first"])
    new_path, _ = await both(rest, "copy_weights", seeded["first"], "proj-2")
    assert new_path.startswith("tinker://") and new_path != seeded["first"]
    with pytest.raises(ValueError, match="destination_project_id"):
        await rest.copy_weights_async(seeded["first"])


async def test_sessions_samplers_and_server(rest: RestClient, fresh_server: LocalServer,
                                            api_key: str) -> None:
    from tinker_async import ServiceClient

    async with ServiceClient(base_url=fresh_server.url, api_key=api_key) as svc:
        sid = await svc.connect_async()
        a, s = await both(rest, "get_session", sid)
        assert a == s and a.training_run_ids == []
        a, s = await both(rest, "list_sessions", limit=100)
        assert sid in a.sessions
        assert sid in [x async for x in rest.aiter_sessions(page_size=1)]
        await rest.assign_session_project_async(sid, "proj-9")
        await rest.assign_session_project(sid, "proj-9")
        url, _ = await both(rest, "export_session_trace", sid, poll_interval=0.01)
        assert url
        sampling = await svc.create_sampling_client_async(base_model="local/byte-lm")
        sampler = sampling.sampling_session_id
        a, s = await both(rest, "get_sampler", sampler)
        assert a.sampler_id == sampler and a.base_model == "local/byte-lm" and a == s
    caps, _ = await both(rest, "get_server_capabilities")
    assert any(m.model_name == "local/byte-lm" for m in caps.supported_models)
    healthy, _ = await both(rest, "health_check")
    assert healthy is True
    cap, _ = await both(rest, "get_capacity_info")
    assert cap.max_loras >= cap.used_loras >= 0 and cap.free_loras == cap.max_loras - cap.used_loras
    cleaned, _ = await both(rest, "cleanup_futures", 0)
    assert isinstance(cleaned, int)
    found = await rest.search_sessions_async(types.SessionSearchRequest())
    assert isinstance(found, types.SessionSearchResponse)
    assert isinstance((await rest.search_sessions(types.SessionSearchRequest())),
                      types.SessionSearchResponse)


async def test_health_check_false_when_down() -> None:
    down = RestClient(base_url="http://127.0.0.1:9", api_key="tml-x")
    assert await down.health_check_async(timeout=1) is False
    assert (await down.health_check(timeout=1)) is False


async def test_admin_client(server: LocalServer, api_key: str, rest: RestClient) -> None:
    admin = AdminClient(base_url=server.url, api_key=api_key)
    log_a = await admin.get_audit_log_async()
    log_s = (await admin.get_audit_log("checkpoints", dt.date(2026, 1, 2)))
    assert log_a.entries == [] and log_s.entries == []
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    usage = await admin.get_billing_usage_async(start, start + dt.timedelta(days=1))
    assert usage.data == [] and (await admin.get_billing_usage(
        "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z")).data == []
    with pytest.raises(ValueError, match="14 days"):
        await admin.get_billing_usage_async(start, start + dt.timedelta(days=30))
    storage = await admin.get_current_checkpoint_storage_usage_async()
    assert storage.data == [] and (await admin.get_current_checkpoint_storage_usage()).data == []
    assert (await rest.get_audit_log_async()).entries == []  # the deprecated forwarders


def test_whoami_reads_jwt_locally(server: LocalServer) -> None:
    import base64
    import json

    claims = base64.urlsafe_b64encode(json.dumps(
        {"sub": "user:1", "org_id": "org:2", "email": "a@b.c"}).encode()).decode().rstrip("=")
    jwt = f"eyJhbGciOiJub25lIn0.{claims}.sig"
    who = RestClient(base_url=server.url, api_key=jwt).whoami().result(60)  # an APIFuture
    assert (who.user_urn, who.org_urn, who.email) == ("user:1", "org:2", "a@b.c")
    with pytest.raises(RuntimeError, match="JWT"):
        RestClient(base_url=server.url, api_key="tml-plain").whoami().result(60)


async def test_twinkle_surface(server: LocalServer, api_key: str, seeded: dict[str, Any]) -> None:
    tw = RestClient(base_url=server.url, api_key=api_key, dialect="twinkle")
    assert await tw.health_check_async()
    runs, _cursor = await tw.list_training_runs_with_cursor_async(limit=50)
    assert seeded["run"] in {r.training_run_id for r in runs}
    path = await tw.get_checkpoint_path_async(seeded["run"], "weights/step-1")
    assert path.twinkle_path and path.twinkle_path.startswith("twinkle://")
    cap = await tw.get_capacity_info_async()
    assert cap.max_loras > 0
    info = await tw.get_weights_info_async(path.twinkle_path)
    assert info.base_model == "local/byte-lm"
    await tw.delete_checkpoint_async(seeded["run"], "weights/step-1")
    names = {c.checkpoint_id for c in (await rest_for(server, api_key).list_checkpoints_async(seeded["run"])).checkpoints}
    assert "weights/step-1" not in names


def rest_for(server: LocalServer, api_key: str) -> RestClient:
    return RestClient(base_url=server.url, api_key=api_key)
