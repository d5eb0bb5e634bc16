"""The protobuf schema tables, and the codec's bytes on a fixed corpus of every message kind.

- The schema tables of :mod:`tinker_async._proto_schema` (the one place that holds field
  numbers) equal the official generated module's descriptors, field by field.
- A corpus of requests and results (every message kind, edge values: empty and maximal
  ints, multi-byte lengths, every chunk and tensor shape, spans, map orders) encodes to the
  bytes in ``fixtures/proto_corpus.json``. Those bytes were captured from the encoder as it
  was before the schema tables existed (commit 7999537), so this pins the wire format
  through any rewrite of the codec; it needs no official SDK. After a *deliberate* wire
  change, rewrite the fixture with ``python tests/test_proto_schema.py``.
- With the official SDK installed, the same corpus matches its ``SerializeToString`` and
  our decoders read the official bytes back.
"""

from __future__ import annotations

import ast
import json
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np
import pytest

from tinker_async import _proto as P
from tinker_async import _proto_schema as S
from tinker_async import _proto_wire as W
from tinker_async import types as T
from tinker_async.local import _proto_server as PS

FIXTURE = Path(__file__).parent / "fixtures" / "proto_corpus.json"
PACKAGE = Path(P.__file__).parent

Spec = dict[str, Any]

# ---------------------------------------------------------------------------------------
# The corpus. Requests are specs built into our types or the official ones (``M``), so the
# same case can go through both encoders; results are built from our types.
# ---------------------------------------------------------------------------------------

_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_I32_MIN, _I32_MAX = -(1 << 31), (1 << 31) - 1


def _f32(values: list[float]) -> np.ndarray[Any, Any]:
    return np.array(values, dtype=np.float32)


def _i64(values: list[int]) -> np.ndarray[Any, Any]:
    return np.array(values, dtype=np.int64)


def _dense(values: np.ndarray[Any, Any], *, no_shape: bool = False) -> Spec:
    """A dense tensor with the array's shape, or with none (then none goes on the wire)."""
    return {"values": values, "shape": None if no_shape else list(values.shape)}


def _sparse(values: np.ndarray[Any, Any], shape: list[int], crow: list[int],
            col: list[int]) -> Spec:
    return {"values": values, "shape": shape, "crow": crow, "col": col}


def _text(n: int, start: int = 0) -> list[int]:
    return [(start + 7919 * i) % 200_003 for i in range(n)]


def _plain(n: int, start: int = 0) -> Spec:
    tokens = _text(n, start)
    return {"chunks": [("text", tokens)],
            "inputs": {"target_tokens": _dense(_i64(tokens)),
                       "weights": _dense(_f32([((i % 3) - 1) / 2 for i in range(n)]))}}


_CONFIG_MANY: dict[str, float | str] = {
    "b": 1, "a": -0.0, "ab": math.nan, "t": "text", "": "", "ünï": math.inf,
    "x" * 130: 2.5, "日本": "日本語",
}

_EDGE_DATUM: Spec = {
    "chunks": [("text", []), ("text", [0, 1, _I32_MAX, _I32_MIN]),
               ("text_np", np.arange(300, dtype=np.int32)),
               ("text_np", np.array([5, -5, 2**31 - 1], dtype=np.int64))],
    "inputs": {
        "no_shape": _dense(_f32([1.5, -2.0]), no_shape=True),
        "scalar": _dense(np.array(3.25, dtype=np.float32)),
        "matrix": _dense(np.arange(6, dtype=np.int64).reshape(2, 3)),
        "empty": _dense(_f32([])),
        "extremes": _dense(_i64([_I64_MIN, -1, 0, 1, _I64_MAX])),
        "specials": _dense(_f32([math.nan, math.inf, -math.inf, -0.0, 1e-40])),
        "strided": _dense(np.arange(40, dtype=np.float32)[::2]),
        "long": _dense(np.linspace(-1, 1, 200, dtype=np.float32)),
    },
}

