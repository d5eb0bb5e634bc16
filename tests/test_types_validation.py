"""Construction-time checks and copies of ``tinker_async.types``, side by side with the
official ``tinker.types`` (SDK 0.38).

The hand-written table below says what each constructor makes of good and bad input; it
runs against our types always, and against the official types where the SDK is
installed (``pytest.importorskip("tinker")``: not on Python 3.10), so the table is
checked to be what the official types do. A generated sweep then tries a set of probe
values on every field of every official pydantic type and compares both outcomes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import pickle
import types as pytypes
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec
import numpy as np
import pytest

import tinker_async.types as T
from tinker_async.types._wire import decode_json, encode_json


def _official() -> Any:
    return pytest.importorskip("tinker").types


# --- the table ------------------------------------------------------------------------------


class Err:
    """The constructor must refuse the input, naming ``field``."""

    def __init__(self, field: str) -> None:
        self.field = field

    def __repr__(self) -> str:
        return f"Err({self.field!r})"


def _v(value: Any) -> tuple[str, Any]:
    """A value with its type, so that ``5`` and ``5.0`` differ."""
    return (type(value).__name__, value)


# (type, keyword arguments, expected): ``expected`` maps fields to their values after
# construction (checked with their types), or is an Err. Nested chunks are given as
# lists of ints and compared as token lists.
TABLE: list[tuple[str, dict[str, Any], dict[str, Any] | Err]] = [
    # token ids: lax ints, new list
    ("EncodedTextChunk", {"tokens": [1, 2]}, {"tokens": [1, 2]}),
    ("EncodedTextChunk", {"tokens": ["5", " 6 ", 7.0, True, np.int64(8), np.int32(9)]},
     {"tokens": [5, 6, 7, 1, 8, 9]}),
    ("EncodedTextChunk", {"tokens": range(3)}, {"tokens": [0, 1, 2]}),
    ("EncodedTextChunk", {"tokens": [2**40]}, {"tokens": [2**40]}),
    ("EncodedTextChunk", {"tokens": []}, {"tokens": []}),
    ("EncodedTextChunk", {"tokens": [1.5]}, Err("tokens")),
    ("EncodedTextChunk", {"tokens": ["x"]}, Err("tokens")),
    ("EncodedTextChunk", {"tokens": [None]}, Err("tokens")),
    ("EncodedTextChunk", {"tokens": [[1]]}, Err("tokens")),
    ("EncodedTextChunk", {"tokens": "12"}, Err("tokens")),
    ("EncodedTextChunk", {"tokens": b"12"}, Err("tokens")),
    ("EncodedTextChunk", {"tokens": None}, Err("tokens")),
    ("EncodedTextChunk", {"tokens": 7}, Err("tokens")),
    ("EncodedTextChunk", {"tokens": {1: 2}}, Err("tokens")),
    ("EncodedTextChunk", {"tokens": [1], "type": "encoded_text"}, {"tokens": [1]}),
    ("EncodedTextChunk", {"tokens": [1], "type": "image"}, Err("type")),
    ("EncodedTextChunk", {"tokens": [1], "extra": 1}, Err("extra")),
    ("EncodedTextChunk", {}, Err("tokens")),
    # model input: chunk instances or dicts, new list
    ("ModelInput", {"chunks": [[1, 2]]}, {"chunks": [[1, 2]]}),
    ("ModelInput", {"chunks": [{"tokens": [3]}]}, {"chunks": [[3]]}),
    ("ModelInput", {"chunks": [{"type": "encoded_text", "tokens": [4]}]}, {"chunks": [[4]]}),
    ("ModelInput", {"chunks": []}, {"chunks": []}),
    ("ModelInput", {"chunks": [1]}, Err("chunks")),
    ("ModelInput", {"chunks": "text"}, Err("chunks")),
    ("ModelInput", {"chunks": None}, Err("chunks")),
    ("ModelInput", {"chunks": {"a": 1}}, Err("chunks")),
    ("ModelInput", {"chunks": [{"tokens": ["x"]}]}, Err("chunks")),
    # sampling parameters (a response-like type: unknown keywords are ignored)
    ("SamplingParams", {"max_tokens": "5"}, {"max_tokens": _v(5)}),
    ("SamplingParams", {"max_tokens": 5.0}, {"max_tokens": _v(5)}),
    ("SamplingParams", {"max_tokens": True}, {"max_tokens": _v(1)}),
    ("SamplingParams", {"max_tokens": np.int64(7)}, {"max_tokens": _v(7)}),
    ("SamplingParams", {"max_tokens": None}, {"max_tokens": _v(None)}),
    ("SamplingParams", {"max_tokens": "a"}, Err("max_tokens")),
    ("SamplingParams", {"max_tokens": 2.5}, Err("max_tokens")),
    ("SamplingParams", {"max_tokens": [1]}, Err("max_tokens")),
    ("SamplingParams", {"temperature": 1}, {"temperature": _v(1.0)}),
    ("SamplingParams", {"temperature": "0.5"}, {"temperature": _v(0.5)}),
    ("SamplingParams", {"temperature": np.float32(0.5)}, {"temperature": _v(0.5)}),
    ("SamplingParams", {"temperature": None}, Err("temperature")),
    ("SamplingParams", {"temperature": "hot"}, Err("temperature")),
    ("SamplingParams", {"top_k": 2.0}, {"top_k": _v(2)}),
    ("SamplingParams", {"top_k": 1.5}, Err("top_k")),
    ("SamplingParams", {"seed": "x"}, Err("seed")),
    ("SamplingParams", {"stop": "\n"}, {"stop": _v("\n")}),
    ("SamplingParams", {"stop": b"x"}, {"stop": _v("x")}),
    ("SamplingParams", {"stop": ["a", "b"]}, {"stop": ["a", "b"]}),
    ("SamplingParams", {"stop": [1, 2]}, {"stop": [1, 2]}),
    ("SamplingParams", {"stop": [1.0, True]}, {"stop": [1, 1]}),
    ("SamplingParams", {"stop": ["5"]}, {"stop": ["5"]}),
    ("SamplingParams", {"stop": []}, {"stop": []}),
    ("SamplingParams", {"stop": ["a", 1]}, Err("stop")),
    ("SamplingParams", {"stop": 5}, Err("stop")),
    ("SamplingParams", {"stop": [None]}, Err("stop")),
    ("SamplingParams", {"foo": 1}, {}),
    # optimizer parameters (a request type: unknown keywords are refused)
    ("AdamParams", {"learning_rate": 1}, {"learning_rate": _v(1.0)}),
    ("AdamParams", {"learning_rate": "1e-4"}, {"learning_rate": _v(1e-4)}),
    ("AdamParams", {"learning_rate": -1}, {"learning_rate": _v(-1.0)}),
    ("AdamParams", {"learning_rate": "fast"}, Err("learning_rate")),
    ("AdamParams", {"eps": None}, Err("eps")),
    ("AdamParams", {"lr": 0.1}, Err("lr")),
    ("DimuonParams", {"learning_rate": "0.5"}, {"learning_rate": _v(0.5)}),
    ("DimuonParams", {"learning_rate": -1}, Err("learning_rate")),
    ("DimuonParams", {"learning_rate": 1, "beta1": 1.0}, Err("beta1")),
    ("DimuonParams", {}, Err("learning_rate")),
    # LoRA settings
    ("LoraConfig", {"rank": "8"}, {"rank": _v(8)}),
    ("LoraConfig", {"rank": 8.0}, {"rank": _v(8)}),
    ("LoraConfig", {"rank": 8.5}, Err("rank")),
    ("LoraConfig", {"rank": 8, "train_mlp": "yes"}, {"train_mlp": _v(True)}),
    ("LoraConfig", {"rank": 8, "train_mlp": 0}, {"train_mlp": _v(False)}),
    ("LoraConfig", {"rank": 8, "train_mlp": 2}, Err("train_mlp")),
    ("LoraConfig", {"rank": 8, "train_mlp": "maybe"}, Err("train_mlp")),
    ("LoraConfig", {}, Err("rank")),
    # images: bytes or base64 text; format is a literal
    ("ImageChunk", {"data": b"hi", "format": "png"}, {"data": _v(b"hi")}),
    ("ImageChunk", {"data": "aGk=", "format": "png"}, {"data": _v(b"hi")}),
    ("ImageChunk", {"data": bytearray(b"hi"), "format": "jpeg"}, {"data": _v(b"hi")}),
    ("ImageChunk", {"data": b"hi", "format": "gif"}, Err("format")),
    ("ImageChunk", {"data": 5, "format": "png"}, Err("data")),
    ("ImageChunk", {"data": b"hi", "format": "png", "expected_tokens": "4"},
     {"expected_tokens": _v(4)}),
    # requests with lists and dicts
    ("CreateSessionRequest", {"tags": ("a", b"b"), "sdk_version": "1", "user_metadata": {"k": 1}},
     {"tags": ["a", "b"], "user_metadata": {"k": 1}}),
    ("CreateSessionRequest", {"tags": "ab", "sdk_version": "1"}, Err("tags")),
    ("CreateSessionRequest", {"tags": [1], "sdk_version": "1"}, Err("tags")),
    ("CreateSessionRequest", {"tags": [], "sdk_version": 1}, Err("sdk_version")),
    ("CreateSessionRequest", {"tags": [], "sdk_version": "1", "user_metadata": {1: "v"}},
     Err("user_metadata")),
    ("SaveWeightsForSamplerRequest", {"model_id": "m", "kind": "inflight"},
     {"kind": _v("inflight")}),
    ("SaveWeightsForSamplerRequest", {"model_id": "m", "kind": "live"}, Err("kind")),
    ("SessionSearchRequest", {"limit": "10"}, {"limit": _v(10)}),
    ("SessionSearchRequest", {"limit": 0}, Err("limit")),
    ("SessionSearchRequest", {"limit": 201}, Err("limit")),
    ("SessionSearchRequest", {"display_name": ""}, Err("display_name")),
    ("UserSearchOwner", {"owner_urns": []}, Err("owner_urns")),
    ("UserSearchOwner", {"owner_urns": ["u"] * 11}, Err("owner_urns")),
    # responses (unknown keywords ignored), enums and datetimes
    ("RequestFailedResponse", {"error": "boom", "category": "user"}, {"category": "user"}),
    ("RequestFailedResponse", {"error": "boom", "category": "nobody"}, Err("category")),
    ("CreateSessionResponse", {"session_id": "s", "new_field": 1}, {"session_id": _v("s")}),
    ("Checkpoint", {"checkpoint_id": "weights/a", "tinker_path": "tinker://r/weights/a",
                    "checkpoint_type": "training",
                    "time": "2024-01-02T03:04:05Z"},
     {"time": _v(dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc))}),
    ("Checkpoint", {"checkpoint_id": "weights/a", "tinker_path": "tinker://r/weights/a",
                    "checkpoint_type": "training",
                    "time": "yesterday"}, Err("time")),
    ("Checkpoint", {"checkpoint_id": "weights/a", "tinker_path": "tinker://r/weights/a",
                    "checkpoint_type": "weights",
                    "time": "2024-01-02T03:04:05Z"}, Err("checkpoint_type")),
]


def _materialize(module: Any, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Chunks given as token lists become that module's EncodedTextChunks."""
    if name == "ModelInput" and isinstance(kwargs.get("chunks"), list):
        chunks = [module.EncodedTextChunk(tokens=c) if isinstance(c, list) else c
                  for c in kwargs["chunks"]]
        return {**kwargs, "chunks": chunks}
    return dict(kwargs)


