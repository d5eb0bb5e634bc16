"""Fault suite (issue 11): every fault kind of the embedded server, met through the public API.

For each fault (``LocalServer.faults``; a subprocess server for SIGSTOP) the calls that meet
it are driven through ServiceClient / TrainingClient / SamplingClient / RestClient, in
async and plain forms, and the suite asserts:

- every call ends with a result or a typed error (``tinker_async.errors.TinkerError``),
  never a bare exception and never a hang (the 60 s guards are guards, not assertions);
- no training step is applied twice or lost: the server's applied-seq ledger
  (``LocalServer.ledger``) is compared with what the client reported. A step that returned
  a result appears exactly once; one that raised appears at most once (each test says
  which count it expects, when it is known);
- steps are applied in the order they were called;
- the heartbeat recovers after the server was paused.

Nothing here asserts how long anything took. Retry waits are shortened (``FAST``) so the
suite is quick; the behaviour is the same at the defaults.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from _server_process import ServerProcess

import tinker_async as tinker
from tinker_async import RetryPolicy
from tinker_async import types as t
from tinker_async.errors import (
    APIConnectionError,
    APITimeoutError,
    RateLimitError,
    SessionExpiredError,
    TinkerError,
)
from tinker_async.local import LocalServer
from tinker_async.local._ledger import lr_tag, tokens_tag

MODEL = "local/byte-lm"
GUARD_S = 60.0  # hang guard only: every call here ends long before it
FAST = RetryPolicy(base_delay=0.01, max_delay=0.05)
PROMPT = t.ModelInput.from_ints([1, 2, 3])
PARAMS = t.SamplingParams(max_tokens=3, temperature=0.0)
# Every route a training step or a sample touches.
TRAINING = r"/(forward_backward|optim_step)$"
POLLS = r"/retrieve_futures?$"

T = TypeVar("T")


# ----------------------------------------------------------------------------------- helpers


@dataclass
class Call:
    """One public call and how it ended."""

    kind: str
    tag: str | None = None
    value: Any = None
    error: BaseException | None = None
    ended: bool = False

    def end(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error, self.ended = value, error, True

    @property
    def ok(self) -> bool:
        return self.ended and self.error is None


def batch(step: int, size: int = 1) -> list[t.Datum]:
    """A batch whose tokens name its step (so the ledger tells steps apart)."""
    data = []
    for j in range(size):
        tokens = [1 + step % 250, 1 + (step // 250) % 250, 1 + j % 250, 4, 5, 6]
        data.append(t.Datum(model_input=t.ModelInput.from_ints(tokens[:-1]),
                            loss_fn_inputs={"target_tokens": tokens[1:], "weights": [1.0] * 5}))
    return data


def fb_tag(data: list[t.Datum]) -> str:
    return tokens_tag(d.model_input.to_ints() for d in data)


def lr_of(step: int) -> float:
    return 1e-4 * (1 + step / 1000)  # unique per step: the ledger's tag of the optim step


async def settle(call: Call, work: Awaitable[Any]) -> Call:
    """Await ``work`` and record how it ended; a hang or an untyped error fails the test."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=GUARD_S)
    if not done:
        task.cancel()
        pytest.fail(f"{call.kind} {call.tag}: no end within the {GUARD_S:g} s guard (a hang)")
    if task.cancelled():
        pytest.fail(f"{call.kind} {call.tag}: ended with a bare CancelledError")
    exc = task.exception()
    if exc is not None:
        assert_typed(call, exc)
        call.end(error=exc)
    else:
        call.end(value=task.result())
    return call


def assert_typed(call: Call, exc: BaseException) -> None:
    if not isinstance(exc, TinkerError):
        raise AssertionError(
            f"{call.kind} {call.tag} raised an untyped {type(exc).__module__}."
            f"{type(exc).__name__}: {exc}") from exc


