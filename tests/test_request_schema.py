"""One schema: each request body has one Struct in ``tinker_async.types``, whose fields are
the official SDK 0.38 request model's, and the embedded server decodes bodies into it.

- The field names of every official ``tinker.types.*Request`` are those of our Struct
  (plus the type tag), except for extras listed below with the dialect that sends them.
- The server's route modules decode with those Structs (no hand parsing), and the 422s
  they answer come from msgspec's errors, in the FastAPI shape clients map.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from tinker_async import _requests
from tinker_async import types as T
from tinker_async._dialect import make_dialect
from tinker_async.local import LocalServer
from tinker_async.local._validate import decode_request
from tinker_async.types._training import ForwardBackwardRequestWire

pytestmark = pytest.mark.skipif(sys.version_info < (3, 11), reason="tinker needs 3.11+")

#: official request model name -> the one Struct that is its wire schema here
OURS: dict[str, type[msgspec.Struct]] = {
    # session, handshake, sampling sessions
    "ClientConfigRequest": T.ClientConfigRequest,
    "CreateSessionRequest": T.CreateSessionRequest,
    "SessionHeartbeatRequest": T.SessionHeartbeatRequest,
    "CreateSamplingSessionRequest": T.CreateSamplingSessionRequest,
    "JoinSamplingSessionRequest": T.JoinSamplingSessionRequest,
    # training and weights
    "CreateModelRequest": T.CreateModelRequest,
    "GetInfoRequest": T.GetInfoRequest,
    "UnloadModelRequest": T.UnloadModelRequest,
    "ForwardBackwardRequest": ForwardBackwardRequestWire,
    "ForwardRequest": ForwardBackwardRequestWire,
    "OptimStepRequest": T.OptimStepRequest,
    "SaveWeightsRequest": T.SaveWeightsRequest,
    "SaveWeightsForSamplerRequest": T.SaveWeightsForSamplerRequest,
    "SaveWeightsExternalRequest": T.SaveWeightsExternalRequest,
    "LoadWeightsRequest": T.LoadWeightsRequest,
    "CopyWeightsRequest": T.CopyWeightsRequest,
    "CreateCustomLossRequest": T.CreateCustomLossRequest,
    # sampling and futures
    "SampleRequest": T.SampleRequest,
    "FutureRetrieveRequest": T.FutureRetrieveRequest,
    "FuturesRetrieveRequest": T.FuturesRetrieveRequest,
    # REST, admin, telemetry
    "SessionSearchRequest": T.SessionSearchRequest,
    "GetBillingUsageRequest": T.GetBillingUsageRequest,
    "GetCurrentCheckpointStorageUsageRequest": T.GetCurrentCheckpointStorageUsageRequest,
    "TelemetrySendRequest": T.TelemetrySendRequest,
}

#: official requests deliberately without a Struct here (name -> reason). None today:
#: ForwardBackwardRequest/ForwardRequest are dataclasses in both SDKs (as user-facing
#: objects); their JSON wire schema is ForwardBackwardRequestWire, mapped above, and
#: their protobuf schema is ``_proto_schema`` (checked in tests/test_proto_schema.py).
NO_STRUCT: dict[str, str] = {}

_FLAT_FB = "tinkercloud's flat forward_backward body puts data/loss_fn/loss_fn_config at the top"
_FWD_SHARED = ("JSON servers (hatchery, skyrl, twinkle, tinkercloud) take forward at its own "
               "/forward with forward_input: one Struct reads both bodies")
_FB_EXTRAS = {
    "data": _FLAT_FB,
    "loss_fn": _FLAT_FB,
    "loss_fn_config": _FLAT_FB,
    "forward_only": "a forward pass sent to forward_backward on servers without /forward",
    "type": "our JSON client names the endpoint, as the other JSON request bodies do",
}

#: fields our Struct has beyond the official model, each with the reason
EXTRA: dict[str, dict[str, str]] = {
    "OptimStepRequest": {
        "optimizer_params": "the SDK serializes optim_params as optimizer_params for non-Adam "
        "families; msgspec renames per field, not per value, so it is a field of its own",
    },
    "ForwardBackwardRequest": {"forward_input": _FWD_SHARED, **_FB_EXTRAS},
    "ForwardRequest": {"forward_backward_input": _FWD_SHARED, **_FB_EXTRAS},
}

#: requests with no official model (the SDK posts bare dicts, or only other servers have
#: them): their Struct and the route that decodes it
NOT_OFFICIAL: dict[str, str] = {
    "FinishSessionRequest": "sessions/{id}/finish (SDK: a bare dict)",
    "CancelFutureRequest": "cancel_future (SDK: a bare dict)",
    "CleanupFuturesRequest": "cleanup_futures (tinkercloud)",
    "DeleteModelRequest": "delete_model (tinkercloud)",
    "TwinkleCreateSessionRequest": "Twinkle's create_session body ({'metadata': ...})",
    "TinkercloudSampleRequest": "tinkercloud's sample body: a SampleRequest that also names "
    "the sampler model_id and prompt logprobs include_prompt_logprobs",
    "WeightsInfoRequest": "weights_info (SDK: a bare dict)",
    "TwinkleWeightsInfoRequest": "Twinkle's weights_info body ({'twinkle_path': ...})",
    "SetCheckpointTTLRequest": "checkpoints/.../ttl (SDK: a bare dict)",
    "SetSessionProjectRequest": "sessions/{id}/project (SDK: a bare dict)",
}


def _official() -> Any:
    return pytest.importorskip("tinker.types")


def _official_fields(cls: type) -> set[str]:
    if dataclasses.is_dataclass(cls):
        return {f.name for f in dataclasses.fields(cls)}
    return set(cls.model_fields)  # type: ignore[attr-defined]


def _struct_fields(cls: type[msgspec.Struct]) -> set[str]:
    config = cls.__struct_config__
    return set(cls.__struct_fields__) | ({config.tag_field} if config.tag_field else set())


def test_every_official_request_is_listed() -> None:
    official = _official()
    names = {n for n in dir(official) if n.endswith("Request") and isinstance(
        getattr(official, n), type)}
    assert names == set(OURS) | set(NO_STRUCT)
    assert not set(OURS) & set(NO_STRUCT)


@pytest.mark.parametrize("name", sorted(OURS))
def test_field_names_are_the_official_ones(name: str) -> None:
    theirs = _official_fields(getattr(_official(), name))
    ours = _struct_fields(OURS[name])
    extra = EXTRA.get(name, {})
    assert set(extra) <= ours, f"{name}: listed extras it does not have"
    assert ours - set(extra) == theirs, name


@pytest.mark.parametrize("name", sorted(NOT_OFFICIAL))
def test_requests_without_an_official_model_are_structs(name: str) -> None:
    assert issubclass(getattr(T, name), msgspec.Struct)
    assert not hasattr(_official(), name)


# --------------------------------------------------------------------- the server side

_ROUTES = Path(__file__).parent.parent / "tinker_async" / "local"


@pytest.mark.parametrize("module", ["_session_routes.py", "_training_routes.py",
                                    "_sampling_routes.py", "_future_routes.py",
                                    "_tinkercloud_routes.py"])
def test_api_routes_decode_with_the_structs(module: str) -> None:
    source = (_ROUTES / module).read_text()
    uses_fields = "Fields(" in source
    # tinkercloud's GET get_tokenizer reads a query string (no body, no Struct).
    assert not uses_fields or source.count("Fields(") == source.count('Fields(request.query')


def test_decode_gives_the_struct_and_every_wrong_field() -> None:
    ok = decode_request(b'{"session_id": "s", "sampling_session_seq_id": 3}',
                        T.CreateSamplingSessionRequest, strict=False)
    assert ok == T.CreateSamplingSessionRequest(session_id="s", sampling_session_seq_id=3)
    # Server leniency (fields the official schema requires, filled in on the slow path):
    assert decode_request(b"", T.ClientConfigRequest, strict=False,
                          defaults={"sdk_version": ""}) == T.ClientConfigRequest(sdk_version="")
    with pytest.raises(Exception) as info:
        decode_request(b'{"session_id": 5, "base_model": 1}', T.CreateSamplingSessionRequest,
                       strict=False)
    issues = {(tuple(i["loc"]), i["type"]): i["msg"] for i in info.value.detail}  # type: ignore[attr-defined]
    assert issues == {
        (("body", "session_id"), "string_type"): "Expected `str`, got `int`",
        (("body", "sampling_session_seq_id"), "missing"):
            "Object missing required field `sampling_session_seq_id`",
        (("body", "base_model"), "string_type"): "Expected `str | null`, got `int`",
    }


def test_strict_mode_finds_unknown_fields_at_any_depth() -> None:
    body = {"session_id": "s", "model_seq_id": 0, "base_model": "m", "type": "create_model",
            "lora_config": {"rank": 4, "surprise": 1}, "optimizer_config": {"type": "adamw"},
            "user_metadata": {"free": {"form": 1}}}
    raw = msgspec.json.encode(body)
    assert decode_request(raw, T.CreateModelRequest, strict=False).lora_config.rank == 4  # type: ignore[union-attr]
    with pytest.raises(Exception) as info:
        decode_request(raw, T.CreateModelRequest, strict=True)
    assert info.value.status == 422  # type: ignore[attr-defined]
    assert [(i["loc"], i["type"]) for i in info.value.detail] == [  # type: ignore[attr-defined]
        (["body", "lora_config", "surprise"], "extra_forbidden")
    ]
    # Tagged unions are followed by their tag (here a model-input chunk).
    sample = {"prompt": {"chunks": [{"type": "encoded_text", "tokens": [1], "x": 0}]}}
    with pytest.raises(Exception) as info:
        decode_request(msgspec.json.encode(sample), T.SampleRequest, strict=True)
    assert info.value.detail[0]["loc"] == ["body", "prompt", "chunks", 0, "x"]  # type: ignore[attr-defined]


def test_bare_chunks_are_repaired() -> None:
    """Chunks without their ``type`` tag (older clients, tinkercloud docs) still decode."""
    raw = b'{"prompt": {"chunks": [{"tokens": [1, 2]}]}, "sampling_params": {}}'
    decoded = decode_request(raw, T.SampleRequest, strict=False)
    assert decoded.prompt.to_ints() == [1, 2]


def test_server_answers_msgspec_errors_in_the_fastapi_shape() -> None:
    async def main(url: str) -> None:
        async with aiohttp.ClientSession(base_url=url) as s:
            async with s.post("/api/v1/create_session", json={"tags": "x"}) as r:
                assert r.status == 422
                detail = (await r.json())["detail"]
            assert detail == [{"loc": ["body", "tags"], "msg": "Expected `array`, got `str`",
                               "type": "list_type", "input": "x"}]
            async with s.post("/api/v1/asample", json={
                "prompt": {"chunks": []}, "base_model": "local/byte-lm", "num_samples": 0,
            }) as r:
                assert r.status == 422
                assert (await r.json())["detail"][0]["type"] == "greater_than_equal"
            # A training request that names its model and seq id fails its future
            # instead (so the model's sequence has no hole): here the model is unknown.
            async with s.post("/api/v1/optim_step", json={"model_id": "nope", "seq_id": 1,
                                                          "adam_params": "fast"}) as r:
                assert r.status == 404

    with LocalServer().in_thread() as server:
        asyncio.run(asyncio.wait_for(main(server.url), 60))


# ------------------------------------------------------- client bodies (_requests)


def _json(body: Any) -> Any:
    return msgspec.json.decode(_requests.encode(body))


def test_request_bodies_leave_default_features_out() -> None:
    official = make_dialect("official")
    sample = T.SampleRequest(prompt=T.ModelInput.from_ints([1, 2]),
                             sampling_params=T.SamplingParams(max_tokens=3),
                             sampling_session_id="s:sample:0", seq_id=4,
                             record_stability_info=False)
    assert _json(_requests.sample_body(sample, official)) == {
        "type": "sample", "prompt": {"chunks": [{"type": "encoded_text", "tokens": [1, 2]}]},
        "sampling_params": {"max_tokens": 3, "temperature": 1.0, "top_k": -1, "top_p": 1.0},
        "num_samples": 1, "sampling_session_id": "s:sample:0", "seq_id": 4,
    }
    cloud = _json(_requests.sample_body(sample, make_dialect("tinkercloud")))
    assert cloud["model_id"] == "s:sample:0" and cloud["include_prompt_logprobs"] is False
    # The server decodes what the client sends into the same Struct.
    assert decode_request(_requests.encode(sample), T.SampleRequest, strict=True) == sample

    session = T.CreateSessionRequest(tags=[], user_metadata={}, sdk_version="0.38.0")
    assert _json(_requests.create_session_body(session, official)) == {
        "type": "create_session", "tags": [], "user_metadata": {}, "sdk_version": "0.38.0"}
    assert _requests.create_session_body(session, make_dialect("twinkle")) == {"metadata": {}}


def test_forward_backward_json_bodies_match_each_dialect() -> None:
    datum = T.Datum(model_input=T.ModelInput.from_ints([1, 2]),
                    loss_fn_inputs={"target_tokens": T.TensorData(data=[2, 3], dtype="int64")})
    inp = T.ForwardBackwardInput(data=[datum], loss_fn="cross_entropy")
    fb = T.ForwardBackwardRequest(forward_backward_input=inp, model_id="m", seq_id=2)
    fwd = T.ForwardRequest(forward_input=inp, model_id="m", seq_id=2)
    official = make_dialect("legacy")
    body = _json(_requests.forward_backward_json_body(fb, official, "forward_backward"))
    assert body["type"] == "forward_backward" and set(body) == {
        "model_id", "seq_id", "forward_backward_input", "type"}
    body = _json(_requests.forward_backward_json_body(fwd, official, "forward"))
    assert set(body) == {"model_id", "seq_id", "forward_input", "type"}
    body = _json(_requests.forward_backward_json_body(fwd, official, "forward_backward"))
    assert body["forward_only"] is True and "forward_backward_input" in body
    flat = _json(_requests.forward_backward_json_body(fb, make_dialect("tinkercloud"),
                                                      "forward_backward"))
    assert set(flat) == {"model_id", "data", "loss_fn"}
    decoded = decode_request(_requests.encode(
        _requests.forward_backward_json_body(fb, official, "forward_backward")),
        ForwardBackwardRequestWire, strict=True)
    assert decoded.to_request().forward_backward_input.data[0].model_input.to_ints() == [1, 2]
