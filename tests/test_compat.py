"""Code written for the official ``tinker`` 0.38 SDK runs unchanged on ``tinker_async``.

The snippets below are the official SDK's documented patterns and the ones the most used
consumer (tinker-cookbook) relies on: plain methods everywhere, ``.result()`` in sync
code, the same plain methods awaited inside ``async def``, ``.result()`` *inside* a
coroutine, pipelined ``forward_backward``/``optim_step``, ``.coroutine()`` with
``asyncio.gather``, ``dataclasses.replace`` on data types, and ``import tinker`` itself
(through ``install_as_tinker``, in a child process so the real SDK in this virtualenv is
not shadowed for the other tests).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import tinker_async as tinker
from tinker_async import _api_future
from tinker_async._api_future import BlockingCallWarning
from tinker_async.local import LocalServer

MODEL = "local/byte-lm"


def sft_datum(tokenizer: Any, text: str) -> tinker.Datum:
    tokens = tokenizer.encode(text)
    weights = np.ones(len(tokens) - 1, dtype=np.float32)
    return tinker.Datum(
        model_input=tinker.ModelInput.from_ints(tokens=tokens[:-1]),
        loss_fn_inputs=dict(weights=weights, target_tokens=tokens[1:]),
    )


def test_official_sync_script_pattern(fresh_server: LocalServer, api_key: str) -> None:
    service_client = tinker.ServiceClient(base_url=fresh_server.url, api_key=api_key)
    training_client = service_client.create_lora_training_client(
        base_model=MODEL, rank=4).result()
    tokenizer = training_client.get_tokenizer()
    data = [sft_datum(tokenizer, t) for t in ("Banana split", "Quantum physics")]
    losses = []
    for _ in range(3):
        fwdbwd_future = training_client.forward_backward(data, "cross_entropy")
        optim_future = training_client.optim_step(tinker.AdamParams(learning_rate=1e-2))
        fwdbwd_result = fwdbwd_future.result()
        optim_future.result()
        logprobs = np.concatenate(
            [output["logprobs"].tolist() for output in fwdbwd_result.loss_fn_outputs])
        weights = np.concatenate([d.loss_fn_inputs["weights"].tolist() for d in data])
        losses.append(-np.dot(logprobs, weights) / weights.sum())
    assert losses[-1] < losses[0]
    sampling_client = training_client.save_weights_and_get_sampling_client(name="pig-latin-model")
    sampling_client = sampling_client.result()
    prompt = tinker.types.ModelInput.from_ints(tokenizer.encode("Banana"))
    params = tinker.types.SamplingParams(max_tokens=5, temperature=0.0, stop=["\n"])
    future = sampling_client.sample(prompt=prompt, sampling_params=params, num_samples=2)
    result = future.result()
    assert len(result.sequences) == 2
    assert isinstance(tokenizer.decode(result.sequences[0].tokens), str)
    capabilities = service_client.get_server_capabilities()  # the value, as the official SDK
    assert MODEL in [m.model_name for m in capabilities.supported_models]
    rest_client = service_client.create_rest_client()
    assert rest_client.get_training_run(training_client.model_id).result().lora_rank == 4
    service_client.close().result()


def test_cookbook_async_patterns(fresh_server: LocalServer, api_key: str) -> None:
    """tinker-cookbook's style: plain methods awaited, pipelining, result() in a coroutine."""

    async def main() -> dict[str, Any]:
        service_client = tinker.ServiceClient(base_url=fresh_server.url, api_key=api_key)
        training_client = await service_client.create_lora_training_client(MODEL, rank=4)
        tokenizer = training_client.get_tokenizer()
        batches = [[sft_datum(tokenizer, f"line number {i} of the text")] for i in range(3)]
        adam = tinker.AdamParams(learning_rate=1e-2)
        # Batch i+1 is submitted before batch i is awaited.
        fwd_bwd_future = training_client.forward_backward(batches[0], loss_fn="cross_entropy")
        optim_future = training_client.optim_step(adam)
        metrics = []
        for batch in batches[1:]:
            next_fwd = training_client.forward_backward(batch, loss_fn="cross_entropy")
            next_opt = training_client.optim_step(adam)
            metrics.append((await fwd_bwd_future).metrics)
            await optim_future
            fwd_bwd_future, optim_future = next_fwd, next_opt
        metrics.append((await fwd_bwd_future.result_async()).metrics)
        await optim_future.result_async()
        # The deprecated _async forms: await once for the future, again for the result.
        fut = await training_client.forward_backward_async(batches[0], "cross_entropy")
        metrics.append((await fut.result_async()).metrics)
        await (await training_client.optim_step_async(adam))
        sampling_client = await training_client.save_weights_and_get_sampling_client()
        prompt = tinker.ModelInput.from_ints(tokenizer.encode("line"))
        params = tinker.SamplingParams(max_tokens=4)
        response = await sampling_client.sample(prompt=prompt, num_samples=2,
                                                sampling_params=params)
        gathered = await asyncio.gather(
            sampling_client.sample(prompt, 1, params).coroutine(),
            sampling_client.sample_async(prompt, 1, params),
            sampling_client.compute_logprobs(prompt).coroutine(),
        )
        # .result() on a plain future inside async def: warns once, then works.
        _api_future._warned_blocking = False
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            blocking = training_client.forward(batches[0], "cross_entropy").result(60)
            again = sampling_client.sample(prompt, 1, params).result(60)
        fut_cf = sampling_client.sample(prompt, 1, params).future()
        done: list[Any] = []
        fut_cf.add_done_callback(done.append)
        await asyncio.wrap_future(fut_cf)
        service_client.close().result(60)
        return {"metrics": metrics, "response": response, "gathered": gathered,
                "caught": caught, "blocking": blocking, "again": again, "done": done}

    out = asyncio.run(main())
    losses = [m["loss:sum"] for m in out["metrics"]]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert len(out["response"].sequences) == 2
    assert len(out["gathered"][0].sequences) == 1 and out["gathered"][2][0] is None
    blocking_warnings = [w for w in out["caught"] if issubclass(w.category, BlockingCallWarning)]
    assert len(blocking_warnings) == 1 and blocking_warnings[0].filename == __file__
    assert out["blocking"].metrics["loss:sum"] > 0 and len(out["again"].sequences) == 1
    assert len(out["done"]) == 1


