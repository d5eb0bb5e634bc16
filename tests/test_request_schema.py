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
import re
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
    assert _json(_requests.create_session_body(session, make_dialect("twinkle"))) == {"metadata": {}}


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


# ------------------------------------ REST bodies and query strings (no hand parsing)

_CKPT = "/api/v1/training_runs/s:train:0/checkpoints/weights/w"
_PATH = "tinker://s:train:0/weights/w"
_LOSS = {"session_id": "s", "custom_loss_seq_id": 0, "name": "x",
         "inputs": [{"name": "logprobs", "rank": 1}], "graph": {"nodes": []}}

#: route -> (method, path, a valid body, a wrong-typed field, its wrong value, error type)
_BODY_ROUTES: dict[str, tuple[str, str, dict[str, Any], str, Any, str]] = {
    "checkpoint_ttl": ("PUT", _CKPT + "/ttl", {"ttl_seconds": None},
                       "ttl_seconds", "soon", "int_type"),
    "weights_info": ("POST", "/api/v1/weights_info", {"tinker_path": _PATH},
                     "tinker_path", 5, "string_type"),
    "twinkle_weights_info": ("POST", "/api/v1/weights_info",
                             {"twinkle_path": "twinkle://s:train:0/weights/w"},
                             "twinkle_path", [], "string_type"),
    "copy_weights": ("POST", "/api/v1/copy_weights",
                     {"source_path": _PATH, "destination_project_id": "p"},
                     "model_seq_id", "one", "int_type"),
    "session_project": ("PUT", "/api/v1/sessions/nope/project", {"project_id": "p"},
                        "project_id", 7, "string_type"),
    "sessions_search": ("POST", "/api/v1/sessions/search", {"limit": 5},
                        "limit", "ten", "int_type"),
    "create_custom_loss": ("POST", "/api/v1/create_custom_loss", _LOSS,
                           "custom_loss_seq_id", "first", "int_type"),
}


def _call(url: str, method: str, path: str, body: Any = None,
          params: dict[str, str] | None = None) -> tuple[int, Any]:
    async def main() -> tuple[int, Any]:
        async with aiohttp.ClientSession(base_url=url) as s:
            async with s.request(method, path, json=body, params=params) as r:
                return r.status, await r.json()

    return asyncio.run(asyncio.wait_for(main(), 60))


def _issues(answer: Any) -> dict[tuple[Any, ...], str]:
    return {tuple(i["loc"]): i["type"] for i in answer["detail"]}


@pytest.fixture(scope="module")
def lenient_url() -> Any:
    with LocalServer(client_config={"custom_loss_server_side": True}).in_thread() as server:
        yield server.url


@pytest.fixture(scope="module")
def strict_url() -> Any:
    from tinker_async.local._dialects import resolve_dialect

    # The official routes (create_custom_loss included), with strict request models.
    dialect = dataclasses.replace(resolve_dialect("official"), strict_fields=True)
    with LocalServer(dialect=dialect,
                     client_config={"custom_loss_server_side": True}).in_thread() as server:
        yield server.url


@pytest.mark.parametrize("name", sorted(_BODY_ROUTES))
def test_rest_bodies_name_the_wrong_field(name: str, lenient_url: str) -> None:
    method, path, valid, field, wrong, kind = _BODY_ROUTES[name]
    status, answer = _call(lenient_url, method, path, {**valid, field: wrong})
    assert status == 422, answer
    issue = next(i for i in answer["detail"] if i["loc"] == ["body", field])
    assert issue["type"] == kind and issue["input"] == wrong and issue["msg"]
    # Unknown fields are ignored outside the strict dialect (the request goes on).
    status, answer = _call(lenient_url, method, path, {**valid, "surprise": 1})
    assert status != 422, answer


@pytest.mark.parametrize("name", sorted(_BODY_ROUTES))
def test_strict_dialect_refuses_unknown_rest_fields(name: str, strict_url: str) -> None:
    method, path, valid, *_ = _BODY_ROUTES[name]
    status, answer = _call(strict_url, method, path, {**valid, "surprise": 1})
    assert status == 422
    assert _issues(answer) == {("body", "surprise"): "extra_forbidden"}


def test_rest_bodies_keep_their_server_side_rules(lenient_url: str, strict_url: str) -> None:
    def issues(body: Any, path: str, method: str = "POST", url: str = lenient_url) -> Any:
        status, answer = _call(url, method, path, body)
        assert status == 422, answer
        return _issues(answer)

    # Bounds the shared schema does not state.
    assert issues({"source_path": _PATH, "model_seq_id": -1}, "/api/v1/copy_weights") == {
        ("body", "model_seq_id"): "greater_than_equal"}
    assert issues({**_LOSS, "custom_loss_seq_id": -1}, "/api/v1/create_custom_loss") == {
        ("body", "custom_loss_seq_id"): "greater_than_equal"}
    assert issues({"project_id": ""}, "/api/v1/sessions/nope/project", "PUT") == {
        ("body", "project_id"): "string_too_short"}
    # Required fields (null is a value: ttl_seconds=null removes the expiry).
    assert issues({}, _CKPT + "/ttl", "PUT") == {("body", "ttl_seconds"): "missing"}
    assert issues({}, "/api/v1/weights_info") == {("body", "tinker_path"): "missing"}
    # Nested Structs: each wrong field, at its path; strict finds unknown ones at any depth.
    search = {"owner": {"type": "user", "owner_urns": []},
              "cursor": {"last_created_at": "2024-01-01T00:00:00", "last_session_id": "s"}}
    assert issues(search, "/api/v1/sessions/search") == {
        ("body", "owner", "owner_urns"): "too_short",
        ("body", "cursor", "last_created_at"): "timezone_aware"}
    loss = {**_LOSS, "inputs": [{"name": "logprobs", "rank": 3}]}
    assert issues(loss, "/api/v1/create_custom_loss") == {
        ("body", "inputs", 0, "rank"): "literal_error"}
    nested = {"owner": {"type": "own", "surprise": 1}}
    assert issues(nested, "/api/v1/sessions/search", url=strict_url) == {
        ("body", "owner", "surprise"): "extra_forbidden"}


