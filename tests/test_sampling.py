"""SamplingClient against the embedded server: parameters, logprobs, retries, polling, pickling.

Both forms: ``await sc.sample_async(...)`` and plain ``sc.sample(...)`` (an APIFuture, awaited
or ``.result()``-ed). The server's request log shows what went on the wire. The
high-concurrency tests use zero-compute servers, where a sample costs the server nothing,
so what is measured is the client.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import pickle
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from _waiting import HANG_GUARD_S, wait_until_async

import tinker_async as tinker
from tinker_async._config import RetryPolicy
from tinker_async.local import LocalServer

pytestmark = pytest.mark.anyio

MODEL = "local/byte-lm"
PROMPT_TEXT = "The cat sat on the"
GREEDY = tinker.SamplingParams(max_tokens=8, temperature=0.0)


def asample_bodies(srv: LocalServer) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in srv.requests if r.path.endswith("/asample")]


@pytest.fixture
async def sc(service: tinker.ServiceClient) -> tinker.SamplingClient:
    return await service.create_sampling_client_async(base_model=MODEL)


@pytest.fixture
def prompt(sc: tinker.SamplingClient) -> tinker.ModelInput:
    return tinker.ModelInput.from_ints(list(sc.get_tokenizer().encode(PROMPT_TEXT)))


@pytest.fixture(scope="module")
def zero_servers(api_key_module: str) -> Iterator[dict[bool, LocalServer]]:
    """Zero-compute servers with and without the batch long-poll ``retrieve_futures``."""
    with LocalServer(api_key=api_key_module, zero_compute=True).in_thread() as batch, \
            LocalServer(api_key=api_key_module, zero_compute=True,
                        client_config={"sample_use_retrieve_futures": False}).in_thread() as each:
        yield {True: batch, False: each}


@pytest.fixture(scope="module")
def api_key_module() -> str:
    return "tml-sampling-tests-0123456789"


# ----------------------------------------------------------------------------- basics


async def test_sample_both_forms(sc: tinker.SamplingClient, prompt: tinker.ModelInput,
                                 fresh_server: LocalServer) -> None:
    assert sc.get_base_model() == MODEL
    a = await sc.sample_async(prompt, 2, GREEDY)
    fut = sc.sample(prompt, 2, GREEDY)
    assert isinstance(fut, tinker.APIFuture)
    b = await fut
    assert isinstance(a, tinker.SampleResponse) and len(a.sequences) == 2
    assert [s.tokens for s in a.sequences] == [s.tokens for s in b.sequences]
    for seq in a.sequences:
        assert len(seq.tokens) == 8 and seq.stop_reason == "length"
        assert seq.logprobs is not None and len(seq.logprobs) == 8
        assert all(lp <= 0 for lp in seq.logprobs)
    # Seq ids of the original client count from 0, one per call.
    assert [b["seq_id"] for b in asample_bodies(fresh_server)] == [0, 1]
    assert all(b["sampling_session_id"] == sc.sampling_session_id
               for b in asample_bodies(fresh_server))


async def test_num_samples_max_tokens_and_temperature(sc: tinker.SamplingClient,
                                                      prompt: tinker.ModelInput) -> None:
    r = await sc.sample_async(prompt, 5, tinker.SamplingParams(max_tokens=3, temperature=1.0))
    assert len(r.sequences) == 5 and all(len(s.tokens) <= 3 for s in r.sequences)
    greedy = await sc.sample_async(prompt, 3, GREEDY)
    assert len({tuple(s.tokens) for s in greedy.sequences}) == 1
    hot = await sc.sample_async(prompt, 6, tinker.SamplingParams(max_tokens=12, temperature=1.5))
    assert len({tuple(s.tokens) for s in hot.sequences}) > 1
    # top_k=1 and a tiny top_p both keep only the most likely token: greedy again.
    top_k = await sc.sample_async(prompt, 2, tinker.SamplingParams(max_tokens=8, top_k=1))
    top_p = await sc.sample_async(prompt, 2, tinker.SamplingParams(max_tokens=8, top_p=1e-6))
    for resp in (top_k, top_p):
        assert all(s.tokens == greedy.sequences[0].tokens for s in resp.sequences)


async def test_seed_makes_samples_reproducible(sc: tinker.SamplingClient,
                                               prompt: tinker.ModelInput) -> None:
    def params(seed: int) -> tinker.SamplingParams:
        return tinker.SamplingParams(max_tokens=16, temperature=1.0, seed=seed)

    one = await sc.sample_async(prompt, 2, params(7))
    two = await sc.sample(prompt, 2, params(7))
    assert [s.tokens for s in one.sequences] == [s.tokens for s in two.sequences]
    others = [await sc.sample_async(prompt, 1, params(seed)) for seed in (1, 2, 3)]
    assert len({tuple(r.sequences[0].tokens) for r in [one, *others]}) > 1


async def test_stop_tokens_and_strings(sc: tinker.SamplingClient,
                                       prompt: tinker.ModelInput) -> None:
    tok = sc.get_tokenizer()
    greedy = (await sc.sample_async(prompt, 1, tinker.SamplingParams(max_tokens=12,
                                                                     temperature=0.0)))
    tokens = greedy.sequences[0].tokens
    stop_token = tokens[3]
    first = tokens.index(stop_token)
    by_token = await sc.sample_async(
        prompt, 1, tinker.SamplingParams(max_tokens=12, temperature=0.0, stop=[stop_token]))
    seq = by_token.sequences[0]
    assert seq.stop_reason == "stop" and seq.tokens == tokens[: first + 1]
    stop_text = tok.decode([stop_token])
    by_text = await sc.sample_async(
        prompt, 1, tinker.SamplingParams(max_tokens=12, temperature=0.0, stop=[stop_text]))
    assert by_text.sequences[0].stop_reason == "stop"
    assert tok.decode(by_text.sequences[0].tokens).endswith(stop_text)
    assert len(by_text.sequences[0].tokens) <= first + 1


async def test_prompt_and_topk_logprobs(sc: tinker.SamplingClient,
                                        prompt: tinker.ModelInput) -> None:
    n = prompt.length
    r = await sc.sample_async(prompt, 1, GREEDY, include_prompt_logprobs=True,
                              topk_prompt_logprobs=3, topk_sample_logprobs=2)
    assert r.prompt_logprobs is not None and len(r.prompt_logprobs) == n
    assert r.prompt_logprobs[0] is None
    assert all(lp is not None and lp <= 0 for lp in r.prompt_logprobs[1:])
    topk_prompt = r.topk_prompt_logprobs
    assert topk_prompt is not None and len(topk_prompt) == n
    for pos in topk_prompt[1:]:
        assert pos is not None and len(pos) == 3
        lps = [lp for _, lp in pos]
        assert lps == sorted(lps, reverse=True)
    seq = r.sequences[0]
    assert seq.topk_logprobs is not None and len(seq.topk_logprobs) == len(seq.tokens)
    for token, lp, top in zip(seq.tokens, seq.logprobs or [], seq.topk_logprobs, strict=True):
        assert top is not None and len(top) == 2
        assert top[0][0] == token and top[0][1] == pytest.approx(lp, abs=1e-5)  # greedy
    # compute_logprobs is the same prompt scoring, in both forms.
    lp_async = await sc.compute_logprobs_async(prompt)
    lp_plain = await sc.compute_logprobs(prompt)
    assert lp_async[0] is None and lp_plain[0] is None
    assert lp_async[1:] == pytest.approx(r.prompt_logprobs[1:], abs=1e-5)
    assert lp_plain == lp_async
    last = await sc.compute_logprobs_async(prompt, prompt_logprobs_last_n=3)
    assert last[-3:] == pytest.approx(lp_async[-3:], abs=1e-5)


async def test_sequence_ids_are_stamped(sc: tinker.SamplingClient,
                                        prompt: tinker.ModelInput) -> None:
    r = await sc.sample_async(prompt, 3, GREEDY)
    ids = [s.sequence_id for s in r.sequences]
    assert all(isinstance(i, str) and i for i in ids) and len(set(ids)) == 3
    # the server's ids: "<request id>:<index>"
    assert len({i.rsplit(":", 1)[0] for i in ids if i}) == 1
    assert [i.rsplit(":", 1)[1] for i in ids if i] == ["0", "1", "2"]


async def test_bad_arguments_fail_before_sending(sc: tinker.SamplingClient,
                                                 prompt: tinker.ModelInput,
                                                 fresh_server: LocalServer) -> None:
    fresh_server.clear_requests()
    bad: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((prompt, 0, GREEDY), {}),
        (([1, 2, 3], 1, GREEDY), {}),
        ((prompt, 1, tinker.SamplingParams(top_p=0.0)), {}),
        ((prompt, 1, tinker.SamplingParams(temperature=-1.0)), {}),
        ((prompt, 1, tinker.SamplingParams(top_k=0)), {}),
        ((prompt, 1, GREEDY), {"prompt_logprobs_last_n": 2}),
        ((prompt, 1, GREEDY), {"topk_sample_logprobs": -1}),
        ((prompt, 1, GREEDY), {"target_prompt_logprobs": tinker.TensorData.from_numpy(
            __import__("numpy").zeros(3, dtype="float32"))}),
    ]
    for args, kwargs in bad:
        with pytest.raises(tinker.InvalidRequestError):
            await sc.sample_async(*args, **kwargs)
        with pytest.raises(tinker.InvalidRequestError):
            await sc.sample(*args, **kwargs)
    assert fresh_server.requests == []
    # No seq id was used by them.
    await sc.sample_async(prompt, 1, GREEDY)
    assert [b["seq_id"] for b in asample_bodies(fresh_server)] == [0]


async def test_create_sampling_client_arguments(service: tinker.ServiceClient,
                                                fresh_server: LocalServer) -> None:
    with pytest.raises(tinker.InvalidRequestError):
        await service.create_sampling_client_async()
    with pytest.raises(tinker.InvalidPathError):
        await service.create_sampling_client_async(model_path="s3://bucket/weights")
    plain = await service.create_sampling_client(base_model=MODEL)
    assert isinstance(plain, tinker.SamplingClient) and plain.get_base_model() == MODEL
    assert fresh_server.count("/create_sampling_session$") == 1


# ------------------------------------------------------------------------ retries and errors


async def test_429_on_asample_is_retried_with_the_same_seq_id(
    sc: tinker.SamplingClient, prompt: tinker.ModelInput, fresh_server: LocalServer
) -> None:
    fresh_server.faults.add(r"/asample$", status=429, count=3, retry_after=0)
    r = await asyncio.wait_for(sc.sample_async(prompt, 1, GREEDY), 60)
    assert len(r.sequences) == 1
    asamples = [q for q in fresh_server.requests if q.path.endswith("/asample")]
    assert [q.status for q in asamples] == [429, 429, 429, 200]
    assert {json.loads(q.body)["seq_id"] for q in asamples} == {0}
    assert len({q.headers["X-Idempotency-Key"] for q in asamples}) == 1
    assert all(q.headers["X-Tinker-Sampling-Backpressure"] == "1" for q in asamples)


SamplerMaker = Callable[..., Awaitable[tinker.SamplingClient]]


@pytest.fixture
async def tuned(fresh_server: LocalServer) -> AsyncIterator[SamplerMaker]:
    """Makes a SamplingClient whose ServiceClient polls with ``PollTuning(**changes)``
    (and other client options); they are closed after the test."""
    services: list[tinker.ServiceClient] = []

    async def make(*, progress_timeout: float | None = None,
                   **changes: Any) -> tinker.SamplingClient:
        svc = tinker.ServiceClient(base_url=fresh_server.url, api_key=fresh_server.api_key,
                                   polling=tinker.PollTuning(**changes),
                                   progress_timeout=progress_timeout)
        services.append(svc)
        return await svc.create_sampling_client_async(base_model=MODEL)

    yield make
    for svc in services:
        await svc.close_async()


#: a lone sample waits on the batch long-poll (light load normally fetches directly)
BATCH_POLL = {"direct_fetch_max": 0}
#: shorter waits than the defaults (8 poll retries up to 5 s apart, 1 s pauses), same
#: behaviour, on the batch long-poll
SHORT_OUTAGE_WAITS = {**BATCH_POLL, "outage_pause_s": 0.05,
                      "poll_retry": RetryPolicy(max_retries=1, base_delay=0.01, max_delay=0.02)}


@pytest.mark.parametrize("direct_max", [0, 4], ids=["batch-poll", "direct-fetch"])
async def test_failed_sample_raises_request_failed_error(
    tuned: SamplerMaker, fresh_server: LocalServer, direct_max: int,
) -> None:
    sc = await tuned(direct_fetch_max=direct_max)
    out_of_vocab = tinker.ModelInput.from_ints([1, 2, 100_000])
    with pytest.raises(tinker.RequestFailedError) as info:
        await sc.sample_async(out_of_vocab, 1, GREEDY)
    assert info.value.category == "user" and info.value.request_id
    with pytest.raises(tinker.RequestFailedError):
        await sc.sample(out_of_vocab, 1, GREEDY)
    with pytest.raises(tinker.RequestFailedError):
        await sc.compute_logprobs(out_of_vocab)
    assert fresh_server.count(r"/cancel_future$") == 0  # nothing to cancel: it is over


@pytest.mark.parametrize("batch_poll", [True, False])
async def test_410_on_poll_resubmits(api_key: str, batch_poll: bool) -> None:
    config = {"sample_use_retrieve_futures": batch_poll}
    with LocalServer(api_key=api_key, client_config=config).in_thread() as srv:
        # A lone sample uses the server's mode.
        async with tinker.ServiceClient(base_url=srv.url, api_key=api_key,
                                        polling=tinker.PollTuning(**BATCH_POLL)) as svc:
            sc = await svc.create_sampling_client_async(base_model=MODEL)
            p = tinker.ModelInput.from_ints([72, 105, 32])
            srv.faults.add(r"/retrieve_future$", status=410, count=1)
            r = await asyncio.wait_for(sc.sample_async(p, 1, GREEDY), 60)
            assert len(r.sequences[0].tokens) == 8
            bodies = asample_bodies(srv)
            assert len(bodies) == 2 and {b["seq_id"] for b in bodies} == {0}
            # A promise that keeps expiring is given up after a few resubmits.
            srv.faults.add(r"/retrieve_future$", status=410, count=None)
            with pytest.raises(tinker.TinkerError, match="410"):
                await asyncio.wait_for(sc.sample_async(p, 1, GREEDY), 60)
            assert len(asample_bodies(srv)) == 2 + 4


async def test_light_load_fetches_directly(
    sc: tinker.SamplingClient, prompt: tinker.ModelInput, fresh_server: LocalServer
) -> None:
    fresh_server.clear_requests()
    for _ in range(3):
        await asyncio.wait_for(sc.sample_async(prompt, 1, GREEDY), 60)
    assert fresh_server.count(r"/retrieve_future$") == 3
    assert fresh_server.count(r"/retrieve_futures$") == 0  # two round trips per sample


async def test_malformed_batch_poll_answers_are_polled_again_then_fail_the_waiters(
    tuned: SamplerMaker, prompt: tinker.ModelInput, fresh_server: LocalServer,
) -> None:
    sc = await tuned(**BATCH_POLL)
    # One answer we cannot use: the poll (safe to repeat) is sent again.
    fresh_server.faults.add(r"/retrieve_futures$", status=200, body={"completions": [7],
                                                                      "cursor": 1})
    r = await asyncio.wait_for(sc.sample_async(prompt, 1, GREEDY), 60)
    assert len(r.sequences) == 1
    # Answers that stay unusable fail the waiting samples, typed...
    rule = fresh_server.faults.add(r"/retrieve_futures$", status=200, count=None,
                                   body={"completions": [7], "cursor": 1})
    with pytest.raises(tinker.APIResponseValidationError, match="retrieve_futures"):
        await asyncio.wait_for(sc.sample_async(prompt, 1, GREEDY), 60)
    # ...but not the sampler: once the server answers well again, sampling goes on.
    fresh_server.faults.remove(rule)
    r = await asyncio.wait_for(sc.sample_async(prompt, 1, GREEDY), 60)
    assert len(r.sequences) == 1


async def test_batch_poll_outlives_a_server_outage(
    tuned: SamplerMaker, prompt: tinker.ModelInput, fresh_server: LocalServer,
) -> None:
    sc = await tuned(**SHORT_OUTAGE_WAITS)
    fresh_server.faults.add(r"/retrieve_futures$", status=503, count=6)
    r = await asyncio.wait_for(sc.sample_async(prompt, 1, GREEDY), 60)
    assert len(r.sequences) == 1
    assert fresh_server.count(r"/retrieve_futures$") >= 7
    r = await asyncio.wait_for(sc.sample_async(prompt, 1, GREEDY), 60)  # still usable
    assert len(r.sequences) == 1


async def test_a_long_outage_fails_the_waiting_samples_instead_of_hanging(
    tuned: SamplerMaker, prompt: tinker.ModelInput, fresh_server: LocalServer,
) -> None:
    # The default progress_timeout is 120 s; the behaviour is the same with a short one.
    sc = await tuned(progress_timeout=0.3, **SHORT_OUTAGE_WAITS)
    rule = fresh_server.faults.add(r"/retrieve_futures$", status=503, count=None)
    with pytest.raises(tinker.APITimeoutError, match=r"(?i)no answer from the "
                       r"server .*progress_timeout"):
        await asyncio.wait_for(sc.sample_async(prompt, 1, GREEDY), 60)
    fresh_server.faults.remove(rule)
    r = await asyncio.wait_for(sc.sample_async(prompt, 1, GREEDY), 60)  # the server is back
    assert len(r.sequences) == 1


# ------------------------------------------------------------------ polling and concurrency


@pytest.mark.parametrize("batch_poll", [True, False])
async def test_hundreds_of_concurrent_samples(zero_servers: dict[bool, LocalServer],
                                              api_key_module: str, batch_poll: bool) -> None:
    srv = zero_servers[batch_poll]
    async with tinker.ServiceClient(base_url=srv.url, api_key=api_key_module) as svc:
        sc = await svc.create_sampling_client_async(base_model=MODEL)
        p = tinker.ModelInput.from_ints([72, 105, 32])
        srv.clear_requests()
        n = 300
        results = await asyncio.wait_for(asyncio.gather(*(
            sc.sample_async(p, 1, tinker.SamplingParams(max_tokens=4)) for _ in range(n))), 60)
        assert len(results) == n and all(len(r.sequences) == 1 for r in results)
        assert sorted(b["seq_id"] for b in asample_bodies(srv)) == list(range(n))
        if batch_poll:
            # One open long-poll covers every pending sample; each result is fetched once.
            assert srv.count(r"/retrieve_futures$") <= 30
            assert srv.count(r"/retrieve_future$") == n
        else:
            assert srv.count(r"/retrieve_futures$") == 0
            assert srv.count(r"/retrieve_future$") >= n


@pytest.mark.parametrize("batch_poll", [True, False])
def test_sync_forms_from_many_threads(zero_servers: dict[bool, LocalServer],
                                      api_key_module: str, batch_poll: bool) -> None:
    srv = zero_servers[batch_poll]
    with tinker.ServiceClient(base_url=srv.url, api_key=api_key_module) as svc:
        sc = svc.create_sampling_client(base_model=MODEL).result(60)
        p = tinker.ModelInput.from_ints([72, 105, 32])
        srv.clear_requests()

        def worker(_: int) -> list[int]:
            futs = [sc.sample(p, 1, tinker.SamplingParams(max_tokens=3)) for _ in range(40)]
            return [len(f.result(60).sequences) for f in futs]

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            counts = [c for chunk in pool.map(worker, range(8)) for c in chunk]
        assert counts == [1] * 320
        assert sorted(b["seq_id"] for b in asample_bodies(srv)) == list(range(320))


async def test_timeout_and_cancel_of_a_sample(sc: tinker.SamplingClient,
                                              prompt: tinker.ModelInput,
                                              fresh_server: LocalServer) -> None:
    # Every poll stalls (unanswered until the test ends), so each sample is certainly still
    # running when its timeout or cancel comes; each is given up only once its poll has
    # arrived, so the client knows its request id and can tell the server.
    polls = fresh_server.faults.add(r"/retrieve_futures?$", stall=True, count=None)

    async def polled(n: int) -> None:
        await wait_until_async(lambda: polls.hits >= n, f"poll {n} to reach the server")

    fut = sc.sample(prompt, 1, GREEDY)
    await polled(1)
    with pytest.raises(TimeoutError):
        await fut.result_async(timeout=0.2)
    await wait_until_async(fut.done, "the timeout to reach the future's concurrent half")
    assert fut.cancelled()
    task = asyncio.ensure_future(sc.sample_async(prompt, 1, GREEDY))
    await polled(2)
    with pytest.raises(asyncio.TimeoutError):  # not the builtin one before Python 3.11
        await asyncio.wait_for(task, 0.2)
    other = sc.sample(prompt, 1, GREEDY)
    await polled(3)
    assert other.cancel() and other.cancelled()
    with pytest.raises((asyncio.CancelledError, concurrent.futures.CancelledError)):
        other.result(HANG_GUARD_S)
    # The server is told (it offers cancel_future).
    await wait_until_async(lambda: fresh_server.count(r"/cancel_future$") >= 3,
                           "three cancel_future requests")
    fresh_server.faults.clear()
    r = await asyncio.wait_for(sc.sample_async(prompt, 1, GREEDY), HANG_GUARD_S)
    assert len(r.sequences) == 1


# ------------------------------------------------------------------------ pickling and fork


CHILD_SAMPLE = """
import base64, pickle, asyncio
import tinker_async as tinker
sc = pickle.loads(base64.b64decode({blob!r}))
p = tinker.ModelInput.from_ints([72, 105, 32])
r = sc.sample(p, 2, tinker.SamplingParams(max_tokens=4, temperature=0.0)).result(60)
r2 = asyncio.run(sc.sample_async(p, 1, tinker.SamplingParams(max_tokens=4, temperature=0.0)))
print("TOKENS", r.sequences[0].tokens, r2.sequences[0].tokens)
"""


def test_pickled_sampling_client_in_another_process(
    fresh_server: LocalServer, api_key: str, run_script: Callable[..., str]
) -> None:
    with tinker.ServiceClient(base_url=fresh_server.url, api_key=api_key) as svc:
        sc = svc.create_sampling_client(base_model=MODEL).result(60)
        p = tinker.ModelInput.from_ints([72, 105, 32])
        here = sc.sample(p, 1, tinker.SamplingParams(max_tokens=4, temperature=0.0)).result(60)
        blob = pickle.dumps(sc)
        assert api_key.encode() not in blob
        copy = pickle.loads(blob)
        assert copy.sampling_session_id == sc.sampling_session_id
        sessions_before = fresh_server.count(r"/create_session$")
        out = run_script(CHILD_SAMPLE.format(blob=base64.b64encode(blob).decode()),
                         env={"TINKER_API_KEY": api_key})
        line = next(x for x in out.splitlines() if x.startswith("TOKENS"))
        assert line == f"TOKENS {here.sequences[0].tokens} {here.sequences[0].tokens}"
        assert fresh_server.count(r"/create_session$") == sessions_before  # joined, not new
        seqs = [b["seq_id"] for b in asample_bodies(fresh_server)]
        assert seqs[0] == 0
        child = seqs[1:]
        assert len(child) == 2 and child[0] >= 1_000_000_000 and child[1] == child[0] + 1
        # The parent's own client goes on with its own counter.
        sc.sample(p, 1, tinker.SamplingParams(max_tokens=2)).result(60)
        assert asample_bodies(fresh_server)[-1]["seq_id"] == 1


FORK_SCRIPT = """
import asyncio, os, sys
import tinker_async as tinker
svc = tinker.ServiceClient(base_url={url!r})
sc = svc.create_sampling_client(base_model="local/byte-lm").result(60)
p = tinker.ModelInput.from_ints([72, 105, 32])
params = tinker.SamplingParams(max_tokens=3, temperature=0.0)
first = sc.sample(p, 1, params).result(60).sequences[0].tokens
pid = os.fork()
if pid == 0:
    try:
        a = sc.sample(p, 1, params).result(60).sequences[0].tokens
        b = asyncio.run(sc.sample_async(p, 1, params)).sequences[0].tokens
        ok = a == first and b == first
    except BaseException as exc:
        print("CHILD FAILED", repr(exc), flush=True)
        ok = False
    os._exit(0 if ok else 1)
