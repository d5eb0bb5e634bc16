"""``RestClient.download_checkpoint(_async)``: checkpoint files to a directory, resumable.

Against the embedded server over HTTP; connections dropped in the middle of a file come
from a proxy in front of it (``tests/_flaky_proxy.py``), since the server's own faults
act before a response starts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from _flaky_proxy import FlakyProxy
from aiohttp import web

import tinker_async as tinker
from tinker_async import InvalidRequestError, RestClient
from tinker_async._download import DownloadError, DownloadResult
from tinker_async.local import LocalServer
from tinker_async.local._routing import route

pytestmark = pytest.mark.anyio

WEIGHTS = "adapter_model.safetensors"
SIZE = 3_000_000


def external_checkpoint(srv: LocalServer, name: str = "export",
                        size: int = SIZE) -> tuple[str, Path]:
    """An external-weights checkpoint whose weights file holds random bytes; its path and
    the directory of its files on the server."""
    run = srv.seed_training_run()
    path = srv.seed_checkpoint(run, name, kind="external_weights", size_bytes=size)
    directory = srv.state.checkpoint_dir(run, "external_weights", name)
    weights = directory / WEIGHTS
    weights.write_bytes(os.urandom(weights.stat().st_size))
    return path, directory


def same_files(source: Path, dest: Path) -> bool:
    names = sorted(p.name for p in dest.iterdir())
    return names == ["adapter_config.json", WEIGHTS] and all(
        (dest / n).read_bytes() == (source / n).read_bytes() for n in names)


@pytest.fixture
def rest(fresh_server: LocalServer, api_key: str) -> Iterator[RestClient]:
    client = RestClient(base_url=fresh_server.url, api_key=api_key)
    yield client


@pytest.fixture
def proxy(fresh_server: LocalServer) -> Iterator[FlakyProxy]:
    with FlakyProxy(fresh_server.url).running() as running:
        yield running


def range_requests(srv: LocalServer) -> list[str]:
    return [r.headers.get("Range", "") for r in srv.requests
            if r.path.startswith("/files/") and r.headers.get("Range")]


async def test_external_weights_download_matches_the_files_with_progress(
        fresh_server: LocalServer, rest: RestClient, tmp_path: Path) -> None:
    path, source = external_checkpoint(fresh_server)
    seen: list[tuple[int, int | None, str]] = []
    result = await rest.download_checkpoint_async(
        path, tmp_path / "out", progress=lambda done, total, name: seen.append((done, total, name)))
    assert isinstance(result, DownloadResult)
    assert result.destination == tmp_path / "out"
    assert result.size_bytes == SIZE
    assert {f.name: f.size_bytes for f in result.files} == {
        "adapter_config.json": (source / "adapter_config.json").stat().st_size,
        WEIGHTS: (source / WEIGHTS).stat().st_size}
    assert same_files(source, tmp_path / "out")  # and no .part or bookkeeping file left
    dones = [done for done, _, _ in seen]
    assert dones == sorted(dones) and seen[-1][:2] == (SIZE, SIZE)
    assert {name for _, _, name in seen} == {"adapter_config.json", WEIGHTS}
    # signed URLs are fetched without the API key (they may point at another host)
    files = [r for r in fresh_server.requests if r.path.startswith("/files/")]
    assert len(files) == 2
    assert not any(h.lower() in ("x-api-key", "authorization") for r in files for h in r.headers)
    await rest.close_async()


async def test_training_checkpoint_is_exported_downloaded_and_the_export_deleted(
        fresh_server: LocalServer, api_key: str, tmp_path: Path) -> None:
    async with tinker.ServiceClient(base_url=fresh_server.url, api_key=api_key) as service:
        training = await service.create_lora_training_client_async("local/byte-lm", rank=2)
        path = (await (await training.save_state_async("final"))).path
    rest = RestClient(base_url=fresh_server.url, api_key=api_key)
    result = await rest.download_checkpoint_async(path, tmp_path / "ckpt")
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names == sorted(f.name for f in result.files) and WEIGHTS in names
    assert json.loads((tmp_path / "ckpt" / "adapter_config.json").read_text())
    # the temporary export went away, and its session was finished
    externals = [c for c in (await rest.list_user_checkpoints_async(limit=1000)).checkpoints
                 if c.checkpoint_type == "external"]
    assert not [c for c in externals if c.checkpoint_id.endswith("/download")]
    assert any(r.path.endswith("/finish") for r in fresh_server.requests)
    await rest.close_async()


async def test_sampler_checkpoints_are_refused_before_anything_is_written(
        fresh_server: LocalServer, rest: RestClient, tmp_path: Path) -> None:
    run = fresh_server.seed_training_run()
    sampler = fresh_server.seed_checkpoint(run, "s", kind="sampler_weights")
    with pytest.raises(InvalidRequestError, match="Sampler checkpoints cannot be downloaded"):
        await rest.download_checkpoint_async(sampler, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    await rest.close_async()


async def test_an_existing_directory_needs_force(
        fresh_server: LocalServer, rest: RestClient, tmp_path: Path) -> None:
    path, source = external_checkpoint(fresh_server)
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="already exists"):
        await rest.download_checkpoint_async(path, dest)
    assert (dest / "mine.txt").read_text() == "keep me"
    await rest.download_checkpoint_async(path, dest, force=True)
    assert same_files(source, dest)
    await rest.close_async()


async def test_a_connection_dropped_mid_file_resumes_with_a_range_request(
        fresh_server: LocalServer, api_key: str, proxy: FlakyProxy, tmp_path: Path) -> None:
    path, source = external_checkpoint(fresh_server)
    proxy.cut(after_bytes=1_000_000, times=2)  # the first two file responses break
    rest = RestClient(base_url=proxy.url, api_key=api_key)
    result = await rest.download_checkpoint_async(path, tmp_path / "out", parallel=1)
    assert proxy.cuts_done == 2
    assert same_files(source, tmp_path / "out")
    ranges = range_requests(fresh_server)
    assert ranges and all(r.startswith("bytes=") and r.endswith("-") for r in ranges)
    assert result.size_bytes == SIZE
    await rest.close_async()


async def test_a_connection_dropped_before_the_body_is_retried(
        fresh_server: LocalServer, rest: RestClient, tmp_path: Path) -> None:
    path, source = external_checkpoint(fresh_server)
    rule = fresh_server.faults.add(r"^/files/", drop_connection=True, count=1)
    await rest.download_checkpoint_async(path, tmp_path / "out")
    assert rule.hits == 1
    assert same_files(source, tmp_path / "out")
    await rest.close_async()


async def test_a_stalled_connection_times_out_and_resumes(
        fresh_server: LocalServer, api_key: str, proxy: FlakyProxy, tmp_path: Path) -> None:
    path, source = external_checkpoint(fresh_server)
    proxy.stall(after_bytes=1_000_000, times=1)  # the first file response hangs midway
    # The stall is what must time out; the other requests get a margin for a loaded machine.
    rest = RestClient(base_url=proxy.url, api_key=api_key, timeout=3)
    await rest.download_checkpoint_async(path, tmp_path / "out", parallel=1)
    assert same_files(source, tmp_path / "out")
    ranges = range_requests(fresh_server)
    assert len(ranges) == 1 and ranges[0] != "bytes=0-"
    await rest.close_async()


async def test_an_interrupted_download_keeps_its_part_file_and_the_next_call_resumes(
        fresh_server: LocalServer, api_key: str, proxy: FlakyProxy, tmp_path: Path) -> None:
    path, source = external_checkpoint(fresh_server)
    dest = tmp_path / "out"
    proxy.cut(after_bytes=1_200_000, times=100)
    rest = RestClient(base_url=proxy.url, api_key=api_key)
    with pytest.raises(DownloadError, match="run the download again to resume"):
        await rest.download_checkpoint_async(path, dest, retries=0, parallel=1)
    part = dest / (WEIGHTS + ".part")
    assert part.stat().st_size == 1_200_000
    assert not (dest / WEIGHTS).exists()  # never renamed while incomplete
    proxy.cut(after_bytes=0, times=0)
    fresh_server.clear_requests()
    result = await rest.download_checkpoint_async(path, dest)  # no force needed: a resume
    assert same_files(source, dest)
    assert range_requests(fresh_server) == ["bytes=1200000-"]
    resumed = {f.name: f.resumed_bytes for f in result.files}
    assert resumed[WEIGHTS] == 1_200_000
    await rest.close_async()


async def test_a_file_that_changed_since_the_interruption_is_fetched_again(
        fresh_server: LocalServer, api_key: str, proxy: FlakyProxy, tmp_path: Path) -> None:
    path, source = external_checkpoint(fresh_server)
    dest = tmp_path / "out"
    proxy.cut(after_bytes=500_000, times=100)
    rest = RestClient(base_url=proxy.url, api_key=api_key)
    with pytest.raises(DownloadError):
        await rest.download_checkpoint_async(path, dest, retries=0, parallel=1)
    proxy.cut(after_bytes=0, times=0)
    weights = source / WEIGHTS
    weights.write_bytes(os.urandom(weights.stat().st_size))  # same size, other bytes
    os.utime(weights, (1e9, 1e9))  # and another validator (ETag)
    result = await rest.download_checkpoint_async(path, dest)
    assert same_files(source, dest)
    assert {f.name: f.resumed_bytes for f in result.files}[WEIGHTS] == 0
    await rest.close_async()


async def test_a_refused_signed_url_is_signed_again(
        fresh_server: LocalServer, rest: RestClient, tmp_path: Path) -> None:
    path, source = external_checkpoint(fresh_server)
    fresh_server.faults.add(r"^/files/", status=403, count=1)
    await rest.download_checkpoint_async(path, tmp_path / "out")
    assert same_files(source, tmp_path / "out")
    assert fresh_server.count(r"/external_weights_urls$") == 2
    await rest.close_async()


async def test_urls_near_expiry_are_signed_again_before_each_file(
        api_key: str, tmp_path: Path) -> None:
    from tinker_async.local._rest_routes import external_weights_urls

    async def soon_expiring(request: web.Request) -> web.Response:
        answer = await external_weights_urls(request)
        data = json.loads(answer.body)  # type: ignore[arg-type]
        data["expires"] = "2000-01-01T00:00:00+00:00"  # already within the 5-minute margin
        return web.json_response(data)

    ckpt = "/training_runs/{run_id}/checkpoints/{kind}/{name}/external_weights_urls"
    server = LocalServer(api_key=api_key, routes=[route("GET", ckpt, soon_expiring)])
    with server.in_thread() as srv:
        path, source = external_checkpoint(srv)
        async with RestClient(base_url=srv.url, api_key=api_key) as rest:
            await rest.download_checkpoint_async(path, tmp_path / "out", parallel=1)
        assert same_files(source, tmp_path / "out")
        # one signing up front, then one before each of the two files
        assert srv.count(r"/external_weights_urls$") == 3


async def test_file_names_that_escape_the_directory_are_refused(
        api_key: str, tmp_path: Path) -> None:
    async def hostile(request: web.Request) -> web.Response:
        origin = str(request.url.origin())
        return web.json_response({"urls": {"../../evil.sh": f"{origin}/files/x/evil.sh",
                                           "ok.json": f"{origin}/files/y/ok.json"},
                                  "expires": "2999-01-01T00:00:00+00:00"})

    ckpt = "/training_runs/{run_id}/checkpoints/{kind}/{name}/external_weights_urls"
    with LocalServer(api_key=api_key, routes=[route("GET", ckpt, hostile)]).in_thread() as srv:
        run = srv.seed_training_run()
        path = srv.seed_checkpoint(run, "bad", kind="external_weights")
        async with RestClient(base_url=srv.url, api_key=api_key) as rest:
            with pytest.raises(DownloadError, match="Unsafe file path"):
                await rest.download_checkpoint_async(path, tmp_path / "a" / "b")
    assert not (tmp_path / "evil.sh").exists() and not (tmp_path / "a" / "b").exists()


def test_the_plain_form_returns_a_future(
        fresh_server: LocalServer, api_key: str, tmp_path: Path) -> None:
    path, source = external_checkpoint(fresh_server)
    with RestClient(base_url=fresh_server.url, api_key=api_key) as rest:
        result = rest.download_checkpoint(path, tmp_path / "out").result(60)
    assert same_files(source, tmp_path / "out") and result.size_bytes == SIZE
