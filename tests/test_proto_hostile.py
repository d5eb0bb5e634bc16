"""The protobuf codec, the zstd handling and the JSON result decoders on hostile input.

A server (or a proxy, or a bug) can send anything. What must hold, whatever it sends:

- a count or a length read from the wire never asks for more than the bytes that back it,
  so memory stays a fixed multiple of the input (checked with ``tracemalloc`` and, for the
  12-byte message claiming 2**62 datums, in a child process with an address-space limit);
- the work is linear in the input (checked by counting calls, and by a generous ratio of
  CPU times for the one cost no call count sees: arithmetic on huge shape products);
- a truncated zstd body is refused, not decompressed to a shorter one;
- malformed input raises only the documented type: ``ResponseDecodeError`` (an
  ``APIResponseValidationError`` and a ``ValueError``) for results, ``ValueError`` for the
  request decoder, ``zstd`` and the JSON decoders;
- the encoders refuse integers their field cannot hold, as the official encoder does.

The fuzzing (hypothesis) is derandomized with a fixed number of examples, so a run is
deterministic (``TINKER_ASYNC_FUZZ_EXAMPLES=N`` runs N random examples instead); the
inputs are built from the schemas, so they reach the nested fields.
"""

from __future__ import annotations

import itertools
import math
import os
import struct
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinker_async import ServiceClient
from tinker_async import _proto as P
from tinker_async import _proto_schema as S
from tinker_async import _proto_wire as W
from tinker_async import types as T
from tinker_async.errors import APIResponseValidationError, InvalidRequestError
from tinker_async.local import _proto_server as PS
from tinker_async.types import _wire

zstandard = pytest.importorskip("zstandard")