async def pipelined_steps(tc: tinker.TrainingClient, steps: range) -> list[Call]:
    """Submit forward_backward + optim_step for every step before reading any result (as
    RL loops do), then read them all. Returns the calls in call order."""
    calls: list[Call] = []
    pending: list[tuple[Call, tinker.APIFuture[Any]]] = []
    for step in steps:
        data = batch(step)
        for call, submit in (
            (Call("ForwardBackward", fb_tag(data)),
             lambda d=data: tc.forward_backward_async(d, "cross_entropy")),
            (Call("OptimStep", lr_tag(lr_of(step))),
             lambda s=step: tc.optim_step_async(t.AdamParams(learning_rate=lr_of(s)))),
        ):
            calls.append(call)
            await settle(call, submit())
            if call.ok:
                pending.append((call, call.value))
                call.ended = False
    for call, future in pending:
        await settle(call, future)
    return calls


async def sequential_steps(tc: tinker.TrainingClient, steps: range) -> list[Call]:
    """Each step's results read before the next is submitted (a deterministic order of
    requests, so that a fault with ``skip`` hits a known one)."""
    calls: list[Call] = []
    for step in steps:
        data = batch(step)
        fb = Call("ForwardBackward", fb_tag(data))
        calls.append(await settle(fb, _submitted(tc.forward_backward_async(data, "cross_entropy"))))
        opt = Call("OptimStep", lr_tag(lr_of(step)))
        calls.append(await settle(opt, _submitted(
            tc.optim_step_async(t.AdamParams(learning_rate=lr_of(step))))))
    return calls


async def _submitted(submit: Awaitable[tinker.APIFuture[T]]) -> T:
    return await (await submit)


async def samples(sc: tinker.SamplingClient, n: int) -> list[Call]:
    """``n`` samples in flight at once (more than four go through the batch long-poll)."""
    calls = [Call("Sample", str(i)) for i in range(n)]
    await asyncio.gather(*(settle(c, sc.sample_async(PROMPT, 1, PARAMS)) for c in calls))
    for call in calls:
        if call.ok:
            assert len(call.value.sequences) == 1
    return calls


def applied(ledger: list[Any], call: Call) -> int:
    """How many times the server applied ``call``'s step."""
    return sum(1 for entry in ledger if entry[2] == call.tag)


def check_ledger(ledger: list[Any], calls: list[Call]) -> None:
    """The ledger against what the client reported (see the module docstring)."""
    seqs = [entry[0] for entry in ledger]
    assert seqs == sorted(set(seqs)), f"a seq id applied twice or out of order: {seqs}"
    tags = [entry[2] for entry in ledger]
    known = {c.tag for c in calls}
    foreign = [tag for tag in tags if tag not in known]
    assert not foreign, f"the server applied steps nobody called: {foreign}"
    for call in calls:
        assert call.ended, f"{call.kind} {call.tag} never ended"
        count = tags.count(call.tag)
        if call.ok:
            assert count == 1, f"{call.kind} {call.tag} returned a result; applied {count}x"
        else:
            assert count <= 1, f"{call.kind} {call.tag} raised {call.error!r}; applied {count}x"
    called_order = [c.tag for c in calls if c.tag in tags]
    assert tags == called_order, "steps were applied in another order than called"


def assert_all_ok(calls: list[Call]) -> None:
    failed = [(c.kind, c.tag, repr(c.error)) for c in calls if not c.ok]
    assert not failed, f"calls that should have recovered failed: {failed}"


@pytest.fixture
async def svc(fresh_server: LocalServer) -> AsyncIterator[tinker.ServiceClient]:
    """A client with quick retries on the shared server."""
    async with tinker.ServiceClient(base_url=fresh_server.url, api_key=fresh_server.api_key,
                                    retry=FAST) as client:
        yield client


async def _clients(svc: tinker.ServiceClient) -> tuple[tinker.TrainingClient,
                                                       tinker.SamplingClient]:
    tc = await svc.create_lora_training_client_async(MODEL, rank=4)
    sc = await svc.create_sampling_client_async(base_model=MODEL)
    return tc, sc


