"""Admission control of sampling against the embedded server with a sampling capacity.

The server limits samples in flight (per model, per key) and answers above it as real
servers do; the client queues what the limit does not admit, adapts the limit to the
429s, and fails a call only when the caller's own deadline runs out. ``stats()`` is held
against the server's own counts (its request log and its slot counters). Wall time is
not asserted here: ``benchmarks/fanout.py`` measures it against the capacity-bound ideal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from _waiting import wait_until_async

import tinker_async as tinker
from tinker_async import _sampling_target
from tinker_async.local import LocalServer, SampleCapacity
from tinker_async.local._capacity import sample_slots

pytestmark = pytest.mark.anyio

MODEL = "local/byte-lm"
PARAMS = tinker.SamplingParams(max_tokens=4)
PROMPT = tinker.ModelInput.from_ints([72, 105, 32])


def CapacityServer(capacity: SampleCapacity, **kwargs: Any) -> LocalServer:
    """A zero-compute server with a sampling capacity (use with ``async with``)."""
    return LocalServer(zero_compute=True, max_recorded_requests=200_000,
                       sample_capacity=capacity, **kwargs)


def counts(srv: LocalServer) -> dict[str, Any]:
    return sample_slots(srv.context).counts()


def asample_statuses(srv: LocalServer) -> list[int | None]:
    return [r.status for r in srv.requests if r.path.endswith("/asample")]


async def sampler(svc: tinker.ServiceClient, **kwargs: Any) -> tinker.SamplingClient:
    sc = await svc.create_sampling_client_async(base_model=MODEL)
    for name, value in kwargs.items():
        getattr(sc, f"set_{name}")(value)
    return sc


# ------------------------------------------------------------------------------ fan-out


async def test_ten_thousand_samples_at_capacity_64_complete_without_failures() -> None:
    n = 10_000
    async with CapacityServer(SampleCapacity(per_model=64, service_time_s=0.005)) as srv, \
            tinker.ServiceClient(base_url=srv.url, api_key=srv.api_key) as svc:
        sc = await sampler(svc)
        results = await asyncio.gather(*(sc.sample_async(PROMPT, 1, PARAMS) for _ in range(n)),
                                       return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        assert not failures, f"{len(failures)} failed, the first: {failures[0]!r}"
        assert all(len(r.sequences) == 1 for r in results)  # type: ignore[union-attr]

        stats = sc.stats()
        server = counts(srv)
        statuses = asample_statuses(srv)
        # The client's counts are the server's.
        assert stats.completed == n == server["admitted"] == server["finished"]
        assert stats.requests == len(statuses)
        assert stats.rate_limited == statuses.count(429) == server["refused"]
        assert statuses.count(200) == n and set(statuses) <= {200, 429}
        assert stats.failed == stats.timeouts == 0
        assert stats.in_flight == stats.queued == 0 == server["in_flight"]
        # Few 429s: the client queued the fan-out instead of sending it.
        assert stats.rate_limited < 0.05 * stats.requests, stats
        assert stats.retries == stats.rate_limited  # each 429 resubmitted once
        # The server was filled to its capacity and never beyond.
        assert server["peak_by_model"] == {MODEL: 64}
        assert stats.latency_p50 is not None and stats.queue_wait_mean is not None
        assert svc.stats().completed == n


async def test_a_fixed_max_concurrency_is_never_exceeded() -> None:
    async with CapacityServer(SampleCapacity(per_model=32, service_time_s=0.01)) as srv, \
            tinker.ServiceClient(base_url=srv.url, api_key=srv.api_key) as svc:
        sc = await sampler(svc, max_concurrency=8)
        await asyncio.gather(*(sc.sample_async(PROMPT, 1, PARAMS) for _ in range(300)))
        stats = sc.stats()
        assert (stats.limit, stats.limiter, stats.completed) == (8, "fixed", 300)
        assert stats.rate_limited == 0 and counts(srv)["peak_by_model"] == {MODEL: 8}
        sc.set_max_concurrency(None)
        assert sc.stats().limiter == "adaptive"


async def test_each_key_has_its_own_capacity() -> None:
    async with CapacityServer(SampleCapacity(per_key=4, service_time_s=0.01)) as srv, \
            tinker.ServiceClient(base_url=srv.url, api_key="tml-key-one-0123456789") as one, \
            tinker.ServiceClient(base_url=srv.url, api_key="tml-key-two-0123456789") as two:
        first, second = await sampler(one), await sampler(two)
        calls = [sc.sample_async(PROMPT, 1, PARAMS) for sc in (first, second) for _ in range(150)]
        await asyncio.gather(*calls)
        peaks = counts(srv)["peak_by_key"]
        assert sorted(peaks.values()) == [4, 4]  # two keys, each filled to its capacity
        both = first.stats().rate_limited + second.stats().rate_limited
        assert both == counts(srv)["refused"]
        assert first.stats().completed == second.stats().completed == 150


# ------------------------------------------------------------------------------ deadlines


async def test_only_the_callers_deadline_fails_a_rate_limited_call(
    fresh_server: LocalServer, api_key: str,
) -> None:
    # A server that refuses every sample for now: the call waits, resubmits, and ends
    # only at its own call_timeout, with a RateLimitError that says what happened.
    fresh_server.faults.add(r"/asample$", status=429, retry_after=0.05, count=None)
    async with tinker.ServiceClient(base_url=fresh_server.url, api_key=api_key,
                                    call_timeout=3.0) as svc:
        sc = await sampler(svc)  # its own call_timeout; 3 s: margin for a loaded machine
        with pytest.raises(tinker.RateLimitError) as info:
            await sc.sample_async(PROMPT, 1, PARAMS)
    message = str(info.value)
    assert "gave up after" in message and "call_timeout" in message
    assert "the server last said" in message and "429" in message
    assert "Retry-After 0.05 s" in message
    stats = sc.stats()
    assert stats.timeouts == stats.failed == 1 and stats.completed == 0
    assert stats.rate_limited == fresh_server.count(r"/asample$") >= 2


async def test_a_call_queued_in_the_client_fails_at_its_deadline_and_says_so() -> None:
    from tinker_async._admission import Outcome

    async with CapacityServer(SampleCapacity(per_model=4)) as srv, \
            tinker.ServiceClient(base_url=srv.url, api_key=srv.api_key,
                                 call_timeout=0.5) as svc:
        sc = await sampler(svc, max_concurrency=1)
        held = await sc.limiter.acquire()  # the one slot, taken by someone else
        with pytest.raises(tinker.RateLimitError) as info:
            await sc.sample_async(PROMPT, 1, PARAMS)
        message = str(info.value)
        assert "1 in flight, 0 queued in the client, limit 1" in message
        assert "call_timeout" in message and "has not refused" in message
        assert srv.count(r"/asample$") == 0  # it never reached the server
        sc.limiter.release(held, Outcome.CANCELLED)
        await sc.sample_async(PROMPT, 1, PARAMS)  # the slot is free again
        stats = sc.stats()
        assert (stats.timeouts, stats.failed, stats.completed) == (1, 1, 1)
        assert (stats.in_flight, stats.queued) == (0, 0)


async def test_cancelled_calls_leave_the_queue() -> None:
    async with CapacityServer(SampleCapacity(per_model=4, service_time_s=0.3)) as srv, \
            tinker.ServiceClient(base_url=srv.url, api_key=srv.api_key) as svc:
        sc = await sampler(svc, max_concurrency=1)
        calls = [asyncio.ensure_future(sc.sample_async(PROMPT, 1, PARAMS)) for _ in range(5)]
        for _ in range(200):  # until the first is on the server and the rest queue
            if sc.stats().queued == 4:
                break
            await asyncio.sleep(0.01)
        for call in calls[1:]:
            call.cancel()
        await asyncio.gather(*calls[1:], return_exceptions=True)
        assert sc.stats().queued == 0
        await calls[0]
        await sc.sample_async(PROMPT, 1, PARAMS)  # the slot came back
        stats = sc.stats()
        assert (stats.completed, stats.failed, stats.in_flight) == (2, 0, 0)
        assert srv.count(r"/asample$") == 2  # the cancelled ones were never sent


# ----------------------------------------------------------------------------- state


async def test_queue_state_changes_are_logged_once_and_reach_the_hooks(
    fresh_server: LocalServer, service: tinker.ServiceClient,
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Long enough that the sample (3 refusals, then served) is certainly back before the
    # paused state may lapse, even on a loaded machine; the wait below is a hang guard.
    monkeypatch.setattr(_sampling_target, "RESUME_AFTER_S", 3.0)
    sc = await sampler(service)
    heard: list[tuple[tinker.QueueState, str | None]] = []
    hooked: list[tuple[tinker.QueueState, str | None]] = []
    sc.set_queue_state_callback(lambda state, reason: heard.append((state, reason)))
    def hook(queue_state: tinker.QueueState, queue_state_reason: str | None) -> None:
        hooked.append((queue_state, queue_state_reason))

    sc.on_queue_state_change = hook  # type: ignore[method-assign]
    fresh_server.faults.add(r"/asample$", status=429, retry_after=0, count=3)
    with caplog.at_level(logging.INFO, logger="tinker_async"):
        await sc.sample_async(PROMPT, 1, PARAMS)
        assert sc.stats().queue_state is tinker.QueueState.PAUSED_RATE_LIMIT
        # back to active once the server has served it a while
        await wait_until_async(lambda: sc.queue_state is tinker.QueueState.ACTIVE,
                               "the queue state to turn active again")
    paused = (tinker.QueueState.PAUSED_RATE_LIMIT, "concurrent sampler weights limit hit")
    assert heard == hooked == [paused, (tinker.QueueState.ACTIVE, None)]
    changes = [r for r in caplog.records if r.levelno == logging.INFO
               and sc.sampling_session_id in r.getMessage() and "sampling " in r.getMessage()]
    assert len(changes) == 2, [r.getMessage() for r in changes]
    assert "paused_rate_limit" in changes[0].getMessage()
    assert "active again" in changes[1].getMessage()
    assert sc.stats().rate_limited == 3


# ----------------------------------------------------------------------------- server


async def test_the_server_answers_above_capacity_like_a_real_server() -> None:
    body = {"base_model": MODEL, "num_samples": 1, "type": "sample",
            "prompt": {"chunks": [{"type": "encoded_text", "tokens": [72, 105]}]},
            "sampling_params": {"max_tokens": 2, "temperature": 1.0, "top_p": 1.0,
                                "top_k": -1}}
    backpressure = {"X-Tinker-Sampling-Backpressure": "1", "X-API-Key": "tml-raw-0123456789"}
    async with CapacityServer(SampleCapacity(per_model=1, service_time_s=60.0)) as srv, \
            aiohttp.ClientSession() as http:
        url = f"{srv.url}/api/v1/asample"
        async with http.post(url, json=body, headers=backpressure) as first:
            assert first.status == 200
            first_id = (await first.json())["request_id"]
        async with http.post(url, json=body, headers=backpressure) as refused:
            assert refused.status == 429
            assert refused.headers["Retry-After"] == "60"
            assert refused.headers["retry-after-ms"] == "60000.000"
            assert refused.headers["X-Tinker-Sampling-Backpressure"] == "1"
            answer = await refused.json()
        assert answer["queue_state"] == "paused_rate_limit"
        assert "capacity 1" in answer["queue_state_reason"] and "Retry later" in answer["detail"]
        # Without the header the sample is accepted and waits in the server's queue.
        async with http.post(url, json=body, headers={"X-API-Key": "tml-raw-0123456789"}) as queued:
            assert queued.status == 200
        assert (counts(srv)["in_flight"], counts(srv)["queued"]) == (1, 1)
        async with http.post(f"{srv.url}/api/v1/cancel_future", json={"request_id": first_id},
                             headers=backpressure) as cancelled:
            assert cancelled.status == 204
        for _ in range(100):  # the queued one takes the freed slot
            if counts(srv)["queued"] == 0:
                break
            await asyncio.sleep(0.01)
        assert (counts(srv)["in_flight"], counts(srv)["queued"]) == (1, 0)
        assert counts(srv)["refused"] == 1 and counts(srv)["admitted"] == 2


# ---------------------------------------------------------------------- OpenTelemetry

_OTEL_SCRIPT = """
import asyncio
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

