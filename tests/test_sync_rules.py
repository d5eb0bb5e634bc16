"""The rules of design.md §3 (async core, sync forms, home loops), at least one test each.

Every test goes through the public API against the embedded server. Where a call runs
(its client's *home* loop) is internal; the tests read it as ``client._home.loop``, the one
internal name they use, and otherwise judge by outcomes: results, errors, warnings, the
server's request log and its applied-seq ledger (the order training calls took effect).

No test depends on timing. A call that must still be running at some point (to block on
it, cancel it, time out on it) is stalled on the server and let go only after that point
(``_waiting.released_when``); every other wait is a condition with a 60 s hang guard.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from _waiting import (
    HANG_GUARD_S,
    blocked_in_result,
    released_when,
    wait_until,
    wait_until_async,
)

import tinker_async as tinker
from tinker_async import APIFuture, BlockingCallWarning, RestClient, ServiceClient
from tinker_async.local import LocalServer

MODEL = "local/byte-lm"


# -- helpers ------------------------------------------------------------------------------


def _sample_args() -> tuple[tinker.ModelInput, int, tinker.SamplingParams]:
    """A short prompt, one sample, two tokens."""
    return tinker.ModelInput.from_ints([72, 105]), 1, tinker.SamplingParams(max_tokens=2)


def _adam(lr: float) -> tinker.AdamParams:
    return tinker.AdamParams(learning_rate=lr)


def _steps(server: LocalServer, training: tinker.TrainingClient) -> list[str]:
    """The optimizer steps the server applied to ``training``'s model, in order, by their
    learning rates (each test gives its steps distinct ones)."""
    return [e.tag or "" for e in server.ledger(training.model_id) if e.kind == "OptimStep"]


def _lr(lr: float) -> str:
    return f"lr:{lr!r}"


def _thread_of(loop: asyncio.AbstractEventLoop) -> str:
    """The name of the thread running ``loop`` (asked from another thread)."""

    async def name() -> str:
        return threading.current_thread().name

    return asyncio.run_coroutine_threadsafe(name(), loop).result(HANG_GUARD_S)


@contextmanager
def _loop_in_thread(name: str = "user-loop") -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a thread of its own, as a notebook kernel's or an app's."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=name, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(HANG_GUARD_S)
        loop.close()


def _statuses(server: LocalServer, suffix: str) -> list[int | None]:
    return [r.status for r in server.requests if r.path.endswith(suffix)]


@pytest.fixture
def quiet_blocking() -> Iterator[None]:
    """For tests that block inside a running loop on purpose (the warning has its own)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BlockingCallWarning)
        yield


# -- return conventions -------------------------------------------------------------------


def test_each_kind_of_method_returns_what_the_official_sdk_does(
    fresh_server: LocalServer, api_key: str
) -> None:
    async def main() -> None:
        async with ServiceClient(base_url=fresh_server.url, api_key=api_key) as service:
            # Client creation: awaited gives the client; plain gives a future of it.
            training = await service.create_lora_training_client_async(MODEL, rank=2)
            assert isinstance(training, tinker.TrainingClient)
            plain_sampler = service.create_sampling_client(base_model=MODEL)
            assert isinstance(plain_sampler, APIFuture)
            sampler = await plain_sampler
            assert isinstance(sampler, tinker.SamplingClient)
            # Queued training ops: awaited gives an APIFuture once the server accepted it.
            accepted = await training.optim_step_async(_adam(1e-4))
            assert isinstance(accepted, APIFuture)
            assert isinstance(await accepted, tinker.OptimStepResponse)
            queued = training.optim_step(_adam(2e-4))
            assert isinstance(queued, APIFuture)
            assert isinstance(await queued, tinker.OptimStepResponse)
            # Other I/O: awaited gives the value; plain gives an APIFuture.
            assert isinstance(await sampler.sample_async(*_sample_args()),
                              tinker.SampleResponse)
            sampled = sampler.sample(*_sample_args())
            assert isinstance(sampled, APIFuture)
            assert isinstance(await sampled, tinker.SampleResponse)
            # Local getters: the value, both ways.
            assert sampler.get_base_model() == MODEL
            assert await sampler.get_base_model_async() == MODEL
            assert training.get_tokenizer() is not None

    asyncio.run(main())