_MEDIA_DATUM: Spec = {
    "chunks": [("image", b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "png", None),
               ("text", [1, 2, 3]),
               ("image", b"", "jpeg", 0),
               ("image", b"\xff\xd8", "jpeg", _I32_MAX),
               ("dmel", b""),
               ("dmel", bytes(200))],
    "inputs": {
        "sparse": _sparse(_f32([1.0, -2.0, 3.5]), [2, 3], [0, 2, 3], [0, 2, 1]),
        "sparse_ids": _sparse(_i64([_I64_MAX]), [1, 4], [0, 1], [3]),
        "sparse_empty": _sparse(_f32([]), [0, 0], [0], []),
        "dense": _dense(_f32([0.25])),
    },
}

_SPAN_DATUMS: list[Spec] = [
    {"chunks": [("text", _text(20))], "inputs": {"weights": _dense(_f32([1.0] * 20))},
     "spans": ([("prompt", "p", 0, 0), ("sampled", "seq-1", 2**40, 17)], [])},
    {"chunks": [("text", _text(4))], "inputs": {},
     "spans": ([("sampled", "ünï-日本", 0, 4)],
               [("prompt", "p" * 130, 3, 2**33), ("sampled", "s", _I64_MAX - 4, 1)])},
]


def _requests() -> Iterator[tuple[str, Spec]]:
    base: Spec = {"model_id": "model:train:0", "seq_id": 1, "loss_fn": "cross_entropy",
                  "config": None, "forward_only": False, "data": [], "deterministic": False}
    yield "empty", {**base, "model_id": "", "seq_id": None, "loss_fn": ""}
    yield "seq-zero-forward-only", {**base, "seq_id": 0, "forward_only": True}
    yield "seq-negative-long-model-id", {**base, "model_id": "m" * 130, "seq_id": -1}
    yield "seq-max-unicode", {**base, "model_id": "ünï日本", "seq_id": _I32_MAX,
                              "loss_fn": "ppo", "seq_min": _I32_MIN}
    yield "plain-datums", {**base, "data": [_plain(n, n) for n in (1, 7, 300)]}
    yield "edge-datum", {**base, "data": [_EDGE_DATUM], "deterministic": True}
    yield "edge-datum-insertion-order", {**base, "data": [_EDGE_DATUM]}
    yield "media-datum", {**base, "data": [_MEDIA_DATUM, _plain(3)], "deterministic": True}
    yield "span-datums", {**base, "data": [*_SPAN_DATUMS, _plain(2)], "deterministic": True}
    yield "config-one-number", {**base, "config": {"kl_coeff": 0.5}}
    yield "config-one-text", {**base, "config": {"clip": "low"}, "loss_fn": "ppo"}
    yield "config-many", {**base, "config": _CONFIG_MANY, "deterministic": True,
                          "forward_only": True, "data": [_plain(5)]}
    yield "config-many-insertion-order", {**base, "config": _CONFIG_MANY}


_BODY_SEQS = [None, 0, 1, 300, _I32_MAX, -1, _I32_MIN]


def _build_chunk(M: ModuleType, spec: tuple[Any, ...]) -> Any:
    kind = spec[0]
    if kind == "text":
        return M.EncodedTextChunk(tokens=list(spec[1]))
    if kind == "text_np":  # only our types keep an array; the official ones take the list
        return M.EncodedTextChunk(tokens=spec[1] if M is T else spec[1].tolist())
    if kind == "image":
        return M.ImageChunk(data=spec[1], format=spec[2], expected_tokens=spec[3])
    return M.DmelChunk(dmel=spec[1])


def _build_tensor(M: ModuleType, spec: Spec) -> Any:
    values = spec["values"]
    dtype = "int64" if values.dtype == np.int64 else "float32"
    if "crow" in spec:
        return M.TensorData(data=values, dtype=dtype, shape=spec["shape"],
                            sparse_crow_indices=spec["crow"], sparse_col_indices=spec["col"])
    return M.TensorData(data=values, dtype=dtype, shape=spec["shape"])


