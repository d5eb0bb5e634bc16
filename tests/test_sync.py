"""The sync forms: where work runs, blocking inside loops, moving homes, threads and fork."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import warnings
from collections.abc import Callable

import pytest
from _waiting import (
    HANG_GUARD_S,
    blocked_in_result,
    released_when,
    wait_until,
    wait_until_async,
)

import tinker_async as tinker
from tinker_async import APIFuture, RestClient
from tinker_async._api_future import BlockingCallWarning
from tinker_async.local import LocalServer
from tinker_async.service import family_of


def test_sync_form_returns_future_with_result(server: LocalServer, api_key: str) -> None:
    client = RestClient(base_url=server.url, api_key=api_key)
    fut = client.list_training_runs(limit=5)
    assert isinstance(fut, APIFuture)
    page = fut.result(60)
    assert fut.done()
    assert page.cursor is None or page.cursor.limit == 5
    assert isinstance(fut.future(), concurrent.futures.Future)


@pytest.mark.anyio
async def test_sync_future_is_awaitable_in_async_code(server: LocalServer, api_key: str) -> None:
    client = RestClient(base_url=server.url, api_key=api_key)
    runs = await client.list_training_runs(limit=3)  # plain method, awaited (cookbook style)
    again = await client.list_training_runs(limit=3).result_async(10)
    both = await asyncio.gather(client.list_training_runs().coroutine(),
                                client.list_training_runs_async())
    assert runs.training_runs == again.training_runs
    assert len(both) == 2


@pytest.mark.anyio
async def test_blocking_result_inside_running_loop_warns_once_and_works(
    fresh_server: LocalServer, api_key: str
) -> None:
    import tinker_async._api_future as af

    af._warned_blocking = False
    # Each answer is held until result() blocks on it: a finished future is read without
    # a warning, as the official SDK's is, so the call must still be running then.
    client = RestClient(base_url=fresh_server.url, api_key=api_key)
    me = threading.current_thread()
    with warnings.catch_warnings(record=True) as caught, \
            released_when(fresh_server, lambda: blocked_in_result(me)):
        warnings.simplefilter("always")
        fresh_server.faults.add(r"/training_runs$", stall=True)
        first = client.list_training_runs().result(60)   # home is the background loop
        fresh_server.faults.add(r"/training_runs$", stall=True)
        second = client.list_training_runs().result(60)
    assert first.training_runs == second.training_runs
    blocking = [w for w in caught if issubclass(w.category, BlockingCallWarning)]
    assert len(blocking) == 1
    assert blocking[0].filename == __file__  # points at the caller's line


@pytest.mark.anyio
async def test_blocking_on_the_home_loop_runs_the_call_elsewhere(
    server: LocalServer, api_key: str
) -> None:
    client = RestClient(base_url=server.url, api_key=api_key)
    await client.list_training_runs_async()  # this loop becomes the client's home
    fut = client.list_training_runs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BlockingCallWarning)
        page = fut.result(60)  # blocks this loop, as the official SDK does; never raises
    assert page.training_runs is not None
    assert fut.done()
    assert (await fut).training_runs == page.training_runs
    # The home stayed: later async calls run on this loop with no thread hop.
    assert client._home.loop is asyncio.get_running_loop()
    assert (await client.list_training_runs_async()).training_runs is not None


@pytest.mark.anyio
async def test_blocking_on_work_already_running_on_its_loop_refuses_clearly(
    server: LocalServer, api_key: str
) -> None:
    client = RestClient(base_url=server.url, api_key=api_key)
    await client.list_training_runs_async()
    fut = client.list_training_runs()
    await asyncio.sleep(0)  # the loop starts the call: it now needs this loop to finish
    with pytest.raises(RuntimeError, match="await future"):
        fut.result(5)
    assert (await fut).training_runs is not None


@pytest.mark.anyio
async def test_blocking_iterator_on_the_home_loop_works(
    server: LocalServer, api_key: str
) -> None:
    client = RestClient(base_url=server.url, api_key=api_key)
    first = await client.list_training_runs_async(limit=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BlockingCallWarning)
        runs = list(client.iter_training_runs())
    assert len(runs) == len(first.training_runs)


def test_home_moves_when_its_loop_ends(server: LocalServer, api_key: str) -> None:
    client = RestClient(base_url=server.url, api_key=api_key)
    for _ in range(3):  # scripts call asyncio.run several times
        page = asyncio.run(client.list_training_runs_async(limit=2))
        assert page.training_runs is not None
    assert client.list_training_runs().result(60).training_runs is not None


def test_calls_from_other_threads_and_loops_hop_home(server: LocalServer, api_key: str) -> None:
    client = RestClient(base_url=server.url, api_key=api_key)
    client.list_training_runs().result(60)  # home: the background loop
    results: list[object] = []

    def worker() -> None:
        results.append(asyncio.run(client.list_training_runs_async()))
        results.append(client.list_training_runs().result(60))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG_GUARD_S)
    assert len(results) == 8


def test_cancel_and_timeout(fresh_server: LocalServer, api_key: str) -> None:
    fresh_server.faults.add(r"/training_runs$", stall=True)  # unanswered until released
    client = RestClient(base_url=fresh_server.url, api_key=api_key)
    fut = client.list_training_runs()
    with pytest.raises(TimeoutError):
        fut.result(timeout=0.1)
    assert fut.cancel()
    assert fut.cancelled() and fut.done()
    # The request was abandoned: the server saw the client leave.
    wait_until(lambda: [r.status for r in fresh_server.requests
                        if r.path.endswith("/training_runs")] == [None], "the request to end")


def test_forked_child_uses_parents_sync_client(server: LocalServer, api_key: str,
                                               run_script: Callable[..., str]) -> None:
    out = run_script(f"""
