"""Custom losses by handle: ``ServiceClient.create_custom_loss`` and
``TrainingClient.forward_backward_custom(data, loss_handle)``.

Two paths, both against the embedded server over real HTTP: a server with
``custom_loss_server_side`` stores the traced graph and runs it in one
``forward_backward(data, "custom", {"loss_id": ...})``; any other server gets the loss run
client-side in two passes. The graph wire form is checked against the official SDK's own
encoder. Tests that need torch skip without it (``make compat`` runs them).
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import math
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import msgspec
import numpy as np
import pytest

import tinker_async as tinker
from tinker_async import types as t
from tinker_async.local import LocalServer
from tinker_async.types import _wire

pytestmark = pytest.mark.anyio

MODEL = "local/byte-lm"
API_KEY = "tml-test-0123456789abcdef"  # the shared server's key (conftest.py)
RANKS: dict[str, Any] = {"logprobs": 1, "weights": 1}


# ----------------------------------------------------------------------------------- helpers


def needs_torch() -> Any:
    return pytest.importorskip("torch")


def datum(text: str, weight: float = 1.0, **extra: t.TensorData) -> tinker.Datum:
    """Next-byte prediction on ``text`` with the same weight on every target."""
    ids = list(text.encode())
    n = len(ids) - 1
    return tinker.Datum(
        model_input=tinker.ModelInput.from_ints(ids[:-1]),
        loss_fn_inputs={
            "target_tokens": tinker.TensorData.from_numpy(np.array(ids[1:], dtype=np.int64)),
            "weights": tinker.TensorData.from_numpy(np.full(n, weight, dtype=np.float32)),
            **extra,
        },
    )


BATCH_TEXTS = ("the cat sat on the mat", "a dog ran")


def batch() -> list[tinker.Datum]:
    return [datum(BATCH_TEXTS[0]), datum(BATCH_TEXTS[1], 0.5)]


def prob_weighted(logprobs: Any, weights: Any) -> Any:
    """Non-linear in the logprobs: -sum(w * p). Its dL/dlp is -w * exp(lp)."""
    import torch

    loss = -(weights * torch.exp(logprobs)).sum()
    return loss, {"custom/prob:sum": loss, "custom/mean_lp:mean": logprobs.mean()}


def neg_ll(logprobs: Any, weights: Any) -> Any:
    loss = -(logprobs * weights).sum()
    return loss, {"custom/neg_ll:sum": loss}


def fb_requests(srv: LocalServer) -> int:
    return srv.count(r"/forward_backward$")


@pytest.fixture(scope="module")
def upload_server() -> Iterator[LocalServer]:
    """A server that runs uploaded custom losses itself."""
    with LocalServer(
        api_key=API_KEY, client_config={"custom_loss_server_side": True}
    ).in_thread() as srv:
        yield srv


@pytest.fixture
async def upload_service(upload_server: LocalServer) -> AsyncIterator[tinker.ServiceClient]:
    upload_server.clear_requests()
    async with tinker.ServiceClient(base_url=upload_server.url, api_key=API_KEY) as svc:
        yield svc


async def logprobs_of(tc: tinker.TrainingClient, data: list[tinker.Datum]) -> list[Any]:
    out = await (await tc.forward_async(data, "cross_entropy"))
    return [o["logprobs"].to_numpy().astype(np.float64) for o in out.loss_fn_outputs]


async def check_trains_like_its_gradient(
    service: tinker.ServiceClient, handle: tinker.LossHandle, reference: tinker.ServiceClient
) -> dict[str, float]:
    """Train one model with ``prob_weighted`` by handle and a twin (same seed) with the
    equivalent ``cross_entropy`` (weights = -dL/dlp = w * p), each next to a second loss,
    so that a gradient off by any factor would change Adam's step; both must end equal."""
    tc = await service.create_lora_training_client_async(MODEL, rank=4, seed=7)
    twin = await reference.create_lora_training_client_async(MODEL, rank=4, seed=7)
    data, other = batch(), [datum("zzz yyy xxx", 0.3)]
    start = await logprobs_of(twin, data)
    out = await (await tc.forward_backward_custom_async(data, handle))
    await tc.forward_backward_async(other, "cross_entropy")
    await (await tc.optim_step_async(tinker.AdamParams(learning_rate=1e-2)))

    weighted = [
        dataclasses.replace(d, loss_fn_inputs={
            "target_tokens": d.loss_fn_inputs["target_tokens"],
            "weights": tinker.TensorData.from_numpy(
                (d.loss_fn_inputs["weights"].to_numpy() * np.exp(lp)).astype(np.float32)),
        }) for d, lp in zip(data, start, strict=True)
    ]
    await twin.forward_backward_async(weighted, "cross_entropy")
    await twin.forward_backward_async(other, "cross_entropy")
    await (await twin.optim_step_async(tinker.AdamParams(learning_rate=1e-2)))

    expected = -sum(float((d.loss_fn_inputs["weights"].to_numpy() * np.exp(lp)).sum())
                    for d, lp in zip(data, start, strict=True))
    assert out.metrics["loss:sum"] == pytest.approx(expected, rel=1e-4)
    assert out.metrics["custom/prob:sum"] == pytest.approx(expected, rel=1e-4)
    mean_lp = sum(float(lp.mean()) for lp in start) / len(start)
    assert out.metrics["custom/mean_lp:mean"] == pytest.approx(mean_lp, rel=1e-4)
    for output, lp in zip(out.loss_fn_outputs, start, strict=True):
        np.testing.assert_allclose(output["logprobs"].to_numpy(), lp, atol=1e-4)

    after, twin_after = await logprobs_of(tc, data), await logprobs_of(twin, data)
    moved = max(float(np.abs(a - s).max()) for a, s in zip(after, start, strict=True))
    assert moved > 1e-2  # the step did something, so the comparison below means something
    for a, b in zip(after, twin_after, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-4)
    return out.metrics