def _view(value: Any) -> Any:
    """A field value as the table writes it."""
    if isinstance(value, (list, tuple)):
        return [_view(v) for v in value]
    if hasattr(value, "tokens"):
        return list(value.tokens)
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _check_row(module: Any, name: str, kwargs: dict[str, Any],
               expected: dict[str, Any] | Err) -> None:
    cls = getattr(module, name)
    args = _materialize(module, name, kwargs)
    if isinstance(expected, Err):
        with pytest.raises(ValueError) as info:
            cls(**args)
        assert expected.field in str(info.value), str(info.value)
        assert name in str(info.value), str(info.value)
        return
    obj = cls(**args)
    for field, want in expected.items():
        got = getattr(obj, field)
        if isinstance(want, tuple) and len(want) == 2 and isinstance(want[0], str):
            assert _v(got) == want, (name, field, got)
        else:
            assert _view(got) == want, (name, field, got)


_IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(TABLE)]


@pytest.mark.parametrize(("name", "kwargs", "expected"), TABLE, ids=_IDS)
def test_table_ours(name: str, kwargs: dict[str, Any], expected: dict[str, Any] | Err) -> None:
    _check_row(T, name, kwargs, expected)


@pytest.mark.parametrize(("name", "kwargs", "expected"), TABLE, ids=_IDS)
def test_table_official(name: str, kwargs: dict[str, Any],
                        expected: dict[str, Any] | Err) -> None:
    _check_row(_official(), name, kwargs, expected)