#: (path, query, the parameter at fault, the error type) on the default dialect
_BAD_QUERIES = [
    ("/api/v1/training_runs", {"limit": "abc"}, "limit", "int_parsing"),
    ("/api/v1/training_runs", {"limit": "1001"}, "limit", "less_than_equal"),
    ("/api/v1/training_runs", {"all_users": "maybe"}, "all_users", "bool_parsing"),
    ("/api/v1/training_runs/x", {"access_scope": "everyone"}, "access_scope", "literal_error"),
    ("/api/v1/training_runs/x/checkpoints", {"offset": "-1"}, "offset", "greater_than_equal"),
    ("/api/v1/checkpoints", {"limit": "0"}, "limit", "greater_than_equal"),
    ("/api/v1/sessions", {"offset": "x"}, "offset", "int_parsing"),
    ("/api/v1/sessions/x", {"access_scope": "mine"}, "access_scope", "literal_error"),
    ("/api/v1/audit", {"event_type": "logins"}, "event_type", "literal_error"),
    ("/api/v1/audit", {"day": "yesterday"}, "day", "date_parsing"),
    ("/api/v1/billing/usage/events",
     {"starting_on": "soon", "ending_before": "2024-01-02T00:00:00Z"},
     "starting_on", "datetime_parsing"),
    ("/api/v1/billing/usage/events", {"starting_on": "2024-01-01T00:00:00Z"},
     "ending_before", "missing"),
    ("/api/v1/billing/usage/events",
     {"starting_on": "2024-01-01T00:00:00Z", "ending_before": "2024-01-02T00:00:00"},
     "ending_before", "timezone_aware"),
]


@pytest.mark.parametrize(("path", "query", "name", "kind"), _BAD_QUERIES)
def test_rest_queries_name_the_wrong_parameter(path: str, query: dict[str, str], name: str,
                                               kind: str, lenient_url: str) -> None:
    status, answer = _call(lenient_url, "GET", path, params=query)
    assert status == 422, answer
    assert _issues(answer) == {("query", name): kind}
    assert answer["detail"][0]["msg"]


def test_rest_queries_keep_their_defaults(lenient_url: str, strict_url: str) -> None:
    for url in (lenient_url, strict_url):  # unknown parameters are ignored, strict or not
        status, runs = _call(url, "GET", "/api/v1/training_runs", params={"surprise": "1"})
        assert status == 200 and runs["cursor"]["limit"] == 20
    status, runs = _call(lenient_url, "GET", "/api/v1/training_runs",
                         params={"limit": "5", "offset": "2", "access_scope": "accessible",
                                 "all_users": "true", "project_id": "p"})
    assert status == 200 and (runs["cursor"]["limit"], runs["cursor"]["offset"]) == (5, 2)
    status, checkpoints = _call(lenient_url, "GET", "/api/v1/checkpoints")
    assert status == 200 and checkpoints["cursor"]["limit"] == 100
    good = [("/api/v1/sessions", {"limit": "3"}), ("/api/v1/audit", {"day": "2024-01-01"}),
            ("/api/v1/billing/usage/events", {"starting_on": "2024-01-01T00:00:00Z",
                                              "ending_before": "2024-01-02T00:00:00+00:00"}),
            ("/api/v1/billing/usage/checkpoints/current", {"project_id": "p"})]
    for path, query in good:
        assert _call(lenient_url, "GET", path, params=query)[0] == 200, path


def test_tinkercloud_tokenizer_query_is_typed() -> None:
    with LocalServer(dialect="tinkercloud").in_thread() as server:
        status, answer = _call(server.url, "GET", "/api/v1/get_tokenizer")
        assert status == 422 and _issues(answer) == {("query", "model_id"): "missing"}
        status, _ = _call(server.url, "GET", "/api/v1/get_tokenizer",
                          params={"model_id": "nope", "surprise": "1"})
        assert status == 404


def test_no_route_module_parses_by_hand() -> None:
    from tinker_async.local import _validate

    assert not hasattr(_validate, "Fields")
    for module in sorted(_ROUTES.glob("*.py")):
        assert "Fields(" not in module.read_text(), module.name


def test_no_client_module_builds_a_body_by_hand() -> None:
    # The client side of one schema: request bodies are Structs from types/ (through
    # _requests where a server wants another shape), never dict literals. The one
    # exception is auth/token's empty body, which has no fields to drift.
    package = Path(__file__).parent.parent / "tinker_async"
    for module in sorted(package.glob("*.py")):
        source = module.read_text()
        literal_bodies = re.findall(r"json=\{[^}]", source)
        assert not literal_bodies, f"{module.name}: {literal_bodies}"
        assert '"type": "' not in source or module.name in _TYPE_LITERAL_OK, module.name


#: client modules that mention a wire ``"type": "..."`` for another reason than a body
_TYPE_LITERAL_OK = {
    "_byte_tokenizer.py",  # chat-message content parts, in a docstring
    "_doctor.py",  # its probes are deliberately not valid requests
}
