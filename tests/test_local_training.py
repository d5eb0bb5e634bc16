"""Training and sampling on the embedded server, ``tinker_async.local``.

Two kinds of tests: the official ``tinker`` 0.38 SDK, unmodified, driving a full loop
(create, train, save, load, sample, REST reads), which proves the server speaks the real
protocol; and raw ``aiohttp`` requests, which check exact shapes, sequence-id semantics,
the legacy JSON dialect and zero-compute mode. Each server runs in its own thread, so the
SDK's blocking calls cannot stall it. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import math
import os
import urllib.request
import warnings
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import aiohttp
import pytest
from _waiting import HANG_GUARD_S, close_official

from tinker_async.local import LocalServer
from tinker_async.local._proto_server import decode_forward_backward_request
from tinker_async.local._sequencing import Sequencer
from tinker_async.local._tokenizer import ByteTokenizer

KEY = "tml-test-training-0123456789"
AUTH = {"X-API-Key": KEY}
API = "/api/v1"
MODEL = "local/byte-lm"
TEXT = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, "
    "it was the age of foolishness, it was the epoch of belief, it was the epoch of "
    "incredulity, it was the season of Light, it was the season of Darkness."
)
_T = TypeVar("_T")
TOKENIZER = ByteTokenizer()

os.environ.setdefault("TINKER_TELEMETRY", "0")  # keeps the request logs readable


# ----------------------------------------------------------------------------------- helpers


def sdk() -> Any:
    """The official SDK, or skip (it needs Python 3.11+)."""
    tinker = pytest.importorskip("tinker")
    warnings.simplefilter("ignore", FutureWarning)  # deprecations we do not exercise
    return tinker


def encode(text: str) -> list[int]:
    return list(TOKENIZER.encode(text, add_special_tokens=False))


def sdk_datum(tinker: Any, text: str) -> Any:
    """A next-token cross-entropy datum of ``text``."""
    ids = encode(text)
    return tinker.Datum(
        model_input=tinker.ModelInput.from_ints(ids[:-1]),
        loss_fn_inputs={"target_tokens": ids[1:], "weights": [1.0] * (len(ids) - 1)},
    )


def json_datum(text: str, *, with_weights: bool = True) -> dict[str, Any]:
    """The same datum as JSON (legacy bodies)."""
    ids = encode(text)
    inputs: dict[str, Any] = {
        "target_tokens": {"data": ids[1:], "dtype": "int64", "shape": [len(ids) - 1]}
    }
    if with_weights:
        inputs["weights"] = {"data": [1.0] * (len(ids) - 1), "dtype": "float32"}
    return {
        "model_input": {"chunks": [{"type": "encoded_text", "tokens": ids[:-1]}]},
        "loss_fn_inputs": inputs,
    }


@pytest.fixture
def srv() -> Iterator[LocalServer]:
    with LocalServer(api_key=KEY, poll_hold_s=5.0).in_thread() as server:
        yield server


def with_http(server: LocalServer, body: Callable[[aiohttp.ClientSession], Awaitable[_T]]) -> _T:
    """Run ``body`` with an aiohttp session on the server's URL (in a fresh loop)."""

    async def main() -> _T:
        timeout = aiohttp.ClientTimeout(total=HANG_GUARD_S)  # hang guards only
        async with aiohttp.ClientSession(base_url=server.url, timeout=timeout) as session:
            return await body(session)

    return asyncio.run(asyncio.wait_for(main(), 1.5 * HANG_GUARD_S))


