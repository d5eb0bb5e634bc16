"""TrainingClient (and the ServiceClient calls that make one) against the embedded server.

Both forms of every call: ``await x_async(...)`` (an APIFuture once the server accepted the
request, for queued operations) and plain ``x(...)`` (an APIFuture of the result). The
server's request log is the witness for what went on the wire: seq ids, request counts,
that bad input never left the process. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from _waiting import released_when, wait_until_async

import tinker_async as tinker
from tinker_async.local import LocalServer, _proto_server

pytestmark = pytest.mark.anyio

MODEL = "local/byte-lm"
TEXT = "the cat sat on the mat. the cat sat on the mat."
TRAIN_ENDPOINTS = ("forward_backward", "forward", "optim_step", "save_weights",
                   "save_weights_for_sampler", "save_weights_external", "load_weights")


# ----------------------------------------------------------------------------------- helpers


def make_datum(tokenizer: Any, text: str = TEXT, **extra: Any) -> tinker.Datum:
    """A next-token cross-entropy datum of ``text`` (plus any extra loss inputs)."""
    ids = list(tokenizer.encode(text))
    return tinker.Datum(
        model_input=tinker.ModelInput.from_ints(ids[:-1]),
        loss_fn_inputs={"target_tokens": ids[1:], "weights": [1.0] * (len(ids) - 1), **extra},
    )


def wire_ops(srv: LocalServer, model_id: str) -> list[tuple[str, int | None, int | None]]:
    """(endpoint, seq_id, HTTP status) of every training request for ``model_id``, in order."""
    ops: list[tuple[str, int | None, int | None]] = []
    for req in srv.requests:
        endpoint = req.path.rsplit("/", 1)[-1]
        if endpoint not in TRAIN_ENDPOINTS:
            continue
        if req.headers.get("Content-Type", "").startswith("application/x-protobuf"):
            parts = _proto_server.decode_forward_backward_request(req.body)
            mid, seq = parts.model_id, parts.seq_id
        else:
            body = json.loads(req.body)
            mid, seq = body.get("model_id"), body.get("seq_id")
        if mid == model_id:
            ops.append((endpoint, seq, req.status))
    return ops


def accepted_seqs(srv: LocalServer, model_id: str) -> list[int | None]:
    return [seq for _, seq, status in wire_ops(srv, model_id) if status == 200]


@pytest.fixture
async def tc(service: tinker.ServiceClient) -> tinker.TrainingClient:
    return await service.create_lora_training_client_async(MODEL, rank=4, seed=0)


@pytest.fixture
def sync_service(fresh_server: LocalServer, api_key: str) -> Iterator[tinker.ServiceClient]:
    with tinker.ServiceClient(base_url=fresh_server.url, api_key=api_key) as svc:
        yield svc


# ---------------------------------------------------------------------------------- creation


async def test_create_lora_training_client_async_form(
    service: tinker.ServiceClient, fresh_server: LocalServer
) -> None:
    tc = await service.create_lora_training_client_async(MODEL, rank=4, seed=1,
                                                         user_metadata={"exp": "t"})
    assert isinstance(tc, tinker.TrainingClient)
    info = tc.get_info()
    assert info.model_id == tc.model_id and info.lora_rank == 4
    assert info.model_data.model_name == MODEL and tc.get_base_model() == MODEL
    assert tc.model_id.startswith(f"{service.session_id}:train:")
    run = await service.create_rest_client().get_training_run_async(tc.model_id)
    assert run.lora_rank == 4 and run.user_metadata == {"exp": "t"}
    tok = tc.get_tokenizer()
    assert tok.decode(tok.encode("hello", add_special_tokens=False)) == "hello"


def test_create_lora_training_client_plain_form(
    sync_service: tinker.ServiceClient, fresh_server: LocalServer
) -> None:
    fut = sync_service.create_lora_training_client(MODEL, rank=2)
    assert isinstance(fut, tinker.APIFuture)
    tc = fut.result(60)
    assert isinstance(tc, tinker.TrainingClient) and tc.get_info().lora_rank == 2
    assert fresh_server.count("/create_model$") == 1
    assert fresh_server.count("/get_info$") == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_model": "", "rank": 4},
        {"base_model": MODEL, "rank": 0},
        {"base_model": MODEL, "rank": True},
        {"base_model": MODEL, "rank": 4, "train_mlp": False, "train_attn": False,
         "train_unembed": False},
    ],
)
async def test_create_lora_training_client_bad_args_fail_before_any_request(
    fresh_server: LocalServer, api_key: str, kwargs: dict[str, Any]
) -> None:
    async with tinker.ServiceClient(base_url=fresh_server.url, api_key=api_key) as svc:
        with pytest.raises(tinker.InvalidRequestError):
            await svc.create_lora_training_client_async(**kwargs)
        with pytest.raises(tinker.InvalidRequestError):
            await svc.create_lora_training_client(**kwargs)
        assert isinstance(tinker.InvalidRequestError("x"), ValueError)
    assert fresh_server.count("/create_model$") == 0
    assert fresh_server.count("/create_session$") == 0  # nothing at all was needed


async def test_create_lora_training_client_unknown_model_is_a_typed_error(
    service: tinker.ServiceClient,
) -> None:
    with pytest.raises(tinker.BadRequestError, match="no/such-model"):
        await service.create_lora_training_client_async("no/such-model", rank=2)
    with pytest.raises(tinker.BadRequestError):
        await service.create_lora_training_client("no/such-model", rank=2)
    tc = await service.create_lora_training_client_async(MODEL, rank=2)  # the session is fine
    assert tc.get_info().lora_rank == 2


# ----------------------------------------------------------------------------------- training


async def test_sft_loss_falls_over_optim_steps(tc: tinker.TrainingClient) -> None:
    tok = tc.get_tokenizer()
    batch = [make_datum(tok, TEXT), make_datum(tok, "a stitch in time saves nine.")]
    losses = []
    for _ in range(5):
        fb = await tc.forward_backward_async(batch, "cross_entropy")
        opt = await tc.optim_step_async(tinker.AdamParams(learning_rate=1e-2))
        out = await fb
        losses.append(out.metrics["loss:sum"])
        assert len(out.loss_fn_outputs) == 2
        lp = out.loss_fn_outputs[0]["logprobs"].to_numpy()
        assert lp.shape == (len(batch[0].loss_fn_inputs["target_tokens"].data),)
        assert np.all(lp <= 0)
        step = await opt
        assert isinstance(step, tinker.OptimStepResponse)
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(b < a for a, b in itertools.pairwise(losses)), losses


async def test_numpy_token_chunks_train_and_sample_like_lists(
    tc: tinker.TrainingClient, fresh_server: LocalServer
) -> None:
    tok = tc.get_tokenizer()
    as_list = make_datum(tok)
    ids = np.asarray(as_list.model_input.to_ints(), dtype=np.int32)
    as_array = tinker.Datum(
        model_input=tinker.ModelInput(chunks=[tinker.EncodedTextChunk(tokens=ids)]),
        loss_fn_inputs=as_list.loss_fn_inputs,
    )
    assert as_array.model_input.to_ints() == as_list.model_input.to_ints()
    assert all(type(t) is int for t in as_array.model_input.to_ints())
    first = await (await tc.forward_backward_async([as_list], "cross_entropy"))
    second = await (await tc.forward_backward_async([as_array], "cross_entropy"))
    assert second.metrics["loss:sum"] == pytest.approx(first.metrics["loss:sum"])
    bodies = [r.body for r in fresh_server.requests if r.path.endswith("/forward_backward")]
    sent = [_proto_server.decode_forward_backward_request(b).data[0] for b in bodies[-2:]]
    assert sent[0].model_input.to_ints() == sent[1].model_input.to_ints()
    sampler = await tc.save_weights_and_get_sampling_client_async("np-tokens")
    response = await sampler.sample_async(as_array.model_input, 1,
                                          tinker.SamplingParams(max_tokens=3, seed=1))
    assert len(response.sequences[0].tokens) == 3


async def test_a_big_batch_cancelled_while_encoding_gives_up_its_place(api_key: str) -> None:
    rng = np.random.default_rng(3)
    big = [tinker.Datum(model_input=tinker.ModelInput.from_ints(rng.integers(0, 256, 2048).tolist()),
                        loss_fn_inputs={"target_tokens": rng.integers(0, 256, 2048),
                                        "weights": np.ones(2048, dtype=np.float32)})
           for _ in range(64)]  # about 2 MB: encoded on a worker thread
    with LocalServer(api_key=api_key, zero_compute=True).in_thread() as srv:
        async with tinker.ServiceClient(base_url=srv.url, api_key=api_key) as service:
            tc = await service.create_lora_training_client_async(MODEL, rank=4)
            task = asyncio.ensure_future(tc.forward_backward_async(big, "cross_entropy"))
            await asyncio.sleep(0)  # it has taken its place and is encoding
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # The next call is not stuck behind the abandoned place; nothing went out for it.
            step = await asyncio.wait_for(await tc.optim_step_async(tinker.AdamParams()), 60)
            assert isinstance(step, tinker.OptimStepResponse)
            assert [op for op, _, _ in wire_ops(srv, tc.model_id)] == ["optim_step"]
            # Not cancelled, the same batch goes through as usual.
            out = await asyncio.wait_for(await tc.forward_backward_async(big, "cross_entropy"), 60)
            assert len(out.loss_fn_outputs) == 64
            assert accepted_seqs(srv, tc.model_id) == [1, 2]


async def test_dimuon_model_trains_with_dimuon_steps(
    service: tinker.ServiceClient, fresh_server: LocalServer
) -> None:
    tc = await service.create_lora_training_client_async(
        MODEL, rank=4, seed=0, optimizer=tinker.DimuonOptimizerConfig())
    info = await tc.get_info_async()
    assert info.optimizer_config == tinker.DimuonOptimizerConfig()
    tok = tc.get_tokenizer()
    batch = [make_datum(tok, TEXT)]
    losses = []
    for _ in range(6):
        fb = await tc.forward_backward_async(batch, "cross_entropy")
        step = await tc.optim_step_async(tinker.DimuonParams(learning_rate=0.05))
        losses.append((await fb).metrics["loss:sum"])
        await step
    assert losses[-1] < 0.8 * losses[0], losses
    sent = [json.loads(r.body) for r in fresh_server.requests if r.path.endswith("/optim_step")]
    assert sent[0]["optimizer_params"] == {"learning_rate": 0.05, "grad_clip_norm": 0.0,
                                           "beta1": 0.9, "type": "dimuon"}
    assert "adam_params" not in sent[0]
    # AdamW parameters do not fit a Dimuon model: the server refuses the step.
    with pytest.raises(tinker.RequestFailedError, match="dimuon"):
        await (await tc.optim_step_async(tinker.AdamParams()))
    # Bad values never leave the process.
    before = len(fresh_server.requests)
    with pytest.raises(tinker.ValidationError, match="beta1"):  # at construction, as official
        tinker.DimuonParams(learning_rate=0.1, beta1=1.5)
    assert len(fresh_server.requests) == before
    # The family is part of the saved state: a run made from it steps with Dimuon too.
    saved = await (await tc.save_state_async("dimuon-state"))
    again = await service.create_training_client_from_state_with_optimizer_async(saved.path)
    assert (await again.get_info_async()).optimizer_config == tinker.DimuonOptimizerConfig()
    await (await again.optim_step_async(tinker.DimuonParams(learning_rate=0.01)))
    rest = service.create_rest_client()
    copied = await rest.copy_weights_async(saved.path, "another-project")
    info = await rest.get_weights_info_async(copied)
    assert info.optimizer_config == tinker.DimuonOptimizerConfig()


async def test_the_optimizer_family_follows_the_run_not_the_checkpoint(
    tc: tinker.TrainingClient, service: tinker.ServiceClient
) -> None:
    adam_state = await (await tc.save_state_async("adam-state"))
    # The weights of an AdamW run, into a new Dimuon run: it steps with Dimuon.
    dimuon = await service.create_training_client_from_state_async(
        adam_state.path, optimizer=tinker.DimuonOptimizerConfig())
    assert (await dimuon.get_info_async()).optimizer_config == tinker.DimuonOptimizerConfig()
    await (await dimuon.optim_step_async(tinker.DimuonParams(learning_rate=0.01)))
    # Loading weights into an existing run keeps that run's family...
    await (await dimuon.load_state_async(adam_state.path))
    await (await dimuon.optim_step_async(tinker.DimuonParams(learning_rate=0.01)))
    # ...and AdamW moments cannot become Dimuon ones: a clear refusal.
    with pytest.raises(tinker.RequestFailedError, match="weights only"):
        await (await dimuon.load_state_with_optimizer_async(adam_state.path))


async def test_pipelined_async_submits_keep_order(
    tc: tinker.TrainingClient, fresh_server: LocalServer
) -> None:
    tok = tc.get_tokenizer()
    batch = [make_datum(tok)]
    # Everything is submitted before any result is read.
    futs = []
    for _ in range(3):
        futs.append(await tc.forward_backward_async(batch, "cross_entropy"))
        futs.append(await tc.optim_step_async(tinker.AdamParams(learning_rate=1e-2)))
    results = [await f for f in futs]
    losses = [r.metrics["loss:sum"] for r in results[::2]]
    assert losses[0] > losses[1] > losses[2]
    assert all(isinstance(r, tinker.OptimStepResponse) for r in results[1::2])
    assert accepted_seqs(fresh_server, tc.model_id) == [1, 2, 3, 4, 5, 6]


async def test_concurrent_async_calls_are_submitted_in_call_order(
    tc: tinker.TrainingClient, fresh_server: LocalServer
) -> None:
    tok = tc.get_tokenizer()
    batch = [make_datum(tok)]
    adam = tinker.AdamParams(learning_rate=1e-2)
    # Coroutines started together: each takes its place in line when it starts.
    subs = await asyncio.gather(
        tc.forward_backward_async(batch, "cross_entropy"), tc.optim_step_async(adam),
        tc.forward_async(batch, "cross_entropy"), tc.optim_step_async(adam),
    )
    await asyncio.gather(*(f.result_async(30) for f in subs))
    ops = wire_ops(fresh_server, tc.model_id)
    assert [(e, s) for e, s, _ in ops] == [
        ("forward_backward", 1), ("optim_step", 2), ("forward_backward", 3), ("optim_step", 4)]


def test_pipelined_plain_calls(sync_service: tinker.ServiceClient, fresh_server: LocalServer) -> None:
    tc = sync_service.create_lora_training_client(MODEL, rank=4, seed=0).result(60)
    tok = tc.get_tokenizer()
    batch = [make_datum(tok)]
    futs = []
    for _ in range(3):
        futs.append(tc.forward_backward(batch, "cross_entropy"))
        futs.append(tc.optim_step(tinker.AdamParams(learning_rate=1e-2)))
    results = [f.result(60) for f in futs]
    losses = [r.metrics["loss:sum"] for r in results[::2]]
    assert losses[0] > losses[1] > losses[2]
    assert accepted_seqs(fresh_server, tc.model_id) == [1, 2, 3, 4, 5, 6]


async def test_forward_computes_without_changing_weights(tc: tinker.TrainingClient) -> None:
    tok = tc.get_tokenizer()
    batch = [make_datum(tok), make_datum(tok, "short text")]
    first = await (await tc.forward_async(batch, "cross_entropy"))
    second = await tc.forward(batch, "cross_entropy")  # plain form, awaited
    assert first.metrics["loss:sum"] == pytest.approx(second.metrics["loss:sum"])
    lp0 = first.loss_fn_outputs[1]["logprobs"].to_numpy()
    assert lp0.shape == (len(batch[1].loss_fn_inputs["target_tokens"].data),)
    # loss:sum is -sum(weights * logprobs)
    total = sum(-float(o["logprobs"].to_numpy().sum()) for o in first.loss_fn_outputs)
    assert first.metrics["loss:sum"] == pytest.approx(total, rel=1e-4)
    # A forward_backward then optim step does change them.
    await (await tc.forward_backward_async(batch, "cross_entropy"))
    await (await tc.optim_step_async(tinker.AdamParams(learning_rate=1e-2)))
    third = await (await tc.forward_async(batch, "cross_entropy"))
    assert third.metrics["loss:sum"] < first.metrics["loss:sum"]


@pytest.mark.parametrize("loss_fn", ["importance_sampling", "ppo"])
async def test_rl_losses(tc: tinker.TrainingClient, loss_fn: str) -> None:
    tok = tc.get_tokenizer()
    base = make_datum(tok)
    n = len(base.loss_fn_inputs["target_tokens"].data)
    fwd = await (await tc.forward_async([base], "cross_entropy"))
    sampler_lp = fwd.loss_fn_outputs[0]["logprobs"].to_numpy()
    datum = tinker.Datum(model_input=base.model_input, loss_fn_inputs={
        "target_tokens": base.loss_fn_inputs["target_tokens"],
        "logprobs": sampler_lp.astype(np.float32),
        "advantages": np.ones(n, dtype=np.float32),
    })
    config = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2} if loss_fn == "ppo" else None
    out = await (await tc.forward_backward_async([datum], loss_fn, config))  # type: ignore[arg-type]
    assert "loss:sum" in out.metrics
    # ratio == 1 everywhere, advantages 1: the loss is -n
    assert out.metrics["loss:sum"] == pytest.approx(-n, rel=1e-3)
    assert out.loss_fn_outputs[0]["logprobs"].to_numpy() == pytest.approx(sampler_lp, abs=1e-4)
    await (await tc.optim_step_async(tinker.AdamParams(learning_rate=1e-2)))
    after = await (await tc.forward_async([base], "cross_entropy"))
    # Positive advantages on these tokens make them more likely.
    assert after.metrics["loss:sum"] < fwd.metrics["loss:sum"]


def test_multi_chunk_batch_is_split_and_merged(api_key: str) -> None:
    with LocalServer(api_key=api_key, client_config={"fwdbwd_max_chunk_len": 2}).in_thread() as srv:
        async def main() -> None:
            async with tinker.ServiceClient(base_url=srv.url, api_key=api_key) as svc:
                tc = await svc.create_lora_training_client_async(MODEL, rank=4, seed=0)
                tok = tc.get_tokenizer()
                texts = ["one fish", "two fish", "red fish", "blue fish!", "the end"]
                batch = [make_datum(tok, s) for s in texts]
                singles = [await (await tc.forward_async([d], "cross_entropy")) for d in batch]
                srv.clear_requests()
                merged = await (await tc.forward_async(batch, "cross_entropy"))
                assert len(merged.loss_fn_outputs) == 5
                for one, out in zip(singles, merged.loss_fn_outputs, strict=True):
                    np.testing.assert_allclose(out["logprobs"].to_numpy(),
                                               one.loss_fn_outputs[0]["logprobs"].to_numpy(),
                                               rtol=1e-5, atol=1e-6)
                assert merged.metrics["loss:sum"] == pytest.approx(
                    sum(s.metrics["loss:sum"] for s in singles), rel=1e-5)
                assert sorted(accepted_seqs(srv, tc.model_id)) == [6, 7, 8]  # three chunks
                fb = await tc.forward_backward_async(batch, "cross_entropy")
                opt = await tc.optim_step_async(tinker.AdamParams(learning_rate=1e-2))
                assert len((await fb).loss_fn_outputs) == 5
                await opt
                seqs = accepted_seqs(srv, tc.model_id)
                assert sorted(seqs[3:6]) == [9, 10, 11] and seqs[6:] == [12]
                # Chunk 1 goes last, after the others were accepted (the official order).
                assert seqs[5] == 9

                # One chunk refused while another was accepted: the server's sequence is
                # now unknown, so the client refuses to go on (clearly, at once).
                srv.faults.add(r"/forward_backward$", status=400, count=1)
                with pytest.raises(tinker.BadRequestError):
                    await tc.forward_backward_async(batch, "cross_entropy")
                with pytest.raises(tinker.TinkerError, match="no longer submit"):
                    await tc.optim_step_async()

        asyncio.run(main())


# --------------------------------------------------------------------- validation and ordering


def _bad_batches(tok: Any) -> list[tuple[Any, str, str]]:
    good = make_datum(tok)
    missing = tinker.Datum(model_input=good.model_input, loss_fn_inputs={"weights": [1.0] * 5})
    short = tinker.Datum(model_input=good.model_input,
                         loss_fn_inputs={"target_tokens": [1, 2, 3]})
    rl_missing = tinker.Datum(model_input=good.model_input,
                              loss_fn_inputs={"target_tokens": good.loss_fn_inputs["target_tokens"]})
    return [
        ([missing], "cross_entropy", "target_tokens"),
        ([short], "cross_entropy", "positions"),
        ([], "cross_entropy", "empty"),
        ([good], "no_such_loss", "loss_fn must be one of"),
        ([rl_missing], "ppo", "advantages"),
        (good, "cross_entropy", "list of Datum"),
    ]


async def test_validation_errors_are_raised_before_sending_and_take_no_seq_id(
    tc: tinker.TrainingClient, fresh_server: LocalServer
) -> None:
    tok = tc.get_tokenizer()
    good = [make_datum(tok)]
    await (await tc.forward_backward_async(good, "cross_entropy"))
    before = len(fresh_server.requests)
    for data, loss_fn, match in _bad_batches(tok):
        for method in (tc.forward_backward_async, tc.forward_async):
            with pytest.raises(tinker.InvalidRequestError, match=match):
                await method(data, loss_fn)
        with pytest.raises(tinker.InvalidRequestError, match=match):
            await tc.forward_backward(data, loss_fn)  # plain form: raises at the call
    with pytest.raises(tinker.InvalidRequestError):
        await tc.optim_step_async(tinker.AdamParams(learning_rate=-1.0))
    with pytest.raises(tinker.InvalidRequestError):
        await tc.save_state_async("a/b")
    assert len(fresh_server.requests) == before  # nothing went out
    await asyncio.wait_for((await tc.optim_step_async()).result_async(), 60)
    await asyncio.wait_for((await tc.forward_async(good, "cross_entropy")).result_async(), 60)
    assert accepted_seqs(fresh_server, tc.model_id) == [1, 2, 3]


async def test_rejected_submit_leaves_no_seq_gap(
    tc: tinker.TrainingClient, fresh_server: LocalServer
) -> None:
    tok = tc.get_tokenizer()
    batch = [make_datum(tok)]
    await (await tc.forward_backward_async(batch, "cross_entropy"))  # seq 1
    fresh_server.faults.add(r"/forward_backward$", status=400, count=1)
    with pytest.raises(tinker.BadRequestError) as info:
        await tc.forward_backward_async(batch, "cross_entropy")
    assert info.value.status_code == 400
    # The next op takes the seq id the rejected one had, and goes through promptly.
    opt = await tc.optim_step_async(tinker.AdamParams(learning_rate=1e-2))
    await asyncio.wait_for(opt.result_async(), 60)
    fresh_server.faults.add(r"/optim_step$", status=400, count=1)
    with pytest.raises(tinker.BadRequestError):
        await tc.optim_step(tinker.AdamParams(learning_rate=1e-2))  # plain form
    fb = tc.forward_backward(batch, "cross_entropy")
    await asyncio.wait_for(fb.result_async(), 60)
    ops = wire_ops(fresh_server, tc.model_id)
    assert [(e, s, st) for e, s, st in ops] == [
        ("forward_backward", 1, 200), ("forward_backward", 2, 400), ("optim_step", 2, 200),
        ("optim_step", 3, 400), ("forward_backward", 3, 200)]


async def test_connection_lost_during_submit_stops_the_client_clearly(
    fresh_server: LocalServer, api_key: str
) -> None:
    """The server may hold a submit whose connection broke: the client must neither reuse
    its seq id (aliasing the next call) nor skip it (a gap); it stops with a clear error."""
    async with tinker.ServiceClient(base_url=fresh_server.url, api_key=api_key,
                                    max_retries=1) as svc:
        tc = await svc.create_lora_training_client_async(MODEL, rank=2)
        batch = [make_datum(tc.get_tokenizer())]
        fresh_server.faults.add(r"/forward_backward$", drop_connection=True, count=5)
        with pytest.raises(tinker.APIConnectionError):
            await tc.forward_backward_async(batch, "cross_entropy")
        with pytest.raises(tinker.TinkerError, match="may or may not have been applied"):
            await tc.optim_step_async(tinker.AdamParams(learning_rate=1e-2))
        assert not any(e == "optim_step" for e, _, _ in wire_ops(fresh_server, tc.model_id))


def test_training_client_refuses_use_in_a_forked_child(
    server: LocalServer, api_key: str, run_script: Any
) -> None:
    out = run_script(f"""