def test_result_inside_async_def_on_a_client_first_used_async(
    fresh_server: LocalServer, api_key: str
) -> None:
    """The cookbook calls ``client.foo(...).result()`` inside ``async def`` on clients the
    user first touched through ``_async`` methods (so the loop is their home). The official
    SDK blocks and succeeds; so must we, keeping call order and the client's home."""

    async def main() -> dict[str, Any]:
        service_client = tinker.ServiceClient(base_url=fresh_server.url, api_key=api_key)
        training_client = await service_client.create_lora_training_client_async(MODEL, rank=4)
        home = asyncio.get_running_loop()
        tokenizer = training_client.get_tokenizer()
        data = [sft_datum(tokenizer, "the quick brown fox")]
        adam = tinker.AdamParams(learning_rate=1e-2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BlockingCallWarning)
            # Pipelined: both submitted before either is read; order must hold.
            fb = training_client.forward_backward(data, "cross_entropy")
            opt = training_client.optim_step(adam)
            first = opt.result(60)
            fb_result = fb.result(60)
            losses = [fb_result.metrics["loss:sum"]]
            for _ in range(3):
                fb = training_client.forward_backward(data, "cross_entropy")
                training_client.optim_step(adam).result(60)
                losses.append(fb.result(60).metrics["loss:sum"])
            path = training_client.save_weights_for_sampler("w").result(60).path
            sampler = service_client.create_sampling_client(model_path=path).result(60)
            sampler2 = training_client.save_weights_and_get_sampling_client().result(60)
            prompt = tinker.ModelInput.from_ints(tokenizer.encode("the"))
            params = tinker.SamplingParams(max_tokens=3, temperature=0.0)
            sampled = sampler.sample(prompt, 2, params).result(60)
            sampled2 = sampler2.sample(prompt, 1, params).result(60)
            runs = service_client.create_rest_client().list_training_runs().result(60)
        # Async code goes on natively on its loop afterwards.
        after = await training_client.forward_async(data, "cross_entropy")
        fwd = await after
        same_home = training_client._home.loop is home
        await service_client.close_async()
        return {"first": first, "losses": losses, "sampled": sampled, "sampled2": sampled2,
                "runs": runs, "fwd": fwd, "same_home": same_home,
                "model_id": training_client.model_id}

    out = asyncio.run(main())
    assert out["losses"][-1] < out["losses"][0]  # the steps really ran, in order
    assert len(out["sampled"].sequences) == 2 and len(out["sampled2"].sequences) == 1
    assert out["model_id"] in [r.training_run_id for r in out["runs"].training_runs]
    assert out["fwd"].metrics["loss:sum"] > 0 and out["same_home"]