# --- what we do on purpose differently ------------------------------------------------------


def test_deliberate_differences() -> None:
    # A numpy token array is accepted and kept as it is (no copy); the official type refuses
    # it. Its dtype and shape are checked.
    array = np.arange(4, dtype=np.int32)
    assert T.EncodedTextChunk(tokens=array).tokens is array  # type: ignore[arg-type,comparison-overlap]
    assert T.ModelInput.from_ints(array).to_ints() == [0, 1, 2, 3]  # type: ignore[arg-type]
    for bad in (np.zeros((2, 2), dtype=np.int32), np.array([1.5]), np.array([2**31])):
        with pytest.raises(T.ValidationError, match="tokens"):
            T.EncodedTextChunk(tokens=bad)  # type: ignore[arg-type]
    # A tuple given for a sequence field becomes a list (the official type keeps a tuple).
    assert T.EncodedTextChunk(tokens=(1, 2)).tokens == [1, 2]
    assert T.SamplingParams(stop=("a",)).stop == ["a"]
    # Datum checks its model_input (the official Datum keeps anything, and the request
    # fails when it is encoded).
    with pytest.raises(T.ValidationError, match="model_input"):
        T.Datum(model_input=[1, 2, 3])  # type: ignore[arg-type]
    # model_copy(update=...) checks the update (pydantic copies it unchecked).
    params = T.SamplingParams()
    assert params.model_copy(update={"max_tokens": "5"}).max_tokens == 5
    with pytest.raises(T.ValidationError, match="max_tokens"):
        params.model_copy(update={"max_tokens": "five"})
    # Response ``type`` fields and HealthResponse.status take any text (other servers send
    # other values); a False record_stability_info is stored as None (left off the wire).
    assert T.SaveWeightsResponse(path="p", type="other").type == "other"
    assert T.HealthResponse(status="healthy").is_healthy
    sp = T.SamplingParams()
    mi = T.ModelInput.from_ints([1])
    assert T.SampleRequest(prompt=mi, sampling_params=sp,
                           record_stability_info=False).record_stability_info is None