# -- a client lives where it is first used --------------------------------------------------


def test_the_first_async_call_makes_the_running_loop_home_for_the_whole_family(
    fresh_server: LocalServer, api_key: str
) -> None:
    async def main() -> None:
        here = asyncio.get_running_loop()
        async with ServiceClient(base_url=fresh_server.url, api_key=api_key) as service:
            await service.connect_async()
            assert service._home.loop is here  # no thread hop for async-first code
            sampler = await service.create_sampling_client_async(base_model=MODEL)
            rest = service.create_rest_client()
            # The clients it creates share its home (and its one aiohttp session).
            assert sampler._home.loop is here and rest._home.loop is here
            # Plain calls made here run here too (as tasks of this loop).
            await rest.list_training_runs()
            assert rest._home.loop is here

    asyncio.run(main())


def test_the_first_plain_call_makes_the_background_loop_home(
    fresh_server: LocalServer, api_key: str
) -> None:
    rest = RestClient(base_url=fresh_server.url, api_key=api_key)
    rest.list_training_runs().result(HANG_GUARD_S)
    home = rest._home.loop
    assert home is not None and _thread_of(home) == "tinker-async-loop"

    async def inside_a_loop() -> None:
        # Even inside async code a first *plain* call picks the background loop (the
        # cookbook's style), and its future can be awaited here.
        other = RestClient(base_url=fresh_server.url, api_key=api_key)
        await other.list_training_runs()
        assert other._home.loop is home
        # Later async calls from this loop hop there; the home stays.
        await other.list_training_runs_async()
        assert other._home.loop is home
        await other.close_async()

    asyncio.run(inside_a_loop())
    rest.close().result(HANG_GUARD_S)


# -- hops from other loops and threads ------------------------------------------------------


def test_calls_from_other_threads_and_loops_hop_to_a_home_loop_in_another_thread(
    fresh_server: LocalServer, api_key: str
) -> None:
    with _loop_in_thread() as home:
        rest = RestClient(base_url=fresh_server.url, api_key=api_key)
        first = asyncio.run_coroutine_threadsafe(rest.list_training_runs_async(), home)
        first.result(HANG_GUARD_S)
        assert rest._home.loop is home
        # From this thread: a plain call, and an async one on a loop of its own.
        assert rest.list_training_runs().result(HANG_GUARD_S).training_runs is not None
        assert asyncio.run(rest.list_training_runs_async()).training_runs is not None
        # From other threads, at once.
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            pages = list(pool.map(lambda _: rest.list_training_runs().result(HANG_GUARD_S),
                                  range(8)))
        assert len(pages) == 8
        assert rest._home.loop is home  # nobody moved it
        asyncio.run_coroutine_threadsafe(rest.close_async(), home).result(HANG_GUARD_S)


def test_a_blocked_caller_never_blocks_the_home_loop(
    fresh_server: LocalServer, api_key: str
) -> None:
    with _loop_in_thread() as home:
        rest = RestClient(base_url=fresh_server.url, api_key=api_key)
        asyncio.run_coroutine_threadsafe(rest.list_training_runs_async(), home).result(
            HANG_GUARD_S)
        fresh_server.faults.add(r"/training_runs$", stall=True)
        held = rest.list_training_runs()  # from this thread: runs on the home loop
        pages: list[Any] = []
        caller = threading.Thread(target=lambda: pages.append(held.result(HANG_GUARD_S)))
        caller.start()
        wait_until(lambda: blocked_in_result(caller) and not fresh_server.faults.rules,
                   "the caller to block on the held request")
        # While a caller is blocked on it, the home loop runs other work.
        assert _thread_of(home) == "user-loop"
        assert not held.done()
        with released_when(fresh_server, lambda: True):
            caller.join(HANG_GUARD_S)
        assert pages and pages[0].training_runs is not None
        asyncio.run_coroutine_threadsafe(rest.close_async(), home).result(HANG_GUARD_S)