import os, sys
from tinker_async import RestClient
client = RestClient(base_url={server.url!r}, api_key={api_key!r})
print("parent", len(client.list_training_runs().result(60).training_runs) >= 0)
pid = os.fork()
if pid == 0:
    try:
        ok = client.list_training_runs().result(60).training_runs is not None
        print("child", ok, flush=True)
        os._exit(0 if ok else 1)
    except BaseException as exc:
        print("child failed", repr(exc), flush=True)
        os._exit(1)
_, status = os.waitpid(pid, 0)
print("child status", status)
print("parent again", client.list_training_runs().result(60).training_runs is not None)
""", timeout=60)
    assert "child True" in out
    assert "child status 0" in out
    assert "parent again True" in out


def test_exit_with_requests_in_flight_is_clean(fresh_server: LocalServer, api_key: str,
                                               run_script: Callable[..., str]) -> None:
    fresh_server.faults.add(r"/training_runs$", stall=True, count=20)  # never answered
    out = run_script(f"""
from tinker_async import ServiceClient
client = ServiceClient(base_url={fresh_server.url!r}, api_key={api_key!r})
client.connect().result(60)
rest = client.create_rest_client()
futures = [rest.list_training_runs() for _ in range(20)]
print("leaving with", sum(not f.done() for f in futures), "in flight")
""", timeout=60)
    assert "leaving with 20 in flight" in out
    assert "Traceback" not in out
    assert "Unclosed" not in out
    assert "Task was destroyed" not in out
    # the session left open was finished at exit
    assert fresh_server.count(r"/sessions/.+/finish$") == 1


# -- guest runs: the cases a review found -----------------------------------------------


def _datum(n: int = 4) -> tinker.Datum:
    return tinker.Datum(model_input=tinker.ModelInput.from_ints(list(range(1, n + 1))),
                        loss_fn_inputs={"target_tokens": list(range(2, n + 2)),
                                        "weights": [1.0] * n})


def test_result_on_the_last_of_several_queued_training_calls(
    fresh_server: LocalServer, api_key: str
) -> None:
    async def main() -> tinker.ForwardBackwardOutput:
        service = tinker.ServiceClient(base_url=fresh_server.url, api_key=api_key)
        training = await service.create_lora_training_client_async("local/byte-lm", rank=2)
        futures = [training.forward_backward([_datum()], "cross_entropy") for _ in range(4)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BlockingCallWarning)
            last = futures[-1].result(60)  # all four run in order, as guests
        await service.close_async()
        return last

    assert asyncio.run(main()).metrics["loss:sum"] > 0


def test_a_guest_run_wakes_a_waiter_on_the_home_loop(
    fresh_server: LocalServer, api_key: str
) -> None:
    async def main() -> object:
        service = tinker.ServiceClient(base_url=fresh_server.url, api_key=api_key)
        training = await service.create_lora_training_client_async("local/byte-lm", rank=2)
        pending = training.forward_backward([_datum(64) for _ in range(16)], "cross_entropy")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BlockingCallWarning)
            service.get_server_capabilities()  # blocks: hands the forward_backward over too
        # This call waits on the home loop for the guest's turn to end (a hang guard only).
        step = await asyncio.wait_for(
            await training.optim_step_async(tinker.AdamParams()), HANG_GUARD_S)
        await pending
        await service.close_async()
        return step

    assert asyncio.run(main()) is not None


def test_blocking_on_the_background_loop_itself_refuses(
    fresh_server: LocalServer, api_key: str
) -> None:
    service = tinker.ServiceClient(base_url=fresh_server.url, api_key=api_key)
    rest = service.create_rest_client()
    outcome: list[object] = []
    done = threading.Event()

    def on_done(_: object) -> None:  # runs on the background loop's thread
        outcome.append(threading.current_thread().name)
        try:
            outcome.append(service.get_server_capabilities())
        except RuntimeError as exc:
            outcome.append(exc)
        done.set()

    # Held until the callback is added: the call then ends on the loop thread, which runs it.
    fresh_server.faults.add(r"/training_runs$", stall=True)
    pending = rest.list_training_runs()
    pending.add_done_callback(on_done)
    with released_when(fresh_server, lambda: True):
        assert done.wait(HANG_GUARD_S), "the background loop deadlocked"
    assert outcome[0] == "tinker-async-loop" and isinstance(outcome[1], RuntimeError)
    service.close().result(60)


def test_leaving_a_with_block_in_async_code_closes_the_home_pool(
    fresh_server: LocalServer, api_key: str
) -> None:
    async def main() -> bool:
        with tinker.ServiceClient(base_url=fresh_server.url, api_key=api_key) as service:
            await service.create_rest_client().list_training_runs_async()
            transport = family_of(service).transport
            session = transport._session
        # the home loop runs the close it was handed
        await wait_until_async(lambda: session is None or session.closed, "the pool to close")
        return session is not None and session.closed

    assert asyncio.run(main())