# --------------------------------------------------------------------- without torch too


def test_import_does_not_load_torch(run_script: Callable[..., str]) -> None:
    out = run_script(
        "import sys\n"
        "import tinker_async, tinker_async.custom_loss, tinker_async.local\n"
        "tinker_async.ServiceClient, tinker_async.TrainingClient, tinker_async.LossHandle\n"
        "print('torch' in sys.modules)\n"
    )
    assert out.strip().splitlines()[-1] == "False"


def test_create_custom_loss_without_torch_says_how_to_install(
    run_script: Callable[..., str],
) -> None:
    out = run_script(
        "import asyncio, sys\n"
        "sys.modules['torch'] = None  # as if torch were not installed\n"
        "import tinker_async as tinker\n"
        "svc = tinker.ServiceClient(base_url='http://127.0.0.1:9', api_key='tml-x')\n"
        "def loss(logprobs):\n"
        "    return -logprobs.sum(), {}\n"
        "try:\n"
        "    svc.create_custom_loss(loss, {'logprobs': 1})\n"
        "except ImportError as exc:\n"
        "    print('plain:', exc)\n"
        "try:\n"
        "    asyncio.run(svc.create_custom_loss_async(loss, {'logprobs': 1}))\n"
        "except ImportError as exc:\n"
        "    print('async:', exc)\n"
    )
    for form in ("plain:", "async:"):
        line = next(x for x in out.splitlines() if x.startswith(form))
        assert "pip install 'tinker-async[torch]'" in line


def test_server_refuses_uploads_when_the_flag_is_off(server: LocalServer) -> None:
    async def main() -> tuple[int, Any]:
        async with aiohttp.ClientSession(base_url=server.url) as http:
            async with http.post("/api/v1/create_custom_loss", headers={"X-API-Key": API_KEY},
                                 json={"session_id": "s", "custom_loss_seq_id": 0,
                                       "name": "x", "inputs": [], "graph": {"nodes": []}}) as r:
                return r.status, await r.json()

    status, body = asyncio.run(asyncio.wait_for(main(), 60))
    assert status == 400
    assert "custom_loss_server_side" in body["detail"]


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is installed")
def test_server_without_torch_answers_400(upload_server: LocalServer) -> None:
    async def main() -> tuple[int, Any]:
        async with aiohttp.ClientSession(base_url=upload_server.url,
                                         headers={"X-API-Key": API_KEY}) as http:
            async with http.post("/api/v1/create_session", json={"tags": []}) as r:
                session_id = (await r.json())["session_id"]
            body = {"session_id": session_id, "custom_loss_seq_id": 0, "name": "x",
                    "inputs": [{"name": "logprobs", "rank": 1}], "graph": {"nodes": []}}
            async with http.post("/api/v1/create_custom_loss", json=body) as r:
                return r.status, await r.json()

    status, body = asyncio.run(asyncio.wait_for(main(), 60))
    assert status == 400
    assert "torch is not installed" in body["detail"]
    assert "pip install 'tinker-async[torch]'" in body["detail"]