again = sc.sample(p, 1, params).result(60).sequences[0].tokens
_, status = os.waitpid(pid, 0)
print("CHILD", os.waitstatus_to_exitcode(status), "PARENT", again == first, flush=True)
# A child that exits normally (at-exit handlers run) must not end the parent's session.
pid = os.fork()
if pid == 0:
    sc.sample(p, 1, params).result(60)
    sys.exit(0)
os.waitpid(pid, 0)
print("AFTER", sc.sample(p, 1, params).result(60).sequences[0].tokens == first, flush=True)
svc.close().result(60)
"""


def test_sampling_client_survives_fork(fresh_server: LocalServer, api_key: str,
                                       run_script: Callable[..., str]) -> None:
    out = run_script(FORK_SCRIPT.format(url=fresh_server.url), env={"TINKER_API_KEY": api_key},
                     timeout=60)
    assert "CHILD 0 PARENT True" in out and "AFTER True" in out, out
    seqs = [b["seq_id"] for b in asample_bodies(fresh_server)]
    assert len(seqs) == 6
    parent = [s for s in seqs if s < 1_000_000_000]
    child = [s for s in seqs[:4] if s >= 1_000_000_000]
    assert sorted(parent) == [0, 1, 2]
    assert len(child) == 2 and child[1] == child[0] + 1  # a block of its own
    assert fresh_server.count(r"/finish$") == 1  # only the parent finished the session


# ------------------------------------------------------------------------- sampler handles


HANDLE_CHILD = """
import tinker_async as tinker
sc = tinker.SamplingClient.from_sampler_handle({handle!r})
r = sc.sample(tinker.ModelInput.from_ints([72, 105, 32]), 1,
              tinker.SamplingParams(max_tokens=4, temperature=0.0)).result(60)