# -- the home moves when its loop ends, or after a fork -------------------------------------


def test_a_home_loop_that_closed_moves_and_training_carries_on(
    fresh_server: LocalServer, api_key: str
) -> None:
    service = ServiceClient(base_url=fresh_server.url, api_key=api_key)

    async def first() -> tinker.TrainingClient:
        training = await service.create_lora_training_client_async(MODEL, rank=2)
        await (await training.optim_step_async(_adam(1e-4)))
        return training

    training = asyncio.run(first())
    session_id = service.session_id

    async def step(lr: float) -> None:
        await (await training.optim_step_async(_adam(lr)))

    # Scripts call asyncio.run several times (and the cookbook's checkpoint helpers do):
    # never "loop is closed"; the session and the seq counter carry over.
    asyncio.run(step(2e-4))
    asyncio.run(step(3e-4))
    training.optim_step(_adam(4e-4)).result(HANG_GUARD_S)  # and then plain code
    assert service.session_id == session_id
    assert _steps(fresh_server, training) == [_lr(1e-4), _lr(2e-4), _lr(3e-4), _lr(4e-4)]
    assert 409 not in _statuses(fresh_server, "/optim_step")
    service.close().result(HANG_GUARD_S)


def test_a_home_loop_that_stopped_moves_and_moves_back(
    fresh_server: LocalServer, api_key: str
) -> None:
    rest = RestClient(base_url=fresh_server.url, api_key=api_key)
    mine = asyncio.new_event_loop()
    try:
        # run_until_complete leaves the loop stopped but open: the next use elsewhere moves.
        mine.run_until_complete(rest.list_training_runs_async())
        assert rest._home.loop is mine
        assert asyncio.run(rest.list_training_runs_async()).training_runs is not None
        assert mine.run_until_complete(rest.list_training_runs_async()).training_runs is not None
        assert rest._home.loop is mine
        mine.run_until_complete(rest.close_async())
    finally:
        mine.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_clients_made_before_a_fork_work_in_the_child(
    server: LocalServer, api_key: str, run_script: Callable[..., str]
) -> None:
    out = run_script(f"""
import asyncio, os
import tinker_async as tinker
service = tinker.ServiceClient(base_url={server.url!r}, api_key={api_key!r})
sampler = service.create_sampling_client(base_model={MODEL!r}).result(60)   # home: background
rest = service.create_rest_client()
other = tinker.RestClient(base_url={server.url!r}, api_key={api_key!r})
asyncio.run(other.list_training_runs_async())                       # home: a closed loop
prompt, params = tinker.ModelInput.from_ints([72, 105]), tinker.SamplingParams(max_tokens=2)
pid = os.fork()
if pid == 0:
    try:
        plain = sampler.sample(prompt, 1, params).result(60)
        awaited = asyncio.run(sampler.sample_async(prompt, 1, params))
        runs = rest.list_training_runs().result(60)
        again = other.list_training_runs().result(60)
        print("child", len(plain.sequences), len(awaited.sequences),
              runs.training_runs is not None, again.training_runs is not None, flush=True)
        os._exit(0)
    except BaseException as exc:
        print("child failed", repr(exc), flush=True)
        os._exit(1)
_, status = os.waitpid(pid, 0)
print("child status", status)
print("parent", len(sampler.sample(prompt, 1, params).result(60).sequences))
service.close().result(60)
""", timeout=HANG_GUARD_S * 2)
    assert "child 1 1 True True" in out, out
    assert "child status 0" in out and "parent 1" in out, out


# -- ordering -------------------------------------------------------------------------------