# --------------------------------------------------------------------- 429, 5xx, dropped


@pytest.mark.anyio
@pytest.mark.parametrize("retry_after", [0.05, None], ids=["retry-after", "no-retry-after"])
async def test_rate_limits_are_waited_out_on_every_route(
    fresh_server: LocalServer, svc: tinker.ServiceClient, retry_after: float | None
) -> None:
    rules = [fresh_server.faults.add(route, status=429, retry_after=retry_after, count=2)
             for route in (r"/create_model$", r"/forward_backward$", r"/optim_step$",
                           r"/asample$", r"/retrieve_future$", r"/training_runs$")]
    tc, sc = await _clients(svc)
    calls = await pipelined_steps(tc, range(3))
    sampled = await samples(sc, 6)
    runs = await settle(Call("ListTrainingRuns"), svc.create_rest_client().list_training_runs_async())
    assert_all_ok([*calls, *sampled, runs])
    assert [rule.hits for rule in rules] == [2] * len(rules)  # every route met its 429s
    check_ledger(fresh_server.ledger(tc.model_id), calls)


@pytest.mark.anyio
async def test_a_rate_limit_that_outlasts_the_retries_refuses_one_step_and_leaves_no_gap(
    fresh_server: LocalServer,
) -> None:
    async with tinker.ServiceClient(base_url=fresh_server.url, api_key=fresh_server.api_key,
                                    retry=FAST.replace(max_429_retries=2)) as svc:
        tc = await svc.create_lora_training_client_async(MODEL, rank=4)
        first = await sequential_steps(tc, range(1))
        rule = fresh_server.faults.add(r"/optim_step$", status=429, count=None)
        refused = await sequential_steps(tc, range(1, 2))
        fresh_server.faults.remove(rule)
        later = await sequential_steps(tc, range(2, 4))
    calls = [*first, *refused, *later]
    assert refused[0].ok and isinstance(refused[1].error, RateLimitError)
    assert_all_ok([*first, refused[0], *later])
    ledger = fresh_server.ledger(tc.model_id)
    assert applied(ledger, refused[1]) == 0  # refused: never applied, and its seq id reused
    check_ledger(ledger, calls)
    assert [entry[0] for entry in ledger] == list(range(1, len(ledger) + 1))  # no gap


@pytest.mark.anyio
async def test_5xx_bursts_on_every_route_are_retried_through(
    fresh_server: LocalServer, svc: tinker.ServiceClient
) -> None:
    for status, route in ((500, r"/create_model$"), (502, r"/forward_backward$"),
                          (503, r"/optim_step$"), (504, r"/asample$"), (503, POLLS),
                          (502, r"/session_heartbeat$"), (500, r"/training_runs$")):
        fresh_server.faults.add(route, status=status, count=3)
    tc, sc = await _clients(svc)
    calls = await pipelined_steps(tc, range(4))
    sampled = await samples(sc, 8)
    runs = await settle(Call("ListTrainingRuns"), svc.create_rest_client().list_training_runs_async())
    assert_all_ok([*calls, *sampled, runs])
    check_ledger(fresh_server.ledger(tc.model_id), calls)


@pytest.mark.anyio
async def test_a_5xx_burst_longer_than_the_retries_is_a_typed_error_and_training_goes_on(
    fresh_server: LocalServer, svc: tinker.ServiceClient
) -> None:
    tc, _sc = await _clients(svc)
    rule = fresh_server.faults.add(r"/forward_backward$", status=503, count=None)
    refused = await sequential_steps(tc, range(1))
    fresh_server.faults.remove(rule)
    later = await sequential_steps(tc, range(1, 3))
    assert isinstance(refused[0].error, tinker.InternalServerError)
    assert refused[1].ok  # the optimizer step after it went through
    assert_all_ok(later)
    ledger = fresh_server.ledger(tc.model_id)
    assert applied(ledger, refused[0]) == 0
    check_ledger(ledger, [*refused, *later])