# ----------------------------------------------------------------- graph wire form (torch)


def _fn_ppo(logprobs: Any, old: Any, adv: Any) -> Any:
    import torch

    ratio = torch.exp(logprobs - old)
    clipped = torch.clamp(ratio, 0.8, 1.2)
    loss = -torch.minimum(ratio * adv, clipped * adv).sum() + logprobs[1:].mean() * 0
    best = torch.where(adv > 0, logprobs, torch.full_like(logprobs, -math.inf)).max()
    return loss, {"custom/ratio:mean": ratio.mean(), "custom/best:sum": best.to(torch.float32)}


def _fn_topk(logprobs: Any, scale: Any) -> Any:
    import torch
    import torch.nn.functional as F

    first = logprobs[..., 0]
    norm = torch.logsumexp(logprobs, dim=-1)
    soft = F.log_softmax(logprobs, dim=-1).sum(dim=(0, 1), keepdim=False)
    n = logprobs.shape[0]
    loss = -(first - norm).sum() * scale / n + soft * 0 + math.log(2.0)
    return loss, {"custom/n:sum": logprobs.new_ones(()) * n}


def _fn_constants(logprobs: Any) -> Any:
    import torch

    zeros = torch.zeros_like(logprobs, memory_format=torch.contiguous_format,
                             layout=torch.strided)
    moved = logprobs.to(torch.device("cpu"), torch.float64)
    loss = -torch.clamp(moved, min=-math.inf, max=math.inf).sum() + zeros.sum()
    nan = torch.nan_to_num(logprobs, nan=0.0, posinf=None)
    return loss, {"custom/nan:sum": nan.sum(), "custom/flag:sum": (logprobs != 0).any().float()}


WIRE_CASES = [
    (_fn_ppo, {"logprobs": 1, "old": 1, "adv": 1}),
    (_fn_topk, {"logprobs": 2, "scale": 0}),
    (_fn_constants, {"logprobs": 1}),
    (neg_ll, RANKS),
]


@pytest.mark.parametrize(("fn", "ranks"), WIRE_CASES, ids=[f.__name__ for f, _ in WIRE_CASES])
def test_graph_encoding_matches_the_official_sdk(fn: Any, ranks: dict[str, Any]) -> None:
    needs_torch()
    official = pytest.importorskip("tinker.lib.public_interfaces.custom_loss")
    official_types = pytest.importorskip("tinker.types")
    from tinker_async.custom_loss import encode_graph, trace_loss

    theirs = official.trace_loss(fn, ranks, "session-1")
    ours = trace_loss(fn, ranks, "session-1")
    assert ours.name == theirs.name and ours.graph.code == theirs.graph.code
    their_graph = official.encode_graph(theirs)
    our_graph = encode_graph(ours)
    assert msgspec.to_builtins(our_graph) == their_graph.model_dump(mode="json")

    # The whole request body, as each SDK sends it.
    their_request = official_types.CreateCustomLossRequest(
        session_id="session-1", custom_loss_seq_id=3, name=theirs.name,
        inputs=list(theirs.inputs), graph=their_graph)
    our_request = t.CreateCustomLossRequest(
        session_id="session-1", custom_loss_seq_id=3, name=ours.name,
        inputs=list(ours.inputs), graph=our_graph)
    their_body = their_request.model_dump(exclude_unset=False, exclude_none=True, mode="json")
    assert msgspec.json.decode(_wire.encode_json(our_request)) == their_body


# ------------------------------------------------------------------ creation checks (torch)


def _captured() -> Callable[..., Any]:
    import torch

    weight = torch.ones(3)

    def captures(logprobs: Any) -> Any:
        return -(logprobs * weight).sum(), {}

    return captures