spans = InMemorySpanExporter()
tracer_provider = TracerProvider()
tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
trace.set_tracer_provider(tracer_provider)
reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

import tinker_async as tinker
from tinker_async.local import LocalServer

async def main():
    async with LocalServer(zero_compute=True) as srv, tinker.ServiceClient(
            base_url=srv.url, api_key=srv.api_key) as svc:
        sc = await svc.create_sampling_client_async(base_model="local/byte-lm")
        prompt = tinker.ModelInput.from_ints([72, 105])
        await asyncio.gather(*(sc.sample_async(prompt, 1, tinker.SamplingParams(max_tokens=2))
                               for _ in range(5)))
        found = [s for s in spans.get_finished_spans() if s.name == "tinker_async.sample"]
        print("spans", len(found), found[0].attributes["tinker.outcome"],
              found[0].attributes["tinker.sampling_session_id"] == sc.sampling_session_id)
        values = {}
        for rm in reader.get_metrics_data().resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    for point in metric.data.data_points:
                        values[metric.name] = getattr(point, "value", getattr(point, "count", None))
        print("completed", values["tinker_async.sampling.completed"])
        print("duration", values["tinker_async.sampling.duration"])
        print("limit", values["tinker_async.sampling.limit"] >= 1)

asyncio.run(main())
"""


def test_opentelemetry_spans_and_metrics_when_configured(
    run_script: Callable[..., str],
) -> None:
    pytest.importorskip("opentelemetry.sdk")
    out = run_script(_OTEL_SCRIPT)
    assert "spans 5 ok True" in out, out
    assert "completed 5" in out and "duration 5" in out and "limit True" in out, out


def test_sampling_works_without_opentelemetry(run_script: Callable[..., str]) -> None:
    out = run_script("""