def test_asyncio_run_several_times_with_one_client(fresh_server: LocalServer,
                                                   api_key: str) -> None:
    """Checkpoint helpers in the cookbook call asyncio.run repeatedly with the same clients."""
    service_client = tinker.ServiceClient(base_url=fresh_server.url, api_key=api_key)
    training_client = asyncio.run(service_client.create_lora_training_client_async(MODEL, rank=2))
    datum = sft_datum(training_client.get_tokenizer(), "again and again")

    async def step() -> float:
        fb = await training_client.forward_backward_async([datum], "cross_entropy")
        await (await training_client.optim_step_async(tinker.AdamParams(learning_rate=1e-2)))
        return float((await fb).metrics["loss:sum"])

    losses = [asyncio.run(step()) for _ in range(3)]
    losses.append(training_client.forward([datum], "cross_entropy").result(60).metrics["loss:sum"])
    assert losses[-1] < losses[0]
    path = asyncio.run(training_client.save_state_async("x")).result(60).path
    assert path.endswith("/weights/x")
    service_client.close().result(60)


def test_types_behave_like_the_sdk_ones() -> None:
    datum = tinker.Datum(model_input=tinker.ModelInput.from_ints([1, 2, 3]),
                         loss_fn_inputs={"target_tokens": [2, 3, 4], "weights": [1.0, 1.0, 0.0]})
    assert dataclasses.is_dataclass(datum)
    replaced = dataclasses.replace(datum, loss_fn_inputs={
        **datum.loss_fn_inputs, "advantages": np.array([0.5, 0.5, 0.5], dtype=np.float32)})
    assert replaced.loss_fn_inputs["advantages"].tolist() == [0.5, 0.5, 0.5]
    assert replaced.loss_fn_inputs["target_tokens"].dtype == "int64"
    assert "advantages" not in datum.loss_fn_inputs
    for name in ("Datum", "TensorData", "SampleResponse", "SampledSequence",
                 "ForwardBackwardOutput"):
        assert dataclasses.is_dataclass(getattr(tinker, name)), name
    assert tinker.EncodedTextChunk is tinker.types.EncodedTextChunk
    assert isinstance(tinker.ModelInput.from_ints([1]).chunks[0], tinker.EncodedTextChunk)
    from tinker_async.types import LossFnType

    assert tinker.types.LossFnType is LossFnType is tinker.LossFnType
    model_input = tinker.ModelInput.from_ints([5, 6]).append_int(7)
    assert model_input.to_ints() == [5, 6, 7] and model_input.length == 3
    td = tinker.TensorData.from_numpy(np.arange(4, dtype=np.float32))
    assert td.to_numpy().tolist() == [0, 1, 2, 3] and td.shape == [4]
    assert issubclass(tinker.InvalidRequestError, ValueError)
    assert issubclass(tinker.RequestFailedError, tinker.TinkerError)