def _bad_fns() -> list[tuple[Callable[..., Any], dict[str, Any], str]]:
    import torch

    linear = torch.nn.Linear(2, 2)

    def first_not_logprobs(lp: Any) -> Any:
        return -lp.sum(), {}

    def upper(logprobs: Any, Weights: Any) -> Any:
        return -logprobs.sum(), {}

    def varargs(logprobs: Any, *rest: Any) -> Any:
        return -logprobs.sum(), {}

    def defaulted(logprobs: Any, weights: Any = None) -> Any:
        return -logprobs.sum(), {}

    def item(logprobs: Any) -> Any:
        return -logprobs.sum(), {"custom/x:sum": logprobs.sum().item()}

    def numpy_(logprobs: Any) -> Any:
        return -logprobs.sum(), {"custom/x:sum": logprobs.numpy()}

    def tolist(logprobs: Any) -> Any:
        return -logprobs.sum(), {"custom/x:sum": logprobs.tolist()}

    def backward(logprobs: Any) -> Any:
        loss = -logprobs.sum()
        loss.backward()
        return loss, {}

    def module(logprobs: Any) -> Any:
        return -linear(logprobs).sum(), {}

    def numpy_call(logprobs: Any) -> Any:
        return -np.exp(logprobs).sum(), {}

    def branches(logprobs: Any) -> Any:
        if logprobs.sum() > 0:
            return logprobs.sum(), {}
        return -logprobs.sum(), {}

    def bad_metric(logprobs: Any) -> Any:
        return -logprobs.sum(), {"Loss": logprobs.sum()}

    def not_a_pair(logprobs: Any) -> Any:
        return -logprobs.sum()

    many = ", ".join(f"x{i}" for i in range(16))
    namespace: dict[str, Any] = {"__name__": "other_library_module"}
    exec(f"def too_many(logprobs, {many}):\n    return -logprobs.sum(), {{}}\n", namespace)
    # A function of another library that fx records as a call (torch.fx.wrap must run at a
    # module's top level, hence the exec).
    exec(
        "import torch.fx\n"
        "def helper(x):\n    return x\n"
        "torch.fx.wrap('helper')\n"
        "def other_library(logprobs):\n    return -helper(logprobs).sum(), {}\n",
        namespace,
    )

    return [
        (first_not_logprobs, {"lp": 1}, "logprobs as its first parameter"),
        (upper, {"logprobs": 1, "Weights": 1}, "lowercase"),
        (varargs, {"logprobs": 1, "rest": 1}, "plain positional"),
        (defaulted, RANKS, "has a default"),
        (neg_ll, {"logprobs": 1}, "input_ranks must give a rank"),
        (neg_ll, {"logprobs": 1, "weights": 1, "extra": 1}, "input_ranks must give a rank"),
        (neg_ll, {"logprobs": 0, "weights": 1}, "rank 1"),
        (neg_ll, {"logprobs": 1, "weights": 3}, "must be 0"),
        (item, {"logprobs": 1}, "item()"),
        (numpy_, {"logprobs": 1}, "numpy()"),
        (tolist, {"logprobs": 1}, "tolist()"),
        (backward, {"logprobs": 1}, "backward()"),
        (module, {"logprobs": 1}, "module"),
        (_captured(), {"logprobs": 1}, "captures a tensor"),
        (numpy_call, {"logprobs": 1}, "cannot be traced"),
        (namespace["other_library"], {"logprobs": 1}, "may only call torch and math"),
        (branches, {"logprobs": 1}, "cannot be traced"),
        (bad_metric, {"logprobs": 1}, "custom/<name>:sum"),
        (not_a_pair, {"logprobs": 1}, "(loss, metrics)"),
        (namespace["too_many"], {"logprobs": 1, **{f"x{i}": 1 for i in range(16)}}, "at most 16"),
    ]


