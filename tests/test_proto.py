"""Conformance tests of the hand-written protobuf codec against the official SDK's own pb2.

Every comparison is on random inputs with fixed seeds, in both directions:

- requests: our bytes vs the official ``request_conv`` + ``SerializeToString`` (byte-identical
  with ``deterministic=True`` on both sides, and also with the default mode whenever no map
  has two entries: the official serializer writes multi-entry maps in a per-process random
  hash order), plus the official pb2 parsing our bytes, and our decoder reading theirs;
- results: official pb2 messages with random contents, decoded by ours and by the official
  ``response_conv``; our encoders read back by the official ``response_conv``;
- malformed input: truncations, mutations, wrong wire types -> ``ValueError``, never a hang
  or another exception.

The official SDK is only needed for the comparisons: without it (Python 3.10) a test skips
when it first reaches for the SDK, and the others run.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pytest

from tinker_async import _proto as P
from tinker_async import _proto_wire as W
from tinker_async import types as T
from tinker_async.local import _proto_server as PS


class _NoSDK:
    """Stands in for a module of the official SDK where it is not installed (Python 3.10:
    it needs 3.11): the first use skips the test that needs it, so the tests that do not
    (varints, zstd, malformed input, our own round trips) still run."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):  # introspection (pytest's collection), not a use
            raise AttributeError(attr)
        pytest.skip(f"needs the official SDK ({self._name}.{attr}); not installed")


try:
    import tinker
    from tinker import types as OT
    from tinker.proto import request_conv, response_conv
    from tinker.proto import tinker_public_pb2 as pb
except ImportError:
    tinker = _NoSDK("tinker")
    OT = _NoSDK("tinker.types")
    request_conv = _NoSDK("tinker.proto.request_conv")
    response_conv = _NoSDK("tinker.proto.response_conv")
    pb = _NoSDK("tinker.proto.tinker_public_pb2")

Spec = dict[str, Any]

# ---------------------------------------------------------------------------------------
# Random specs, built into either our types or the official ones
# ---------------------------------------------------------------------------------------

_TEXTS = ["", "a", "kl_coeff", "clip:low", "ünï", "日本", "x" * 130]


def _rand_text(rng: np.random.Generator) -> str:
    return str(rng.choice(_TEXTS)) if rng.random() < 0.7 else f"k{rng.integers(1000)}"


def _rand_array(rng: np.random.Generator, dtype: str, size: int) -> npt.NDArray[Any]:
    if dtype == "int64":
        info = np.iinfo(np.int64)
        arr = rng.integers(-5, 200_000, size, dtype=np.int64)
        if size and rng.random() < 0.3:
            arr[rng.integers(size)] = info.min if rng.random() < 0.5 else info.max
        return arr
    arr32 = (rng.standard_normal(size) * 10).astype(np.float32)
    if size and rng.random() < 0.3:
        arr32[rng.integers(size)] = rng.choice([np.nan, np.inf, -0.0, 1e-40])
    return arr32


def _rand_tensor_spec(rng: np.random.Generator) -> Spec:
    dtype = "float32" if rng.random() < 0.5 else "int64"
    if rng.random() < 0.3:  # sparse CSR
        nrows, ncols = int(rng.integers(0, 5)), int(rng.integers(0, 6))
        mask = rng.random((nrows, ncols)) < 0.4
        crow = [0, *np.cumsum(mask.sum(axis=1)).tolist()]
        col = np.nonzero(mask)[1].tolist()
        return {
            "dtype": dtype,
            "data": _rand_array(rng, dtype, len(col)),
            "shape": [nrows, ncols],
            "crow": crow,
            "col": col,
        }
    ndim = int(rng.choice([0, 1, 1, 1, 2, 3]))
    shape = [int(rng.integers(0, 5)) for _ in range(ndim)]
    if ndim == 1 and rng.random() < 0.2:
        shape = [int(rng.integers(200, 3000))]  # multi-byte lengths
    data = _rand_array(rng, dtype, math.prod(shape)).reshape(shape)
    # shape=None keeps the array's own shape; the wire then carries no shape at all.
    return {"dtype": dtype, "data": data, "shape": None if rng.random() < 0.15 else shape}


def _rand_chunk_spec(rng: np.random.Generator) -> Spec:
    r = rng.random()
    if r < 0.7:
        n = int(rng.choice([0, 1, 5, 40, 300])) if rng.random() < 0.95 else 5000
        lo, hi = (-(2**31), 2**31) if rng.random() < 0.2 else (0, 200_000)
        return {"kind": "text", "tokens": rng.integers(lo, hi, n).tolist()}
    if r < 0.85:
        return {
            "kind": "image",
            "data": rng.bytes(int(rng.integers(0, 300))),
            "format": str(rng.choice(["png", "jpeg"])),
            "expected_tokens": None if rng.random() < 0.4 else int(rng.integers(0, 5000)),
        }
    return {"kind": "dmel", "dmel": rng.bytes(int(rng.integers(0, 200)))}


def _rand_spans(rng: np.random.Generator) -> list[tuple[str, str, int, int]]:
    return [
        (
            str(rng.choice(["prompt", "sampled"])),
            f"seq-{rng.integers(100)}",
            int(rng.choice([0, 3, 2**40])),
            int(rng.choice([0, 1, 17, 2**33])),
        )
        for _ in range(int(rng.integers(0, 4)))
    ]