def test_client_signatures_match_the_official_sdk() -> None:
    """Parameter names, kinds and defaults of every method real code calls."""
    official = pytest.importorskip("tinker")
    names = {
        "ServiceClient": ["create_lora_training_client", "create_training_client_from_state",
                          "create_training_client_from_state_with_optimizer",
                          "create_sampling_client", "get_server_capabilities",
                          "create_rest_client", "create_custom_loss"],
        "TrainingClient": ["forward", "forward_backward", "forward_backward_custom",
                           "optim_step", "save_state", "load_state", "load_state_with_optimizer",
                           "save_weights_for_sampler", "save_weights_and_get_sampling_client",
                           "save_weights_external", "create_sampling_client", "get_info",
                           "get_tokenizer"],
        "SamplingClient": ["sample", "compute_logprobs", "get_base_model", "get_tokenizer"],
    }
    for cls_name, methods in names.items():
        for method in methods:
            for form in (method, f"{method}_async"):
                theirs = getattr(getattr(official, cls_name), form, None)
                if theirs is None:
                    continue
                ours = getattr(getattr(tinker, cls_name), form)
                a = [(p.name, p.kind, p.default)
                     for p in inspect.signature(theirs).parameters.values()]
                b = [(p.name, p.kind, p.default)
                     for p in inspect.signature(ours).parameters.values()]
                assert b[: len(a)] == a, f"{cls_name}.{form}"
                assert all(p.default is not inspect.Parameter.empty for p in
                           list(inspect.signature(ours).parameters.values())[len(a):])


def test_creation_future_used_as_the_client(fresh_server: LocalServer, api_key: str) -> None:
    """Code from before 0.38 uses the creation future as the client: forwarded, with a warning."""
    _api_future._warned_client_future = False
    with tinker.ServiceClient(base_url=fresh_server.url, api_key=api_key) as service_client:
        training_client: Any = service_client.create_lora_training_client(MODEL, rank=2)
        assert isinstance(training_client, tinker.APIFuture)
        with pytest.warns(FutureWarning, match=r"\.result\(\)"):
            info = training_client.get_info()
        assert info.lora_rank == 2
        datum = sft_datum(training_client.get_tokenizer(), "old style")
        out = training_client.forward_backward([datum], "cross_entropy").result(60)
        assert out.metrics["loss:sum"] > 0
        sampling_client: Any = service_client.create_sampling_client(base_model=MODEL)
        resp = sampling_client.sample(tinker.ModelInput.from_ints([65, 66]), 1,
                                      tinker.SamplingParams(max_tokens=2)).result(60)
        assert len(resp.sequences) == 1
        assert training_client.result().model_id == training_client.model_id


INSTALLED_SCRIPT = """
import tinker_async
tinker_async.install_as_tinker()

import asyncio
import tinker
from tinker import types
from tinker.types import LossFnType
from tinker.types.tensor_data import TensorData
from tinker.lib.public_interfaces import APIFuture, RestClient

assert tinker is tinker_async and types is tinker_async.types
assert APIFuture is tinker_async.APIFuture and RestClient is tinker_async.RestClient
assert TensorData is tinker_async.TensorData

service_client = tinker.ServiceClient()  # TINKER_BASE_URL / TINKER_API_KEY from the environment
training_client = service_client.create_lora_training_client(base_model="local/byte-lm", rank=2).result()
tokenizer = training_client.get_tokenizer()
tokens = tokenizer.encode("hello hello hello")
datum = types.Datum(model_input=types.ModelInput.from_ints(tokens[:-1]),
                    loss_fn_inputs={"target_tokens": tokens[1:], "weights": [1.0] * (len(tokens) - 1)})
fb = training_client.forward_backward([datum], "cross_entropy")
opt = training_client.optim_step(types.AdamParams(learning_rate=1e-2))
first = fb.result().metrics["loss:sum"]
opt.result()

async def sample():
    sampling_client = await training_client.save_weights_and_get_sampling_client()
    return await sampling_client.sample(types.ModelInput.from_ints(tokens[:3]), 1,
                                        types.SamplingParams(max_tokens=3))

response = asyncio.run(sample())
second = training_client.forward([datum], "cross_entropy").result().metrics["loss:sum"]
print("OK", second < first, len(response.sequences[0].tokens), isinstance(fb, APIFuture))
service_client.close().result()
"""


def test_install_as_tinker_runs_sdk_code_unchanged(
    fresh_server: LocalServer, api_key: str, run_script: Callable[..., str]
) -> None:
    out = run_script(INSTALLED_SCRIPT, env={"TINKER_BASE_URL": fresh_server.url,
                                            "TINKER_API_KEY": api_key})
    assert "OK True 3 True" in out, out
    assert fresh_server.count(r"/create_model$") == 1