def test_creation_rejects_what_cannot_be_traced_or_uploaded(fresh_server: LocalServer) -> None:
    needs_torch()
    with tinker.ServiceClient(base_url=fresh_server.url, api_key=API_KEY) as svc:
        for fn, ranks, message in _bad_fns():
            # The plain form checks at the call, as the official SDK does.
            with pytest.raises(ValueError, match=None) as info:
                svc.create_custom_loss(fn, ranks)
            assert isinstance(info.value, tinker.InvalidRequestError), fn
            assert message in str(info.value), (fn, str(info.value))
    assert fresh_server.count(r"/create_custom_loss$") == 0


# ------------------------------------------------------------------- server-side (torch)


async def test_server_side_loss_runs_in_one_forward_backward(
    upload_server: LocalServer, upload_service: tinker.ServiceClient,
    service: tinker.ServiceClient,
) -> None:
    needs_torch()
    handle = await upload_service.create_custom_loss_async(prob_weighted, RANKS)
    assert isinstance(handle, tinker.LossHandle)
    assert handle.loss_id is not None and handle.session_id == upload_service.session_id
    assert handle.name == "prob_weighted" and handle.input_names == ("weights",)
    assert upload_server.count(r"/create_custom_loss$") == 1

    before = fb_requests(upload_server)
    metrics = await check_trains_like_its_gradient(upload_service, handle, service)
    assert "surrogate_loss:sum" not in metrics  # no client-side surrogate pass
    # One forward_backward for the custom loss, one for the other loss next to it, and the
    # forward that reads the trained logprobs (the twin trains on the other server).
    assert fb_requests(upload_server) - before == 1 + 1 + 1
    custom = [r for r in upload_server.requests if r.path.endswith("/forward_backward")
              and b"custom" in r.body]
    assert len(custom) == 1


async def test_sync_forms_and_the_plain_future(upload_server: LocalServer) -> None:
    needs_torch()

    def run() -> dict[str, float]:
        with tinker.ServiceClient(base_url=upload_server.url, api_key=API_KEY) as svc:
            future = svc.create_custom_loss(neg_ll, RANKS)
            assert isinstance(future, tinker.APIFuture)
            handle = future.result(timeout=60)
            assert handle.loss_id is not None
            tc = svc.create_lora_training_client(MODEL, rank=4, seed=1).result(timeout=60)
            out = tc.forward_backward_custom(batch(), handle).result(timeout=60)
            ref = tc.forward(batch(), "cross_entropy").result(timeout=60)
            assert out.metrics["loss:sum"] == pytest.approx(ref.metrics["loss:sum"], rel=1e-4)
            return out.metrics

    metrics = await asyncio.to_thread(run)
    assert metrics["custom/neg_ll:sum"] == pytest.approx(metrics["loss:sum"])


async def test_each_loss_once_per_session_and_only_in_its_session(
    upload_server: LocalServer, upload_service: tinker.ServiceClient,
) -> None:
    needs_torch()
    handle = await upload_service.create_custom_loss_async(neg_ll, RANKS)
    with pytest.raises(ValueError, match="already created 'neg_ll'"):
        await upload_service.create_custom_loss_async(neg_ll, RANKS)
    # Another function with another name but the same traced graph is the same loss.
    def also_neg_ll(logprobs: Any, weights: Any) -> Any:
        loss = -(logprobs * weights).sum()
        return loss, {"custom/neg_ll:sum": loss}
    with pytest.raises(ValueError, match="same traced loss"):
        await upload_service.create_custom_loss_async(also_neg_ll, RANKS)
    # The upload seq ids count per session: one upload so far.
    assert upload_server.count(r"/create_custom_loss$") == 1

    async with tinker.ServiceClient(base_url=upload_server.url, api_key=API_KEY) as other:
        again = await other.create_custom_loss_async(neg_ll, RANKS)  # a new session may
        assert again.loss_id != handle.loss_id
        tc = await other.create_lora_training_client_async(MODEL, rank=4, seed=0)
        with pytest.raises(ValueError, match="only be used by clients of that session"):
            await tc.forward_backward_custom_async(batch(), handle)
        # The server checks too: a handle relabelled to this session is refused there.
        forged = dataclasses.replace(handle, session_id=other.session_id)
        with pytest.raises(tinker.RequestFailedError, match="belongs to session"):
            await (await tc.forward_backward_custom_async(batch(), forged))
        # The refused request kept its place in line; the client carries on.
        out = await (await tc.forward_backward_custom_async(batch(), again))
        assert out.metrics["loss:sum"] > 0