@pytest.mark.anyio
@pytest.mark.parametrize("when", ["before", "after"])
async def test_dropped_connections_before_and_after_the_server_applied(
    fresh_server: LocalServer, svc: tinker.ServiceClient, when: str
) -> None:
    # "after": the handler ran (the step was admitted and will be applied, the sample
    # was started, the poll was answered) and the answer never arrived.
    routes = [r"/create_model$", r"/forward_backward$", r"/optim_step$", r"/asample$",
              r"/save_weights$", r"/retrieve_future$", r"/training_runs$"]
    rules = [fresh_server.faults.add(route, drop_connection=when, count=2) for route in routes]
    tc, sc = await _clients(svc)
    calls = await pipelined_steps(tc, range(3))
    save = Call("SaveWeights", "faulted-save")
    await settle(save, _submitted(tc.save_state_async("faulted-save")))
    calls.append(save)
    more = await pipelined_steps(tc, range(3, 5))
    sampled = await samples(sc, 6)
    runs = await settle(Call("ListTrainingRuns"), svc.create_rest_client().list_training_runs_async())
    assert_all_ok([*calls, *more, *sampled, runs])
    assert [rule.hits for rule in rules] == [2] * len(rules)
    # Retried submits carried the same seq id and idempotency key: applied once each.
    check_ledger(fresh_server.ledger(tc.model_id), [*calls, *more])


@pytest.mark.anyio
async def test_a_submit_whose_answer_never_arrives_stops_the_client_clearly(
    fresh_server: LocalServer,
) -> None:
    async with tinker.ServiceClient(base_url=fresh_server.url, api_key=fresh_server.api_key,
                                    retry=FAST.replace(max_retries=1)) as svc:
        tc = await svc.create_lora_training_client_async(MODEL, rank=4)
        first = await sequential_steps(tc, range(1))
        fresh_server.faults.add(r"/optim_step$", drop_connection="after", count=None)
        lost = await sequential_steps(tc, range(1, 2))
        fresh_server.faults.clear()
        sent = len(fresh_server.requests)
        after = await sequential_steps(tc, range(2, 3))
        assert len(fresh_server.requests) == sent  # refused at once, nothing sent
    assert lost[0].ok and isinstance(lost[1].error, APIConnectionError)
    # The client cannot know whether the server holds that step, so it stops, saying why.
    assert all(isinstance(c.error, TinkerError) and "sequence is unknown" in str(c.error)
               for c in after)
    ledger = fresh_server.ledger(tc.model_id)
    # The server admitted the lost optim step (every attempt reached the handler): it
    # was applied once, though the client raised.
    assert applied(ledger, lost[1]) == 1
    check_ledger(ledger, [*first, *lost, *after])


# ------------------------------------------------------------- truncated and garbage bodies

MANGLED = [
    # (route, mangle, skip, zstd): the first ``skip`` matching requests pass untouched.
    pytest.param(r"/forward_backward$", "truncate", 0, False),
    pytest.param(r"/forward_backward$", "garbage", 0, False),
    pytest.param(r"/forward_backward$", "cut", 0, False),
    pytest.param(r"/optim_step$", "truncate", 0, False),
    pytest.param(r"/optim_step$", "garbage", 0, False),
    pytest.param(r"/optim_step$", "cut", 0, False),
    pytest.param(r"/asample$", "truncate", 0, False),
    pytest.param(r"/asample$", "garbage", 0, False),
    pytest.param(r"/asample$", "cut", 0, True),
    # The first poll reads the forward_backward result (protobuf), the second the
    # optimizer step's (JSON).
    pytest.param(r"/retrieve_future$", "truncate", 0, False),
    pytest.param(r"/retrieve_future$", "garbage", 0, False),
    pytest.param(r"/retrieve_future$", "cut", 0, False),
    pytest.param(r"/retrieve_future$", "truncate", 1, False),
    pytest.param(r"/retrieve_future$", "garbage", 1, False),
    pytest.param(r"/retrieve_future$", "truncate", 0, True),
    pytest.param(r"/retrieve_future$", "garbage", 0, True),
    pytest.param(r"/retrieve_future$", "cut", 1, True),
    pytest.param(r"/retrieve_futures$", "truncate", 0, False),
    pytest.param(r"/retrieve_futures$", "garbage", 0, False),
    pytest.param(r"/retrieve_futures$", "cut", 0, True),
    pytest.param(r"/training_runs$", "truncate", 0, False),
    pytest.param(r"/training_runs$", "garbage", 0, True),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("route", "mangle", "skip", "zstd"), MANGLED)