import asyncio, sys
sys.modules["opentelemetry"] = None  # as if the package were not installed
import tinker_async as tinker
from tinker_async import _otel
from tinker_async.local import LocalServer

async def main():
    async with LocalServer(zero_compute=True) as srv, tinker.ServiceClient(
            base_url=srv.url, api_key=srv.api_key) as svc:
        sc = await svc.create_sampling_client_async(base_model="local/byte-lm")
        await sc.sample_async(tinker.ModelInput.from_ints([72]), 1,
                              tinker.SamplingParams(max_tokens=2))
        print("completed", sc.stats().completed, "otel", _otel.get())

asyncio.run(main())
""")
    assert "completed 1 otel None" in out, out


# ------------------------------------------------------------------------------ misc


async def test_stats_repr_is_readable(service: tinker.ServiceClient) -> None:
    sc = await sampler(service)
    await sc.sample_async(PROMPT, 1, PARAMS)
    text = repr(sc.stats())
    assert text.startswith(f"SamplingStats({sc.sampling_session_id}: in_flight=0, queued=0")
    assert "completed=1" in text and "rate_limited=0" in text and "ms" in text


async def test_a_plugged_limiter_is_used(service: tinker.ServiceClient) -> None:
    from tinker_async._admission import FixedLimiter, Outcome, Permit, Signal

    class Counting(FixedLimiter):
        def __init__(self) -> None:
            super().__init__(2)
            self.outcomes: list[Outcome] = []
            self.signals: list[Signal] = []

        def signal(self, permit: Permit | None, signal: Signal) -> None:
            self.signals.append(signal)
            super().signal(permit, signal)

        def release(self, permit: Permit, outcome: Outcome) -> None:
            self.outcomes.append(outcome)
            super().release(permit, outcome)

    sc = await sampler(service)
    limiter = Counting()
    sc.set_limiter(limiter)
    await asyncio.gather(*(sc.sample_async(PROMPT, 1, PARAMS) for _ in range(6)))
    assert limiter.outcomes == [Outcome.OK] * 6 and limiter.signals == [Signal.ADMITTED] * 6
    assert sc.stats().limiter == "Counting" and sc.limiter is limiter
    with pytest.raises(TypeError, match="Limiter"):
        sc.set_limiter(object())  # type: ignore[arg-type]


async def test_a_sample_queued_on_the_server_polls_as_paused() -> None:
    body = {"base_model": MODEL, "num_samples": 1, "type": "sample",
            "prompt": {"chunks": [{"type": "encoded_text", "tokens": [72, 105]}]},
            "sampling_params": {"max_tokens": 2, "temperature": 1.0, "top_p": 1.0,
                                "top_k": -1}}
    async with CapacityServer(SampleCapacity(per_model=1, service_time_s=60.0),
                              poll_hold_s=0.05) as srv, aiohttp.ClientSession() as http:
        ids = []
        for _ in range(2):  # no backpressure header: both accepted, the second queued
            async with http.post(f"{srv.url}/api/v1/asample", json=body) as resp:
                ids.append((await resp.json())["request_id"])
        polls = []
        for request_id in ids:
            async with http.post(f"{srv.url}/api/v1/retrieve_future",
                                 json={"request_id": request_id}) as resp:
                polls.append(await resp.json())
    assert [p["type"] for p in polls] == ["try_again", "try_again"]
    assert polls[0]["queue_state"] == "active"  # running
    assert polls[1]["queue_state"] == "paused_rate_limit"  # waiting for a slot
    assert "waiting for a slot" in polls[1]["queue_state_reason"]