async def test_inputs_are_checked_against_the_declared_ranks(
    upload_server: LocalServer, upload_service: tinker.ServiceClient,
) -> None:
    needs_torch()
    handle = await upload_service.create_custom_loss_async(neg_ll, RANKS)
    tc = await upload_service.create_lora_training_client_async(MODEL, rank=4, seed=0)
    no_weights = [dataclasses.replace(d, loss_fn_inputs={
        "target_tokens": d.loss_fn_inputs["target_tokens"]}) for d in batch()]
    rank_two = [dataclasses.replace(d, loss_fn_inputs={
        **d.loss_fn_inputs,
        "weights": tinker.TensorData.from_numpy(
            np.ones((len(d.loss_fn_inputs["weights"].to_numpy()), 1), dtype=np.float32)),
    }) for d in batch()]
    before = fb_requests(upload_server)
    with pytest.raises(tinker.InvalidRequestError, match=r"no loss_fn_inputs\['weights'\]"):
        await tc.forward_backward_custom_async(no_weights, handle)
    with pytest.raises(tinker.InvalidRequestError, match="declared weights with rank 1"):
        await tc.forward_backward_custom_async(rank_two, handle)
    assert fb_requests(upload_server) == before  # nothing was sent
    await (await tc.forward_backward_custom_async(batch(), handle))


async def test_scalar_inputs_and_topk_logprobs_on_both_paths(
    upload_service: tinker.ServiceClient, service: tinker.ServiceClient,
) -> None:
    needs_torch()

    def topk(logprobs: Any, scale: Any, weights: Any) -> Any:
        loss = -(logprobs[:, 0] * weights).sum() * scale - 0.1 * logprobs[:, 1:].sum()
        return loss, {"custom/topk:sum": loss}

    ranks = {"logprobs": 2, "scale": 0, "weights": 1}

    def topk_datum(text: str) -> tinker.Datum:
        ids = list(text.encode())
        targets = np.array([[b, (b + 1) % 256] for b in ids[1:]], dtype=np.int64)
        return tinker.Datum(
            model_input=tinker.ModelInput.from_ints(ids[:-1]),
            loss_fn_inputs={
                "target_tokens": tinker.TensorData.from_numpy(targets),
                "scale": tinker.TensorData.from_numpy(np.array(2.0, dtype=np.float32)),
                "weights": tinker.TensorData.from_numpy(np.ones(len(ids) - 1, np.float32)),
            },
        )

    data = [topk_datum("hello there"), topk_datum("abc")]
    results = []
    for svc in (upload_service, service):
        handle = await svc.create_custom_loss_async(topk, ranks)
        assert (handle.loss_id is not None) == (svc is upload_service)
        tc = await svc.create_lora_training_client_async(MODEL, rank=4, seed=3)
        targets_only = [dataclasses.replace(d, loss_fn_inputs={
            "target_tokens": d.loss_fn_inputs["target_tokens"],
            "weights": tinker.TensorData.from_numpy(
                np.zeros(d.loss_fn_inputs["target_tokens"].to_numpy().shape, np.float32)),
        }) for d in data]
        lp = [o["logprobs"].to_numpy() for o in
              (await (await tc.forward_async(targets_only, "cross_entropy"))).loss_fn_outputs]
        expected = sum(-2.0 * float(x[:, 0].sum()) - 0.1 * float(x[:, 1:].sum()) for x in lp)
        out = await (await tc.forward_backward_custom_async(data, handle))
        assert out.metrics["loss:sum"] == pytest.approx(expected, rel=1e-4)
        await (await tc.optim_step_async(tinker.AdamParams(learning_rate=1e-2)))
        results.append(await logprobs_of(tc, [datum("hello there")]))
    # Same seed, same loss, same step: both paths train the model the same way.
    np.testing.assert_allclose(results[0][0], results[1][0], atol=2e-4)