def _rand_datum_spec(rng: np.random.Generator) -> Spec:
    names = ["target_tokens", "weights", "advantages", "logprobs", "mask"]
    n_inputs = int(rng.choice([0, 1, 1, 2, 2, 3]))
    picked = rng.choice(names, size=n_inputs, replace=False).tolist()
    spans = None
    if rng.random() < 0.3:
        spans = (_rand_spans(rng), _rand_spans(rng))
    return {
        "chunks": [_rand_chunk_spec(rng) for _ in range(int(rng.integers(0, 4)))],
        "inputs": {name: _rand_tensor_spec(rng) for name in picked},
        "spans": spans,
    }


def _rand_config(rng: np.random.Generator) -> dict[str, float | str] | None:
    if rng.random() < 0.3:
        return None
    config: dict[str, float | str] = {}
    for _ in range(int(rng.integers(0, 5))):
        r = rng.random()
        value: float | str
        if r < 0.4:
            value = float(rng.standard_normal())
        elif r < 0.6:
            value = int(rng.integers(-3, 3))
        elif r < 0.7:
            value = float(rng.choice([0.0, -0.0, np.inf, np.nan]))
        else:
            value = _rand_text(rng)
        config[_rand_text(rng)] = value
    return config


def _rand_request_spec(rng: np.random.Generator) -> Spec:
    return {
        "model_id": _rand_text(rng),
        "seq_id": None if rng.random() < 0.1 else int(rng.choice([0, 1, 7, 300, -1, 2**31 - 1])),
        "data": [_rand_datum_spec(rng) for _ in range(int(rng.choice([0, 1, 2, 3, 6])))],
        "loss_fn": str(rng.choice(["cross_entropy", "importance_sampling", "ppo", ""])),
        "config": _rand_config(rng),
        "forward_only": bool(rng.random() < 0.5),
    }


def _build_tensor(M: Any, spec: Spec) -> Any:
    if "crow" in spec:
        return M.TensorData(
            data=spec["data"],
            dtype=spec["dtype"],
            shape=spec["shape"],
            sparse_crow_indices=spec["crow"],
            sparse_col_indices=spec["col"],
        )
    return M.TensorData(data=spec["data"], dtype=spec["dtype"], shape=spec["shape"])


def _build_chunk(M: Any, spec: Spec) -> Any:
    if spec["kind"] == "text":
        return M.EncodedTextChunk(tokens=spec["tokens"])
    if spec["kind"] == "image":
        return M.ImageChunk(
            data=spec["data"], format=spec["format"], expected_tokens=spec["expected_tokens"]
        )
    return M.DmelChunk(dmel=spec["dmel"])


def _build_spans(M: Any, spans: list[tuple[str, str, int, int]]) -> list[Any]:
    out = []
    for kind, seq_id, offset, length in spans:
        cls = M.PromptProvenanceSpan if kind == "prompt" else M.SampledProvenanceSpan
        out.append(cls(sequence_id=seq_id, offset=offset, length=length))
    return out


def _build_datum(M: Any, spec: Spec) -> Any:
    spans = spec["spans"]
    return M.Datum(
        model_input=M.ModelInput(chunks=[_build_chunk(M, c) for c in spec["chunks"]]),
        loss_fn_inputs={k: _build_tensor(M, t) for k, t in spec["inputs"].items()},
        model_input_spans=None if spans is None else _build_spans(M, spans[0]),
        loss_fn_input_spans=None if spans is None else _build_spans(M, spans[1]),
    )


def _official_request(spec: Spec) -> Any:
    request = OT.ForwardBackwardRequest(
        forward_backward_input=OT.ForwardBackwardInput(
            data=[_build_datum(OT, d) for d in spec["data"]],
            loss_fn=spec["loss_fn"],
            loss_fn_config=spec["config"],
        ),
        model_id=spec["model_id"],
        seq_id=spec["seq_id"],
    )
    msg = request_conv.forward_backward_request_to_proto(request)
    msg.forward_only = spec["forward_only"]  # set by resources/training.py, as here
    return msg


def _our_request_bytes(spec: Spec, deterministic: bool = False) -> bytes:
    return P.encode_forward_backward_request(
        spec["model_id"],
        spec["seq_id"],
        [_build_datum(T, d) for d in spec["data"]],
        spec["loss_fn"],
        spec["config"],
        spec["forward_only"],
        deterministic=deterministic,
    )


def _max_map_len(spec: Spec) -> int:
    lens = [len(spec["config"] or {})] + [len(d["inputs"]) for d in spec["data"]]
    return max(lens)


# ---------------------------------------------------------------------------------------
# Comparing values
# ---------------------------------------------------------------------------------------


def _bits(arr: Any) -> tuple[str, tuple[int, ...], bytes]:
    """An array's dtype, shape and exact bytes (so NaNs compare equal bit for bit)."""
    a = np.ascontiguousarray(arr)
    return a.dtype.str, a.shape, a.tobytes()


def _td_values(td: Any) -> Any:
    return td._numpy if hasattr(td, "_numpy") else td.to_numpy()


def _shape(td: Any) -> list[int] | None:
    return None if td.shape is None else [int(s) for s in td.shape]


def _assert_tensor_equal(ours: Any, official: Any) -> None:
    assert ours.dtype == official.dtype
    assert _shape(ours) == _shape(official)
    assert _bits(_td_values(ours)) == _bits(_td_values(official))
    assert ours.sparse_crow_indices == official.sparse_crow_indices
    assert ours.sparse_col_indices == official.sparse_col_indices


def _assert_topk_equal(ours: Any, official: Any) -> None:
    if official is None:
        assert ours is None
        return
    assert _bits(ours.token_ids) == _bits(official.token_ids)
    assert _bits(ours.logprobs) == _bits(official.logprobs)


def _assert_optional_array_equal(ours: Any, official: Any) -> None:
    if official is None:
        assert ours is None
    else:
        assert _bits(ours) == _bits(official)