print("TOKENS", r.sequences[0].tokens)
"""


def test_sampler_handle_makes_copies_in_other_processes(
    fresh_server: LocalServer, api_key: str, run_script: Callable[..., str]
) -> None:
    with tinker.ServiceClient(base_url=fresh_server.url, api_key=api_key) as svc:
        sc = svc.create_sampling_client(base_model=MODEL).result(60)
        p = tinker.ModelInput.from_ints([72, 105, 32])
        here = sc.sample(p, 1, tinker.SamplingParams(max_tokens=4, temperature=0.0)).result(60)
        handle = sc.get_sampler_handle()
        assert api_key not in base64.urlsafe_b64decode(handle).decode()
        sessions = fresh_server.count(r"/create_session$")
        for _ in range(2):  # any number of times
            out = run_script(HANDLE_CHILD.format(handle=handle), env={"TINKER_API_KEY": api_key})
            assert f"TOKENS {here.sequences[0].tokens}" in out, out
        # In this process too, with an explicit key; every copy has its own seq block.
        copy = tinker.SamplingClient.from_sampler_handle(handle, api_key=api_key)
        assert copy.sample(p, 1, tinker.SamplingParams(max_tokens=4, temperature=0.0)
                           ).result(60).sequences[0].tokens == here.sequences[0].tokens
        assert fresh_server.count(r"/create_session$") == sessions  # joined, never new
        blocks = [b["seq_id"] // 1_000_000_000 for b in asample_bodies(fresh_server)]
        assert blocks[0] == 0 and len(set(blocks[1:])) == 3 and 0 not in blocks[1:]


def test_sampler_handles_pass_between_the_two_libraries(
    fresh_server: LocalServer, api_key: str
) -> None:
    official = pytest.importorskip("tinker")
    with tinker.ServiceClient(base_url=fresh_server.url, api_key=api_key) as svc:
        ours = svc.create_sampling_client(base_model=MODEL).result(60)
        p = tinker.ModelInput.from_ints([72, 105, 32])
        want = ours.sample(p, 1, tinker.SamplingParams(max_tokens=3, temperature=0.0)
                           ).result(60).sequences[0].tokens
        theirs = official.SamplingClient.from_sampler_handle(ours.get_sampler_handle(),
                                                             api_key=api_key)
        got = theirs.sample(official.ModelInput.from_ints([72, 105, 32]), 1,
                            official.SamplingParams(max_tokens=3, temperature=0.0)).result(60)
        assert got.sequences[0].tokens == want
        back = tinker.SamplingClient.from_sampler_handle(theirs.get_sampler_handle(),
                                                         api_key=api_key)
        assert back.sampling_session_id == ours.sampling_session_id
        assert back.sample(p, 1, tinker.SamplingParams(max_tokens=3, temperature=0.0)
                           ).result(60).sequences[0].tokens == want


def test_a_bad_sampler_handle_is_a_clear_error() -> None:
    for bad in ("", "not base64!", base64.urlsafe_b64encode(b'{"x": 1}').decode()):
        with pytest.raises(tinker.InvalidRequestError, match="get_sampler_handle"):
            tinker.SamplingClient.from_sampler_handle(bad)


def test_copies_take_their_clone_number_from_a_server_that_hands_them_out(
    api_key: str, run_script: Callable[..., str]
) -> None:
    with LocalServer(api_key=api_key, zero_compute=True,
                     client_config={"sample_join_sampling_session": True}).in_thread() as srv:
        with tinker.ServiceClient(base_url=srv.url, api_key=api_key) as svc:
            sc = svc.create_sampling_client(base_model=MODEL).result(60)
            handle = sc.get_sampler_handle()
            p = tinker.ModelInput.from_ints([72, 105])
            params = tinker.SamplingParams(max_tokens=2)
            copies = [pickle.loads(pickle.dumps(sc)),
                      tinker.SamplingClient.from_sampler_handle(handle, api_key=api_key)]
            for copy in copies:
                copy.sample(p, 1, params).result(60)
                copy.sample(p, 1, params).result(60)
            sc.sample(p, 1, params).result(60)
        joins = [r for r in srv.requests if r.path.endswith("/join_sampling_session")]
        assert len(joins) == 2  # once per copy, not per sample
        seqs = [b["seq_id"] for b in asample_bodies(srv)]
        assert seqs == [1_000_000_000, 1_000_000_001, 2_000_000_000, 2_000_000_001, 0]