# --- copies -----------------------------------------------------------------------------------


def test_cookbook_pattern_chunk_from_a_list_that_is_then_cleared() -> None:
    # tinker-cookbook's rl/data_processing builds chunks from one list it keeps clearing.
    chunks: list[T.ModelInputChunk] = []
    current: list[int] = []
    for token in [1, 2, 3, None, 4, 5]:
        if token is None:
            chunks.append(T.EncodedTextChunk(tokens=current))
            current.clear()
        else:
            current.append(token)
    chunks.append(T.EncodedTextChunk(tokens=current))
    current.clear()
    assert T.ModelInput(chunks=chunks).to_ints() == [1, 2, 3, 4, 5]
    assert [c.length for c in chunks] == [3, 2]


def _mutate(container: Any) -> None:
    if isinstance(container, list):
        container.append(container[0] if container else 0)
    else:
        container["zz_added"] = next(iter(container.values()), 0)


# (build(world, container) -> object, the container, field holding its copy)
COPIES: list[tuple[str, Callable[[Any, Any], Any], Callable[[], Any], str]] = [
    ("EncodedTextChunk.tokens", lambda m, c: m.EncodedTextChunk(tokens=c), lambda: [1, 2],
     "tokens"),
    ("ModelInput.from_ints", lambda m, c: m.ModelInput.from_ints(c).chunks[0], lambda: [1, 2],
     "tokens"),
    ("ModelInput.chunks", lambda m, c: m.ModelInput(chunks=c),
     lambda: [T.EncodedTextChunk(tokens=[1])], "chunks"),
    ("SamplingParams.stop", lambda m, c: m.SamplingParams(stop=c), lambda: ["a"], "stop"),
    ("CreateSessionRequest.tags",
     lambda m, c: m.CreateSessionRequest(tags=c, sdk_version="1", user_metadata=None),
     lambda: ["t"], "tags"),
    ("CreateSessionRequest.user_metadata",
     lambda m, c: m.CreateSessionRequest(tags=[], sdk_version="1", user_metadata=c),
     lambda: {"k": "v"}, "user_metadata"),
    ("SaveWeightsRequest.user_metadata",
     lambda m, c: m.SaveWeightsRequest(model_id="m", user_metadata=c), lambda: {"k": "v"},
     "user_metadata"),
    ("UntypedAPIFuture.sample_sequence_ids",
     lambda m, c: m.UntypedAPIFuture(request_id="r", sample_sequence_ids=c), lambda: ["s1"],
     "sample_sequence_ids"),
    ("OptimStepResponse.metrics", lambda m, c: m.OptimStepResponse(metrics=c),
     lambda: {"loss": 1.0}, "metrics"),
    ("Datum.loss_fn_inputs",
     lambda m, c: m.Datum(model_input=m.ModelInput.from_ints([1]), loss_fn_inputs=c),
     lambda: {"weights": [1.0]}, "loss_fn_inputs"),
]