def test_plain_calls_on_the_home_thread_keep_their_order_against_a_following_await(
    fresh_server: LocalServer, api_key: str
) -> None:
    async def main() -> list[str]:
        async with ServiceClient(base_url=fresh_server.url, api_key=api_key) as service:
            training = await service.create_lora_training_client_async(MODEL, rank=2)
            # Plain calls here become tasks that start at the loop's next turn; the await
            # made straight after must not overtake them (seq ids are taken at the start).
            first = training.optim_step(_adam(1e-4))
            second = training.optim_step(_adam(2e-4))
            third = await training.optim_step_async(_adam(3e-4))
            await asyncio.gather(first, second, third)
            return _steps(fresh_server, training)

    assert asyncio.run(main()) == [_lr(1e-4), _lr(2e-4), _lr(3e-4)]


def test_calls_take_their_turn_when_made_whatever_form_or_thread(
    fresh_server: LocalServer, api_key: str
) -> None:
    service = ServiceClient(base_url=fresh_server.url, api_key=api_key)
    training = service.create_lora_training_client(MODEL, rank=2).result(HANG_GUARD_S)
    futures = [training.optim_step(_adam(1e-4))]  # plain, from this thread
    futures.append(asyncio.run(training.optim_step_async(_adam(2e-4))))  # a hop
    futures.append(training.optim_step(_adam(3e-4)))
    worker = threading.Thread(
        target=lambda: futures.append(training.optim_step(_adam(4e-4))))
    worker.start()
    worker.join(HANG_GUARD_S)
    for future in futures:
        future.result(HANG_GUARD_S)
    assert _steps(fresh_server, training) == [_lr(1e-4), _lr(2e-4), _lr(3e-4), _lr(4e-4)]
    service.close().result(HANG_GUARD_S)


# -- blocking .result() on the home thread --------------------------------------------------


def test_result_on_the_home_thread_runs_unstarted_calls_as_guests_in_order(
    fresh_server: LocalServer, api_key: str, quiet_blocking: None
) -> None:
    async def main() -> list[str]:
        here = asyncio.get_running_loop()
        async with ServiceClient(base_url=fresh_server.url, api_key=api_key) as service:
            training = await service.create_lora_training_client_async(MODEL, rank=2)
            futures = [training.optim_step(_adam(lr)) for lr in (1e-4, 2e-4, 3e-4)]
            # Blocks this loop, as the official SDK does; the first two (not started yet)
            # run elsewhere, in call order. It never deadlocks, never raises.
            step = futures[1].result(HANG_GUARD_S)
            assert isinstance(step, tinker.OptimStepResponse)
            assert training._home.loop is here  # the home stayed: async code pays no hop
            fourth = await training.optim_step_async(_adam(4e-4))
            await asyncio.gather(*futures, fourth)
            return _steps(fresh_server, training)

    assert asyncio.run(main()) == [_lr(1e-4), _lr(2e-4), _lr(3e-4), _lr(4e-4)]


def test_result_on_work_already_started_on_the_blocked_loop_refuses_and_says_why(
    fresh_server: LocalServer, api_key: str
) -> None:
    async def main() -> list[str]:
        async with ServiceClient(base_url=fresh_server.url, api_key=api_key) as service:
            training = await service.create_lora_training_client_async(MODEL, rank=2)
            started = training.optim_step(_adam(1e-4))
            await asyncio.sleep(0)  # one turn: the loop starts it, so it needs this loop
            with pytest.raises(RuntimeError) as refused:
                started.result(HANG_GUARD_S)
            message = str(refused.value)
            assert "already running this work" in message and "await future" in message
            # Nothing was lost: the call finishes when awaited, and later calls follow it.
            await started
            await (await training.optim_step_async(_adam(2e-4)))
            return _steps(fresh_server, training)

    assert asyncio.run(main()) == [_lr(1e-4), _lr(2e-4)]