async def post(
    s: aiohttp.ClientSession,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """``(status, parsed JSON)`` of a POST to ``/api/v1/<path>``."""
    async with s.post(f"{API}/{path}", json=body, headers={**AUTH, **(headers or {})}) as r:
        return r.status, await r.json(content_type=None)


async def result(s: aiohttp.ClientSession, request_id: str) -> Any:
    """Poll a future to its end; its JSON result (or ``{"error", "category"}``)."""
    for _ in range(60):
        status, data = await post(s, "retrieve_future", {"request_id": request_id})
        if status == 408 or (status == 200 and data.get("type") == "try_again"):
            continue
        assert status == 200, (status, data)
        return data
    raise AssertionError(f"future {request_id} never finished")


async def session_and_model(
    s: aiohttp.ClientSession, *, rank: int = 4, seed: int | None = 7
) -> tuple[str, str]:
    """A new session and a LoRA model in it: ``(session_id, model_id)``."""
    status, created = await post(s, "create_session", {"tags": [], "sdk_version": "test"})
    assert status == 200
    session_id = created["session_id"]
    lora: dict[str, Any] = {"rank": rank}
    if seed is not None:
        lora["seed"] = seed
    status, fut = await post(
        s,
        "create_model",
        {"session_id": session_id, "model_seq_id": 0, "base_model": MODEL, "lora_config": lora},
    )
    assert status == 200, fut
    done = await result(s, fut["request_id"])
    assert done == {"model_id": f"{session_id}:train:0", "type": "create_model"}
    return session_id, done["model_id"]


def fb_body(model_id: str, seq_id: int | None, texts: list[str], **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model_id": model_id,
        "forward_backward_input": {
            "data": [json_datum(t) for t in texts],
            "loss_fn": "cross_entropy",
        },
        **extra,
    }
    if seq_id is not None:
        body["seq_id"] = seq_id
    return body


def optim_body(model_id: str, seq_id: int) -> dict[str, Any]:
    return {"model_id": model_id, "seq_id": seq_id, "adam_params": {"learning_rate": 1e-3}}


# ------------------------------------------------------------------ the official SDK, end to end


def test_official_sdk_full_training_loop(srv: LocalServer) -> None:
    tinker = sdk()
    service = tinker.ServiceClient(base_url=srv.url, api_key=KEY, user_metadata={"t": "loop"})
    trainer = service.create_lora_training_client(
        MODEL, rank=4, seed=3, user_metadata={"purpose": "test"}
    ).result(60)
    info = trainer.get_info()
    assert (info.model_name, info.lora_rank, info.is_lora) == (MODEL, 4, True)
    assert info.model_data.tokenizer_id == "tinker_async/byte"
    assert trainer.model_id.endswith(":train:0")

    data = [sdk_datum(tinker, TEXT[i : i + 48]) for i in range(0, 144, 12)]
    losses = []
    for _ in range(6):
        fb = trainer.forward_backward(data, "cross_entropy")
        step = trainer.optim_step(tinker.AdamParams(learning_rate=5e-3))
        out = fb.result(60)
        assert step.result(60).metrics["grad_norm:mean"] > 0
        losses.append(out.metrics["loss:sum"])
        assert len(out.loss_fn_outputs) == len(data)
        assert out.loss_fn_outputs[0]["logprobs"].shape == [47]
    assert losses[-1] < 0.8 * losses[0], losses

    # forward (forward_only) changes nothing: the same loss twice, and the logprobs agree
    # with the loss.
    first = trainer.forward(data, "cross_entropy").result(60)
    again = trainer.forward(data, "cross_entropy").result(60)
    assert first.metrics["loss:sum"] == pytest.approx(again.metrics["loss:sum"])
    total = -sum(sum(o["logprobs"].tolist()) for o in first.loss_fn_outputs)
    assert first.metrics["loss:sum"] == pytest.approx(total, rel=1e-4)

    # A training checkpoint, then a new model made from it (create-via-load), with and
    # without the optimizer state: it computes what the original computes.
    saved = trainer.save_state("after-sft").result(60)
    assert saved.path == f"tinker://{trainer.model_id}/weights/after-sft"
    for make in (
        service.create_training_client_from_state,
        service.create_training_client_from_state_with_optimizer,
    ):
        clone = make(saved.path).result(60)
        assert clone.model_id != trainer.model_id
        assert clone.get_info().lora_rank == 4
        # Adam's state (here its step count) comes back only when asked for.
        restored = srv.context.extras["models"].model(clone.model_id).adapter
        with_optimizer = make == service.create_training_client_from_state_with_optimizer
        assert restored.step == (6 if with_optimizer else 0)
        loaded = clone.forward(data, "cross_entropy").result(60)
        assert loaded.metrics["loss:sum"] == pytest.approx(first.metrics["loss:sum"], rel=1e-5)
        # The clone trains on (its first own seq id is 1, after the load's 0).
        clone.forward_backward(data[:2], "cross_entropy").result(60)
        assert clone.optim_step(tinker.AdamParams(learning_rate=1e-3)).result(60).metrics

    # Sampling from an ephemeral snapshot of the weights.
    sampler = trainer.save_weights_and_get_sampling_client().result(60)
    assert sampler.get_base_model() == MODEL
    prompt = tinker.ModelInput.from_ints(encode("It was the"))
    params = tinker.SamplingParams(max_tokens=12, temperature=0.7, stop=[","], seed=1)
    response = sampler.sample(prompt, 3, params, include_prompt_logprobs=True).result(60)
    assert len(response.sequences) == 3
    ids = [seq.sequence_id for seq in response.sequences]
    assert all(ids) and len(set(ids)) == 3
    for seq in response.sequences:
        assert 1 <= len(seq.tokens) <= 12 and len(seq.logprobs) == len(seq.tokens)
        assert seq.stop_reason in ("stop", "length")
        if seq.stop_reason == "stop":
            assert seq.tokens[-1] in (ord(","), TOKENIZER.eos_token_id)
        assert all(lp <= 0 for lp in seq.logprobs)
    assert response.prompt_logprobs[0] is None and len(response.prompt_logprobs) == 10
    assert all(lp is not None and lp <= 0 for lp in response.prompt_logprobs[1:])
    logprobs = sampler.compute_logprobs(prompt).result(60)
    assert logprobs[1:] == pytest.approx(response.prompt_logprobs[1:], abs=1e-4)

    # The snapshot does not move when training goes on.
    before = sampler.compute_logprobs(prompt).result(60)
    trainer.forward_backward(data, "cross_entropy").result(60)
    trainer.optim_step(tinker.AdamParams(learning_rate=5e-3)).result(60)
    assert sampler.compute_logprobs(prompt).result(60) == pytest.approx(before)

    # Named sampler weights, sampled through create_sampling_client(model_path=...).
    named = trainer.save_weights_for_sampler("final").result(60)
    assert named.path == f"tinker://{trainer.model_id}/sampler_weights/final"
    from_path = service.create_sampling_client(model_path=named.path).result(60)
    greedy = tinker.SamplingParams(max_tokens=5, temperature=0.0)
    assert from_path.sample(prompt, 1, greedy).result(60).sequences[0].tokens

    # An external (PEFT-style) export, downloadable through signed URLs.
    exported = trainer.save_weights_external("hf").result(60)
    assert exported.path == f"tinker://{trainer.model_id}/external_weights/hf"

    # REST reads of what was made.
    rest = tinker.RestClient(base_url=srv.url, api_key=KEY)
    run = rest.get_training_run(trainer.model_id).result(60)
    assert (run.base_model, run.lora_rank, run.is_lora) == (MODEL, 4, True)
    assert run.user_metadata == {"purpose": "test"}
    assert run.last_checkpoint.checkpoint_id == "weights/after-sft"
    assert run.last_sampler_checkpoint.checkpoint_id == "sampler_weights/final"
    listed = rest.list_checkpoints(trainer.model_id).result(60).checkpoints
    assert {c.checkpoint_id for c in listed} == {
        "weights/after-sft",
        "sampler_weights/final",
        "external_weights/hf",
    }
    assert all(c.size_bytes and c.size_bytes > 0 for c in listed)
    weights = rest.get_weights_info_by_tinker_path(saved.path).result(60)
    assert (weights.base_model, weights.lora_rank) == (MODEL, 4)
    urls = rest.get_external_weights_urls(exported.path).result(60).urls
    assert set(urls) == {"adapter_config.json", "adapter_model.safetensors"}
    with urllib.request.urlopen(urls["adapter_config.json"], timeout=HANG_GUARD_S) as handle:
        assert b'"peft_type": "LORA"' in handle.read()
    with urllib.request.urlopen(urls["adapter_model.safetensors"], timeout=HANG_GUARD_S) as handle:
        blob = handle.read()
    header_len = int.from_bytes(blob[:8], "little")
    assert b"lora_A.weight" in blob[8 : 8 + header_len]

    close_official(service, srv)
    # Samples went through the session long-poll (on by default on this server), then
    # their payloads were fetched as protobuf.
    assert srv.count(r"/retrieve_futures$") >= 1
    fetches = [r for r in srv.requests if r.path == f"{API}/retrieve_future" and r.status == 200]
    assert any(r.headers.get("Accept") == "application/x-protobuf" for r in fetches)


def test_official_sdk_chunked_forward_backward_is_applied_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tinker = sdk()
    applied: list[int] = []
    original_run = Sequencer.run

    def spy(self: Sequencer, seq: int, work: Callable[[], Any], **kwargs: Any) -> Any:
        def recorded() -> Any:
            applied.append(seq)
            return work()

        return original_run(self, seq, recorded, **kwargs)

    monkeypatch.setattr(Sequencer, "run", spy)
    server = LocalServer(api_key=KEY, client_config={"fwdbwd_max_chunk_len": 2})
    with server.in_thread():
        service = tinker.ServiceClient(base_url=server.url, api_key=KEY)
        trainer = service.create_lora_training_client(MODEL, rank=4, seed=5).result(60)
        # Distinct lengths, so the merged outputs show their order.
        data = [sdk_datum(tinker, TEXT[: 20 + 3 * i]) for i in range(6)]
        reference = trainer.forward(data, "cross_entropy").result(60)  # seq 1..3
        server.clear_requests()
        merged = trainer.forward_backward(data, "cross_entropy").result(60)  # seq 4..6
        step = trainer.optim_step(tinker.AdamParams(learning_rate=1e-3)).result(60)  # seq 7

        assert [o["logprobs"].shape for o in merged.loss_fn_outputs] == [
            [19 + 3 * i] for i in range(6)
        ]
        assert merged.metrics["loss:sum"] == pytest.approx(reference.metrics["loss:sum"], 1e-5)
        for got, want in zip(merged.loss_fn_outputs, reference.loss_fn_outputs, strict=True):
            assert got["logprobs"].tolist() == pytest.approx(want["logprobs"].tolist(), 1e-5)
        assert step.metrics["grad_norm:mean"] > 0

        # The SDK sent chunk 1 last; the server still applied seq 4, 5, 6 in order.
        submits = [r for r in server.requests if r.path == f"{API}/forward_backward"]
        arrived = [decode_forward_backward_request(r.body).seq_id for r in submits]
        assert sorted(arrived) == [4, 5, 6] and arrived[-1] == 4
        assert applied == [1, 2, 3, 4, 5, 6, 7]
        close_official(service, server)


def test_official_sdk_per_request_polling_and_compressed_bodies() -> None:
    """``sample_use_retrieve_futures`` off (one ``retrieve_future`` per sample) and
    ``proto_compress_fwdbwd`` on (zstd forward_backward bodies)."""
    tinker = sdk()
    pytest.importorskip("zstandard")
    flags = {"sample_use_retrieve_futures": False, "proto_compress_fwdbwd": True}
    server = LocalServer(api_key=KEY, client_config=flags)
    with server.in_thread():
        service = tinker.ServiceClient(base_url=server.url, api_key=KEY)
        trainer = service.create_lora_training_client(MODEL, rank=2).result(60)
        data = [sdk_datum(tinker, TEXT[:40])]
        assert trainer.forward_backward(data, "cross_entropy").result(60).metrics["loss:sum"] > 0
        sampler = service.create_sampling_client(base_model=MODEL).result(60)
        params = tinker.SamplingParams(max_tokens=4)
        futures = [
            sampler.sample(tinker.ModelInput.from_ints([72, 105]), 2, params) for _ in range(4)
        ]
        for future in futures:
            got = future.result(60)
            assert len(got.sequences) == 2 and all(s.sequence_id for s in got.sequences)
        close_official(service, server)
    compressed = [r for r in server.requests if r.path == f"{API}/forward_backward"]
    assert compressed and compressed[0].headers.get("Content-Encoding") == "zstd"
    assert server.count(r"/retrieve_futures$") == 0


# ---------------------------------------------------------------------- sequence ids (raw HTTP)


def test_out_of_order_requests_are_held_and_applied_in_order(srv: LocalServer) -> None:
    async def body(s: aiohttp.ClientSession) -> None:
        _, model_id = await session_and_model(s)
        # The optimizer step (seq 2) and a save (seq 3) arrive before the gradient (seq 1).
        _, step = await post(s, "optim_step", optim_body(model_id, 2))
        _, save = await post(
            s, "save_weights", {"model_id": model_id, "seq_id": 3, "path": "ordered"}
        )
        # Time for a wrong server to apply it early. Not a bound that can fail: a slow
        # machine can only hide such a bug here, never make a right server fail.
        await asyncio.sleep(0.2)
        held = srv.futures.get(step["request_id"])
        assert held is not None and held.state == "pending"  # seq 1 has not arrived
        _, fb = await post(s, "forward_backward", fb_body(model_id, 1, [TEXT[:50]]))
        fb_out = await result(s, fb["request_id"])
        step_out = await result(s, step["request_id"])
        assert fb_out["metrics"]["loss:sum"] > 0
        # Applied after the gradient, the step saw a non-zero gradient.
        assert step_out["metrics"]["grad_norm:mean"] > 0
        saved = await result(s, save["request_id"])
        assert saved["path"] == f"tinker://{model_id}/weights/ordered"
        # The next seq id after the held ones is 4.
        status, stale = await post(s, "optim_step", optim_body(model_id, 0))
        assert status == 409 and stale["detail"] == "Sequence conflict: expected 4, got 0"

    with_http(srv, body)


def test_a_missing_predecessor_fails_the_held_request_after_the_bound(srv: LocalServer) -> None:
    async def body(s: aiohttp.ClientSession) -> None:
        _, model_id = await session_and_model(s)
        srv_model = srv.context.extras["models"].model(model_id)
        srv_model.sequencer.hold_timeout_s = 0.3
        _, step = await post(s, "optim_step", optim_body(model_id, 5))
        failed = await result(s, step["request_id"])
        assert failed["category"] == "user"
        assert "waiting for seq_id 1 before seq_id 5" in failed["error"]

    with_http(srv, body)


def test_duplicate_submits_get_the_same_future_and_apply_once(srv: LocalServer) -> None:
    async def body(s: aiohttp.ClientSession) -> None:
        _, twice = await session_and_model(s, seed=11)
        _, once = await session_and_model(s, seed=11)
        retry = {"X-Idempotency-Key": "stainless-python-retry-1"}
        _, first = await post(s, "forward_backward", fb_body(twice, 1, [TEXT[:60]]), retry)
        # An HTTP retry (same key) and a holder-level retry (new key, same seq id).
        _, second = await post(s, "forward_backward", fb_body(twice, 1, [TEXT[:60]]), retry)
        _, third = await post(s, "forward_backward", fb_body(twice, 1, [TEXT[:60]]))
        assert first["request_id"] == second["request_id"] == third["request_id"]
        _, step_twice = await post(s, "optim_step", optim_body(twice, 2))

        _, fb_once = await post(s, "forward_backward", fb_body(once, 1, [TEXT[:60]]))
        _, step_once = await post(s, "optim_step", optim_body(once, 2))
        await result(s, fb_once["request_id"])
        await result(s, first["request_id"])
        norm_twice = (await result(s, step_twice["request_id"]))["metrics"]["grad_norm:mean"]
        norm_once = (await result(s, step_once["request_id"]))["metrics"]["grad_norm:mean"]
        # Same seed, same data: the gradient was accumulated once, not three times.
        assert norm_twice == pytest.approx(norm_once, rel=1e-6)

    with_http(srv, body)


def test_request_errors(srv: LocalServer) -> None:
    async def body(s: aiohttp.ClientSession) -> None:
        session_id, model_id = await session_and_model(s)
        # Unknown model: 404 at submit.
        status, data = await post(s, "forward_backward", fb_body("nope:train:0", 1, [TEXT]))
        assert status == 404
        status, data = await post(s, "get_info", {"model_id": "nope:train:0"})
        assert status == 404
        # Unknown base model, rank out of range: 400 at submit.
        create = {"session_id": session_id, "model_seq_id": 1, "lora_config": {"rank": 4}}
        status, data = await post(s, "create_model", {**create, "base_model": "meta/llama-9000"})
        assert status == 400 and MODEL in data["detail"] and "supported" in data["detail"]
        status, data = await post(
            s, "create_model", {**create, "base_model": MODEL, "lora_config": {"rank": 100_000}}
        )
        assert status == 400 and "rank" in data["detail"]
        # Missing loss inputs: the future fails with category "user" (and the model's
        # sequence goes on: the next request is not held up).
        bad = fb_body(model_id, 1, [])
        bad["forward_backward_input"]["data"] = [json_datum(TEXT[:30], with_weights=False)]
        _, fut = await post(s, "forward_backward", bad)
        failed = await result(s, fut["request_id"])
        assert failed["category"] == "user" and "weights" in failed["error"]
        # A malformed field once the seq id is known: a failed future too.
        _, fut = await post(
            s, "optim_step", {"model_id": model_id, "seq_id": 2, "adam_params": "fast"}
        )
        failed = await result(s, fut["request_id"])
        assert failed["category"] == "user" and "adam_params" in failed["error"]
        _, fut = await post(
            s,
            "forward_backward",
            {
                **fb_body(model_id, 3, [TEXT[:30]]),
                "forward_backward_input": {
                    "data": [json_datum(TEXT[:30])],
                    "loss_fn": "no_such_loss",
                },
            },
        )
        failed = await result(s, fut["request_id"])
        assert failed["category"] == "user" and "cross_entropy" in failed["error"]
        _, fut = await post(s, "forward_backward", fb_body(model_id, 4, [TEXT[:30]]))
        assert "metrics" in await result(s, fut["request_id"])
        # Checkpoint names are taken once unless overwriting; TTLs are checked.
        save = {"model_id": model_id, "path": "same"}
        outcomes = []
        for seq, extra in ((5, {}), (6, {}), (7, {"overwrite": True}), (8, {"ttl_seconds": 5})):
            _, fut = await post(s, "save_weights", {**save, "seq_id": seq, **extra})
            outcomes.append(await result(s, fut["request_id"]))
        assert outcomes[0]["path"] == outcomes[2]["path"] == f"tinker://{model_id}/weights/same"
        assert "already exists" in outcomes[1]["error"] and outcomes[1]["category"] == "user"
        assert "ttl_seconds" in outcomes[3]["error"]
        # A sample from an unknown sampler: 404.
        status, _ = await post(
            s,
            "asample",
            {"sampling_session_id": "x:sample:0", "prompt": {"chunks": [{"tokens": [1]}]}},
        )
        assert status == 404

    with_http(srv, body)


# ------------------------------------------------------------------------- other dialects


def test_legacy_dialect_json_forward_backward_and_forward() -> None:
    with LocalServer(api_key=KEY, dialect="legacy", poll_hold_s=1.0).in_thread() as server:

        async def body(s: aiohttp.ClientSession) -> None:
            session_id, model_id = await session_and_model(s)
            status, fut = await post(s, "forward_backward", fb_body(model_id, 1, [TEXT[:40]]))
            assert status == 200 and fut["model_id"] == model_id
            out = await result(s, fut["request_id"])
            assert out["loss_fn_output_type"] == "ArrayRecord"
            logprobs = out["loss_fn_outputs"][0]["logprobs"]
            assert logprobs["dtype"] == "float32" and logprobs["shape"] == [39]
            assert len(logprobs["data"]) == 39 and out["metrics"]["loss:sum"] > 0

            forward = {
                "model_id": model_id,
                "seq_id": 2,
                "forward_input": {"data": [json_datum(TEXT[:40])], "loss_fn": "cross_entropy"},
            }
            status, fut = await post(s, "forward", forward)
            assert status == 200
            fwd = await result(s, fut["request_id"])
            assert fwd["metrics"]["loss:sum"] == pytest.approx(out["metrics"]["loss:sum"])

            # No sequence ids in sample answers, and no create-via-load on these servers.
            status, sampler = await post(
                s,
                "create_sampling_session",
                {"session_id": session_id, "sampling_session_seq_id": 0, "base_model": MODEL},
            )
            status, fut = await post(
                s,
                "asample",
                {
                    "sampling_session_id": sampler["sampling_session_id"],
                    "prompt": {"chunks": [{"tokens": encode("It was")}]},
                    "sampling_params": {"max_tokens": 3},
                    "num_samples": 2,
                },
            )
            assert status == 200 and "sample_sequence_ids" not in fut
            sampled = await result(s, fut["request_id"])
            assert [len(q["tokens"]) for q in sampled["sequences"]] == [3, 3]
            assert all("sequence_id" not in q for q in sampled["sequences"])
            status, data = await post(
                s,
                "load_weights",
                {
                    "session_id": session_id,
                    "model_seq_id": 1,
                    "path": "tinker://a:train:0/weights/x",
                    "optimizer": False,
                },
            )
            assert status == 400 and "create_model" in data["detail"]

        with_http(server, body)


def test_tinkercloud_blocking_sample() -> None:
    with LocalServer(api_key=KEY, dialect="tinkercloud").in_thread() as server:

        async def body(s: aiohttp.ClientSession) -> None:
            status, data = await post(
                s,
                "sample",
                {
                    "base_model": MODEL,
                    "prompt": {"chunks": [{"tokens": encode("Hello")}]},
                    "sampling_params": {"max_tokens": 4, "temperature": 0.0},
                    "num_samples": 1,
                    "prompt_logprobs": True,
                },
            )
            assert status == 200, data
            assert len(data["sequences"][0]["tokens"]) == 4
            assert data["prompt_logprobs"][0] is None and len(data["prompt_logprobs"]) == 5
            # A checkpoint that holds no local-model weights (a seeded one) cannot be used.
            run = server.seed_training_run()
            path = server.seed_checkpoint(run, "seeded", kind="sampler_weights")
            status, data = await post(
                s,
                "sample",
                {"model_path": path, "prompt": {"chunks": [{"tokens": [1, 2]}]}},
            )
            assert status == 400 and "holds no weights" in data["detail"]

        with_http(server, body)


def test_zero_compute_answers_at_once() -> None:
    server = LocalServer(api_key=KEY, zero_compute=True, poll_hold_s=1.0)
    with server.in_thread():

        async def body(s: aiohttp.ClientSession) -> None:
            _, model_id = await session_and_model(s, rank=8)
            _, fb = await post(s, "forward_backward", fb_body(model_id, 1, [TEXT[:30]] * 3))
            _, step = await post(s, "optim_step", optim_body(model_id, 2))
            _, save = await post(
                s,
                "save_weights_for_sampler",
                {"model_id": model_id, "seq_id": 3, "sampling_session_seq_id": 0},
            )
            out = await result(s, fb["request_id"])
            assert len(out["loss_fn_outputs"]) == 3 and out["metrics"]["loss:sum"] > 0
            # No model ran (rather than timing it): every logprob is -log(V), and the
            # gradients stay zero.
            uniform = out["loss_fn_outputs"][0]["logprobs"]["data"]
            assert len(set(uniform)) == 1 and uniform[0] == pytest.approx(-math.log(263))
            step_metrics = (await result(s, step["request_id"]))["metrics"]
            assert step_metrics["grad_norm:mean"] == 0
            sampler_id = (await result(s, save["request_id"]))["sampling_session_id"]
            requests = [
                post(
                    s,
                    "asample",
                    {
                        "sampling_session_id": sampler_id,
                        "seq_id": i,
                        "num_samples": 2,
                        "prompt": {"chunks": [{"tokens": [1, 2, 3]}]},
                        "sampling_params": {"max_tokens": 5},
                        "topk_sample_logprobs": 2,
                    },
                )
                for i in range(20)
            ]
            answers = [data for _, data in await asyncio.gather(*requests)]
            for answer in answers:
                assert len(answer["sample_sequence_ids"]) == 2
                sampled = await result(s, answer["request_id"])
                # the zero-compute samples: letters a, b, c, ... shifted by the sample index
                assert [q["tokens"] for q in sampled["sequences"]] == [
                    [97, 98, 99, 100, 101], [98, 99, 100, 101, 102]]
                assert [q["sequence_id"] for q in sampled["sequences"]] == answer[
                    "sample_sequence_ids"
                ]
                assert len(sampled["sequences"][0]["topk_logprobs"][0]) == 2

        with_http(server, body)


def test_concurrent_samples_are_batched(srv: LocalServer) -> None:
    async def body(s: aiohttp.ClientSession) -> None:
        _, created = await post(s, "create_session", {"tags": []})
        _, sampler = await post(
            s,
            "create_sampling_session",
            {
                "session_id": created["session_id"],
                "sampling_session_seq_id": 0,
                "base_model": MODEL,
            },
        )
        request = {
            "sampling_session_id": sampler["sampling_session_id"],
            "prompt": {"chunks": [{"type": "encoded_text", "tokens": encode("It was the")}]},
            "sampling_params": {"max_tokens": 4, "temperature": 0.0},
            "num_samples": 1,
        }
        answers = await asyncio.gather(*(post(s, "asample", request) for _ in range(32)))
        results = [await result(s, data["request_id"]) for _, data in answers]
        # Greedy decoding: every request got the same continuation, whatever its batch.
        assert len({tuple(r["sequences"][0]["tokens"]) for r in results}) == 1
        # Bad requests fail alone, not their batch-mates.
        bad = {**request, "sampling_params": {"max_tokens": 4, "top_p": 7.0}}
        mixed = await asyncio.gather(*(post(s, "asample", r) for r in (request, bad, request)))
        outcomes = [await result(s, data["request_id"]) for _, data in mixed]
        assert "sequences" in outcomes[0] and "sequences" in outcomes[2]
        assert outcomes[1]["category"] == "user" and "top_p" in outcomes[1]["error"]

    with_http(srv, body)
    batcher = srv.context.extras["models"].batcher(srv.context.extras["models"].base_model(MODEL))
    assert batcher.batches < 20  # 35 requests, far fewer model calls