def _build_datum(M: ModuleType, spec: Spec) -> Any:
    spans = spec.get("spans")

    def span_list(items: list[tuple[str, str, int, int]]) -> list[Any]:
        return [(M.PromptProvenanceSpan if kind == "prompt" else M.SampledProvenanceSpan)(
            sequence_id=seq, offset=offset, length=length) for kind, seq, offset, length in items]

    return M.Datum(
        model_input=M.ModelInput(chunks=[_build_chunk(M, c) for c in spec["chunks"]]),
        loss_fn_inputs={k: _build_tensor(M, t) for k, t in spec["inputs"].items()},
        model_input_spans=None if spans is None else span_list(spans[0]),
        loss_fn_input_spans=None if spans is None else span_list(spans[1]),
    )


def _request_args(spec: Spec) -> tuple[Any, ...]:
    return (spec["model_id"], spec["seq_id"], [_build_datum(T, d) for d in spec["data"]],
            spec["loss_fn"], spec["config"], spec["forward_only"])


def _outputs() -> Iterator[tuple[str, T.ForwardBackwardOutput, bool]]:
    def td(values: np.ndarray[Any, Any]) -> T.TensorData:
        return T.TensorData.from_numpy(values)

    yield "empty", T.ForwardBackwardOutput(loss_fn_output_type="", loss_fn_outputs=[],
                                           metrics={}), False
    same = [{"logprobs": td(_f32([-0.5] * n)), "elementwise_loss": td(_f32([0.25] * n))}
            for n in (1, 3, 0, 300)]
    yield "one-record", T.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord",
                                                loss_fn_outputs=same,
                                                metrics={"loss:sum": 1.5}), False
    ragged = [
        {"x": td(_f32([1.0, 2.0])), "ids": td(_i64([_I64_MIN, _I64_MAX]))},
        {"x": td(np.arange(6, dtype=np.float32).reshape(3, 2)), "ids": td(_i64([]))},
        {"x": td(np.arange(4, dtype=np.float32).reshape(2, 2)), "ids": td(_i64([7]))},
        {"x": td(np.array(2.5, dtype=np.float32)), "ids": td(_i64([1, 2]))},
    ]
    metrics = {"loss:sum": -0.0, "a:mean": math.nan, "ab:mean": math.inf, "ünï:max": 1e300,
               "": 0.0}
    for det in (True, False):
        yield (f"ragged{'' if det else '-insertion-order'}",
               T.ForwardBackwardOutput(loss_fn_output_type="tinker.losses:TorchLossReturn",
                                       loss_fn_outputs=ragged, metrics=metrics), det)


def _samples() -> Iterator[tuple[str, T.SampleResponse]]:
    topk = T.TopkLogprobs(token_ids=np.arange(6, dtype=np.int32).reshape(3, 2),
                          logprobs=-_f32([0.5, 1, 2, 3, 4, 99999.0]).reshape(3, 2))
    yield "empty", T.SampleResponse(sequences=[])
    yield "full", T.SampleResponse(
        sequences=[
            T.SampledSequence(stop_reason="stop", tokens_np=np.array([], dtype=np.int32)),
            T.SampledSequence(stop_reason="length",
                              tokens_np=np.array([1, _I32_MAX, _I32_MIN], dtype=np.int32),
                              logprobs_np=_f32([-0.5, math.nan, -0.0]),
                              topk_logprobs_np=topk),
            T.SampledSequence(stop_reason="stop", tokens_np=np.arange(300, dtype=np.int32),
                              logprobs_np=_f32([])),
        ],
        prompt_logprobs_np=_f32([math.nan, -1.0, -2.0]),
        topk_prompt_logprobs_np=topk,
        target_prompt_logprobs=T.TensorData(data=_f32([-1, -2, -3, -4]), dtype="float32",
                                            shape=[2, 2]),
        prompt_cache_hit_tokens=-5,
        prompt_alt_tokens=T.PromptAltTokens(
            tokens=T.TensorData(data=_i64([1, 2, 3]), dtype="int64", shape=[3, 1]),
            logprobs=T.TensorData(data=_f32([-0.1, -0.2, -0.3]), dtype="float32", shape=[3, 1]),
        ),
    )
    yield "sparse-target", T.SampleResponse(
        sequences=[T.SampledSequence(stop_reason="length", tokens_np=np.array([9], np.int32),
                                     topk_logprobs_np=T.TopkLogprobs(
                                         token_ids=np.zeros((0, 3), np.int32),
                                         logprobs=np.zeros((0, 3), np.float32)))],
        target_prompt_logprobs=T.TensorData(data=_f32([0.5]), dtype="float32", shape=[2, 3],
                                            sparse_crow_indices=[0, 0, 1],
                                            sparse_col_indices=[2]),
        prompt_cache_hit_tokens=_I32_MAX,
    )