def _copy_case(module: Any, build: Callable[[Any, Any], Any], make: Callable[[], Any],
               field: str) -> bool:
    container = make()
    if module is not T and container and isinstance(container, list) and isinstance(
        container[0], T.EncodedTextChunk
    ):
        container = [module.EncodedTextChunk(tokens=[1])]
    obj = build(module, container)
    before = repr(getattr(obj, field))
    _mutate(container)
    return repr(getattr(obj, field)) == before


@pytest.mark.parametrize(("label", "build", "make", "field"), COPIES, ids=[c[0] for c in COPIES])
def test_constructors_copy_what_they_are_given(label: str, build: Callable[[Any, Any], Any],
                                              make: Callable[[], Any], field: str) -> None:
    assert _copy_case(T, build, make, field), f"{label} shares the caller's container"


@pytest.mark.parametrize(("label", "build", "make", "field"), COPIES, ids=[c[0] for c in COPIES])
def test_the_official_types_copy_the_same(label: str, build: Callable[[Any, Any], Any],
                                          make: Callable[[], Any], field: str) -> None:
    assert _copy_case(_official(), build, make, field), label


def test_nested_instances_are_kept_numpy_arrays_too() -> None:
    chunk = T.EncodedTextChunk(tokens=[1])
    mi = T.ModelInput(chunks=[chunk])
    assert mi.chunks[0] is chunk
    params = T.SamplingParams(max_tokens=3)
    req = T.SampleRequest(prompt=mi, sampling_params=params)
    assert req.prompt is mi and req.sampling_params is params
    target = np.arange(3, dtype=np.int64)
    assert T.TensorData.from_numpy(target).to_numpy() is target


# --- errors -----------------------------------------------------------------------------------


def test_errors_are_value_errors_that_say_what_was_wrong() -> None:
    with pytest.raises(T.ValidationError) as info:
        T.SamplingParams(max_tokens="a", temperature=None)  # type: ignore[arg-type]
    error = info.value
    assert isinstance(error, ValueError)
    assert error.title == "SamplingParams" and error.error_count() == 2
    text = str(error)
    assert "SamplingParams" in text
    assert "max_tokens: expected an integer or None, got str 'a'" in text
    assert "temperature: expected a number, got None" in text
    assert [e["loc"] for e in error.errors()] == [("max_tokens",), ("temperature",)]
    assert error.errors()[0]["input"] == "a"
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == text and again.errors() == error.errors()


