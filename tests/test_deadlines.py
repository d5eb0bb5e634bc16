"""Every call ends, says why, and shows that it is waiting (issue 11).

Limits are set small here (fractions of a second) so that the tests are quick; the
behaviour is the same at the defaults. Nothing here asserts how long anything took:
the assertions are on what the call raised, what it logged, and what the server saw.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

import tinker_async as tinker
from tinker_async.local import LocalServer

MODEL = "local/byte-lm"
PROMPT = tinker.ModelInput.from_ints([1, 2, 3])
PARAMS = tinker.SamplingParams(max_tokens=3, temperature=0.0)
GUARD_S = 60  # hang guard only: every call below ends long before it

pytestmark = pytest.mark.anyio


async def test_a_control_call_to_a_silent_server_ends_with_its_limit_named(
    fresh_server: LocalServer, caplog: pytest.LogCaptureFixture
) -> None:
    rest = tinker.RestClient(base_url=fresh_server.url, api_key=fresh_server.api_key,
                             control_timeout=1.0)
    fresh_server.faults.add(r"/training_runs$", stall=True, count=None, delay_s=GUARD_S)
    with caplog.at_level(logging.WARNING, logger="tinker_async"), \
            pytest.raises(tinker.APITimeoutError) as caught:
        await asyncio.wait_for(rest.list_training_runs_async(), GUARD_S)
    message = str(caught.value)
    assert "control_timeout of RestClient.list_training_runs ran out" in message
    assert "control_timeout=..." in message  # says what to change
    # Each attempt may use half the limit, so one retry fits (on a loaded machine the
    # first attempt may take the whole limit); a retry is logged, naming the call.
    assert 1 <= fresh_server.count(r"/training_runs$") <= 2
    retries = [r for r in caplog.records if "failed after" in r.getMessage()]
    assert len(retries) <= 1
    assert all(r.levelno == logging.WARNING and "RestClient.list_training_runs: GET "
               "/training_runs: attempt 1" in r.getMessage() for r in retries)
    await rest.close_async()


@pytest.mark.parametrize("route", ["retrieve_future", "retrieve_futures"])
async def test_a_sample_fails_when_the_server_shows_no_sign_of_life(
    fresh_server: LocalServer, route: str,
) -> None:
    # Both ways of waiting: a held poll per sample, and the session's batch long-poll.
    direct = 0 if route == "retrieve_futures" else 99
    svc = tinker.ServiceClient(base_url=fresh_server.url, api_key=fresh_server.api_key,
                               progress_timeout=0.5,
                               polling=tinker.PollTuning(direct_fetch_max=direct))
    sc = await svc.create_sampling_client_async(base_model=MODEL)
    fresh_server.faults.add(rf"/{route}$", stall=True, count=None, delay_s=GUARD_S)
    with pytest.raises(tinker.APITimeoutError, match=r"(?i)no answer from the server .*"
                       r"progress_timeout"):
        await asyncio.wait_for(sc.sample_async(PROMPT, 1, PARAMS), GUARD_S)
    fresh_server.faults.clear()
    result = await asyncio.wait_for(sc.sample_async(PROMPT, 1, PARAMS), GUARD_S)
    assert len(result.sequences) == 1  # nothing stuck: the next sample goes through
    await svc.close_async()


async def test_call_timeout_bounds_a_sample_on_a_live_server(
    fresh_server: LocalServer,
) -> None:
    async with tinker.ServiceClient(
        base_url=fresh_server.url, api_key=fresh_server.api_key, call_timeout=0.5,
        polling=tinker.PollTuning(direct_fetch_max=0),  # wait on the batch long-poll
    ) as svc:
        sc = await svc.create_sampling_client_async(base_model=MODEL)
        # The server holds every long-poll: alive, but the sample never completes.
        fresh_server.faults.add(r"/retrieve_futures$", stall=True, count=None, delay_s=GUARD_S)
        with pytest.raises(tinker.APITimeoutError,
                           match=r"call_timeout of SamplingClient\.sample ran out"):
            await asyncio.wait_for(sc.sample_async(PROMPT, 1, PARAMS), GUARD_S)


def test_the_typed_timeout_survives_every_way_of_reading_a_result(
    fresh_server: LocalServer,
) -> None:
    svc = tinker.ServiceClient(base_url=fresh_server.url, api_key=fresh_server.api_key,
                               progress_timeout=0.5)
    sc = svc.create_sampling_client(base_model=MODEL).result(GUARD_S)
    fresh_server.faults.add(r"/retrieve_futures?$", stall=True, count=None, delay_s=GUARD_S)
    futures = [sc.sample(PROMPT, 1, PARAMS) for _ in range(4)]
    with pytest.raises(tinker.APITimeoutError, match="progress_timeout"):
        futures[0].result()
    with pytest.raises(tinker.APITimeoutError, match="progress_timeout"):
        futures[1].result(GUARD_S)
    with pytest.raises(tinker.APITimeoutError, match="progress_timeout"):
        futures[2].future().result(GUARD_S)

    async def read_async() -> None:
        with pytest.raises(tinker.APITimeoutError, match="progress_timeout"):
            await futures[3].result_async(GUARD_S)

    asyncio.run(read_async())
    fresh_server.faults.clear()
    svc.close()


def test_a_result_timeout_that_runs_out_says_what_it_waited_for(
    fresh_server: LocalServer,
) -> None:
    svc = tinker.ServiceClient(base_url=fresh_server.url, api_key=fresh_server.api_key)
    sc = svc.create_sampling_client(base_model=MODEL).result(GUARD_S)
    rule = fresh_server.faults.add(r"/retrieve_futures?$", stall=True, count=None,
                                   delay_s=GUARD_S)
    future = sc.sample(PROMPT, 1, PARAMS)
    with pytest.raises(TimeoutError) as caught:
        future.result(timeout=0.2)
    assert not isinstance(caught.value, tinker.APITimeoutError)  # ours ran out, not the call
    assert "SamplingClient.sample: the result was not ready within 0.2 s" in str(caught.value)
    fresh_server.faults.remove(rule)
    fresh_server.faults.release_stalled()
    assert len(future.result(GUARD_S).sequences) == 1  # the call went on
    svc.close()


async def test_a_long_wait_logs_what_it_waits_for(
    fresh_server: LocalServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with tinker.ServiceClient(base_url=fresh_server.url, api_key=fresh_server.api_key,
                                    waiting_log_after=0.2) as svc:
        sc = await svc.create_sampling_client_async(base_model=MODEL)
        # Four polls are held a while and answered "not ready yet" (408): alive, waiting.
        fresh_server.faults.add(r"/retrieve_future$", status=408, delay_s=0.1, count=4)
        with caplog.at_level(logging.WARNING, logger="tinker_async"):
            result = await asyncio.wait_for(sc.sample_async(PROMPT, 1, PARAMS), GUARD_S)
    assert len(result.sequences) == 1
    waiting = [r.getMessage() for r in caplog.records if "still waiting" in r.getMessage()]
    assert waiting, "a wait past waiting_log_after logs"
    assert "SamplingClient.sample: still waiting for Sample" in waiting[0]


@pytest.mark.parametrize("value", ["soon", "Mon, 99 Foo 2026 25:61:00 GMT", "-3", "1e9"])
async def test_a_retry_after_header_that_makes_no_sense_is_ignored(
    fresh_server: LocalServer, value: str
) -> None:
    rest = tinker.RestClient(base_url=fresh_server.url, api_key=fresh_server.api_key)
    fresh_server.faults.add(r"/training_runs$", status=503, headers={"Retry-After": value})
    runs = await asyncio.wait_for(rest.list_training_runs_async(), GUARD_S)
    assert runs.training_runs is not None
    assert fresh_server.count(r"/training_runs$") == 2  # retried once, on our own back-off
    await rest.close_async()