class Codec(NamedTuple):
    """The four encoders the corpus goes through (so the fixture can be written by any
    version of the codec)."""

    request: Callable[..., bytes]
    body: Callable[..., Any]
    output: Callable[..., bytes]
    sample: Callable[..., bytes]


CODEC = Codec(P.encode_forward_backward_request, P.ForwardBackwardBody,
              PS.encode_forward_backward_output, PS.encode_sample_response)


def corpus(codec: Codec) -> dict[str, bytes]:
    """Every corpus case's name and the bytes ``codec`` makes of it."""
    out: dict[str, bytes] = {}
    for name, spec in _requests():
        args = _request_args(spec)
        out[f"request/{name}"] = codec.request(*args, deterministic=spec["deterministic"])
        if "seq_min" in spec:
            out[f"request/{name}/seq-min"] = codec.request(args[0], spec["seq_min"], *args[2:])
    data = [_build_datum(T, d) for d in (_MEDIA_DATUM, *_SPAN_DATUMS, _plain(40))]
    body = codec.body("model-1", data, "ppo", {"kl": 0.5, "mode": "x"}, True)
    for seq in _BODY_SEQS:
        out[f"body/seq={seq}"] = bytes(body.payload(seq))
    for name, output, det in _outputs():
        out[f"output/{name}"] = codec.output(output, deterministic=det)
    for name, sample in _samples():
        out[f"sample/{name}"] = codec.sample(sample)
    return out


def _one_entry_maps(spec: Spec) -> bool:
    """No map of the request has two entries (so map order does not arise)."""
    return len(spec["config"] or {}) <= 1 and all(len(d["inputs"]) <= 1 for d in spec["data"])


def _fixture() -> dict[str, bytes]:
    return {k: bytes.fromhex(v) for k, v in json.loads(FIXTURE.read_text()).items()}


# ---------------------------------------------------------------------------------------
# Tests that need no official SDK
# ---------------------------------------------------------------------------------------


def test_corpus_bytes_are_unchanged() -> None:
    expected = _fixture()
    got = corpus(CODEC)
    assert sorted(got) == sorted(expected)
    assert [name for name in got if got[name] != expected[name]] == []


def test_corpus_decodes_back_to_what_was_encoded() -> None:
    """Our decoders read every corpus message back: a request re-encodes to the same bytes,
    a result holds the values that were encoded."""
    expected = _fixture()
    for name, spec in _requests():
        parts = PS.decode_forward_backward_request(expected[f"request/{name}"])
        again = P.encode_forward_backward_request(
            parts.model_id, parts.seq_id, parts.data, parts.loss_fn, parts.loss_fn_config,
            parts.forward_only, deterministic=True)
        # Re-encoded in sorted map order: comparable when the original was, or had no order.
        if spec["deterministic"] or _one_entry_maps(spec):
            assert again == expected[f"request/{name}"], name
    for name, output, _det in _outputs():
        decoded = P.decode_forward_backward_output(expected[f"output/{name}"])
        assert decoded.metrics.keys() == output.metrics.keys(), name
        assert [_tensors_bits(d) for d in decoded.loss_fn_outputs] == [
            _tensors_bits(d) for d in output.loss_fn_outputs], name
    for name, sample in _samples():
        got = P.decode_sample_response(expected[f"sample/{name}"])
        assert [_sequence_bits(s) for s in got.sequences] == [
            _sequence_bits(s) for s in sample.sequences], name
        assert got.prompt_cache_hit_tokens == sample.prompt_cache_hit_tokens
        for a, b in ((got.target_prompt_logprobs, sample.target_prompt_logprobs),
                     *((getattr(got.prompt_alt_tokens, k, None),
                        getattr(sample.prompt_alt_tokens, k, None))
                       for k in ("tokens", "logprobs"))):
            assert (a is None) == (b is None), name
            if a is not None and b is not None:
                assert _tensors_bits({"t": a}) == _tensors_bits({"t": b}), name