async def test_truncated_and_garbage_bodies_end_in_a_result_or_a_typed_error(
    fresh_server: LocalServer, svc: tinker.ServiceClient, route: str, mangle: str, skip: int,
    zstd: bool,
) -> None:
    tc, sc = await _clients(svc)
    rule = fresh_server.faults.add(route, mangle=mangle, skip=skip, zstd=zstd,  # type: ignore[arg-type]
                                   count=1)
    calls = await sequential_steps(tc, range(2))
    sampled = await samples(sc, 8)
    runs = await settle(Call("ListTrainingRuns"), svc.create_rest_client().list_training_runs_async())
    assert rule.hits == 1
    everything = [*calls, *sampled, runs]
    assert all(c.ended for c in everything)
    if mangle == "cut" or zstd or route != r"/training_runs$":
        # A body cut short of its length (or one this client cannot even decompress) is
        # a broken connection: retried like one. An unreadable answer to a submit is
        # asked for again with the same seq id and idempotency key, and a poll is
        # simply sent again: every call recovers.
        assert_all_ok(everything)
    else:
        # A REST read answered with junk fails, typed (a control call is not re-sent).
        assert [c.ok for c in everything].count(False) == 1
    check_ledger(fresh_server.ledger(tc.model_id), calls)


@pytest.mark.anyio
async def test_one_unreadable_long_poll_answer_does_not_sink_the_sampler(
    fresh_server: LocalServer, svc: tinker.ServiceClient
) -> None:
    _, sc = await _clients(svc)
    fresh_server.faults.add(r"/retrieve_futures$", mangle="garbage", count=1)
    first = await samples(sc, 12)
    later = await samples(sc, 12)
    assert_all_ok([*first, *later])


# ------------------------------------------------------------------ silence: stalls, pauses


@pytest.mark.anyio
async def test_a_submit_that_is_never_answered_is_sent_again_and_applied_once(
    fresh_server: LocalServer,
) -> None:
    # Each attempt waits ``timeout`` for a first byte; the stalled one is given up and
    # the submit retried with the same seq id (the stalled one was never admitted).
    async with tinker.ServiceClient(base_url=fresh_server.url, api_key=fresh_server.api_key,
                                    retry=FAST, timeout=0.5, progress_timeout=GUARD_S) as svc:
        tc = await svc.create_lora_training_client_async(MODEL, rank=4)
        rules = [fresh_server.faults.add(route, stall=True, count=1, delay_s=GUARD_S)
                 for route in (r"/forward_backward$", r"/optim_step$")]
        calls = await pipelined_steps(tc, range(3))
    assert [rule.hits for rule in rules] == [1, 1]
    assert_all_ok(calls)
    check_ledger(fresh_server.ledger(tc.model_id), calls)