import os, tinker_async as tinker
svc = tinker.ServiceClient(base_url={server.url!r}, api_key={api_key!r})
tc = svc.create_lora_training_client({MODEL!r}, rank=2).result(60)
pid = os.fork()
if pid == 0:
    try:
        tc.optim_step(tinker.AdamParams(learning_rate=1e-3)).result(60)
        print("child trained", flush=True)
    except tinker.TinkerError as exc:
        print("child refused:", exc, flush=True)
    os._exit(0)
os.waitpid(pid, 0)
print("parent trains", tc.optim_step(tinker.AdamParams(learning_rate=1e-3)).result(60).metrics is not None)
svc.close().result(60)
""")
    assert "child refused: A TrainingClient cannot be used in a forked child" in out
    assert "parent trains True" in out


async def test_a_call_cancelled_while_waiting_its_turn_does_not_block_later_calls(
    tc: tinker.TrainingClient, fresh_server: LocalServer
) -> None:
    tok = tc.get_tokenizer()
    batch = [make_datum(tok)]
    # The optim_step's submit is held on the server (then dropped, and sent again) until
    # the call behind it has been cancelled, so that call certainly waits its turn.
    held = fresh_server.faults.add(r"/optim_step$", stall=True, count=1)
    slow = asyncio.ensure_future(tc.optim_step_async(tinker.AdamParams(learning_rate=1e-2)))
    await wait_until_async(lambda: held.hits == 1, "the optim_step to be on the wire")
    waiting = asyncio.ensure_future(tc.forward_backward_async(batch, "cross_entropy"))
    later = asyncio.ensure_future(tc.forward_async(batch, "cross_entropy"))
    # Read-only look at the client's line: both calls wait for the optim_step.
    await wait_until_async(lambda: len(tc._seq._waiters) == 2, "two calls waiting their turn")
    waiting.cancel()
    with released_when(fresh_server, lambda: True):
        await asyncio.wait_for((await slow).result_async(), 60)
        out = await asyncio.wait_for((await asyncio.wait_for(later, 60)).result_async(), 60)
    assert out.metrics["loss:sum"] > 0
    assert waiting.cancelled()
    assert accepted_seqs(fresh_server, tc.model_id) == [1, 2]


async def test_a_call_cancelled_while_its_request_is_on_the_wire_still_takes_its_seq_id(
    tc: tinker.TrainingClient, fresh_server: LocalServer
) -> None:
    tok = tc.get_tokenizer()
    batch = [make_datum(tok)]
    # The submit is held on the server until the caller has given up on it; released (it
    # is dropped), the client sends it again with the same seq id.
    held = fresh_server.faults.add(r"/forward_backward$", stall=True, count=1)
    call = asyncio.ensure_future(tc.forward_backward_async(batch, "cross_entropy"))
    await wait_until_async(lambda: held.hits == 1, "the forward_backward to be on the wire")
    with pytest.raises(asyncio.TimeoutError):  # not the builtin one before Python 3.11
        await asyncio.wait_for(call, 0.1)
    # The submit went through regardless, so the next call gets the next seq id and its
    # own result (not the forward_backward's future under a reused seq id).
    with released_when(fresh_server, lambda: True):
        opt = await asyncio.wait_for(
            tc.optim_step_async(tinker.AdamParams(learning_rate=1e-2)), 60)
    assert isinstance(await asyncio.wait_for(opt.result_async(), 60), tinker.OptimStepResponse)
    assert [(e, s) for e, s, st in wire_ops(fresh_server, tc.model_id) if st == 200] == [
        ("forward_backward", 1), ("optim_step", 2)]


async def test_result_async_timeout_on_a_training_future(tc: tinker.TrainingClient,
                                                         fresh_server: LocalServer) -> None:
    tok = tc.get_tokenizer()
    # The result poll is held until the timeout has fired (then dropped and polled again).
    held = fresh_server.faults.add(r"/retrieve_futures?$", stall=True, count=1)
    fut = await tc.forward_async([make_datum(tok)], "cross_entropy")
    with pytest.raises(TimeoutError):
        await fut.result_async(timeout=0.1)
    # The client goes on: the next op is submitted and answered.
    with released_when(fresh_server, lambda: True):
        out = await asyncio.wait_for(
            (await tc.forward_async([make_datum(tok)], "cross_entropy")).result_async(), 60)
    assert held.hits == 1
    assert out.metrics["loss:sum"] > 0


# --------------------------------------------------------------------------------- checkpoints


async def test_save_and_load_state(tc: tinker.TrainingClient, service: tinker.ServiceClient,
                                   fresh_server: LocalServer) -> None:
    tok = tc.get_tokenizer()
    batch = [make_datum(tok)]
    adam = tinker.AdamParams(learning_rate=2e-2)
    await (await tc.forward_backward_async(batch, "cross_entropy"))
    await (await tc.optim_step_async(adam))
    saved = await (await tc.save_state_async("ckpt", user_metadata={"step": "1"}))
    assert isinstance(saved, tinker.types.SaveWeightsResponse)
    assert saved.path == f"tinker://{tc.model_id}/weights/ckpt"
    at_save = (await (await tc.forward_async(batch, "cross_entropy"))).metrics["loss:sum"]
    for _ in range(2):
        await (await tc.forward_backward_async(batch, "cross_entropy"))
        await (await tc.optim_step_async(adam))
    trained = (await (await tc.forward_async(batch, "cross_entropy"))).metrics["loss:sum"]
    assert trained < at_save
    loaded = await (await tc.load_state_async(saved.path))
    assert loaded.path == saved.path
    assert (await tc.forward(batch, "cross_entropy")).metrics["loss:sum"] == pytest.approx(at_save)
    # With the optimizer state: the same next step as from the saved point.
    await tc.load_state_with_optimizer(saved.path)
    await tc.forward_backward(batch, "cross_entropy")
    await tc.optim_step(adam)
    step_a = (await tc.forward(batch, "cross_entropy")).metrics["loss:sum"]
    await (await tc.load_state_with_optimizer_async(saved.path))
    await (await tc.forward_backward_async(batch, "cross_entropy"))
    await (await tc.optim_step_async(adam))
    step_b = (await (await tc.forward_async(batch, "cross_entropy"))).metrics["loss:sum"]
    assert step_a == pytest.approx(step_b, rel=1e-5)
    with pytest.raises(tinker.InvalidPathError):
        await tc.load_state_async("not-a-path")
    ckpts = await service.create_rest_client().list_checkpoints_async(tc.model_id)
    assert "ckpt" in {c.checkpoint_id.rsplit("/", 1)[-1] for c in ckpts.checkpoints}
    seqs = accepted_seqs(fresh_server, tc.model_id)
    assert seqs == list(range(1, len(seqs) + 1))


async def test_create_training_client_from_state_via_load(
    tc: tinker.TrainingClient, service: tinker.ServiceClient, fresh_server: LocalServer
) -> None:
    tok = tc.get_tokenizer()
    batch = [make_datum(tok)]
    adam = tinker.AdamParams(learning_rate=2e-2)
    await (await tc.forward_backward_async(batch, "cross_entropy"))
    await (await tc.optim_step_async(adam))
    saved = await (await tc.save_state_async("from-here"))
    at_save = (await (await tc.forward_async(batch, "cross_entropy"))).metrics["loss:sum"]
    await (await tc.forward_backward_async(batch, "cross_entropy"))
    await (await tc.optim_step_async(adam))
    next_step = (await (await tc.forward_async(batch, "cross_entropy"))).metrics["loss:sum"]

    fresh_server.clear_requests()
    weights_only = await service.create_training_client_from_state_async(saved.path)
    assert weights_only.model_id != tc.model_id and weights_only.get_info().lora_rank == 4
    loads = [json.loads(r.body) for r in fresh_server.requests if r.path.endswith("/load_weights")]
    assert len(loads) == 1 and loads[0]["session_id"] == service.session_id
    assert loads[0]["optimizer"] is False and "model_id" not in loads[0]
    assert fresh_server.count("/create_model$") == 0
    assert fresh_server.count("/training_runs/") == 0  # the server knows the base model
    out = await (await weights_only.forward_async(batch, "cross_entropy"))
    assert out.metrics["loss:sum"] == pytest.approx(at_save)
    assert accepted_seqs(fresh_server, weights_only.model_id) == [1]  # the load was seq 0

    with_opt = await service.create_training_client_from_state_with_optimizer(saved.path)
    await (await with_opt.forward_backward_async(batch, "cross_entropy"))
    await (await with_opt.optim_step_async(adam))
    resumed = (await (await with_opt.forward_async(batch, "cross_entropy"))).metrics["loss:sum"]
    assert resumed == pytest.approx(next_step, rel=1e-5)
    with pytest.raises(tinker.InvalidRequestError):
        await service.create_training_client_from_state_async(
            f"tinker://{tc.model_id}/sampler_weights/x")


def test_create_training_client_from_state_plain_form(
    sync_service: tinker.ServiceClient, fresh_server: LocalServer
) -> None:
    tc = sync_service.create_lora_training_client(MODEL, rank=3).result(60)
    path = tc.save_state("plain").result(60).path
    clone = sync_service.create_training_client_from_state(path).result(60)
    also = sync_service.create_training_client_from_state_with_optimizer(path).result(60)
    assert clone.get_info().lora_rank == also.get_info().lora_rank == 3
    batch = [make_datum(tc.get_tokenizer())]
    a = tc.forward(batch, "cross_entropy").result(60).metrics["loss:sum"]
    b = clone.forward(batch, "cross_entropy").result(60).metrics["loss:sum"]
    assert a == pytest.approx(b)


async def test_save_weights_for_sampler_and_sampling_clients(
    tc: tinker.TrainingClient, service: tinker.ServiceClient, fresh_server: LocalServer
) -> None:
    tok = tc.get_tokenizer()
    text = "abcabcabcabcabcabcabcabc"
    batch = [make_datum(tok, text)]
    prompt = tinker.ModelInput.from_ints(list(tok.encode(text)))
    base_sampler = await service.create_sampling_client_async(base_model=MODEL)
    base_lp = await base_sampler.compute_logprobs_async(prompt)
    for _ in range(4):
        await tc.forward_backward_async(batch, "cross_entropy")
        await tc.optim_step_async(tinker.AdamParams(learning_rate=1e-2))
    saved = await (await tc.save_weights_for_sampler_async("s1"))
    assert saved.path == f"tinker://{tc.model_id}/sampler_weights/s1"
    from_path = await tc.create_sampling_client_async(saved.path)
    created = [json.loads(r.body) for r in fresh_server.requests
               if r.path.endswith("/create_sampling_session")]
    assert created[-1]["model_path"] == saved.path and "base_model" not in created[-1]
    assert from_path.get_base_model() == MODEL  # asked of the server
    ephemeral = await tc.save_weights_and_get_sampling_client_async()
    plain = await tc.save_weights_and_get_sampling_client()
    assert isinstance(ephemeral, tinker.SamplingClient) and isinstance(plain, tinker.SamplingClient)
    assert ephemeral.get_base_model() == MODEL
    trained = [await s.compute_logprobs_async(prompt) for s in (from_path, ephemeral, plain)]
    for lp in trained:
        assert lp[0] is None
        np.testing.assert_allclose(lp[1:], trained[0][1:], rtol=1e-4)
        assert sum(lp[1:]) > sum(base_lp[1:]) + 1.0  # the trained text got likelier
    # The ephemeral saves draw from the session's sampling counter and take a seq id.
    saves = [json.loads(r.body) for r in fresh_server.requests
             if r.path.endswith("/save_weights_for_sampler")]
    # (0 and 1 went to the two create_sampling_session calls)
    assert [s.get("sampling_session_seq_id") for s in saves] == [None, 2, 3]
    assert all("kind" not in s for s in saves)  # the default is left out
    seqs = accepted_seqs(fresh_server, tc.model_id)
    assert seqs == list(range(1, len(seqs) + 1))


async def test_snapshot_sampler_does_not_follow_later_training(tc: tinker.TrainingClient) -> None:
    tok = tc.get_tokenizer()
    batch = [make_datum(tok)]
    sampler = await tc.save_weights_and_get_sampling_client_async()
    prompt = tinker.ModelInput.from_ints(list(tok.encode(TEXT)))
    before = await sampler.compute_logprobs_async(prompt)
    await tc.forward_backward_async(batch, "cross_entropy")
    await (await tc.optim_step_async(tinker.AdamParams(learning_rate=5e-2)))
    assert await sampler.compute_logprobs_async(prompt) == pytest.approx(before)


# ------------------------------------------------------------------------------ custom losses


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None,
                    reason="with torch installed, custom losses get torch tensors")
async def test_forward_backward_custom_with_a_numpy_loss(
    tc: tinker.TrainingClient, fresh_server: LocalServer
) -> None:
    tok = tc.get_tokenizer()
    batch = [make_datum(tok), make_datum(tok, "another line of text")]
    seen: list[list[np.ndarray[Any, Any]]] = []

    def loss_fn(data: list[tinker.Datum], logprobs: list[Any]) -> tuple[Any, ...]:
        seen.append(logprobs)
        loss = -sum(float(lp.sum()) for lp in logprobs)  # plain cross entropy
        grads = [-np.ones_like(lp) for lp in logprobs]
        return loss, {"custom:mean": 1.5}, grads

    reference = await (await tc.forward_async(batch, "cross_entropy"))
    out = await (await tc.forward_backward_custom_async(batch, loss_fn))
    assert len(seen) == 1 and len(seen[0]) == 2
    assert isinstance(seen[0][0], np.ndarray)
    np.testing.assert_allclose(seen[0][0], reference.loss_fn_outputs[0]["logprobs"].to_numpy(),
                               rtol=1e-5)
    assert out.metrics["loss:sum"] == pytest.approx(reference.metrics["loss:sum"], rel=1e-5)
    assert out.metrics["custom:mean"] == 1.5
    # The surrogate has the same gradient: weights = -grads = 1, so the same loss value.
    assert out.metrics["surrogate_loss:sum"] == pytest.approx(reference.metrics["loss:sum"],
                                                              rel=1e-4)
    await (await tc.optim_step_async(tinker.AdamParams(learning_rate=3e-2)))
    after = await tc.forward(batch, "cross_entropy")
    assert after.metrics["loss:sum"] < reference.metrics["loss:sum"]
    # Plain form too.
    again = tc.forward_backward_custom(batch, loss_fn)
    assert (await again).metrics["custom:mean"] == 1.5

    # The custom pass is a forward then a forward_backward, in line with the rest.
    ops = [(e, s) for e, s, st in wire_ops(fresh_server, tc.model_id) if st == 200]
    assert ops == [("forward_backward", 1), ("forward_backward", 2), ("forward_backward", 3),
                   ("optim_step", 4), ("forward_backward", 5), ("forward_backward", 6),
                   ("forward_backward", 7)]


async def test_forward_backward_custom_errors_leave_the_client_usable(
    tc: tinker.TrainingClient, fresh_server: LocalServer
) -> None:
    tok = tc.get_tokenizer()
    batch = [make_datum(tok)]

    def broken(data: list[tinker.Datum], logprobs: list[Any]) -> tuple[Any, ...]:
        raise ZeroDivisionError("oops")

    def two_values(data: list[tinker.Datum], logprobs: list[Any]) -> tuple[Any, ...]:
        return 0.0, {}

    def bad_shape(data: list[tinker.Datum], logprobs: list[Any]) -> tuple[Any, ...]:
        return 0.0, {}, [np.zeros(3)]

    for fn in (broken, two_values, bad_shape):
        with pytest.raises(tinker.InvalidRequestError):
            await tc.forward_backward_custom_async(batch, fn)
    with pytest.raises(tinker.InvalidRequestError, match="oops"):
        await tc.forward_backward_custom(batch, broken)  # plain form
    # The server refuses the forward pass: the backward's place in line is given up too.
    fresh_server.faults.add(r"/forward_backward$", status=400, count=1)
    with pytest.raises(tinker.BadRequestError):
        await tc.forward_backward_custom_async(batch, broken)
    opt = await asyncio.wait_for(tc.optim_step_async(), 60)
    await asyncio.wait_for(opt.result_async(), 60)
    # Each failed custom call sent its forward (seq 1-4); the backward was never sent.
    assert accepted_seqs(fresh_server, tc.model_id) == [1, 2, 3, 4, 5]


# ------------------------------------------------------------------------ getters and futures


async def test_local_getters_make_no_requests(tc: tinker.TrainingClient,
                                              fresh_server: LocalServer) -> None:
    fresh_server.clear_requests()
    info = tc.get_info()
    assert isinstance(info, tinker.types.GetInfoResponse) and info.is_lora
    tok = tc.get_tokenizer()
    assert tok is tc.get_tokenizer()  # cached
    ids = tok.encode("Hi!", add_special_tokens=False)
    assert tok.decode(ids) == "Hi!"
    assert fresh_server.requests == []


async def test_optim_step_argument_forms(tc: tinker.TrainingClient) -> None:
    adam = tinker.AdamParams(learning_rate=1e-3)
    assert isinstance(await (await tc.optim_step_async(adam)), tinker.OptimStepResponse)
    assert isinstance(await (await tc.optim_step_async(adam_params=adam)), tinker.OptimStepResponse)
    assert isinstance(await tc.optim_step(), tinker.OptimStepResponse)
    with pytest.raises(tinker.InvalidRequestError):
        await tc.optim_step_async(adam, adam_params=adam)
    with pytest.raises(tinker.InvalidRequestError):
        await tc.optim_step_async({"learning_rate": 1e-3})  # type: ignore[arg-type]


async def test_training_client_is_not_picklable(tc: tinker.TrainingClient) -> None:
    import pickle

    with pytest.raises(TypeError, match="SamplingClient"):
        pickle.dumps(tc)


async def test_copy_weights_and_console_urls(fresh_server: LocalServer, api_key: str) -> None:
    async with tinker.ServiceClient(base_url=fresh_server.url, api_key=api_key,
                                    project_id="proj-a") as svc:
        tc = await svc.create_lora_training_client_async(MODEL, rank=2)
        saved = await (await tc.save_state_async("c1"))
        copied = await svc.copy_weights_async(saved.path)
        assert copied.startswith("tinker://") and copied != saved.path
        body = json.loads(next(r.body for r in fresh_server.requests
                               if r.path.endswith("/copy_weights")))
        assert body["destination_project_id"] == "proj-a"
        assert (await svc.copy_weights(saved.path)).startswith("tinker://")
        assert svc.get_console_url().endswith(f"/sessions/{svc.session_id}")
        assert tc.get_console_url().startswith("https://") and "training_runs/" in tc.get_console_url()