def test_errors_locate_items_inside_lists_and_nested_types() -> None:
    with pytest.raises(T.ValidationError, match=r"tokens\.1: expected an integer"):
        T.ModelInput.from_ints([1, "x", 3])  # type: ignore[list-item]
    with pytest.raises(T.ValidationError, match=r"chunks\.0\.tokens\.0") as info:
        T.ModelInput(chunks=[{"tokens": [1.5]}])  # type: ignore[list-item]
    assert info.value.title == "ModelInput"
    with pytest.raises(T.ValidationError, match=r"sampling_params\.top_k"):
        T.SampleRequest(prompt=T.ModelInput.from_ints([1]),
                        sampling_params={"top_k": "many"})  # type: ignore[arg-type]


def test_keyword_problems_are_validation_errors_too() -> None:
    with pytest.raises(T.ValidationError, match="rank: field required"):
        T.LoraConfig()  # type: ignore[call-arg]
    with pytest.raises(T.ValidationError, match="lr: unexpected keyword"):
        T.AdamParams(lr=0.1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):  # positional arguments: a TypeError, as in pydantic
        T.AdamParams(0.1)  # type: ignore[call-arg]
    assert T.OptimStepResponse(metrics=None, later_field=1).metrics is None  # type: ignore[call-arg]


def test_model_validate_is_lax_and_names_fields() -> None:
    assert T.LoraConfig.model_validate({"rank": "8", "train_mlp": "no"}) == T.LoraConfig(
        rank=8, train_mlp=False)
    with pytest.raises(T.ValidationError, match="rank"):
        T.LoraConfig.model_validate({"rank": "eight"})
    with pytest.raises(T.ValidationError, match="LoraConfig"):
        T.LoraConfig.model_validate([8])


# --- what must keep working ------------------------------------------------------------------


def test_equality_hashing_pickling_and_copies_still_work() -> None:
    chunk = T.EncodedTextChunk(tokens=["1", 2])  # type: ignore[list-item]
    assert chunk == T.EncodedTextChunk(tokens=[1, 2])
    assert hash(chunk) == hash(T.EncodedTextChunk(tokens=[1, 2]))
    mi = T.ModelInput(chunks=[chunk])
    params = T.SamplingParams(max_tokens="3", stop=["x"])  # type: ignore[arg-type]
    req = T.SampleRequest(prompt=mi, sampling_params=params, num_samples="2")  # type: ignore[arg-type]
    for obj in (chunk, mi, params, req):
        assert pickle.loads(pickle.dumps(obj)) == obj
        assert obj.model_copy() == obj
        assert decode_json(encode_json(obj), type(obj)) == obj
        assert msgspec.json.decode(msgspec.json.encode(obj), type=type(obj)) == obj
    # The wire encoding still leaves defaults out (and sends the always-sent ones).
    assert msgspec.to_builtins(params) == {
        "max_tokens": 3, "stop": ["x"], "temperature": 1.0, "top_k": -1, "top_p": 1.0}
    datum = T.Datum(model_input=mi, loss_fn_inputs={"weights": [1.0, 0.0]})
    changed = dataclasses.replace(
        datum, loss_fn_inputs={"weights": [0.0, 1.0]})  # type: ignore[dict-item]
    assert changed.loss_fn_inputs["weights"].tolist() == [0.0, 1.0]
    with pytest.raises(T.ValidationError):
        dataclasses.replace(datum, model_input="tokens")  # type: ignore[arg-type]


def test_decoding_checks_nothing_twice_that_it_need_not() -> None:
    # Decoded values have their final types already; a decoded object is equal to the one
    # encoded and owns its lists.
    mi = T.ModelInput.from_ints(list(range(100)))
    raw = encode_json(mi)
    first, second = decode_json(raw, T.ModelInput), decode_json(raw, T.ModelInput)
    assert first == mi == second
    assert first.to_ints() == list(range(100))
    assert first.chunks[0].tokens is not second.chunks[0].tokens  # type: ignore[union-attr]
    with pytest.raises(msgspec.ValidationError):
        decode_json(b'{"chunks": [{"type": "encoded_text", "tokens": [1.5]}]}', T.ModelInput)