@pytest.mark.anyio
async def test_a_long_poll_that_never_answers_ends_the_wait_with_a_typed_timeout(
    fresh_server: LocalServer,
) -> None:
    async with tinker.ServiceClient(base_url=fresh_server.url, api_key=fresh_server.api_key,
                                    retry=FAST, progress_timeout=1.0) as svc:
        tc, sc = await _clients(svc)
        fresh_server.faults.add(POLLS, stall=True, count=None, delay_s=GUARD_S)
        waited = await pipelined_steps(tc, range(2))
        sampled = await samples(sc, 6)
        fresh_server.faults.clear()  # the server answers again: nothing is stuck
        later = await pipelined_steps(tc, range(2, 4))
        again = await samples(sc, 6)
    assert all(isinstance(c.error, APITimeoutError) for c in [*waited, *sampled])
    assert_all_ok([*later, *again])
    ledger = fresh_server.ledger(tc.model_id)
    # Only the results were lost: the server applied each waited-for step once.
    assert all(applied(ledger, c) == 1 for c in waited)
    check_ledger(ledger, [*waited, *later])


async def heartbeats_answered(proc: ServerProcess, since: float, at_least: int) -> int:
    """Wait (bounded) until the server has answered ``at_least`` heartbeats since ``since``."""
    count = 0
    for _ in range(int(GUARD_S / 0.1)):
        count = proc.count(r"/session_heartbeat$", status=200, since=since)
        if count >= at_least:
            break
        await asyncio.sleep(0.1)
    return count


PAUSE_S = 1.5  # the 30 s pause, scaled down
BEAT_S = 0.25
# Heartbeats sent during a pause wait in the server's socket and may be answered once it
# resumes; at most one per interval. Seeing more than that many answered after the pause
# shows the heartbeat itself came back.
BEATS_AFTER = int(PAUSE_S / BEAT_S) + 3


@pytest.fixture(scope="module")
def paused_server() -> Iterator[ServerProcess]:
    """A server in its own process, to be stopped with SIGSTOP."""
    with ServerProcess(session_timeout_s=60.0) as proc:
        yield proc


@pytest.mark.anyio
async def test_a_paused_server_is_waited_for_and_the_heartbeat_recovers(
    paused_server: ServerProcess,
) -> None:
    proc = paused_server
    async with tinker.ServiceClient(base_url=proc.url, api_key=proc.api_key, retry=FAST,
                                    heartbeat_interval=BEAT_S, progress_timeout=GUARD_S) as svc:
        tc, sc = await _clients(svc)
        first = await pipelined_steps(tc, range(2))
        proc.pause()  # SIGSTOP: connections are accepted by the kernel, nothing answers
        try:
            during = asyncio.ensure_future(pipelined_steps(tc, range(2, 5)))
            sampling = asyncio.ensure_future(samples(sc, 8))
            await asyncio.sleep(PAUSE_S)
        finally:
            proc.resume()
        resumed = time.time()
        calls = [*first, *await during]
        sampled = await sampling
        assert await heartbeats_answered(proc, resumed, BEATS_AFTER) >= BEATS_AFTER
        again = await samples(sc, 2)
    assert_all_ok([*calls, *sampled, *again])
    check_ledger(proc.ledger(tc.model_id), calls)