def _tensors_bits(tensors: Any) -> dict[str, tuple[Any, ...]]:
    """Each tensor's dtype, sparse layout and values as bytes (the wire keeps no 0-d shape)."""
    return {k: (v.dtype, v.sparse_crow_indices, v.sparse_col_indices,
                np.asarray(v.to_numpy() if v.sparse_crow_indices is None else v.data,
                           np.int64 if v.dtype == "int64" else np.float32).tobytes())
            for k, v in tensors.items()}


def _sequence_bits(seq: Any) -> tuple[Any, ...]:
    """A sampled sequence's values as bytes (NaN logprobs compare equal bit for bit; an
    empty logprobs list is None on the wire)."""
    logprobs = None if not seq.logprobs else np.asarray(seq.logprobs, np.float32).tobytes()
    return seq.stop_reason, np.asarray(seq.tokens, np.int32).tobytes(), logprobs


def test_every_schema_message_is_reachable_and_numbered_once() -> None:
    seen = {m.name for m in S.MESSAGES}
    for message in S.MESSAGES:
        numbers = [f.number for f in message.fields]
        assert len(numbers) == len(set(numbers)), message.name
        assert len({f.name for f in message.fields}) == len(numbers), message.name
        for f in message.fields:
            if f.message is not None:
                assert f.message.name in seen or f.kind == W.MAP, (message.name, f.name)


def test_no_field_number_outside_the_schema() -> None:
    """Writers and readers take their fields from the schema tables: no module but the
    table module makes a field, a message or a key from a number."""
    makers = {"Field", "Message", "map_entry", "tag"}
    offenders = []
    for path in [*PACKAGE.glob("*.py"), *PACKAGE.glob("local/*.py")]:
        source = path.read_text(encoding="utf-8")
        if path.name in ("_proto_schema.py", "_proto_wire.py") or "_proto_wire" not in source:
            continue  # only the codec's modules use the wire primitives
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", getattr(node.func, "attr", None))
                if name in makers:
                    offenders.append(f"{path.name}:{node.lineno}: {name}(...)")
    assert offenders == []


# ---------------------------------------------------------------------------------------
# Against the official SDK
# ---------------------------------------------------------------------------------------

# protobuf FieldDescriptor.TYPE_* -> our kinds
_OFFICIAL_KINDS = {1: W.DOUBLE, 3: W.INT64, 5: W.INT32, 8: W.BOOL, 9: W.STRING, 11: W.MESSAGE,
                   12: W.BYTES, 13: W.UINT32, 14: W.ENUM}


def _official() -> Any:
    pytest.importorskip("tinker")
    from tinker.proto import tinker_public_pb2 as pb
    return pb


def _assert_same_message(ours: W.Message, official: Any) -> None:
    by_number = {f.number: f for f in official.fields}
    assert sorted(by_number) == sorted(f.number for f in ours.fields), ours.name
    for f in ours.fields:
        of = by_number[f.number]
        where = f"{ours.name}.{f.name}"
        assert f.name == of.name, where
        is_map = of.message_type is not None and of.message_type.GetOptions().map_entry
        if is_map:
            assert f.kind == W.MAP and f.message is not None, where
            _assert_same_message(f.message, of.message_type)
            continue
        assert f.kind == _OFFICIAL_KINDS[of.type], where
        assert f.repeated == of.is_repeated, where
        real_oneof = of.containing_oneof is not None and not of.containing_oneof.name.startswith("_")
        assert f.oneof == (of.containing_oneof.name if real_oneof else None), where
        assert f.presence == of.has_presence, where
        if of.message_type is not None:
            assert f.message is not None and f.message.name == of.message_type.name, where
            _assert_same_message(f.message, of.message_type)