# --- the generated sweep: every official field x probe values, official vs ours -------------

_NONE = type(None)

# (type, field, probe) -> why we differ on purpose. ``*`` matches any type or probe.
SWEEP_DELIBERATE: dict[tuple[str, str, str], str] = {
    ("*", "type", "word"): "the ``type`` field of a response takes any text (other servers "
    "send other values), where the official types want their one literal",
    ("HealthResponse", "status", "word"): "tinkercloud says 'healthy'",
    ("TelemetryResponse", "status", "word"): "any status text is kept",
    ("SampleRequest", "record_stability_info", "*"):
        "False (the server default) is stored as None, so it stays off the wire",
}


def _strip(ann: Any) -> Any:
    while typing.get_origin(ann) is typing.Annotated:
        ann = typing.get_args(ann)[0]
    return ann


def _is_union(ann: Any) -> bool:
    return typing.get_origin(ann) in (typing.Union, pytypes.UnionType)


def _good(ann: Any) -> Any:
    """A value any official field of annotation ``ann`` accepts (dicts for models)."""
    import pydantic

    ann = _strip(ann)
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if _is_union(ann):
        return _good(next(a for a in args if a is not _NONE))
    if origin is typing.Literal:
        return args[0]
    if origin in (list, Sequence):
        return [_good(args[0])] if args else []
    if origin in (dict, Mapping):
        return {"k": _good(args[1])}
    if ann in (typing.Any, object):
        return {"k": 1}
    if ann is pydantic.AwareDatetime or ann is dt.datetime:
        return "2024-01-02T03:04:05+00:00"
    if isinstance(ann, type):
        if issubclass(ann, enum.Enum):
            return next(iter(ann)).value
        if issubclass(ann, pydantic.BaseModel):
            return _required(ann, with_tag=True)
        for kind, value in ((bool, True), (int, 1), (float, 0.5), (str, "s"), (bytes, b"x")):
            if issubclass(ann, kind):
                return value
    raise TypeError(f"no good value for {ann!r}")


def _required(cls: Any, with_tag: bool = False) -> dict[str, Any]:
    """The required fields of an official model; ``with_tag`` adds its type tag (a
    dict standing for a member of a tagged union needs it)."""
    out = {name: _good(f.annotation) for name, f in cls.model_fields.items()
           if f.is_required()}
    for name in ("type", "state") if with_tag else ():
        info = cls.model_fields.get(name)
        if info is not None and not info.is_required() and info.default is not None:
            out[name] = info.default
    return out


def _probes(ann: Any) -> list[tuple[str, Any]]:
    import pydantic

    ann = _strip(ann)
    if _is_union(ann):
        options = [a for a in typing.get_args(ann) if a is not _NONE]
        if len(options) == 1:
            ann = _strip(options[0])
    origin = typing.get_origin(ann)
    probes: list[tuple[str, Any]] = [("None", None), ("object", object()), ("word", "zzz")]
    if ann in (int, float):
        probes += [("int", 3), ("numeric-text", "5"), ("spaced-text", " 5 "),
                   ("whole-float", 5.0), ("fraction", 2.5), ("bool", True),
                   ("np.int64", np.int64(3)), ("np.float32", np.float32(0.5)),
                   ("negative", -1), ("zero", 0), ("big", 500), ("list", [1]),
                   ("bytes", b"7"), ("float-text", "0.25")]
    elif ann is bool:
        probes += [("true", True), ("one", 1), ("two", 2), ("yes", "yes"), ("off", "off"),
                   ("np.bool", np.bool_(False)), ("zero-float", 0.0)]
    elif ann is str:
        probes += [("str", "abc"), ("bytes", b"abc"), ("int", 5), ("empty", "")]
    elif ann is bytes:
        probes += [("bytes", b"ab"), ("bytearray", bytearray(b"ab")), ("base64", "aGk="),
                   ("int", 5)]
    elif origin is typing.Literal:
        values = typing.get_args(ann)
        probes += [("first", values[0]), ("last", values[-1])]
    elif origin in (list, Sequence):
        probes += [("empty", []), ("tuple", ()), ("text", "ab"), ("dict", {"a": 1}),
                   ("int", 5)]
        args = typing.get_args(ann)
        if args:
            try:
                item = _good(args[0])
            except TypeError:
                item = None
            if item is not None:
                probes += [("one", [item]), ("tuple-one", (item,)), ("two", [item, item])]
    elif origin in (dict, Mapping):
        probes += [("empty", {}), ("list", [1]), ("int-key", {1: "v"}), ("str", {"a": "b"}),
                   ("int-value", {"a": 1}), ("none-value", {"a": None})]
    elif ann is dt.datetime:
        probes += [("iso", "2024-01-02T03:04:05Z"), ("naive-iso", "2024-01-02T03:04:05"),
                   ("timestamp", 1700000000), ("date", "2024-01-02"),
                   ("datetime", dt.datetime(2024, 1, 2))]
    elif ann is pydantic.AwareDatetime:
        probes += [("aware", dt.datetime(2024, 1, 2, tzinfo=dt.timezone.utc)),
                   ("naive", dt.datetime(2024, 1, 2)), ("iso", "2024-01-02T03:04:05Z")]
    elif isinstance(ann, type) and issubclass(ann, enum.Enum):
        probes += [("value", next(iter(ann)).value)]
    elif isinstance(ann, type) and issubclass(ann, pydantic.BaseModel):
        probes += [("dict", _required(ann, with_tag=True))]
    return probes


