"""The client's full training and sampling loop against each server dialect.

Each embedded server plays one family of Tinker-compatible servers (``local/_dialects.py``):

- ``legacy`` (skyrl-tx-like): no ``client/config``, JSON ``forward_backward`` and a
  separate ``/forward``, polls that end in 408, no ``sample_sequence_ids``, no
  create-via-load;
- ``strict`` (tuft-like): request models that reject unknown fields (422), no
  ``/forward``, no create-via-load;
- ``tinkercloud``: futures shaped ``{"status": "pending"|"completed"|"failed"}``;
- ``twinkle``: ``twinkle://`` checkpoint paths on ``/api/v1`` and the Twinkle REST API
  under ``/twinkle``.

The client finds most of this out itself (a 404 on ``client/config``); the same loop runs
unchanged on each. The request log shows what went on the wire.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest

import tinker_async as tinker
from tinker_async.local import DIALECTS, LocalServer
from tinker_async.local import Dialect as ServerDialect

pytestmark = pytest.mark.anyio

MODEL = "local/byte-lm"
KEY = "tml-dialect-tests-0123456789"
TEXT = "hello world, hello world, hello world."
JSON_TRAINING = ("forward_backward", "forward", "optim_step", "save_weights",
                 "save_weights_for_sampler", "load_weights")


class Served(NamedTuple):
    srv: LocalServer
    dialect: ServerDialect


@pytest.fixture(scope="module", params=["legacy", "strict", "tinkercloud", "twinkle"])
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    with LocalServer(api_key=KEY, dialect=request.param).in_thread() as srv:
        yield Served(srv, DIALECTS[request.param])


@pytest.fixture
def srv(served: Served) -> LocalServer:
    served.srv.clear_requests()
    served.srv.faults.clear()
    return served.srv


@pytest.fixture
def dialect(served: Served) -> ServerDialect:
    return served.dialect


def datum(tok: Any, text: str = TEXT) -> tinker.Datum:
    ids = list(tok.encode(text))
    return tinker.Datum(model_input=tinker.ModelInput.from_ints(ids[:-1]),
                        loss_fn_inputs={"target_tokens": ids[1:], "weights": [1.0] * (len(ids) - 1)})


def bodies(srv: LocalServer, endpoint: str) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in srv.requests
            if r.path.rsplit("/", 1)[-1] == endpoint and r.status == 200]


def seqs_of(srv: LocalServer, model_id: str) -> list[int]:
    out = []
    for r in srv.requests:
        if r.path.rsplit("/", 1)[-1] in JSON_TRAINING and r.status == 200:
            body = json.loads(r.body)
            if body.get("model_id") == model_id and "seq_id" in body:
                out.append(body["seq_id"])
    return out


async def test_full_training_and_sampling_loop(srv: LocalServer, dialect: ServerDialect) -> None:
    name = dialect.name
    scheme = "twinkle" if name == "twinkle" else "tinker"
    async with tinker.ServiceClient(base_url=srv.url, api_key=KEY) as svc:
        tc = await svc.create_lora_training_client_async(MODEL, rank=4, seed=0)
        assert svc.dialect == "legacy"  # learned from the 404 on client/config
        tok = tc.get_tokenizer()
        batch = [datum(tok), datum(tok, "another line")]
        adam = tinker.AdamParams(learning_rate=1e-2)
        futs = []
        for _ in range(3):  # pipelined: results read at the end
            futs.append(await tc.forward_backward_async(batch, "cross_entropy"))
            futs.append(await tc.optim_step_async(adam))
        results = [await f for f in futs]
        losses = [r.metrics["loss:sum"] for r in results[::2]]
        assert losses[2] < losses[0]
        assert len(results[0].loss_fn_outputs) == 2
        fwd = await (await tc.forward_async(batch, "cross_entropy"))
        fwd_plain = await tc.forward(batch, "cross_entropy")
        assert fwd.metrics["loss:sum"] == pytest.approx(fwd_plain.metrics["loss:sum"])
        assert fwd.metrics["loss:sum"] < losses[2]

        saved = await (await tc.save_state_async("step-3"))
        assert saved.path == f"{scheme}://{tc.model_id}/weights/step-3"
        resumed = await svc.create_training_client_from_state_with_optimizer_async(saved.path)
        again = await (await resumed.forward_async(batch, "cross_entropy"))
        assert again.metrics["loss:sum"] == pytest.approx(fwd.metrics["loss:sum"], rel=1e-5)
        # No create-via-load on these servers: create_model, then the load as its first op.
        assert seqs_of(srv, resumed.model_id)[:2] == [1, 2]
        assert bodies(srv, "load_weights")[0]["model_id"] == resumed.model_id

        sampler_path = (await (await tc.save_weights_for_sampler_async("s"))).path
        assert sampler_path == f"{scheme}://{tc.model_id}/sampler_weights/s"
        from_path = await svc.create_sampling_client_async(model_path=sampler_path)
        ephemeral = await tc.save_weights_and_get_sampling_client_async()
        prompt = tinker.ModelInput.from_ints(list(tok.encode("hello")))
        greedy = tinker.SamplingParams(max_tokens=6, temperature=0.0)
        a = await from_path.sample_async(prompt, 2, greedy)
        b = await ephemeral.sample(prompt, 2, greedy)
        assert [s.tokens for s in a.sequences] == [s.tokens for s in b.sequences]
        assert len(a.sequences[0].tokens) == 6
        lp = await ephemeral.compute_logprobs_async(prompt)
        assert lp[0] is None and len(lp) == prompt.length
        # Without ephemeral sampler saves, each call saves under a fresh name.
        two = await asyncio.gather(tc.save_weights_and_get_sampling_client_async(),
                                   tc.save_weights_and_get_sampling_client_async())
        assert two[0].sampling_session_id != two[1].sampling_session_id
        base = await svc.create_sampling_client_async(base_model=MODEL)
        assert len((await base.sample_async(prompt, 1, greedy)).sequences) == 1

        # What went on the wire.
        assert srv.count(r"/client/config$") == 1
        assert srv.count(r"/retrieve_futures$") == 0  # no batch long-poll on these servers
        fbs = [r for r in srv.requests if r.path.endswith("/forward_backward")]
        assert fbs and all(r.headers["Content-Type"] == "application/json" for r in fbs)
        seqs = seqs_of(srv, tc.model_id)
        assert seqs == list(range(1, len(seqs) + 1))  # gap-free
        if dialect.separate_forward:
            assert srv.count(r"/forward$") == 3
        else:  # one 404 at /forward, then forward passes ride on forward_backward
            assert [r.status for r in srv.requests if r.path.endswith("/forward")] == [404]
            assert any(b.get("forward_only") for b in bodies(srv, "forward_backward"))
        ids = [s.sequence_id for s in a.sequences]
        if dialect.sample_sequence_ids:
            assert all(ids)
        else:
            assert ids == [None, None]
        # Nothing else was refused (strict servers answer 422 to unknown fields).
        refused = [(r.path, r.status) for r in srv.requests
                   if r.status is not None and r.status >= 400
                   and not r.path.endswith(("/client/config", "/forward"))]
        assert refused == []


@pytest.mark.parametrize("served", ["strict"], indirect=True)
async def test_strict_bodies_leave_default_valued_fields_out(srv: LocalServer, dialect: ServerDialect) -> None:
    async with tinker.ServiceClient(base_url=srv.url, api_key=KEY, dialect="strict") as svc:
        tc = await svc.create_lora_training_client_async(MODEL, rank=2)
        tok = tc.get_tokenizer()
        await (await tc.forward_backward_async([datum(tok)], "cross_entropy"))
        await (await tc.optim_step_async())
        sc = await tc.save_weights_and_get_sampling_client_async()
        await sc.sample_async(tinker.ModelInput.from_ints([1, 2]), 1, tinker.SamplingParams())
        await (await tc.save_state_async("x"))
    assert [r.status for r in srv.requests if r.status and r.status >= 400] == [404]  # config
    create = bodies(srv, "create_model")[0]
    assert "optimizer_config" not in create and "user_metadata" not in create
    sample = bodies(srv, "asample")[0]
    for field in ("topk_sample_logprobs", "topk_prompt_logprobs", "prompt_alt_tokens_k",
                  "record_stability_info", "prompt_logprobs", "target_prompt_logprobs",
                  "prompt_logprobs_last_n"):
        assert field not in sample, field
    for save in bodies(srv, "save_weights_for_sampler") + bodies(srv, "save_weights"):
        assert "kind" not in save and "ttl_seconds" not in save and "overwrite" not in save


@pytest.mark.parametrize("served", ["tinkercloud"], indirect=True)
async def test_tinkercloud_status_futures_and_failures(srv: LocalServer, dialect: ServerDialect) -> None:
    async with tinker.ServiceClient(base_url=srv.url, api_key=KEY, dialect="tinkercloud") as svc:
        sc = await svc.create_sampling_client_async(base_model=MODEL)
        prompt = tinker.ModelInput.from_ints([72, 105])
        # Samples use tinkercloud's blocking route: the answer is the result.
        r = await sc.sample_async(prompt, 1, tinker.SamplingParams(max_tokens=3), True)
        assert r.prompt_logprobs is not None and r.prompt_logprobs[0] is None
        with pytest.raises(tinker.BadRequestError):
            await sc.sample_async(tinker.ModelInput.from_ints([1, 100_000]), 1,
                                  tinker.SamplingParams(max_tokens=2))
        # Training calls return {"status": ...} futures, polled at retrieve_future/{id};
        # one that answers "pending" at once is asked again (with a short pause).
        srv.set_poll_hold(0.0)
        try:
            tc = await asyncio.wait_for(svc.create_lora_training_client_async(MODEL, rank=2), 20)
            datum = tinker.Datum(model_input=prompt, loss_fn_inputs={
                "target_tokens": [105, 33], "weights": [1.0, 1.0]})
            out = await asyncio.wait_for(await tc.forward_backward_async([datum], "cross_entropy"), 20)
            assert out.metrics["loss:sum"] > 0
        finally:
            srv.set_poll_hold(10.0)
        # tinkercloud's other routes: the tokenizer's configuration, and delete_model.
        config = await svc.create_rest_client().get_tokenizer_config_async(tc.model_id)
        assert config["model"]["vocab_size"] == 263
        await tc.delete_model_async()
        with pytest.raises(tinker.ClientClosedError, match="deleted"):
            await tc.forward_backward_async([datum], "cross_entropy")
    samples = [r for r in srv.requests if r.path.endswith("/sample")]
    assert samples and not [r for r in srv.requests if r.path.endswith("/asample")]
    polls = [r for r in srv.requests if "/retrieve_future/" in r.path]
    assert polls and all(r.status == 200 for r in polls)
    assert [r.status for r in srv.requests if r.path.endswith("/delete_model")] == [200]


@pytest.mark.parametrize("served", ["twinkle"], indirect=True)
async def test_twinkle_rest_surface_sees_the_training_run(srv: LocalServer, dialect: ServerDialect) -> None:
    async with tinker.ServiceClient(base_url=srv.url, api_key=KEY) as svc:
        tc = await svc.create_lora_training_client_async(MODEL, rank=3)
        path = (await (await tc.save_state_async("tw"))).path
    assert path.startswith("twinkle://")
    tw = tinker.RestClient(base_url=srv.url, api_key=KEY, dialect="twinkle")
    runs = await tw.list_training_runs_async(limit=100)
    assert tc.model_id in {r.training_run_id for r in runs.training_runs}
    info = await tw.get_weights_info_async(path)
    assert info.base_model == MODEL and info.lora_rank == 3
    ckpts = await tw.list_checkpoints(tc.model_id)
    assert [c.checkpoint_id for c in ckpts.checkpoints] == ["weights/tw"]
    capacity = await tw.get_capacity_info()
    assert capacity.max_loras >= 1


@pytest.mark.parametrize("served", ["tinkercloud"], indirect=True)
async def test_tinkercloud_create_sampling_client_route(srv: LocalServer,
                                                        dialect: ServerDialect) -> None:
    # A server that names the route create_sampling_client only (the 404 is injected).
    srv.faults.add(r"/create_sampling_session$", status=404, count=None)
    try:
        async with tinker.ServiceClient(base_url=srv.url, api_key=KEY,
                                        dialect="tinkercloud") as svc:
            first = await svc.create_sampling_client_async(base_model=MODEL)
            second = await svc.create_sampling_client_async(base_model=MODEL)
            assert first.sampling_session_id != second.sampling_session_id
    finally:
        srv.faults.clear()
    made = [r.path.rsplit("/", 1)[1] for r in srv.requests
            if r.path.endswith(("/create_sampling_session", "/create_sampling_client"))]
    assert made[-3:] == ["create_sampling_session", "create_sampling_client",
                         "create_sampling_client"]  # learned once


@pytest.mark.parametrize("served", ["tinkercloud"], indirect=True)
async def test_tinkercloud_capabilities_read_without_naming_the_dialect(
    srv: LocalServer, dialect: ServerDialect
) -> None:
    # tinkercloud lists plain model names; a client not told the dialect (as code written
    # for the official SDK is not) still reads them, on both clients.
    async with tinker.ServiceClient(base_url=srv.url, api_key=KEY) as svc:
        caps = await svc.get_server_capabilities_async()
        assert [m.model_name for m in caps.supported_models] == [MODEL]
        rest = svc.create_rest_client()
        caps = await rest.get_server_capabilities_async()
        assert [m.model_name for m in caps.supported_models] == [MODEL]