def test_blocking_result_inside_a_running_loop_warns_once_at_the_callers_line(
    fresh_server: LocalServer, api_key: str
) -> None:
    import tinker_async._api_future as af

    af._warned_blocking = False
    rest = RestClient(base_url=fresh_server.url, api_key=api_key)
    me = threading.current_thread()

    async def main() -> None:
        with warnings.catch_warnings(record=True) as caught, \
                released_when(fresh_server, lambda: blocked_in_result(me)):
            warnings.simplefilter("always")
            fresh_server.faults.add(r"/training_runs$", stall=True)
            fut = rest.list_training_runs()
            line = sys._getframe().f_lineno + 1  # the next line's number
            fut.result(HANG_GUARD_S)
            # Once per process: the next blocking call, on any client, is quiet.
            fresh_server.faults.add(r"/training_runs$", stall=True)
            rest.list_training_runs().result(HANG_GUARD_S)
            # A finished future is read without blocking, so without a warning too.
            fut.result(HANG_GUARD_S)
        blocking = [w for w in caught if issubclass(w.category, BlockingCallWarning)]
        assert [(w.filename, w.lineno) for w in blocking] == [(__file__, line)]
        assert "await" in str(blocking[0].message)

    asyncio.run(main())
    rest.close().result(HANG_GUARD_S)


def test_leaving_a_with_block_inside_async_code_does_not_warn(
    fresh_server: LocalServer, api_key: str
) -> None:
    import tinker_async._api_future as af

    af._warned_blocking = False

    async def main() -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with ServiceClient(base_url=fresh_server.url, api_key=api_key) as service:
                await service.connect_async()
        assert not [w for w in caught if issubclass(w.category, BlockingCallWarning)]

    asyncio.run(main())
    assert fresh_server.count(r"/finish$") == 1  # it did close (and finish) the session


def test_blocking_on_the_background_loop_itself_fails_at_once(
    fresh_server: LocalServer, api_key: str
) -> None:
    rest = RestClient(base_url=fresh_server.url, api_key=api_key)
    outcome: list[object] = []
    done = threading.Event()

    def on_done(_: object) -> None:  # runs on the background loop's own thread
        outcome.append(threading.current_thread().name)
        for attempt in (lambda: rest.list_training_runs().result(HANG_GUARD_S),
                        lambda: list(rest.iter_training_runs())):
            try:
                attempt()
            except RuntimeError as exc:
                outcome.append(str(exc))
        done.set()

    fresh_server.faults.add(r"/training_runs$", stall=True)  # ends after the callback is on
    rest.list_training_runs().add_done_callback(on_done)
    with released_when(fresh_server, lambda: True):
        assert done.wait(HANG_GUARD_S), "the background loop deadlocked"
    assert outcome[0] == "tinker-async-loop"
    assert "await future" in str(outcome[1])
    assert "aiter_" in str(outcome[2])
    # The callback's first attempt did send its request (only waiting for it failed):
    # let it finish here, or it may reach the server during the next test and take
    # that test's fault rule. Answered: the stalled call's retry, and that request.
    wait_until(lambda: _statuses(fresh_server, "/training_runs").count(200) == 2,
               "the callback's request to be answered")
    rest.close().result(HANG_GUARD_S)


# -- cancellation, both ways ------------------------------------------------------------------


def test_cancelling_a_future_abandons_its_request(
    fresh_server: LocalServer, api_key: str
) -> None:
    rest = RestClient(base_url=fresh_server.url, api_key=api_key)
    fresh_server.faults.add(r"/training_runs$", stall=True)
    fut = rest.list_training_runs()
    wait_until(lambda: fresh_server.faults.rules == [], "the request to be held")
    # Through the concurrent.futures.Future the official SDK hands out, from any thread.
    assert fut.future().cancel()
    assert fut.cancelled() and fut.done()
    with pytest.raises(concurrent.futures.CancelledError):
        fut.result(HANG_GUARD_S)
    wait_until(lambda: _statuses(fresh_server, "/training_runs") == [None],
               "the server to see the client leave")
    rest.close().result(HANG_GUARD_S)