# ---------------------------------------------------------------------------------------
# ForwardBackwardRequest
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_request_matches_official(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(60):
        spec = _rand_request_spec(rng)
        official = _official_request(spec)
        off_det = official.SerializeToString(deterministic=True)
        ours = _our_request_bytes(spec)
        # 1. byte-identical to the official deterministic serialization
        assert _our_request_bytes(spec, deterministic=True) == off_det
        # 2. the official pb2 parses our default bytes into the same message
        assert pb.ForwardBackwardRequest.FromString(ours) == official
        # 3. byte-identical to the official default serialization when no map order is
        #    involved (its multi-entry map order is random per process)
        if _max_map_len(spec) <= 1:
            assert ours == official.SerializeToString()
        # 4. our decoder reads the official bytes back into the same request
        parts = PS.decode_forward_backward_request(official.SerializeToString())
        assert parts.model_id == spec["model_id"]
        assert parts.seq_id == (spec["seq_id"] or 0)
        assert parts.loss_fn == spec["loss_fn"]
        assert parts.forward_only == spec["forward_only"]
        assert len(parts.data) == len(spec["data"])
        _assert_config_equal(parts.loss_fn_config, spec["config"])
        again = P.encode_forward_backward_request(
            parts.model_id,
            parts.seq_id,
            parts.data,
            parts.loss_fn,
            parts.loss_fn_config,
            parts.forward_only,
            deterministic=True,
        )
        assert again == off_det


def _assert_config_equal(
    decoded: dict[str, float | str] | None, sent: dict[str, float | str] | None
) -> None:
    if not sent:
        assert decoded is None
        return
    assert decoded is not None
    assert list(decoded) == list(sent) or set(decoded) == set(sent)
    for key, value in sent.items():
        got = decoded[key]
        if isinstance(value, str):
            assert got == value
        else:
            assert isinstance(got, float)
            assert struct.pack("<d", got) == struct.pack("<d", float(value))


@pytest.mark.parametrize("seed", range(3))
def test_decoded_request_datums_match_official_inputs(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    for _ in range(40):
        spec = _rand_request_spec(rng)
        official = _official_request(spec)
        parts = PS.decode_forward_backward_request(official.SerializeToString())
        for datum, dspec in zip(parts.data, spec["data"], strict=True):
            expected = _build_datum(OT, dspec)
            assert len(datum.model_input.chunks) == len(expected.model_input.chunks)
            for ours_chunk, off_chunk in zip(
                datum.model_input.chunks, expected.model_input.chunks, strict=True
            ):
                assert type(ours_chunk).__name__ == type(off_chunk).__name__
                if isinstance(ours_chunk, T.EncodedTextChunk):
                    assert list(ours_chunk.tokens) == list(off_chunk.tokens)
                elif isinstance(ours_chunk, T.ImageChunk):
                    assert bytes(ours_chunk.data) == off_chunk.data
                    assert ours_chunk.format == off_chunk.format
                    assert ours_chunk.expected_tokens == off_chunk.expected_tokens
                else:
                    assert isinstance(ours_chunk, T.DmelChunk)
                    assert bytes(ours_chunk.dmel) == off_chunk.dmel
            assert set(datum.loss_fn_inputs) == set(expected.loss_fn_inputs)
            for name, td in datum.loss_fn_inputs.items():
                off_td = expected.loss_fn_inputs[name]
                assert td.dtype == off_td.dtype
                assert td.sparse_crow_indices == off_td.sparse_crow_indices
                assert td.sparse_col_indices == off_td.sparse_col_indices
                assert _bits(_td_values(td))[2] == _bits(_td_values(off_td))[2]
                if off_td.shape:  # shape None and [] are the same on the wire
                    assert _shape(td) == list(off_td.shape)
            if dspec["spans"] is None or not (dspec["spans"][0] or dspec["spans"][1]):
                assert datum.model_input_spans is None and datum.loss_fn_input_spans is None
            else:
                for ours_spans, off_spans in (
                    (datum.model_input_spans, expected.model_input_spans),
                    (datum.loss_fn_input_spans, expected.loss_fn_input_spans),
                ):
                    assert ours_spans is not None
                    assert [
                        (type(s).__name__, s.sequence_id, s.offset, s.length) for s in ours_spans
                    ] == [(type(s).__name__, s.sequence_id, s.offset, s.length) for s in off_spans]


def test_request_special_cases() -> None:
    text = T.Datum(model_input=T.ModelInput(chunks=[T.EncodedTextChunk(tokens=[1, 2])]))
    # seq_id None is sent as 0, i.e. not at all; forward_only False is not written either.
    assert P.encode_forward_backward_request("m", None, [], "x") == b"\x0a\x01m\x22\x01x"
    # a float goes to both maps, a string only to v2
    encoded = P.encode_forward_backward_request("m", 1, [text], "ppo", {"a": 0.5, "b": "t"})
    msg = pb.ForwardBackwardRequest.FromString(encoded)
    assert dict(msg.loss_fn_config) == {"a": 0.5}
    assert msg.loss_fn_config_v2["a"].WhichOneof("value") == "number"
    assert msg.loss_fn_config_v2["b"].text == "t"
    with pytest.raises(ValueError, match="int32"):
        P.encode_forward_backward_request("m", 2**31, [], "x")


def test_request_token_conversions_match_official() -> None:
    """Tokens as numpy arrays, numpy ints or floats convert as the SDK's np.asarray does."""
    cases: list[Any] = [
        np.array([1, 2**31 - 1, -(2**31)], dtype=np.int64),
        np.arange(10, dtype=np.int32)[::2],  # not contiguous
        [np.int64(5), True, 7],
    ]
    for tokens in cases:
        ours = P.encode_forward_backward_request(
            "m",
            1,
            [T.Datum(model_input=T.ModelInput(chunks=[T.EncodedTextChunk(tokens=tokens)]))],
            "x",
        )
        official_tokens = np.asarray(tokens, dtype=np.int32).tobytes()
        parsed = pb.ForwardBackwardRequest.FromString(ours)
        assert parsed.data[0].model_input[0].encoded_text.tokens == official_tokens
    for bad in ([2**31], [-(2**31) - 1]):
        with pytest.raises(OverflowError):  # numpy's error, as in the official SDK
            P.encode_forward_backward_request(
                "m",
                1,
                [T.Datum(model_input=T.ModelInput(chunks=[T.EncodedTextChunk(tokens=bad)]))],
                "x",
            )


def test_request_rejections() -> None:
    pointer = T.ImageAssetPointerChunk(format="png", location="s3://bucket/img.png")
    with pytest.raises(ValueError, match="ImageAssetPointerChunk"):
        P.encode_forward_backward_request(
            "m", 1, [T.Datum(model_input=T.ModelInput(chunks=[pointer]))], "x"
        )
    sparse = T.TensorData(
        data=np.ones(1, np.float32),
        dtype="float32",
        shape=[1, 1],
        sparse_crow_indices=[0, 1],
        sparse_col_indices=[0],
    )
    object.__setattr__(sparse, "sparse_col_indices", None)  # the constructor refuses this
    with pytest.raises(ValueError, match="sparse_col_indices"):
        P.encode_forward_backward_request(
            "m",
            1,
            [T.Datum(model_input=T.ModelInput(chunks=[]), loss_fn_inputs={"w": sparse})],
            "x",
        )


def _plain_datum_spec(rng: np.random.Generator) -> Spec:
    """What nearly every caller sends: text chunks, dense tensors, no spans."""
    inputs: dict[str, Spec] = {}
    for name in rng.choice(["target_tokens", "weights", "advantages"], size=int(rng.integers(0, 4)),
                           replace=False).tolist():
        spec = _rand_tensor_spec(rng)
        while "crow" in spec:
            spec = _rand_tensor_spec(rng)
        inputs[name] = spec
    chunks = [{"kind": "text", "tokens": rng.integers(0, 200_000, int(n)).tolist()}
              for n in rng.choice([0, 1, 7, 300, 2000], size=int(rng.integers(0, 3)))]
    return {"chunks": chunks, "inputs": inputs, "spans": None}


@pytest.mark.parametrize("seed", range(4))
def test_plain_datums_match_official_bytes(seed: int) -> None:
    rng = np.random.default_rng(1000 + seed)
    spec = _rand_request_spec(rng)
    spec["data"] = [_plain_datum_spec(rng) for _ in range(int(rng.integers(1, 12)))]
    assert _our_request_bytes(spec, deterministic=True) == _official_request(spec).SerializeToString(
        deterministic=True)


def test_plain_datum_with_numpy_tokens_and_strided_tensor() -> None:
    tokens = np.arange(10, dtype=np.int64)
    strided = np.arange(20, dtype=np.float32)[::2]  # not contiguous: copied, not misread
    ours = T.Datum(model_input=T.ModelInput(chunks=[T.EncodedTextChunk(tokens=tokens)]),
                   loss_fn_inputs={"weights": T.TensorData(data=strided, dtype="float32")})
    official = OT.Datum(model_input=OT.ModelInput.from_ints(tokens.tolist()),
                        loss_fn_inputs={"weights": OT.TensorData(data=strided.tolist(),
                                                                 dtype="float32")})
    request = OT.ForwardBackwardRequest(
        forward_backward_input=OT.ForwardBackwardInput(data=[official], loss_fn="ppo"),
        model_id="m", seq_id=3)
    expected = request_conv.forward_backward_request_to_proto(request).SerializeToString()
    assert P.encode_forward_backward_request("m", 3, [ours], "ppo") == expected


def test_body_encoded_before_its_seq_id_is_known() -> None:
    rng = np.random.default_rng(5)
    spec = _rand_request_spec(rng)
    spec["data"] = [_rand_datum_spec(rng) for _ in range(5)] + [_plain_datum_spec(rng)]
    data = [_build_datum(T, d) for d in spec["data"]]
    body = P.ForwardBackwardBody("model-1", data, spec["loss_fn"], spec["config"],
                                 spec["forward_only"])
    for seq in [None, 0, 1, 300, 2**31 - 1, -1, 5]:  # rewritten in place, any order
        expected = P.encode_forward_backward_request(
            "model-1", seq, data, spec["loss_fn"], spec["config"], spec["forward_only"])
        assert bytes(body.payload(seq)) == expected
    assert len(body) == len(P.encode_forward_backward_request(
        "", 0, data, spec["loss_fn"], spec["config"], spec["forward_only"]))


def test_large_request_round_trips() -> None:
    rng = np.random.default_rng(7)
    data = []
    for _ in range(64):
        tokens = rng.integers(0, 150_000, 1024)
        data.append(
            T.Datum(
                model_input=T.ModelInput(chunks=[T.EncodedTextChunk(tokens=tokens.tolist())]),
                loss_fn_inputs={
                    "target_tokens": T.TensorData.from_numpy(tokens.astype(np.int64)),
                    "weights": T.TensorData.from_numpy(rng.random(1024, dtype=np.float32)),
                },
            )
        )
    body = P.encode_forward_backward_request("m", 1, data, "cross_entropy")
    assert len(body) > 64 * 1024 * 16
    back = PS.decode_forward_backward_request(body).data
    assert [d.model_input.to_ints() for d in back] == [d.model_input.to_ints() for d in data]
    for got, sent in zip(back, data, strict=True):
        for name in ("target_tokens", "weights"):
            np.testing.assert_array_equal(got.loss_fn_inputs[name].to_numpy(),
                                          sent.loss_fn_inputs[name].to_numpy())


# ---------------------------------------------------------------------------------------
# ForwardBackwardOutput
# ---------------------------------------------------------------------------------------

def _bt_dtypes() -> dict[int, np.dtype[Any]]:
    """The official enum's dtypes (a function: it needs the SDK, which may be missing)."""
    return {
        pb.DTYPE_FLOAT32: np.dtype("<f4"),
        pb.DTYPE_INT64: np.dtype("<i8"),
        pb.DTYPE_INT32: np.dtype("<i4"),
        pb.DTYPE_BFLOAT16: np.dtype("<u2"),
    }


def _rand_official_fbo(rng: np.random.Generator) -> Any:
    msg = pb.ForwardBackwardOutput()
    msg.loss_fn_output_type = str(
        rng.choice(["", "ArrayRecord", "tinker.losses:TorchLossReturn", "a:b:c", "x:"])
    )
    names = rng.choice(
        ["logprobs", "elementwise_loss", "x", "ids"], size=int(rng.integers(0, 4)), replace=False
    ).tolist()
    set_num_datums = rng.random() < 0.8
    for _ in range(int(rng.choice([0, 1, 1, 2, 3]))):
        record = msg.loss_fn_outputs.add()
        record.type_tag = "ArrayRecord"
        n = int(rng.integers(0, 5))
        if set_num_datums:
            record.num_datums = n
        for name in names:
            dtype = int(rng.choice(list(_bt_dtypes())))
            np_dtype = _bt_dtypes()[dtype]
            trailing = [int(rng.integers(1, 4)) for _ in range(int(rng.choice([0, 0, 1, 2])))]
            arrays = []
            for _ in range(n):
                shape = [int(rng.integers(0, 6)), *trailing]
                arrays.append(rng.bytes(math.prod(shape) * np_dtype.itemsize))
            bt = record.fields[name]
            bt.data = b"".join(arrays)
            bt.offsets = np.cumsum([0, *map(len, arrays)]).astype("<i8").tobytes()
            bt.dtype = dtype
            bt.trailing_shape.extend(trailing)
    for _ in range(int(rng.integers(0, 4))):
        msg.metrics[f"{_rand_text(rng)}:{rng.choice(['mean', 'sum'])}"] = float(
            rng.standard_normal()
        )
    return msg


def _assert_fbo_equal(ours: Any, official: Any) -> None:
    assert ours.loss_fn_output_type == official.loss_fn_output_type
    assert ours.metrics == official.metrics
    assert len(ours.loss_fn_outputs) == len(official.loss_fn_outputs)
    for ours_datum, off_datum in zip(ours.loss_fn_outputs, official.loss_fn_outputs, strict=True):
        assert set(ours_datum) == set(off_datum)
        for name, td in ours_datum.items():
            _assert_tensor_equal(td, off_datum[name])


@pytest.mark.parametrize("seed", range(4))
def test_decode_forward_backward_output_matches_official(seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    for _ in range(60):
        payload = _rand_official_fbo(rng).SerializeToString()
        official = response_conv.deserialize_forward_backward_output(payload)
        _assert_fbo_equal(P.decode_forward_backward_output(payload), official)


def _rand_our_fbo(rng: np.random.Generator) -> Any:
    names = rng.choice(
        ["logprobs", "elementwise_loss", "ids"], size=int(rng.integers(0, 3)), replace=False
    ).tolist()
    outputs = []
    trailing = {
        name: [int(rng.integers(1, 3)) for _ in range(int(rng.choice([0, 1])))] for name in names
    }
    for _ in range(int(rng.integers(0, 7))):
        if rng.random() < 0.2:  # ragged: the encoder must start a new ArrayRecord
            trailing = {name: [int(rng.integers(1, 4))] for name in names}
        datum = {}
        for name in names:
            dtype = "int64" if name == "ids" else "float32"
            shape = [int(rng.integers(0, 5)), *trailing[name]]
            datum[name] = T.TensorData.from_numpy(
                _rand_array(rng, dtype, math.prod(shape)).reshape(shape)
            )
        outputs.append(datum)
    metrics = {f"m{i}:mean": float(rng.standard_normal()) for i in range(int(rng.integers(0, 3)))}
    return T.ForwardBackwardOutput(
        loss_fn_output_type=str(rng.choice(["ArrayRecord", "TorchLossReturn"])),
        loss_fn_outputs=outputs,
        metrics=metrics,
    )


@pytest.mark.parametrize("seed", range(3))
def test_encode_forward_backward_output_read_by_official(seed: int) -> None:
    rng = np.random.default_rng(300 + seed)
    for _ in range(50):
        out = _rand_our_fbo(rng)
        payload = PS.encode_forward_backward_output(out)
        official = response_conv.deserialize_forward_backward_output(payload)
        _assert_fbo_equal(out, official)
        _assert_fbo_equal(P.decode_forward_backward_output(payload), official)
        # deterministic mode is byte-identical to the official deterministic serialization
        det = PS.encode_forward_backward_output(out, deterministic=True)
        assert det == pb.ForwardBackwardOutput.FromString(payload).SerializeToString(
            deterministic=True
        )


def test_encode_forward_backward_output_needs_the_same_fields_everywhere() -> None:
    td = T.TensorData.from_numpy(np.zeros(2, np.float32))
    out = T.ForwardBackwardOutput(
        loss_fn_output_type="ArrayRecord", loss_fn_outputs=[{"a": td}, {"b": td}], metrics={}
    )
    with pytest.raises(ValueError, match="same fields"):
        PS.encode_forward_backward_output(out)


def test_forward_backward_output_widening_and_fallbacks() -> None:
    msg = pb.ForwardBackwardOutput(loss_fn_output_type="mod.sub:Cls")
    record = msg.loss_fn_outputs.add()  # num_datums left 0: counted from the first field
    bf16 = np.array([1.5, -2.0, np.inf], dtype=np.float32).view(np.uint32) >> 16
    record.fields["a"].data = bf16.astype("<u2").tobytes()
    record.fields["a"].offsets = np.array([0, 2, 6], "<i8").tobytes()
    record.fields["a"].dtype = pb.DTYPE_BFLOAT16
    out = P.decode_forward_backward_output(msg.SerializeToString())
    assert out.loss_fn_output_type == "Cls"
    assert [o["a"].to_numpy().tolist() for o in out.loss_fn_outputs] == [[1.5], [-2.0, np.inf]]
    assert out.loss_fn_outputs[0]["a"].dtype == "float32"
    empty = P.decode_forward_backward_output(
        pb.ForwardBackwardOutput(loss_fn_output_type="a:b").SerializeToString()
    )
    assert empty.loss_fn_output_type == "a:b" and empty.loss_fn_outputs == []
    assert P.decode_forward_backward_output(b"").loss_fn_output_type == "ArrayRecord"


def test_forward_backward_output_bad_offsets() -> None:
    msg = pb.ForwardBackwardOutput()
    bt = msg.loss_fn_outputs.add().fields["a"]
    bt.data = b"\x00" * 8
    bt.dtype = pb.DTYPE_FLOAT32
    bt.offsets = np.array([0, 12], "<i8").tobytes()
    with pytest.raises(ValueError, match="offsets"):
        P.decode_forward_backward_output(msg.SerializeToString())
    bt.offsets = b"\x00" * 7
    with pytest.raises(ValueError, match="whole number"):
        P.decode_forward_backward_output(msg.SerializeToString())
    bt.offsets = np.array([0, 8], "<i8").tobytes()
    bt.dtype = 9
    with pytest.raises(ValueError, match="DType"):
        P.decode_forward_backward_output(msg.SerializeToString())


# ---------------------------------------------------------------------------------------
# SampleResponse
# ---------------------------------------------------------------------------------------


def _rand_topk(rng: np.random.Generator, msg: Any) -> None:
    n, k = int(rng.integers(0, 4)), int(rng.integers(0, 3))
    ids = rng.integers(0, 1000, (n, k)).astype("<i4")
    logprobs = (-rng.random((n, k))).astype("<f4")
    if n and k and rng.random() < 0.5:
        ids[-1, -1], logprobs[-1, -1] = 0, -99999.0  # an empty cell
    extra = b"\x00" * 4 * int(rng.integers(0, 2))  # longer buffers: the first N*K count
    msg.token_ids = ids.tobytes() + extra
    msg.logprobs = logprobs.tobytes() + extra
    msg.k, msg.length = k, n


def _rand_official_tensor(rng: np.random.Generator, msg: Any, dtypes: Sequence[int]) -> None:
    dtype = int(rng.choice(list(dtypes)))
    np_dtype = _bt_dtypes()[dtype]
    msg.dtype = dtype
    shape = [int(rng.integers(1, 4)), int(rng.integers(0, 4))]
    msg.shape.extend(shape)
    if rng.random() < 0.3:
        mask = rng.random(shape) < 0.5
        msg.sparse_csr.values = rng.integers(0, 100, int(mask.sum())).astype(np_dtype).tobytes()
        msg.sparse_csr.crow_indices = np.array([0, *np.cumsum(mask.sum(1))], "<i8").tobytes()
        msg.sparse_csr.col_indices = np.nonzero(mask)[1].astype("<i8").tobytes()
    else:
        msg.dense = rng.integers(-50, 50, math.prod(shape)).astype(np_dtype).tobytes()


def _rand_official_sample_response(rng: np.random.Generator) -> Any:
    msg = pb.SampleResponse()
    for _ in range(int(rng.integers(0, 4))):
        seq = msg.sequences.add()
        seq.stop_reason = int(rng.integers(0, 2))
        n = int(rng.choice([0, 1, 9, 200]))
        seq.tokens = rng.integers(-(2**31), 2**31, n).astype("<i4").tobytes()
        if rng.random() < 0.6:
            seq.logprobs = (-rng.random(n)).astype("<f4").tobytes()
        if rng.random() < 0.4:
            _rand_topk(rng, seq.topk_sampled_logprobs)
    if rng.random() < 0.5:
        lp = (-rng.random(int(rng.integers(0, 6)))).astype("<f4")
        if lp.size:
            lp[0] = np.nan
        msg.prompt_logprobs = lp.tobytes()
    if rng.random() < 0.4:
        _rand_topk(rng, msg.topk_prompt_logprobs)
    if rng.random() < 0.5:
        msg.prompt_cache_hit_tokens = int(rng.choice([1, 77, -5, 2**31 - 1]))
    # The official decoder turns a bf16 Tensor's raw uint16 numbers into floats (a bug we
    # do not copy), so Tensors here use the other dtypes; bf16 is tested on its own.
    if rng.random() < 0.4:
        _rand_official_tensor(rng, msg.target_prompt_logprobs, [pb.DTYPE_FLOAT32, pb.DTYPE_INT64])
    if rng.random() < 0.3:
        _rand_official_tensor(rng, msg.prompt_alt_tokens.tokens, [pb.DTYPE_INT32, pb.DTYPE_INT64])
        _rand_official_tensor(rng, msg.prompt_alt_tokens.logprobs, [pb.DTYPE_FLOAT32])
    return msg


def _assert_sample_response_equal(ours: Any, official: Any) -> None:
    assert len(ours.sequences) == len(official.sequences)
    for a, b in zip(ours.sequences, official.sequences, strict=True):
        assert a.stop_reason == b.stop_reason
        assert _bits(a.tokens_np) == _bits(b.tokens_np)
        _assert_optional_array_equal(a.logprobs_np, b.logprobs_np)
        _assert_topk_equal(a.topk_logprobs_np, b.topk_logprobs_np)
    _assert_optional_array_equal(ours.prompt_logprobs_np, official.prompt_logprobs_np)
    _assert_topk_equal(ours.topk_prompt_logprobs_np, official.topk_prompt_logprobs_np)
    assert ours.prompt_cache_hit_tokens == official.prompt_cache_hit_tokens
    if official.target_prompt_logprobs is None:
        assert ours.target_prompt_logprobs is None
    else:
        _assert_tensor_equal(ours.target_prompt_logprobs, official.target_prompt_logprobs)
    if official.prompt_alt_tokens is None:
        assert ours.prompt_alt_tokens is None
    else:
        _assert_tensor_equal(ours.prompt_alt_tokens.tokens, official.prompt_alt_tokens.tokens)
        _assert_tensor_equal(ours.prompt_alt_tokens.logprobs, official.prompt_alt_tokens.logprobs)


@pytest.mark.parametrize("seed", range(4))
def test_decode_sample_response_matches_official(seed: int) -> None:
    rng = np.random.default_rng(400 + seed)
    for _ in range(60):
        payload = _rand_official_sample_response(rng).SerializeToString()
        official = response_conv.deserialize_sample_response(payload)
        ours = P.decode_sample_response(payload)
        _assert_sample_response_equal(ours, official)
        assert all(s.sequence_id is None for s in ours.sequences)


@pytest.mark.parametrize("seed", range(3))
def test_encode_sample_response_read_by_official(seed: int) -> None:
    rng = np.random.default_rng(500 + seed)
    for _ in range(60):
        # Official decode -> our encode -> official decode must be a fixed point, and our
        # bytes byte-identical to the official serialization of the same message.
        original = _rand_official_sample_response(rng)
        decoded = response_conv.deserialize_sample_response(original.SerializeToString())
        ours = P.decode_sample_response(original.SerializeToString())
        payload = PS.encode_sample_response(ours)
        _assert_sample_response_equal(response_conv.deserialize_sample_response(payload), decoded)
        _assert_sample_response_equal(P.decode_sample_response(payload), decoded)
        assert payload == pb.SampleResponse.FromString(payload).SerializeToString()


def test_sample_response_special_cases() -> None:
    with pytest.raises(ValueError, match="stop_reason"):
        P.decode_sample_response(
            pb.SampleResponse(
                sequences=[pb.SampledSequence(stop_reason=cast(Any, 7))]
            ).SerializeToString()
        )
    # a bf16 Tensor is widened bit-exactly (the official decoder converts the raw numbers)
    values = np.array([0.5, -3.0], np.float32)
    msg = pb.SampleResponse()
    msg.target_prompt_logprobs.dense = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    msg.target_prompt_logprobs.dtype = pb.DTYPE_BFLOAT16
    msg.target_prompt_logprobs.shape.append(2)
    decoded = P.decode_sample_response(msg.SerializeToString())
    assert decoded.target_prompt_logprobs is not None
    assert decoded.target_prompt_logprobs.to_numpy().tolist() == [0.5, -3.0]
    # N or K == 0 means None, and an empty logprobs field means None
    msg = pb.SampleResponse(
        sequences=[pb.SampledSequence(tokens=b"\x01\x00\x00\x00", logprobs=b"")],
        topk_prompt_logprobs=pb.TopkLogprobs(k=3, length=0),
    )
    decoded = P.decode_sample_response(msg.SerializeToString())
    assert decoded.topk_prompt_logprobs_np is None
    assert decoded.sequences[0].logprobs_np is None
    tokens = decoded.sequences[0].tokens_np
    assert tokens is not None and tokens.tolist() == [1]


def test_decoded_arrays_are_writable_views() -> None:
    """One bulk copy of a ``bytes`` payload; none at all for a writable buffer."""
    msg = pb.SampleResponse(
        sequences=[pb.SampledSequence(tokens=np.arange(4, dtype="<i4").tobytes())]
    )
    payload = msg.SerializeToString()
    from_bytes = P.decode_sample_response(payload).sequences[0].tokens_np
    assert from_bytes is not None and from_bytes.flags.writeable
    buffer = bytearray(payload)
    aliased = P.decode_sample_response(buffer).sequences[0].tokens_np
    assert aliased is not None and aliased.flags.writeable
    assert np.shares_memory(aliased, np.frombuffer(buffer, dtype=np.uint8))
    fbo = pb.ForwardBackwardOutput()
    bt = fbo.loss_fn_outputs.add().fields["x"]
    bt.data, bt.dtype = np.ones(3, "<f4").tobytes(), pb.DTYPE_FLOAT32
    bt.offsets = np.array([0, 12], "<i8").tobytes()
    buffer = bytearray(fbo.SerializeToString())
    td = P.decode_forward_backward_output(buffer).loss_fn_outputs[0]["x"]
    assert np.shares_memory(td.to_numpy(), np.frombuffer(buffer, dtype=np.uint8))


# ---------------------------------------------------------------------------------------
# Wire-level behaviour and malformed input
# ---------------------------------------------------------------------------------------


def test_unknown_fields_groups_and_unpacked_repeats_are_read() -> None:
    msg = pb.SampleResponse(prompt_cache_hit_tokens=5)
    msg.target_prompt_logprobs.dtype = pb.DTYPE_FLOAT32
    msg.target_prompt_logprobs.dense = np.arange(6, dtype="<f4").tobytes()
    payload = msg.SerializeToString()
    unknown = (
        W.tag(99, W.VARINT)
        + W.encode_varint(2**63)  # unknown varint
        + W.tag(98, W.LEN)
        + b"\x02ab"  # unknown bytes
        + W.tag(97, 3)
        + W.tag(1, W.I32)
        + b"abcd"
        + W.tag(97, 4)  # unknown group
        + W.tag(96, W.I64)
        + b"12345678"
    )
    # shape written unpacked, in a second occurrence of the Tensor that must merge
    tensor_extra = W.tag(4, W.VARINT) + b"\x02" + W.tag(4, W.VARINT) + b"\x03"
    extra = W.tag(5, W.LEN) + W.encode_varint(len(tensor_extra)) + tensor_extra
    merged = payload + extra
    for blob in (merged, unknown + merged, merged + unknown):
        ours = P.decode_sample_response(blob)
        official = response_conv.deserialize_sample_response(blob)
        assert ours.prompt_cache_hit_tokens == 5
        assert ours.target_prompt_logprobs is not None
        assert ours.target_prompt_logprobs.shape == [2, 3]
        _assert_sample_response_equal(ours, official)


@pytest.mark.parametrize(
    "decode, payload, match",
    [
        (P.decode_forward_backward_output, b"\x08\x01", "loss_fn_output_type.*wire type 0"),
        (P.decode_sample_response, b"\x20\x01\x20", "truncated varint"),
        (P.decode_sample_response, b"\x22\x00", "prompt_cache_hit_tokens.*wire type 2"),
        (PS.decode_forward_backward_request, b"\x0a\x02\xff\xfe", "utf-8"),
        (PS.decode_forward_backward_request, b"\x18\x00", "data.*wire type 0"),
        (P.decode_forward_backward_output, b"\x0a\x05ab", "truncated length"),
        (P.decode_forward_backward_output, b"\x1a\x07\x0a\x01a\x11abc", "truncated fixed"),
        (P.decode_forward_backward_output, b"\x0a" + b"\xff" * 10 + b"\x01", "longer than 10"),
        (P.decode_forward_backward_output, b"\x00\x01", "field number 0"),
        (P.decode_forward_backward_output, b"\x0f", "invalid wire type"),
        (P.decode_forward_backward_output, b"\x0c", "end-group"),
        (P.decode_forward_backward_output, b"\x0b\x08\x01", "truncated varint"),
        (P.decode_forward_backward_output, b"\x0b" * 100, "nested too deeply"),
    ],
)
def test_malformed_input_names_the_problem(
    decode: Callable[[bytes], Any], payload: bytes, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        decode(payload)


def _sample_payloads() -> Iterator[tuple[Callable[[bytes], Any], bytes]]:
    rng = np.random.default_rng(900)
    for _ in range(4):
        spec = _rand_request_spec(rng)
        yield PS.decode_forward_backward_request, _our_request_bytes(spec)
        yield P.decode_forward_backward_output, _rand_official_fbo(rng).SerializeToString()
        yield P.decode_sample_response, _rand_official_sample_response(rng).SerializeToString()


def test_truncated_and_mutated_input_raise_value_error_only() -> None:
    rng = np.random.default_rng(901)
    for decode, payload in _sample_payloads():
        cuts = range(len(payload)) if len(payload) < 400 else rng.integers(0, len(payload), 400)
        for cut in cuts:
            try:
                decode(payload[: int(cut)])
            except ValueError:
                pass
        for _ in range(300):
            mutated = bytearray(payload)
            for _ in range(int(rng.integers(1, 4))):
                if mutated:
                    mutated[int(rng.integers(len(mutated)))] = int(rng.integers(256))
            try:
                decode(bytes(mutated))
            except ValueError:
                pass


def test_varint_writer() -> None:
    for value in [0, 1, 127, 128, 16383, 16384, 2**32, 2**63 - 1, -1, -(2**63)]:
        encoded = W.encode_varint(value)
        decoded, pos = W._read_varint(encoded, 0, len(encoded))
        assert pos == len(encoded)
        assert decoded == value & (2**64 - 1)
    assert len(W.encode_varint(-1)) == 10
    with pytest.raises(ValueError):
        W.encode_varint(2**64)


# ---------------------------------------------------------------------------------------
# zstd
# ---------------------------------------------------------------------------------------


def test_zstd_round_trip_and_official_bytes() -> None:
    zstd = pytest.importorskip("zstandard")
    body = P.encode_forward_backward_request("m", 1, [], "cross_entropy") * 100
    assert P.compress(body) == zstd.ZstdCompressor().compress(body)  # as resources/training.py
    assert PS.decompress(P.compress(body)) == body
    compressor = zstd.ZstdCompressor().compressobj()  # a frame without a content size
    streamed = compressor.compress(body) + compressor.flush()
    assert PS.decompress(streamed) == body
    with pytest.raises(ValueError, match="zstd"):
        PS.decompress(b"not zstd at all")
    with pytest.raises(ValueError, match="more than"):
        PS.decompress(P.compress(body), max_output_size=10)