def _canon(value: Any, nested: bool = False) -> Any:
    """Comparable form: scalars with their type at the top level; nested models as dicts
    (numbers by value there, since the official defaults are not validated: temperature
    defaults to the int 1)."""
    if hasattr(value, "model_dump"):
        return {k: _canon(v, True) for k, v in value.model_dump().items()}
    if isinstance(value, (list, tuple)):
        return [_canon(v, nested) for v in value]
    if isinstance(value, dict):
        return {str(k): _canon(v, nested) for k, v in value.items()}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if nested and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return (type(value).__name__, value)


def _outcome(cls: Any, kwargs: dict[str, Any], field: str) -> tuple[str, Any]:
    try:
        obj = cls(**kwargs)
    except ValueError:
        return ("error", None)
    return ("ok", _canon(getattr(obj, field)))


def _same(official: tuple[str, Any], ours: tuple[str, Any]) -> bool:
    if official[0] != ours[0]:
        return False
    left, right = official[1], ours[1]
    if isinstance(left, dict) and isinstance(right, dict):  # ours may have extra fields
        return all(right.get(k) == v for k, v in left.items())
    if isinstance(left, list) and isinstance(right, list) and len(left) == len(right):
        return all(_same(("ok", a), ("ok", b)) for a, b in zip(left, right, strict=True))
    return bool(left == right)


def _official_model_names() -> list[str]:
    try:
        import pydantic
        import tinker.types as official
    except ImportError:
        return []
    return sorted(n for n in dir(official) if isinstance(getattr(official, n), type)
                  and issubclass(getattr(official, n), pydantic.BaseModel) and hasattr(T, n))


@pytest.mark.parametrize("name", _official_model_names() or ["(tinker not installed)"])
def test_every_official_field_takes_what_the_official_type_takes(name: str) -> None:
    official = _official()
    theirs, ours = getattr(official, name), getattr(T, name)
    base = _required(theirs)
    tag_field = ours.__struct_config__.tag_field
    if tag_field in base:  # telemetry events: the official literal allows every kind
        base[tag_field] = ours.__struct_config__.tag
    problems = []
    for field, info in theirs.model_fields.items():
        if field == tag_field:
            continue
        for label, value in _probes(info.annotation):
            if any(key in SWEEP_DELIBERATE for key in (
                (name, field, label), (name, field, "*"), ("*", field, label)
            )):
                continue
            kwargs = {**base, field: value}
            a, b = _outcome(theirs, kwargs, field), _outcome(ours, kwargs, field)
            if not _same(a, b):
                problems.append(f"{field}={label}: official {a}, ours {b}")
    assert not problems, "\n".join(problems)