@pytest.mark.anyio
async def test_a_pause_longer_than_the_progress_timeout_is_a_typed_timeout_then_recovers(
    paused_server: ServerProcess,
) -> None:
    proc = paused_server
    rest = tinker.RestClient(base_url=proc.url, api_key=proc.api_key, control_timeout=1.0)
    async with tinker.ServiceClient(base_url=proc.url, api_key=proc.api_key, retry=FAST,
                                    heartbeat_interval=BEAT_S, progress_timeout=2.0) as svc:
        tc, sc = await _clients(svc)
        first = await pipelined_steps(tc, range(1))
        proc.pause()
        try:
            # Every call below is made while the server is stopped, and it stays stopped
            # until all of them have ended: nothing can have answered them.
            during, sampled, runs = await asyncio.gather(
                pipelined_steps(tc, range(1, 3)), samples(sc, 6),
                settle(Call("ListTrainingRuns"), rest.list_training_runs_async()))
        finally:
            proc.resume()
        resumed = time.time()
        assert await heartbeats_answered(proc, resumed, BEATS_AFTER) >= BEATS_AFTER
        again = await samples(sc, 4)
        after = await pipelined_steps(tc, range(3, 4))
    await rest.close_async()
    assert_all_ok([*first, *again])
    timed_out = [during[0], *sampled, runs]
    assert all(isinstance(c.error, APITimeoutError) for c in timed_out), [
        (c.kind, repr(c.error)) for c in timed_out]
    # The step that timed out was a submit that may sit in the server's socket, so the
    # client cannot know whether it will be applied: it stops taking steps and says so.
    assert all("sequence is unknown" in str(c.error) for c in [*during[1:], *after])
    ledger = proc.ledger(tc.model_id)
    # That submit is applied at most once (whether the resumed server read it before it
    # saw the client had gone is a race); the refused steps never reached the server.
    assert all(applied(ledger, c) == 0 for c in [*during[1:], *after])
    check_ledger(ledger, [*first, *during, *after])


# ------------------------------------------------------------------ sessions and restarts


@pytest.mark.anyio
async def test_an_expired_session_is_one_clear_error_from_every_method(
    fresh_server: LocalServer, svc: tinker.ServiceClient
) -> None:
    tc, sc = await _clients(svc)
    before = await pipelined_steps(tc, range(2))
    session_id = svc.session_id
    assert session_id is not None
    fresh_server.expire_session(session_id)
    gone = [
        await settle(Call("ForwardBackward", fb_tag(batch(2))),
                     _submitted(tc.forward_backward_async(batch(2), "cross_entropy"))),
        await settle(Call("OptimStep", lr_tag(lr_of(2))),
                     _submitted(tc.optim_step_async(t.AdamParams(learning_rate=lr_of(2))))),
        await settle(Call("Sample"), sc.sample_async(PROMPT, 1, PARAMS)),
        await settle(Call("SaveWeights", "after-expiry"),
                     _submitted(tc.save_state_async("after-expiry"))),
        await settle(Call("CreateModel"), svc.create_lora_training_client_async(MODEL, rank=4)),
        await settle(Call("CreateSampler"), svc.create_sampling_client_async(base_model=MODEL)),
    ]
    sent = len(fresh_server.requests)
    once_known = [
        await settle(Call("OptimStep", lr_tag(lr_of(3))),
                     _submitted(tc.optim_step_async(t.AdamParams(learning_rate=lr_of(3))))),
        await settle(Call("Sample"), sc.sample_async(PROMPT, 1, PARAMS)),
    ]
    assert_all_ok(before)
    assert all(isinstance(c.error, SessionExpiredError) for c in [*gone, *once_known])
    # Once the client knows the session is gone, it does not send anything more.
    session_bound = [r for r in fresh_server.requests[sent:] if "heartbeat" not in r.path]
    assert session_bound == []
    check_ledger(fresh_server.ledger(tc.model_id),
                 [*before, *gone[:2], gone[3], once_known[0]])


@pytest.mark.anyio
async def test_a_server_restarted_mid_run_ends_every_call(api_key: str) -> None:
    first = LocalServer(api_key=api_key).start_in_thread()
    port = first.port
    second: LocalServer | None = None
    try:
        async with tinker.ServiceClient(base_url=first.url, api_key=api_key, retry=FAST,
                                        heartbeat_interval=0.2, progress_timeout=5.0) as svc:
            tc, sc = await _clients(svc)
            done = await pipelined_steps(tc, range(3))
            # Steps in flight when the server goes: submitted, results not yet read.
            in_flight = asyncio.ensure_future(pipelined_steps(tc, range(3, 6)))
            await asyncio.sleep(0)
            first.stop()
            ledger_before = first.ledger(tc.model_id)
            second = LocalServer(api_key=api_key, port=port).start_in_thread()
            interrupted = await in_flight
            later = await pipelined_steps(tc, range(6, 8))
            sampled = await samples(sc, 4)
            runs = await settle(Call("ListTrainingRuns"),
                                svc.create_rest_client().list_training_runs_async())
        assert_all_ok(done)
        assert runs.ok  # a call that needs no session works on the new server
        assert all(c.ended for c in [*interrupted, *later, *sampled])
        check_ledger(ledger_before, [*done, *interrupted])
        assert second.ledger(tc.model_id) == []  # nothing applied to a model it never had
    finally:
        first.stop()
        if second is not None:
            second.stop()