async def test_server_rejects_graphs_outside_its_allowlist(
    upload_server: LocalServer, upload_service: tinker.ServiceClient,
) -> None:
    needs_torch()
    session_id = await upload_service.connect_async()
    node = {"op": "call_function", "name": "boom", "target": "os.system",
            "args": ["true"], "kwargs": {}}
    graph = {"format": 1, "nodes": [
        {"op": "placeholder", "name": "logprobs", "target": "logprobs", "args": [], "kwargs": {}},
        node,
        {"op": "output", "name": "output", "target": "output",
         "args": [{"tuple": [{"ref": "logprobs"}, {"dict": {}}]}], "kwargs": {}},
    ]}
    body = {"session_id": session_id, "custom_loss_seq_id": 99, "name": "evil",
            "inputs": [{"name": "logprobs", "rank": 1}], "graph": graph,
            "type": "create_custom_loss"}

    async with aiohttp.ClientSession(base_url=upload_server.url,
                                     headers={"X-API-Key": API_KEY}) as http:
        async with http.post("/api/v1/create_custom_loss", json=body) as r:
            assert r.status == 200
            request_id = (await r.json())["request_id"]
        async with http.post("/api/v1/create_custom_loss", json=body) as r:
            assert (await r.json())["request_id"] == request_id  # same seq id: same future
        answer: Any = None
        for _ in range(50):
            async with http.post("/api/v1/retrieve_future",
                                 json={"request_id": request_id}) as r:
                answer = await r.json()
            if answer.get("type") != "try_again":
                break
    assert answer.get("category") == "user"
    assert "os.system is not allowed" in answer["error"]


# -------------------------------------------------------------------- client-side (torch)


async def test_client_side_loss_runs_in_two_passes(
    fresh_server: LocalServer, service: tinker.ServiceClient,
) -> None:
    needs_torch()
    handle = await service.create_custom_loss_async(prob_weighted, RANKS)
    assert handle.loss_id is None and handle.session_id == service.session_id
    assert fresh_server.count(r"/create_custom_loss$") == 0

    before = fb_requests(fresh_server)
    metrics = await check_trains_like_its_gradient(service, handle, service)
    assert "surrogate_loss:sum" in metrics
    # Forward + backward for the custom loss and one for the other loss; the twin's two
    # and the three forwards that read logprobs (the twin trains on this server too).
    assert fb_requests(fresh_server) - before == 2 + 1 + 2 + 3
    assert not any(b"custom" in r.body for r in fresh_server.requests
                   if r.path.endswith("/forward_backward"))
    with pytest.raises(ValueError, match="already created"):
        await service.create_custom_loss_async(prob_weighted, RANKS)


# ------------------------------------------------------------ the official SDK (torch)


def test_the_official_sdk_uploads_and_trains_against_the_embedded_server(
    upload_server: LocalServer,
) -> None:
    needs_torch()
    official = pytest.importorskip("tinker")
    import warnings

    warnings.simplefilter("ignore", FutureWarning)  # its deprecations, not exercised here
    ids = list(b"hello world")
    data = [official.types.Datum(
        model_input=official.types.ModelInput.from_ints(ids[:-1]),
        loss_fn_inputs={
            "target_tokens": official.types.TensorData(data=ids[1:], dtype="int64",
                                                       shape=[len(ids) - 1]),
            "weights": official.types.TensorData(data=[1.0] * (len(ids) - 1), dtype="float32",
                                                 shape=[len(ids) - 1]),
        },
    )]
    upload_server.clear_requests()
    svc = official.ServiceClient(base_url=upload_server.url, api_key=API_KEY)
    try:
        tc = svc.create_lora_training_client(base_model=MODEL, rank=4, seed=1)
        handle = svc.create_custom_loss(neg_ll, RANKS).result(timeout=60)
        assert handle.loss_id is not None
        out = tc.forward_backward_custom(data, handle).result(timeout=60)
        ref = tc.forward(data, "cross_entropy").result(timeout=60)
        assert out.metrics["loss:sum"] == pytest.approx(ref.metrics["loss:sum"], rel=1e-4)
        assert out.metrics["custom/neg_ll:sum"] == pytest.approx(out.metrics["loss:sum"])
        assert upload_server.count(r"/create_custom_loss$") == 1
        with pytest.raises(ValueError, match="already created"):
            svc.create_custom_loss(neg_ll, RANKS).result(timeout=60)
    finally:
        svc.close("success").result(60)