def test_schema_tables_match_the_official_descriptors() -> None:
    pb = _official()
    names = {m.name for m in S.MESSAGES}
    for message in S.MESSAGES:
        _assert_same_message(message, pb.DESCRIPTOR.message_types_by_name[message.name])
    # every official message the three messages on the wire reach is in the tables
    assert {"ForwardBackwardRequest", "ForwardBackwardOutput", "SampleResponse"} <= names
    for enum, official in ((S.DType, pb.DType), (S.StopReasonCode, pb.StopReason)):
        assert {e.name: int(e) for e in enum} == {
            k.removeprefix("DTYPE_").removeprefix("STOP_REASON_"): v
            for k, v in official.items()}


def _official_request(spec: Spec) -> Any:
    from tinker import types as OT
    from tinker.proto import request_conv
    request = OT.ForwardBackwardRequest(
        forward_backward_input=OT.ForwardBackwardInput(
            data=[_build_datum(OT, d) for d in spec["data"]], loss_fn=spec["loss_fn"],
            loss_fn_config=spec["config"]),
        model_id=spec["model_id"], seq_id=spec["seq_id"])
    msg = request_conv.forward_backward_request_to_proto(request)
    msg.forward_only = spec["forward_only"]
    return msg


def test_corpus_requests_match_the_official_bytes() -> None:
    _official()
    ours = corpus(CODEC)
    for name, spec in _requests():
        msg = _official_request(spec)
        if spec["deterministic"]:
            assert ours[f"request/{name}"] == msg.SerializeToString(deterministic=True), name
        elif _one_entry_maps(spec):  # upb writes multi-entry maps in a random order
            assert ours[f"request/{name}"] == msg.SerializeToString(), name
        else:
            assert type(msg).FromString(ours[f"request/{name}"]) == msg, name
        # our decoder reads the official bytes back into the same request
        parts = PS.decode_forward_backward_request(msg.SerializeToString())
        again = P.encode_forward_backward_request(
            parts.model_id, parts.seq_id, parts.data, parts.loss_fn, parts.loss_fn_config,
            parts.forward_only, deterministic=True)
        assert again == msg.SerializeToString(deterministic=True), name


def test_corpus_results_match_the_official_bytes() -> None:
    pb = _official()
    from tinker.proto import response_conv
    ours = corpus(CODEC)
    for name, _output, det in _outputs():
        payload = ours[f"output/{name}"]
        official = pb.ForwardBackwardOutput.FromString(payload)
        if det:
            assert payload == official.SerializeToString(deterministic=True), name
        off = response_conv.deserialize_forward_backward_output(official.SerializeToString())
        back = P.decode_forward_backward_output(official.SerializeToString())
        assert back.loss_fn_output_type == off.loss_fn_output_type
        assert back.metrics.keys() == off.metrics.keys()
        for a, b in zip(back.loss_fn_outputs, off.loss_fn_outputs, strict=True):
            assert {k: (v.dtype, v.shape, v.to_numpy().tobytes()) for k, v in a.items()} == {
                k: (v.dtype, v.shape, np.asarray(v.to_numpy()).tobytes()) for k, v in b.items()}
    for name, _sample in _samples():
        payload = ours[f"sample/{name}"]
        official = pb.SampleResponse.FromString(payload)
        assert payload == official.SerializeToString(), name
        off = response_conv.deserialize_sample_response(official.SerializeToString())
        back = P.decode_sample_response(official.SerializeToString())
        assert [_sequence_bits(s) for s in back.sequences] == [
            _sequence_bits(s) for s in off.sequences]
        assert back.prompt_cache_hit_tokens == off.prompt_cache_hit_tokens


if __name__ == "__main__":  # rewrite the fixture (only after a deliberate wire change)
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(json.dumps({k: v.hex() for k, v in corpus(CODEC).items()}, indent=1)
                       + "\n")
    print(f"wrote {FIXTURE}", file=sys.stderr)