def test_cancelling_an_awaiting_task_cancels_the_work_on_the_home_loop(
    fresh_server: LocalServer, api_key: str
) -> None:
    rest = RestClient(base_url=fresh_server.url, api_key=api_key)
    rest.list_training_runs().result(HANG_GUARD_S)  # home: the background loop
    fresh_server.clear_requests()
    fresh_server.faults.add(r"/training_runs$", stall=True)

    async def main() -> None:
        task = asyncio.ensure_future(rest.list_training_runs_async())  # hops home
        await wait_until_async(lambda: not fresh_server.faults.rules, "the request to be held")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    wait_until(lambda: _statuses(fresh_server, "/training_runs") == [None],
               "the server to see the client leave")
    assert rest.list_training_runs().result(HANG_GUARD_S).training_runs is not None
    rest.close().result(HANG_GUARD_S)


def test_a_cancelled_sample_is_cancelled_on_the_server(
    fresh_server: LocalServer, api_key: str
) -> None:
    service = ServiceClient(base_url=fresh_server.url, api_key=api_key)
    sampler = service.create_sampling_client(base_model=MODEL).result(HANG_GUARD_S)
    polls = fresh_server.faults.add(r"/retrieve_futures?$", stall=True, count=None)
    fut = sampler.sample(*_sample_args())
    wait_until(lambda: polls.hits >= 1, "the sample to be submitted and polled")
    submitted = [r for r in fresh_server.requests if r.path.endswith("/asample")]
    assert fut.cancel()
    wait_until(lambda: fresh_server.count(r"/cancel_future$") == 1, "a cancel_future")
    cancel = next(r for r in fresh_server.requests if r.path.endswith("/cancel_future"))
    assert len(submitted) == 1 and submitted[0].status == 200
    fresh_server.faults.remove(polls)
    fresh_server.faults.release_stalled()
    service.close().result(HANG_GUARD_S)
    assert b"request_id" in cancel.body


def test_work_cancelled_on_its_loop_cancels_the_future_for_every_waiter(
    fresh_server: LocalServer, api_key: str
) -> None:
    rest = RestClient(base_url=fresh_server.url, api_key=api_key)
    seen: list[BaseException] = []
    futures: list[APIFuture[Any]] = []

    def wait_elsewhere() -> None:
        try:
            futures[0].result(HANG_GUARD_S)
        except BaseException as exc:
            seen.append(exc)

    waiter = threading.Thread(target=wait_elsewhere)

    async def main() -> None:
        await rest.list_training_runs_async()  # this loop is home
        fresh_server.faults.add(r"/training_runs$", stall=True)
        futures.append(rest.list_training_runs())  # a task of this loop, held by the server
        waiter.start()
        await asyncio.sleep(0)
        # Returning ends asyncio.run, which cancels the task still waiting for its answer.

    asyncio.run(main())
    waiter.join(HANG_GUARD_S)
    assert futures[0].cancelled()
    assert len(seen) == 1 and isinstance(seen[0], concurrent.futures.CancelledError)
    rest.close().result(HANG_GUARD_S)


# -- exceptions are never lost ------------------------------------------------------------------