# ---------------------------------------------------------------------------------------
# Building messages by hand
# ---------------------------------------------------------------------------------------


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def key(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def ld(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return key(number, 2) + varint(len(payload)) + payload


def fbo_record(*, num_datums: int | None = None, fields: dict[str, bytes] | None = None) -> bytes:
    """A ForwardBackwardOutput holding one ArrayRecord."""
    record = b"".join(ld(2, ld(1, name.encode()) + ld(2, bt)) for name, bt in (fields or {}).items())
    if num_datums is not None:
        record += key(3, 0) + varint(num_datums)
    return ld(2, record)


def batched_tensor(
    data: bytes, offsets: list[int], dtype: int = 1, trailing: bytes = b""
) -> bytes:
    bt = ld(1, data) + ld(2, struct.pack(f"<{len(offsets)}q", *offsets)) + key(3, 0) + varint(dtype)
    return bt + (ld(4, trailing) if trailing else b"")


# The families of crafted inputs, each a function of a size n; the first two are the
# reviewer's quadratic ones (shapes of n dimensions), the others stress every loop that a
# count drives.
def long_trailing_shape(n: int) -> bytes:
    return fbo_record(fields={"x": batched_tensor(b"", [0, 0], trailing=b"\x02" * n)})


def long_tensor_shape(n: int) -> bytes:
    return ld(5, ld(1, b"") + key(3, 0) + varint(1) + ld(4, b"\x02" * n))


def many_datums(n: int) -> bytes:
    return fbo_record(fields={"x": batched_tensor(b"", [0] * (n + 1))})


def many_records(n: int) -> bytes:
    return fbo_record(num_datums=1, fields={"x": batched_tensor(bytes(4), [0, 4])}) * n


def repeated_singular(n: int) -> bytes:
    return ld(5, key(3, 0) + varint(1)) * n  # target_prompt_logprobs, merged n times


def many_sequences(n: int) -> bytes:
    return ld(1, b"") * n


def long_packed_shape_request(n: int) -> bytes:
    tensor = ld(1, b"") + key(3, 0) + varint(1) + ld(4, b"\x02" * n)
    return ld(3, ld(2, ld(1, b"x") + ld(2, tensor)))


def nested_unknown_groups(n: int) -> bytes:
    # n unknown groups, each nested 30 deep: skipped, in linear time
    group = key(20, 3) * 30 + key(20, 4) * 30
    return group * n


FAMILIES: list[tuple[Callable[[int], bytes], Callable[[bytes], Any]]] = [
    (long_trailing_shape, P.decode_forward_backward_output),
    (long_tensor_shape, P.decode_sample_response),
    (many_datums, P.decode_forward_backward_output),
    (many_records, P.decode_forward_backward_output),
    (repeated_singular, P.decode_sample_response),
    (many_sequences, P.decode_sample_response),
    (long_packed_shape_request, PS.decode_forward_backward_request),
    (nested_unknown_groups, P.decode_sample_response),
]


def _outcome(decode: Callable[[bytes], Any], data: bytes) -> BaseException | None:
    try:
        decode(data)
    except ValueError as exc:
        return exc
    return None


@contextmanager
def _peak_memory() -> Iterator[list[int]]:
    """Peak traced memory (bytes) of the block, in the list it yields."""
    result: list[int] = []
    tracemalloc.start()
    try:
        yield result
    finally:
        result.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


# ---------------------------------------------------------------------------------------
# Counts from the wire
# ---------------------------------------------------------------------------------------

HUGE_COUNT = fbo_record(num_datums=1 << 62)  # the reviewer's 12-byte message


def test_huge_datum_count_is_refused_without_allocating() -> None:
    assert len(HUGE_COUNT) == 12
    with _peak_memory() as peak, pytest.raises(P.ResponseDecodeError, match="num_datums"):
        P.decode_forward_backward_output(HUGE_COUNT)
    assert peak[0] < 256 * 1024


def test_huge_datum_count_is_refused_under_a_memory_limit(run_script: Any) -> None:
    """The same in a child process whose address space may grow by 256 MB only: any
    allocation the tracer cannot see (numpy's, C's) would fail there."""
    out = run_script(
        "import resource\n"
        "from tinker_async import _proto as P\n"
        "vm = int(next(l for l in open('/proc/self/status') if l.startswith('VmSize'))"
        ".split()[1]) * 1024\n"
        "resource.setrlimit(resource.RLIMIT_AS, (vm + (256 << 20), vm + (256 << 20)))\n"
        f"data = bytes.fromhex({HUGE_COUNT.hex()!r})\n"
        "try:\n"
        "    P.decode_forward_backward_output(data)\n"
        "except P.ResponseDecodeError as exc:\n"
        "    print('refused:', exc)\n",
        env={"OPENBLAS_NUM_THREADS": "1"},
    )
    assert "refused:" in out and "num_datums" in out


def test_datum_counts_must_be_backed_by_bytes_or_small() -> None:
    with pytest.raises(P.ResponseDecodeError, match="negative num_datums"):
        P.decode_forward_backward_output(fbo_record(num_datums=-5))
    # A record whose fields a server stripped (drop_fwdbwd_logprobs) still counts its
    # datums, as in the official SDK, up to a fixed cap.
    out = P.decode_forward_backward_output(fbo_record(num_datums=1024))
    assert out.loss_fn_outputs == [{}] * 1024
    assert len(P.decode_forward_backward_output(fbo_record(num_datums=P._MAX_BARE_DATUMS))
               .loss_fn_outputs) == P._MAX_BARE_DATUMS
    with pytest.raises(P.ResponseDecodeError, match="no fields to back it"):
        P.decode_forward_backward_output(fbo_record(num_datums=P._MAX_BARE_DATUMS + 1))
    # With fields, every field must hold the datums the count claims.
    two = batched_tensor(bytes(8), [0, 4, 8])
    assert len(P.decode_forward_backward_output(
        fbo_record(num_datums=2, fields={"x": two})).loss_fn_outputs) == 2
    with pytest.raises(P.ResponseDecodeError, match="has 2 datums, expected 3"):
        P.decode_forward_backward_output(fbo_record(num_datums=3, fields={"x": two}))


def test_lengths_beyond_the_input_are_refused() -> None:
    # A bytes field claiming 2**40 bytes, top-k claiming 2**32 x 2**32 entries, offsets
    # past the data: refused before any allocation.
    cases: list[tuple[Callable[[bytes], Any], bytes, str]] = [
        (P.decode_sample_response, key(2, 2) + varint(1 << 40) + b"abc", "truncated"),
        (P.decode_sample_response,
         ld(3, ld(1, bytes(8)) + ld(2, bytes(8)) + key(3, 0) + varint((1 << 32) - 1)
            + key(4, 0) + varint((1 << 32) - 1)), "fewer than length"),
        (P.decode_forward_backward_output,
         fbo_record(fields={"x": batched_tensor(bytes(8), [0, 1 << 60])}), "offsets"),
        (P.decode_forward_backward_output,
         fbo_record(fields={"x": batched_tensor(bytes(8), [8, 0])}), "offsets"),
    ]
    for decode, data, match in cases:
        with _peak_memory() as peak, pytest.raises(P.ResponseDecodeError, match=match):
            decode(data)
        assert peak[0] < 256 * 1024


def test_shapes_have_at_most_64_dimensions() -> None:
    ok = P.decode_forward_backward_output(
        fbo_record(fields={"x": batched_tensor(bytes(4), [0, 4], trailing=b"\x01" * 63)}))
    assert ok.loss_fn_outputs[0]["x"].shape == [1] * 64
    with pytest.raises(P.ResponseDecodeError, match="65 dimensions"):
        P.decode_forward_backward_output(
            fbo_record(fields={"x": batched_tensor(bytes(4), [0, 4], trailing=b"\x01" * 64)}))
    with pytest.raises(P.ResponseDecodeError, match="65 dimensions"):
        P.decode_sample_response(long_tensor_shape(65))
    with pytest.raises(ValueError, match="65 dimensions"):
        PS.decode_forward_backward_request(long_packed_shape_request(65))


# ---------------------------------------------------------------------------------------
# Linear work
# ---------------------------------------------------------------------------------------


def _calls(decode: Callable[[bytes], Any], data: bytes) -> int:
    """How many Python and C functions ``decode(data)`` calls: a count of its work."""
    count = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    sys.setprofile(profile)
    try:
        _outcome(decode, data)
    finally:
        sys.setprofile(None)
    return count


@pytest.mark.parametrize(("make", "decode"), FAMILIES, ids=[f.__name__ for f, _ in FAMILIES])
def test_work_is_linear_in_the_input(
    make: Callable[[int], bytes], decode: Callable[[bytes], Any]
) -> None:
    """Four times the input, at most four times the calls (plus a constant)."""
    small, large = _calls(decode, make(2000)), _calls(decode, make(8000))
    assert large <= 4 * small + 200, (small, large)


@pytest.mark.parametrize(("make", "decode"), FAMILIES[:2], ids=["trailing_shape", "shape"])
def test_huge_shapes_cost_linear_time(
    make: Callable[[int], bytes], decode: Callable[[bytes], Any]
) -> None:
    """The reviewer's quadratic case: a 900 KB shape of 2s took 28 s in ``math.prod`` of
    ever larger integers, one call that the call count above cannot see into. So here 64x
    the input may cost 64x the CPU time (linear) but must stay far from 4096x (quadratic:
    the old code took ~900x between these two sizes): under 256x, with the best of five
    runs of each size. CPU time, not wall-clock, so other processes do not count, and no
    absolute bound."""

    def best(data: bytes) -> float:
        times = []
        for _ in range(5):
            start = time.process_time()
            exc = _outcome(decode, data)
            times.append(time.process_time() - start)
            assert isinstance(exc, ValueError) and "dimensions" in str(exc)
        return min(times)

    small, large = best(make(8_000)), best(make(512_000))
    assert large < 256 * max(small, 1e-4), (small, large)


def test_repeated_singular_messages_merge_in_one_copy() -> None:
    # 40,000 occurrences of a 4-byte message: merged into one buffer, not 40,000 ranges.
    data = repeated_singular(40_000)
    with _peak_memory() as peak:
        out = P.decode_sample_response(data)
    assert out.target_prompt_logprobs is not None
    assert peak[0] < 4 * len(data) + 256 * 1024


# ---------------------------------------------------------------------------------------
# zstd
# ---------------------------------------------------------------------------------------


def _compressible(size: int) -> bytes:
    rng = np.random.default_rng(7)
    return (rng.integers(0, 8, size, dtype=np.uint8) + ord("a")).tobytes()


def test_truncated_zstd_is_refused() -> None:
    body = _compressible(300_000)  # three blocks and more
    for frame in (
        P.compress(body),
        zstandard.ZstdCompressor(write_checksum=True).compress(body),
        zstandard.ZstdCompressor(write_content_size=False).compress(body),
    ):
        assert PS.decompress(frame) == body
        cuts = sorted({*range(0, 16), *range(len(frame) - 16, len(frame)),
                       *range(0, len(frame), max(1, len(frame) // 200))})
        for cut in cuts:
            with pytest.raises(ValueError, match="zstd"):
                PS.decompress(frame[:cut])


def test_zstd_frames_concatenated_or_skippable_are_read_whole() -> None:
    skippable = (0x184D2A53).to_bytes(4, "little") + (3).to_bytes(4, "little") + b"abc"
    assert PS.decompress(skippable + P.compress(b"one") + P.compress(b"two")) == b"onetwo"
    stream = zstandard.ZstdCompressor().compressobj()
    body = _compressible(200_000)
    assert PS.decompress(stream.compress(body) + stream.flush()) == body
    for bad in (b"", b"not zstd at all", P.compress(b"x") + b"\x00", skippable[:-1]):
        with pytest.raises(ValueError, match="zstd"):
            PS.decompress(bad)


def test_zstd_output_is_capped() -> None:
    bomb = P.compress(bytes(10_000_000))
    with _peak_memory() as peak, pytest.raises(ValueError, match="more than 1000000 bytes"):
        PS.decompress(bomb, max_output_size=1_000_000)
    assert peak[0] < 8 * 1024 * 1024


# ---------------------------------------------------------------------------------------
# Out-of-range integers in the encoders
# ---------------------------------------------------------------------------------------


def _datum(*chunks: Any, spans: list[Any] | None = None, **inputs: T.TensorData) -> T.Datum:
    return T.Datum(model_input=T.ModelInput(chunks=list(chunks)), loss_fn_inputs=inputs,
                   model_input_spans=spans, loss_fn_input_spans=[] if spans else None)


def _encoders(data: list[T.Datum]) -> list[Callable[[], Any]]:
    return [
        lambda: P.encode_forward_backward_request("m", 1, data, "cross_entropy"),
        lambda: P.ForwardBackwardBody("m", data, "cross_entropy").payload(1),
    ]


@pytest.mark.parametrize("bad", [1 << 31, -(1 << 31) - 1, 1 << 70])
def test_out_of_range_token_ids_are_refused(bad: int) -> None:
    data = [_datum(T.EncodedTextChunk(tokens=[1])),
            _datum(T.EncodedTextChunk(tokens=[1]), T.EncodedTextChunk(tokens=[5, bad]))]
    for encode in _encoders(data):
        with pytest.raises(P.TokenRangeError) as info:
            encode()
        # A ValueError that names the field, and the OverflowError the official SDK raises.
        assert isinstance(info.value, InvalidRequestError)
        assert isinstance(info.value, ValueError) and isinstance(info.value, OverflowError)
        assert "data[1].model_input.chunks[1].tokens" in str(info.value)
        assert str(bad) in str(info.value)


def test_int64_fields_out_of_range_are_refused() -> None:
    text = T.EncodedTextChunk(tokens=[1, 2])
    for value, field in ((1 << 63, "offset"), (1 << 64, "length")):
        span = T.PromptProvenanceSpan(sequence_id="s", **{"offset": 1, "length": 1, field: value})
        for encode in _encoders([_datum(text), _datum(text, spans=[span])]):
            with pytest.raises(InvalidRequestError, match=rf"data\[1\]\.model_input_spans\[0\]"
                               rf"\.{field}={value} is out of range for a protobuf int64"):
                encode()
    # The largest int64 still goes.
    span = T.PromptProvenanceSpan(sequence_id="s", offset=(1 << 63) - 1, length=1)
    P.encode_forward_backward_request("m", 1, [_datum(text, spans=[span])], "x")


def test_int32_fields_out_of_range_are_refused() -> None:
    image = T.ImageChunk(data=b"\x89PNG", format="png", expected_tokens=1 << 31)
    with pytest.raises(InvalidRequestError,
                       match=r"data\[0\]\.model_input\.chunks\[0\]\.expected_tokens=2147483648"):
        P.encode_forward_backward_request("m", 1, [_datum(image)], "x")
    with pytest.raises(InvalidRequestError, match=r"seq_id=2147483648 is out of range"):
        P.encode_forward_backward_request("m", 1 << 31, [], "x")
    with pytest.raises(InvalidRequestError, match=r"seq_id=-2147483649 is out of range"):
        P.ForwardBackwardBody("m", [], "x").payload(-(1 << 31) - 1)
    with pytest.raises(InvalidRequestError, match=r"loss_fn_config\['beta'\]"):
        P.encode_forward_backward_request("m", 1, [], "x", {"beta": 10**400})


def test_out_of_range_shapes_are_refused() -> None:
    try:
        sparse = T.TensorData(data=np.ones(1, np.float32), dtype="float32", shape=[1, 1 << 63],
                              sparse_crow_indices=[0, 1], sparse_col_indices=[0])
    except ValueError:
        pytest.skip("TensorData itself refuses the shape")
    for encode in _encoders([_datum(T.EncodedTextChunk(tokens=[1]), w=sparse)]):
        with pytest.raises(InvalidRequestError, match=r"\.shape\[1\]=9223372036854775808"):
            encode()


@pytest.mark.anyio
async def test_training_client_refuses_out_of_range_tokens(service: ServiceClient) -> None:
    """Through the public API: the call fails at once with the typed error, sends nothing,
    and takes no place in line (the next call goes through)."""
    tc = await service.create_lora_training_client_async("local/byte-lm", rank=2, seed=0)
    good = T.Datum(model_input=T.ModelInput.from_ints([1, 2, 3]),
                   loss_fn_inputs={"target_tokens": [2, 3, 4], "weights": [1.0, 1.0, 1.0]})
    bad = T.Datum(model_input=T.ModelInput.from_ints([1, 1 << 31, 3]),
                  loss_fn_inputs={"target_tokens": [2, 3, 4], "weights": [1.0, 1.0, 1.0]})
    with pytest.raises(P.TokenRangeError, match=r"data\[1\]\.model_input\.chunks\[0\]"):
        await tc.forward_backward_async([good, bad], "cross_entropy")
    out = await (await tc.forward_backward_async([good], "cross_entropy"))
    assert len(out.loss_fn_outputs) == 1


def test_official_encoder_refuses_the_same_values() -> None:
    """Parity: upb raises ``ValueError('Value out of range: ...')`` for these fields."""
    pytest.importorskip("tinker")
    from tinker.proto import tinker_public_pb2 as pb

    span = pb.ProvenanceSpan()
    request = pb.ForwardBackwardRequest()
    with pytest.raises(ValueError, match="out of range"):
        span.prompt_tokens.offset = 1 << 63
    with pytest.raises(ValueError, match="out of range"):
        request.seq_id = 1 << 31
    with pytest.raises(ValueError, match="out of range"):
        pb.Tensor().shape.append(1 << 63)
    with pytest.raises(OverflowError):  # what the SDK's np.asarray(tokens, np.int32) raises
        np.asarray([1 << 31], dtype=np.int32)


# ---------------------------------------------------------------------------------------
# Fuzzing: every decoder, on inputs built from its schema and then broken
# ---------------------------------------------------------------------------------------

_INTERESTING_INTS = [0, 1, 2, 3, 4, 8, 63, 64, 65, 127, 128, 1 << 14, (1 << 31) - 1, 1 << 31,
                     (1 << 32) - 1, 1 << 32, 1 << 62, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]
_ints = st.integers(0, 4) | st.sampled_from(_INTERESTING_INTS) | st.integers(0, (1 << 64) - 1)


def _rare(draw: st.DrawFn, one_in: int) -> bool:
    """True once in about ``one_in`` draws. Hypothesis favours small integers, so the
    usual case must be the small one."""
    return draw(st.integers(0, one_in - 1)) == one_in - 1


@st.composite
def _bytes_payload(draw: st.DrawFn, name: str) -> bytes:
    """A ``bytes`` field: usually an array (offsets are int64, non-decreasing or not)."""
    if name == "offsets" or name.endswith("indices"):
        values = draw(st.lists(st.integers(-2, 64) | st.sampled_from([1 << 40, -(1 << 62)]),
                               max_size=8))
        if not _rare(draw, 3):
            values = sorted(values)
        return struct.pack(f"<{len(values)}q", *values)
    size = draw(st.sampled_from([0, 4, 8, 12, 16, 32, 1, 3]) | st.integers(0, 64))
    return draw(st.binary(min_size=size, max_size=size))


_ITEMSIZE = {1: 4, 2: 8, 3: 4, 4: 2}  # proto DType -> bytes per element


@st.composite
def _coherent(draw: st.DrawFn, schema: W.Message) -> bytes | None:
    """A well-formed instance of the messages that carry arrays (their sizes agree), so
    the fuzzing also reaches the code after the checks; None for the other messages."""
    dtype = draw(st.sampled_from(sorted(_ITEMSIZE)))
    itemsize = _ITEMSIZE[dtype]
    if schema.name == "BatchedTensor":
        trailing = draw(st.lists(st.integers(0, 3), max_size=3))
        per = math.prod(trailing) if trailing else 1
        leading = draw(st.lists(st.integers(0, 4), min_size=1, max_size=6))
        sizes = [n * per * itemsize for n in leading]
        offsets = [0, *itertools.accumulate(sizes)]
        packed = b"".join(varint(v) for v in trailing)
        return batched_tensor(bytes(offsets[-1]), offsets, dtype, packed)
    if schema.name == "Tensor":
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        body = ld(1, bytes(math.prod(shape) * itemsize))
        if _rare(draw, 4):
            body = ld(2, ld(1, bytes(4 * itemsize)) + ld(2, struct.pack("<3q", 0, 2, 4))
                      + ld(3, struct.pack("<4q", 0, 1, 0, 1)))
        return body + key(3, 0) + varint(dtype) + (
            ld(4, b"".join(varint(v) for v in shape)) if shape else b"")
    if schema.name == "TopkLogprobs":
        n, k = draw(st.integers(0, 4)), draw(st.integers(0, 4))
        return (ld(1, bytes(4 * n * k)) + ld(2, bytes(4 * n * k)) + key(3, 0) + varint(k)
                + key(4, 0) + varint(n))
    if schema.name in ("SampledSequence", "EncodedTextChunk"):
        tokens = ld(2 if schema.name == "SampledSequence" else 1,
                    bytes(4 * draw(st.integers(0, 5))))
        if schema.name == "SampledSequence":
            return key(1, 0) + varint(draw(st.integers(0, 1))) + tokens
        return tokens
    return None


@st.composite
def _message(draw: st.DrawFn, schema: W.Message, depth: int = 0) -> bytes:
    """A message of ``schema``: its own fields with the right wire types and values of the
    right kind (arrays of agreeing sizes most of the time), and now and then unknown
    fields, wrong wire types or extreme numbers."""
    if not _rare(draw, 4):
        coherent = draw(_coherent(schema))
        if coherent is not None:
            return coherent
    out = []
    for _ in range(draw(st.integers(1 if depth == 0 else 0, 4 if depth < 4 else 1))):
        spec: W.Field | None = (None if _rare(draw, 8)
                                else draw(st.sampled_from(list(schema.fields))))
        number = spec.number if spec is not None else draw(st.integers(1, 40))
        wire_type = spec.wire_type if spec is not None else draw(st.sampled_from([0, 1, 2, 5]))
        if spec is not None and _rare(draw, 20):
            wire_type = draw(st.sampled_from([0, 1, 2, 3, 5]))
        if spec is not None and spec.repeated and spec.wire_type == 0 and wire_type == 0:
            payload = b"".join(varint(v) for v in draw(st.lists(_ints, max_size=6)))
            out.append(ld(number, payload))
            continue
        if wire_type == 0:
            small = st.integers(0, 5) if spec is not None and spec.kind == W.ENUM else st.nothing()
            out.append(key(number, 0) + varint(draw(small | _ints)))
        elif wire_type == 1:
            out.append(key(number, 1) + draw(st.binary(min_size=8, max_size=8)))
        elif wire_type == 5:
            out.append(key(number, 5) + draw(st.binary(min_size=4, max_size=4)))
        elif wire_type == 3:
            out.append(key(number, 3) + key(number, 4))
        elif spec is not None and spec.kind in (W.MESSAGE, W.MAP) and depth < 5:
            assert spec.message is not None
            out.append(ld(number, draw(_message(spec.message, depth + 1))))
        elif spec is not None and spec.kind == W.BYTES:
            out.append(ld(number, draw(_bytes_payload(spec.name))))
        elif spec is not None and spec.kind == W.STRING:
            text = draw(st.sampled_from(["x", "", "a:b:Record", "é", "loss:sum"]))
            out.append(ld(number, text.encode()))
        else:
            out.append(ld(number, draw(st.binary(max_size=16))))
    return b"".join(out)


@st.composite
def _broken(draw: st.DrawFn, schema: W.Message) -> bytes:
    """A message of ``schema``, then maybe truncated, a byte changed or bytes spliced in."""
    data = draw(_message(schema))
    how = draw(st.sampled_from(["whole", "whole", "whole", "truncate", "flip", "splice"]))
    if data and how == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif data and how == "flip":
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1:]
    elif how == "splice":
        i = draw(st.integers(0, len(data)))
        data = data[:i] + draw(st.binary(min_size=1, max_size=12)) + data[i:]
    return data


# A fixed, derandomized run by default; TINKER_ASYNC_FUZZ_EXAMPLES=N runs N random ones
# instead (a longer hunt, by hand).
_EXAMPLES = os.environ.get("TINKER_ASYNC_FUZZ_EXAMPLES")
_FUZZ = settings(max_examples=int(_EXAMPLES or 250), derandomize=not _EXAMPLES, deadline=None,
                 database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Memory per input: every item the decoders make is backed by input bytes, but each item
# is a Python object (the worst: an empty SampledSequence per 2-byte message, ~400 bytes).
_MEMORY_PER_BYTE = 400
_MEMORY_BASE = 512 * 1024
# The one count no bytes back: datums of records without fields, capped instead (an empty
# dict and a list slot each).
_BARE_DATUMS_MEMORY = 80 * P._MAX_BARE_DATUMS


def _check_decoder(
    decode: Callable[[bytes], Any], data: bytes, error: type[Exception], extra: int = 0
) -> None:
    with _peak_memory() as peak:
        try:
            decode(data)
        except ValueError as exc:
            assert isinstance(exc, error), f"{type(exc).__name__}: {exc}"
    assert peak[0] <= _MEMORY_BASE + extra + _MEMORY_PER_BYTE * len(data), (peak[0], len(data))


@_FUZZ
@given(_broken(S.FORWARD_BACKWARD_OUTPUT))
def test_fuzz_forward_backward_output(data: bytes) -> None:
    _check_decoder(P.decode_forward_backward_output, data, P.ResponseDecodeError,
                   _BARE_DATUMS_MEMORY)


@_FUZZ
@given(_broken(S.SAMPLE_RESPONSE))
def test_fuzz_sample_response(data: bytes) -> None:
    _check_decoder(P.decode_sample_response, data, P.ResponseDecodeError)


@_FUZZ
@given(_broken(S.FORWARD_BACKWARD_REQUEST))
def test_fuzz_forward_backward_request(data: bytes) -> None:
    _check_decoder(PS.decode_forward_backward_request, data, ValueError)


@_FUZZ
@given(st.binary(max_size=200))
def test_fuzz_decoders_on_raw_bytes(data: bytes) -> None:
    _check_decoder(P.decode_forward_backward_output, data, P.ResponseDecodeError,
                   _BARE_DATUMS_MEMORY)
    _check_decoder(P.decode_sample_response, data, P.ResponseDecodeError)
    _check_decoder(PS.decode_forward_backward_request, data, ValueError)


@_FUZZ
@given(st.sampled_from([S.FORWARD_BACKWARD_OUTPUT, S.SAMPLE_RESPONSE,
                        S.FORWARD_BACKWARD_REQUEST]).flatmap(
    lambda schema: st.tuples(st.just(schema), _broken(schema))))
def test_fuzz_wire_decoder(case: tuple[W.Message, bytes]) -> None:
    schema, data = case
    _check_decoder(lambda d: W.decode(schema, d), data, ValueError)


_ZSTD_SAMPLES = [P.compress(b""), P.compress(_compressible(5000)),
                 zstandard.ZstdCompressor(write_checksum=True, write_content_size=False)
                 .compress(_compressible(3000)) + P.compress(b"tail")]


@_FUZZ
@given(st.sampled_from(_ZSTD_SAMPLES), st.sampled_from(["truncate", "flip", "splice", "raw"]),
       st.integers(0, 1 << 16), st.binary(min_size=1, max_size=8))
def test_fuzz_zstd(frame: bytes, how: str, where: int, junk: bytes) -> None:
    i = where % (len(frame) + 1)
    data = {"truncate": frame[:i], "flip": frame[:i] + junk[:1] + frame[i + 1:],
            "splice": frame[:i] + junk + frame[i:], "raw": junk}[how]
    with _peak_memory() as peak:
        try:
            PS.decompress(data, max_output_size=1 << 20)
        except ValueError:
            pass
    assert peak[0] < 8 * 1024 * 1024
    if how == "truncate" and i < len(frame) and i not in _frame_ends(frame):
        with pytest.raises(ValueError):
            PS.decompress(data)


def _frame_ends(data: bytes) -> set[int]:
    """Offsets where a frame of ``data`` ends (a cut there leaves whole frames)."""
    ends, pos = set(), 0
    while pos < len(data):
        obj = zstandard.ZstdDecompressor().decompressobj()
        obj.decompress(data[pos:])
        pos = len(data) - len(obj.unused_data)
        ends.add(pos)
    return ends


# ---------------------------------------------------------------------------------------
# Fuzzing the JSON result decoders (types/_wire.py): only ValueError, bounded memory
# ---------------------------------------------------------------------------------------

_JSON_KEYS = ["sequences", "tokens", "logprobs", "stop_reason", "finish_reason",
              "sequence_id", "topk_logprobs", "prompt_logprobs", "topk_prompt_logprobs",
              "target_prompt_logprobs", "prompt_alt_tokens", "prompt_cache_hit_tokens",
              "loss_fn_outputs", "loss_fn_output_type", "metrics", "data", "dtype", "shape",
              "sparse_crow_indices", "sparse_col_indices", "type", "x"]
_json_scalars = (st.none() | st.booleans() | st.sampled_from(_INTERESTING_INTS)
                 | st.integers(-(1 << 70), 1 << 70) | st.floats(allow_nan=False)
                 | st.sampled_from(["stop", "length", "float32", "int64", "bogus", ""]))
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.sampled_from(_JSON_KEYS), inner, max_size=5),
    max_leaves=40,
)


def _or_junk(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` most of the time, any JSON value now and then."""
    return st.integers(0, 9).flatmap(lambda i: _json_values if i == 9 else good)


_small_ints = st.integers(-2, 300) | st.sampled_from(_INTERESTING_INTS)
_numbers = st.floats(allow_nan=False, width=32) | _small_ints | st.none()
_json_tensor = st.fixed_dictionaries(
    {"data": _or_junk(st.lists(_numbers, max_size=12)),
     "dtype": _or_junk(st.sampled_from(["float32", "int64"]))},
    optional={"shape": _or_junk(st.lists(st.integers(-1, 5), max_size=4) | st.none()),
              "sparse_crow_indices": _or_junk(st.lists(_small_ints, max_size=4)),
              "sparse_col_indices": _or_junk(st.lists(_small_ints, max_size=4))})
_json_topk = st.lists(st.none() | st.lists(st.tuples(_small_ints, _numbers), max_size=3),
                      max_size=4)
_json_sequence = st.fixed_dictionaries(
    {"tokens": _or_junk(st.lists(_small_ints, max_size=8))},
    optional={"logprobs": _or_junk(st.lists(_numbers, max_size=8) | st.none()),
              "stop_reason": _or_junk(st.sampled_from(["stop", "length", "eos", "bogus"])),
              "finish_reason": _or_junk(st.sampled_from(["stop", "length"])),
              "sequence_id": _or_junk(st.text(max_size=4) | st.none()),
              "topk_logprobs": _or_junk(_json_topk | st.none())})
_json_sample_response = st.fixed_dictionaries(
    {"sequences": _or_junk(st.lists(_json_sequence, max_size=3))},
    optional={"prompt_logprobs": _or_junk(st.lists(_numbers, max_size=6) | st.none()),
              "topk_prompt_logprobs": _or_junk(_json_topk | st.none()),
              "target_prompt_logprobs": _or_junk(_json_tensor | st.none()),
              "prompt_alt_tokens": _or_junk(st.fixed_dictionaries(
                  {"tokens": _json_tensor, "logprobs": _json_tensor}) | st.none()),
              "prompt_cache_hit_tokens": _or_junk(_small_ints),
              "type": st.just("sample")})
_json_fb_output = st.fixed_dictionaries(
    {"loss_fn_outputs": _or_junk(st.lists(st.dictionaries(
        st.sampled_from(["logprobs", "loss", "x"]), _or_junk(_json_tensor), max_size=3),
        max_size=4))},
    optional={"loss_fn_output_type": _or_junk(st.sampled_from(["ArrayRecord", "x"])),
              "metrics": _or_junk(st.dictionaries(st.sampled_from(["loss:sum", "n:mean"]),
                                                  _numbers, max_size=3))})


@settings(_FUZZ, report_multiple_bugs=False)
@given(_json_sample_response | _json_fb_output | _json_values,
       st.sampled_from(["whole", "whole", "whole", "truncate"]))
def test_fuzz_json_result_decoders(value: Any, how: str) -> None:
    data = msgspec.json.encode(value)
    if how == "truncate" and data:
        data = data[: len(data) // 2]
    _check_decoder(_wire.decode_sample_response_json, data, ValueError)
    _check_decoder(_wire.decode_forward_backward_output_json, data, ValueError)


# ---------------------------------------------------------------------------------------
# The error a user sees
# ---------------------------------------------------------------------------------------


def test_result_decode_errors_are_typed_api_errors() -> None:
    for decode, data in ((P.decode_forward_backward_output, HUGE_COUNT),
                         (P.decode_sample_response, b"\x0a\x05abc"),
                         (P.decode_sample_response, ld(1, key(1, 0) + varint(7)))):
        with pytest.raises(APIResponseValidationError) as info:
            decode(data)
        assert isinstance(info.value, ValueError)  # what the codec has always documented
        assert "cannot be decoded" in str(info.value)
    # Still one error, however deep the cause: the message names the innermost message.
    with pytest.raises(P.ResponseDecodeError, match="SampledSequence"):
        P.decode_sample_response(ld(1, key(2, 2) + varint(100)))


def test_valid_results_still_decode() -> None:
    """The limits refuse nothing a real server sends: a full-size result round-trips."""
    rng = np.random.default_rng(0)
    outputs = [{"logprobs": T.TensorData.from_numpy(rng.standard_normal(n).astype(np.float32)),
                "elementwise_loss": T.TensorData.from_numpy(rng.standard_normal((n, 3))
                                                            .astype(np.float32))}
               for n in rng.integers(0, 300, 64)]
    out = T.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord", loss_fn_outputs=outputs,
                                  metrics={"loss:sum": 1.5})
    back = P.decode_forward_backward_output(PS.encode_forward_backward_output(out))
    assert len(back.loss_fn_outputs) == 64
    for a, b in zip(outputs, back.loss_fn_outputs, strict=True):
        for name in a:
            np.testing.assert_array_equal(a[name].to_numpy(), b[name].to_numpy())
    assert math.isclose(back.metrics["loss:sum"], 1.5)