@pytest.mark.anyio
async def test_a_restart_is_reported_as_a_lost_session(api_key: str) -> None:
    first = LocalServer(api_key=api_key).start_in_thread()
    second: LocalServer | None = None
    try:
        async with tinker.ServiceClient(base_url=first.url, api_key=api_key, retry=FAST,
                                        heartbeat_interval=0.2) as svc:
            tc, sc = await _clients(svc)
            await pipelined_steps(tc, range(1))
            port = first.port
            first.stop()
            second = LocalServer(api_key=api_key, port=port).start_in_thread()
            later = [*await pipelined_steps(tc, range(1, 2)), *await samples(sc, 2),
                     await settle(Call("CreateModel"),
                                  svc.create_lora_training_client_async(MODEL, rank=4))]
        # A reconnect would make these results; a report, one SessionExpiredError each.
        assert all(c.ok or isinstance(c.error, SessionExpiredError) for c in later)
    finally:
        first.stop()
        if second is not None:
            second.stop()


# ----------------------------------------------------------------------------- plain forms


def _in_thread(fn: Callable[[], T]) -> T:
    """Run blocking code in a daemon thread; a hang fails the test instead of blocking it."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised below, in the test's thread
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(GUARD_S)
    if thread.is_alive():
        pytest.fail(f"blocking calls did not end within the {GUARD_S:g} s guard (a hang)")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def test_plain_forms_under_mixed_faults(fresh_server: LocalServer) -> None:
    faults = fresh_server.faults
    faults.add(r"/forward_backward$", drop_connection="after", count=2)
    faults.add(r"/optim_step$", status=429, count=2)  # no Retry-After
    faults.add(r"/optim_step$", drop_connection=True, count=1, skip=3)
    faults.add(r"/retrieve_future$", mangle="cut", count=2, skip=1)
    faults.add(r"/asample$", status=503, count=3)
    faults.add(r"/session_heartbeat$", drop_connection=True, count=2)

    def script() -> tuple[str, list[Call], list[Call]]:
        svc = tinker.ServiceClient(base_url=fresh_server.url, api_key=fresh_server.api_key,
                                   retry=FAST, heartbeat_interval=0.2)
        try:
            tc = svc.create_lora_training_client(MODEL, rank=4).result()
            sc = svc.create_sampling_client(base_model=MODEL).result()
            calls: list[tuple[Call, tinker.APIFuture[Any]]] = []
            for step in range(4):  # pipelined: every future made before any is read
                data = batch(step)
                calls.append((Call("ForwardBackward", fb_tag(data)),
                              tc.forward_backward(data, "cross_entropy")))
                calls.append((Call("OptimStep", lr_tag(lr_of(step))),
                              tc.optim_step(t.AdamParams(learning_rate=lr_of(step)))))
            sample_futures = [(Call("Sample", str(i)), sc.sample(PROMPT, 1, PARAMS))
                              for i in range(6)]
            for call, future in [*calls, *sample_futures]:
                try:
                    call.end(value=future.result())
                except BaseException as exc:
                    assert_typed(call, exc)
                    call.end(error=exc)
            return tc.model_id, [c for c, _ in calls], [c for c, _ in sample_futures]
        finally:
            svc.close()

    model_id, calls, sampled = _in_thread(script)
    assert_all_ok([*calls, *sampled])
    check_ledger(fresh_server.ledger(model_id), calls)