def test_an_error_reaches_every_reader_of_the_future(
    fresh_server: LocalServer, api_key: str
) -> None:
    fresh_server.faults.add(r"/training_runs$", status=400, count=None,
                            body={"detail": "no such thing"})
    rest = RestClient(base_url=fresh_server.url, api_key=api_key)
    fut = rest.list_training_runs()
    called: list[BaseException | None] = []
    fut.add_done_callback(lambda f: called.append(f.exception()))
    for _ in range(2):  # asked twice, raised twice
        with pytest.raises(tinker.BadRequestError, match="no such thing"):
            fut.result(HANG_GUARD_S)
    assert isinstance(fut.exception(), tinker.BadRequestError)
    assert isinstance(fut.future().exception(), tinker.BadRequestError)
    wait_until(lambda: called, "the done callback")
    assert isinstance(called[0], tinker.BadRequestError)

    async def read_elsewhere() -> None:
        with pytest.raises(tinker.BadRequestError):
            await fut  # from another loop
        with pytest.raises(tinker.BadRequestError):
            await rest.list_training_runs_async()  # a hop: the error crosses back typed

    asyncio.run(read_elsewhere())
    rest.close().result(HANG_GUARD_S)


def test_a_failed_training_call_raises_from_its_future_and_the_next_one_follows(
    fresh_server: LocalServer, api_key: str
) -> None:
    service = ServiceClient(base_url=fresh_server.url, api_key=api_key)
    training = service.create_lora_training_client(MODEL, rank=2).result(HANG_GUARD_S)
    fresh_server.faults.add(r"/optim_step$", status=400, body={"detail": "not this one"})
    refused = training.optim_step(_adam(1e-4))
    applied = training.optim_step(_adam(2e-4))
    with pytest.raises(tinker.BadRequestError, match="not this one"):
        refused.result(HANG_GUARD_S)
    assert isinstance(applied.result(HANG_GUARD_S), tinker.OptimStepResponse)

    async def read_again() -> None:
        with pytest.raises(tinker.BadRequestError):
            await refused

    asyncio.run(read_again())
    assert _steps(fresh_server, training) == [_lr(2e-4)]
    service.close().result(HANG_GUARD_S)


def test_an_error_in_a_guest_run_reaches_the_caller(
    fresh_server: LocalServer, api_key: str, quiet_blocking: None
) -> None:
    async def main() -> None:
        rest = RestClient(base_url=fresh_server.url, api_key=api_key)
        await rest.list_training_runs_async()  # this loop is home
        fresh_server.faults.add(r"/training_runs$", status=400, body={"detail": "refused"})
        fut = rest.list_training_runs()
        with pytest.raises(tinker.BadRequestError, match="refused"):
            fut.result(HANG_GUARD_S)  # ran as a guest on the background loop
        with pytest.raises(tinker.BadRequestError, match="refused"):
            await fut
        assert isinstance(fut.exception(), tinker.BadRequestError)
        await rest.close_async()

    asyncio.run(main())


# -- APIFuture from any loop ------------------------------------------------------------------


def test_an_api_future_is_awaitable_from_any_loop_and_thread(
    fresh_server: LocalServer, api_key: str
) -> None:
    rest = RestClient(base_url=fresh_server.url, api_key=api_key)
    fut = rest.list_training_runs()  # home: the background loop

    async def read() -> tuple[Any, ...]:
        return (await fut, await fut.result_async(HANG_GUARD_S),
                *(await asyncio.gather(fut.coroutine(), fut.coroutine())))

    here = asyncio.run(read())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        there = pool.submit(asyncio.run, read()).result(HANG_GUARD_S)
    assert all(page is here[0] for page in (*here, *there))
    assert fut.done() and not fut.cancelled()
    rest.close().result(HANG_GUARD_S)


def test_result_async_with_a_timeout_cancels_the_work_and_names_the_call(
    fresh_server: LocalServer, api_key: str
) -> None:
    rest = RestClient(base_url=fresh_server.url, api_key=api_key)
    fresh_server.faults.add(r"/training_runs$", stall=True)  # never answered
    fut = rest.list_training_runs()

    async def main() -> None:
        with pytest.raises(TimeoutError, match=r"RestClient\.list_training_runs.*cancelled"):
            await fut.result_async(0.05)

    asyncio.run(main())
    assert fut.cancelled()
    wait_until(lambda: _statuses(fresh_server, "/training_runs") == [None],
               "the server to see the client leave")
    rest.close().result(HANG_GUARD_S)
