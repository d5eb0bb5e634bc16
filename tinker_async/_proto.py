"""Protobuf codec for the three Tinker messages on the wire, without the ``protobuf`` package.

The official SDK 0.38 sends ``forward_backward`` requests as protobuf and receives
``forward_backward`` and ``sample`` results as protobuf (``tinker_public.proto``, package
``tinker_public``, proto3). This module encodes and decodes exactly those messages, in both
directions (the embedded test server needs the reverse ones), byte-compatible with the
official generated module ``tinker.proto.tinker_public_pb2``:

- :func:`encode_forward_backward_request` gives the bytes of the SDK's
  ``request_conv.forward_backward_request_to_proto(...).SerializeToString()``. They are
  identical whenever every map holds at most one entry. The official serializer (upb)
  writes map entries in hash-table order, which is randomised per process, so the SDK's own
  bytes for a multi-entry map differ from run to run; we write map entries in insertion
  order, and with ``deterministic=True`` in sorted order, which is byte-identical to
  ``SerializeToString(deterministic=True)``.
- :func:`decode_forward_backward_output` and :func:`decode_sample_response` give what
  ``response_conv`` gives (see their docstrings for the few deliberate differences).

Packed arrays go through numpy: they are written straight from the arrays' buffers (one
copy, into the joined output) and read back as ``np.frombuffer`` views of the payload, never
copied array by array (see :func:`_decode_payload` for the one bulk copy of a ``bytes``
payload, which keeps the arrays writable).

Field numbers relied on (all ``bytes`` arrays are little-endian, row-major)::

    ForwardBackwardRequest  1 model_id string      2 seq_id int32        3 data repeated Datum
                            4 loss_fn string       5 loss_fn_config map<string, double> (legacy)
                            6 forward_only bool    7 loss_fn_config_v2 map<string, LossConfigValue>
    LossConfigValue         oneof value: 1 number double | 2 text string
    Datum                   1 model_input repeated Chunk          2 loss_fn_inputs map<string, Tensor>
                            3 model_input_spans repeated ProvenanceSpan
                            4 loss_fn_input_spans repeated ProvenanceSpan
    Chunk                   oneof chunk: 1 encoded_text | 2 image | 3 dmel
    EncodedTextChunk        1 tokens bytes (int32)
    ImageChunk              1 data bytes  2 format string  3 optional expected_tokens int32
                            4 optional override_dimensions ImageDimensions (read and ignored)
    DmelChunk               1 dmel bytes
    ProvenanceSpan          oneof span: 1 prompt_tokens | 2 sampled_tokens, each
                            {1 sequence_id string, 2 offset int64, 3 length int64}
    Tensor                  oneof encoding: 1 dense bytes | 2 sparse_csr SparseCsr
                            3 dtype DType  4 shape repeated int64 (packed)
    SparseCsr               1 values bytes  2 crow_indices bytes (int64)  3 col_indices bytes (int64)
    DType                   0 UNSPECIFIED 1 FLOAT32 2 INT64 3 INT32 4 BFLOAT16
    ForwardBackwardOutput   1 loss_fn_output_type string  2 loss_fn_outputs repeated ArrayRecord
                            3 metrics map<string, double>
    ArrayRecord             1 type_tag string  2 fields map<string, BatchedTensor>  3 num_datums int64
    BatchedTensor           1 data bytes  2 offsets bytes (int64 byte offsets, n + 1)
                            3 dtype DType  4 trailing_shape repeated int64 (packed)
    SampleResponse          1 sequences repeated SampledSequence  2 optional prompt_logprobs bytes (f32)
                            3 optional topk_prompt_logprobs TopkLogprobs  4 prompt_cache_hit_tokens int32
                            5 optional target_prompt_logprobs Tensor
                            6 optional prompt_alt_tokens PromptAltTokens {1 tokens Tensor, 2 logprobs Tensor}
    SampledSequence         1 stop_reason StopReason (0 STOP, 1 LENGTH)  2 tokens bytes (int32)
                            3 optional logprobs bytes (f32)  4 optional topk_sampled_logprobs TopkLogprobs
    TopkLogprobs            1 token_ids bytes (int32, N x K)  2 logprobs bytes (f32)  3 k uint32
                            4 length uint32

Optional zstd (:func:`compress`, :func:`decompress`) uses ``zstandard``, imported on first use.

Hostile or broken input. The decoders never trust a count from the wire: every count or
length that becomes an allocation or a loop (datum counts, offsets, ``length * k``, shapes)
is checked against the bytes that back it first, shapes have at most 64 dimensions, and
the work is linear in the input (see :mod:`tinker_async._proto_wire`). A result that cannot
be decoded raises :class:`ResponseDecodeError` (an ``APIResponseValidationError`` that is
also a ``ValueError``); the request decoder (the server side) raises ``ValueError``. The
encoders refuse integers their field cannot hold, as the official (upb) encoder does, with
a ``ValueError`` (:class:`~tinker_async.errors.InvalidRequestError`) naming the field.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, NamedTuple

import numpy as np
import numpy.typing as npt

from ._proto_wire import (
    BOOL,
    BYTES,
    DOUBLE,
    ENUM,
    I64,
    INT32,
    INT64,
    LEN,
    MAP,
    MESSAGE,
    STRING,
    UINT32,
    VARINT,
    Buffer,
    Field,
    Message,
    Writer,
    decode,
    encode_double,
    encode_varint,
    tag,
)
from .errors import APIResponseValidationError, InvalidRequestError
from .types import (
    Datum,
    DmelChunk,
    EncodedTextChunk,
    ForwardBackwardOutput,
    ImageAssetPointerChunk,
    ImageChunk,
    ModelInput,
    PromptAltTokens,
    PromptProvenanceSpan,
    SampledProvenanceSpan,
    SampledSequence,
    SampleResponse,
    StopReason,
    TensorData,
    TensorDtype,
    TopkLogprobs,
)

__all__ = [
    "ForwardBackwardRequestParts",
    "ResponseDecodeError",
    "TokenRangeError",
    "compress",
    "decode_forward_backward_output",
    "decode_forward_backward_request",
    "decode_sample_response",
    "decompress",
    "encode_forward_backward_output",
    "encode_forward_backward_request",
    "encode_sample_response",
]

# ---------------------------------------------------------------------------------------
# Tags (field number + wire type), named by message and field.
# ---------------------------------------------------------------------------------------

_ENTRY_KEY: Final = tag(1, LEN)  # every map entry: 1 key, 2 value
_ENTRY_VALUE: Final = tag(2, LEN)
_ENTRY_VALUE_DOUBLE: Final = tag(2, I64)

_REQ_MODEL_ID: Final = tag(1, LEN)
_REQ_SEQ_ID: Final = tag(2, VARINT)
_REQ_DATA: Final = tag(3, LEN)
_REQ_LOSS_FN: Final = tag(4, LEN)
_REQ_CONFIG: Final = tag(5, LEN)
_REQ_FORWARD_ONLY: Final = tag(6, VARINT)
_REQ_CONFIG_V2: Final = tag(7, LEN)
_CONFIG_NUMBER: Final = tag(1, I64)
_CONFIG_TEXT: Final = tag(2, LEN)

_DATUM_MODEL_INPUT: Final = tag(1, LEN)
_DATUM_LOSS_FN_INPUTS: Final = tag(2, LEN)
_DATUM_MODEL_INPUT_SPANS: Final = tag(3, LEN)
_DATUM_LOSS_FN_INPUT_SPANS: Final = tag(4, LEN)

_CHUNK_TEXT: Final = tag(1, LEN)
_CHUNK_IMAGE: Final = tag(2, LEN)
_CHUNK_DMEL: Final = tag(3, LEN)
_TEXT_TOKENS: Final = tag(1, LEN)
_IMAGE_DATA: Final = tag(1, LEN)
_IMAGE_FORMAT: Final = tag(2, LEN)
_IMAGE_EXPECTED_TOKENS: Final = tag(3, VARINT)
_DMEL_DMEL: Final = tag(1, LEN)

_SPAN_PROMPT: Final = tag(1, LEN)
_SPAN_SAMPLED: Final = tag(2, LEN)
_SPAN_SEQUENCE_ID: Final = tag(1, LEN)
_SPAN_OFFSET: Final = tag(2, VARINT)
_SPAN_LENGTH: Final = tag(3, VARINT)

_TENSOR_DENSE: Final = tag(1, LEN)
_TENSOR_SPARSE: Final = tag(2, LEN)
_TENSOR_DTYPE: Final = tag(3, VARINT)
_TENSOR_SHAPE: Final = tag(4, LEN)
_CSR_VALUES: Final = tag(1, LEN)
_CSR_CROW: Final = tag(2, LEN)
_CSR_COL: Final = tag(3, LEN)

_FBO_TYPE: Final = tag(1, LEN)
_FBO_OUTPUTS: Final = tag(2, LEN)
_FBO_METRICS: Final = tag(3, LEN)
_RECORD_TYPE_TAG: Final = tag(1, LEN)
_RECORD_FIELDS: Final = tag(2, LEN)
_RECORD_NUM_DATUMS: Final = tag(3, VARINT)
_BT_DATA: Final = tag(1, LEN)
_BT_OFFSETS: Final = tag(2, LEN)
_BT_DTYPE: Final = tag(3, VARINT)
_BT_TRAILING_SHAPE: Final = tag(4, LEN)

_SR_SEQUENCES: Final = tag(1, LEN)
_SR_PROMPT_LOGPROBS: Final = tag(2, LEN)
_SR_TOPK_PROMPT: Final = tag(3, LEN)
_SR_CACHE_HIT: Final = tag(4, VARINT)
_SR_TARGET_PROMPT: Final = tag(5, LEN)
_SR_ALT_TOKENS: Final = tag(6, LEN)
_ALT_TOKENS: Final = tag(1, LEN)
_ALT_LOGPROBS: Final = tag(2, LEN)
_SEQ_STOP_REASON: Final = tag(1, VARINT)
_SEQ_TOKENS: Final = tag(2, LEN)
_SEQ_LOGPROBS: Final = tag(3, LEN)
_SEQ_TOPK: Final = tag(4, LEN)
_TOPK_IDS: Final = tag(1, LEN)
_TOPK_LOGPROBS: Final = tag(2, LEN)
_TOPK_K: Final = tag(3, VARINT)
_TOPK_LENGTH: Final = tag(4, VARINT)

# ---------------------------------------------------------------------------------------
# Enums and dtypes
# ---------------------------------------------------------------------------------------

_DTYPE_FLOAT32: Final = 1
_DTYPE_INT64: Final = 2
_DTYPE_INT32: Final = 3
_DTYPE_BFLOAT16: Final = 4

# Public TensorDtype -> (proto DType, little-endian numpy dtype) for writing. The public
# types only know float32 and int64, as in the official request_conv.
_WRITE_DTYPES: Final[dict[str, tuple[int, np.dtype[Any]]]] = {
    "float32": (_DTYPE_FLOAT32, np.dtype("<f4")),
    "int64": (_DTYPE_INT64, np.dtype("<i8")),
}
# proto DType -> (numpy dtype of the bytes, public TensorDtype after widening).
_READ_DTYPES: Final[dict[int, tuple[np.dtype[Any], TensorDtype]]] = {
    _DTYPE_FLOAT32: (np.dtype("<f4"), "float32"),
    _DTYPE_INT64: (np.dtype("<i8"), "int64"),
    _DTYPE_INT32: (np.dtype("<i4"), "int64"),
    _DTYPE_BFLOAT16: (np.dtype("<u2"), "float32"),
}
_I32: Final = np.dtype("<i4")
_I64: Final = np.dtype("<i8")
_F32: Final = np.dtype("<f4")

_STOP_REASON_FROM_PROTO: Final[dict[int, StopReason]] = {0: "stop", 1: "length"}
_STOP_REASON_TO_PROTO: Final[dict[str, int]] = {v: k for k, v in _STOP_REASON_FROM_PROTO.items()}

# ---------------------------------------------------------------------------------------
# Schemas (decoding)
# ---------------------------------------------------------------------------------------

_SPAN_ARM_MSG = Message(
    "ProvenanceSpanArm",
    [Field(1, "sequence_id", STRING), Field(2, "offset", INT64), Field(3, "length", INT64)],
)
_PROVENANCE_SPAN_MSG = Message(
    "ProvenanceSpan",
    [
        Field(1, "prompt_tokens", MESSAGE, message=_SPAN_ARM_MSG, oneof="span"),
        Field(2, "sampled_tokens", MESSAGE, message=_SPAN_ARM_MSG, oneof="span"),
    ],
)
_SPARSE_CSR_MSG = Message(
    "SparseCsr",
    [Field(1, "values", BYTES), Field(2, "crow_indices", BYTES), Field(3, "col_indices", BYTES)],
)
_TENSOR_MSG = Message(
    "Tensor",
    [
        Field(1, "dense", BYTES, oneof="encoding"),
        Field(2, "sparse_csr", MESSAGE, message=_SPARSE_CSR_MSG, oneof="encoding"),
        Field(3, "dtype", ENUM),
        Field(4, "shape", INT64, repeated=True),
    ],
)
_IMAGE_CHUNK_MSG = Message(
    "ImageChunk",
    [
        Field(1, "data", BYTES),
        Field(2, "format", STRING),
        Field(3, "expected_tokens", INT32),
        # 4 override_dimensions has no counterpart in the SDK types: skipped as unknown.
    ],
)
_CHUNK_MSG = Message(
    "Chunk",
    [
        Field(
            1,
            "encoded_text",
            MESSAGE,
            message=Message("EncodedTextChunk", [Field(1, "tokens", BYTES)]),
            oneof="chunk",
        ),
        Field(2, "image", MESSAGE, message=_IMAGE_CHUNK_MSG, oneof="chunk"),
        Field(
            3,
            "dmel",
            MESSAGE,
            message=Message("DmelChunk", [Field(1, "dmel", BYTES)]),
            oneof="chunk",
        ),
    ],
)


def _map_entry(name: str, value_kind: int, value_message: Message | None = None) -> Message:
    return Message(
        name, [Field(1, "key", STRING), Field(2, "value", value_kind, message=value_message)]
    )


_DATUM_MSG = Message(
    "Datum",
    [
        Field(1, "model_input", MESSAGE, repeated=True, message=_CHUNK_MSG),
        Field(
            2, "loss_fn_inputs", MAP, message=_map_entry("LossFnInputsEntry", MESSAGE, _TENSOR_MSG)
        ),
        Field(3, "model_input_spans", MESSAGE, repeated=True, message=_PROVENANCE_SPAN_MSG),
        Field(4, "loss_fn_input_spans", MESSAGE, repeated=True, message=_PROVENANCE_SPAN_MSG),
    ],
)
_LOSS_CONFIG_VALUE_MSG = Message(
    "LossConfigValue",
    [Field(1, "number", DOUBLE, oneof="value"), Field(2, "text", STRING, oneof="value")],
)
_FORWARD_BACKWARD_REQUEST_MSG = Message(
    "ForwardBackwardRequest",
    [
        Field(1, "model_id", STRING),
        Field(2, "seq_id", INT32),
        Field(3, "data", MESSAGE, repeated=True, message=_DATUM_MSG),
        Field(4, "loss_fn", STRING),
        Field(5, "loss_fn_config", MAP, message=_map_entry("LossFnConfigEntry", DOUBLE)),
        Field(6, "forward_only", BOOL),
        Field(
            7,
            "loss_fn_config_v2",
            MAP,
            message=_map_entry("LossFnConfigV2Entry", MESSAGE, _LOSS_CONFIG_VALUE_MSG),
        ),
    ],
)
_BATCHED_TENSOR_MSG = Message(
    "BatchedTensor",
    [
        Field(1, "data", BYTES),
        Field(2, "offsets", BYTES),
        Field(3, "dtype", ENUM),
        Field(4, "trailing_shape", INT64, repeated=True),
    ],
)
_ARRAY_RECORD_MSG = Message(
    "ArrayRecord",
    [
        Field(1, "type_tag", STRING),
        Field(2, "fields", MAP, message=_map_entry("FieldsEntry", MESSAGE, _BATCHED_TENSOR_MSG)),
        Field(3, "num_datums", INT64),
    ],
)
_FORWARD_BACKWARD_OUTPUT_MSG = Message(
    "ForwardBackwardOutput",
    [
        Field(1, "loss_fn_output_type", STRING),
        Field(2, "loss_fn_outputs", MESSAGE, repeated=True, message=_ARRAY_RECORD_MSG),
        Field(3, "metrics", MAP, message=_map_entry("MetricsEntry", DOUBLE)),
    ],
)
_TOPK_LOGPROBS_MSG = Message(
    "TopkLogprobs",
    [
        Field(1, "token_ids", BYTES),
        Field(2, "logprobs", BYTES),
        Field(3, "k", UINT32),
        Field(4, "length", UINT32),
    ],
)
_SAMPLED_SEQUENCE_MSG = Message(
    "SampledSequence",
    [
        Field(1, "stop_reason", ENUM),
        Field(2, "tokens", BYTES),
        Field(3, "logprobs", BYTES),
        Field(4, "topk_sampled_logprobs", MESSAGE, message=_TOPK_LOGPROBS_MSG),
    ],
)
_SAMPLE_RESPONSE_MSG = Message(
    "SampleResponse",
    [
        Field(1, "sequences", MESSAGE, repeated=True, message=_SAMPLED_SEQUENCE_MSG),
        Field(2, "prompt_logprobs", BYTES),
        Field(3, "topk_prompt_logprobs", MESSAGE, message=_TOPK_LOGPROBS_MSG),
        Field(4, "prompt_cache_hit_tokens", INT32),
        Field(5, "target_prompt_logprobs", MESSAGE, message=_TENSOR_MSG),
        Field(
            6,
            "prompt_alt_tokens",
            MESSAGE,
            message=Message(
                "PromptAltTokens",
                [
                    Field(1, "tokens", MESSAGE, message=_TENSOR_MSG),
                    Field(2, "logprobs", MESSAGE, message=_TENSOR_MSG),
                ],
            ),
        ),
    ],
)

# ---------------------------------------------------------------------------------------
# Small shared helpers
# ---------------------------------------------------------------------------------------


class ResponseDecodeError(APIResponseValidationError, ValueError):
    """A protobuf result from the server that cannot be decoded: truncated, malformed, or
    holding counts or shapes that its own bytes cannot back.

    An :class:`~tinker_async.errors.APIResponseValidationError` (what the client raises for
    every answer it cannot read) and a ``ValueError`` (what this codec documents).
    """


_INT_RANGES: Final[dict[str, tuple[int, int]]] = {
    "int32": (-(1 << 31), (1 << 31) - 1),
    "int64": (-(1 << 63), (1 << 63) - 1),
    "uint32": (0, (1 << 32) - 1),
}


def _check_int(value: int, kind: str, what: str) -> int:
    """``value`` if the protobuf field type ``kind`` can hold it.

    The official (upb) encoder refuses what does not fit (``ValueError: Value out of
    range``) rather than wrapping it, and so do we, naming the field. A non-integer is a
    ``TypeError``, as there.
    """
    if type(value) is not int:
        value = operator.index(value)
    low, high = _INT_RANGES[kind]
    if not low <= value <= high:
        raise InvalidRequestError(
            f"{what}={value} is out of range for a protobuf {kind} field ({low}..{high})"
        )
    return value


def _check_int32(value: int, what: str) -> int:
    return _check_int(value, "int32", what)


class TokenRangeError(InvalidRequestError, OverflowError):
    """A token id that int32 cannot hold. Also an ``OverflowError``, which is what the
    official SDK raises there (numpy's), so code written for it still catches it."""


def _check_shape(shape: Sequence[int], what: str) -> list[int]:
    """A shape about to be written (``repeated int64``), as a checked list."""
    return [_check_int(v, "int64", f"{what}[{i}]") for i, v in enumerate(shape)]


def _sorted_items(mapping: Mapping[str, Any], deterministic: bool) -> Iterable[tuple[str, Any]]:
    """A map's items in the order we write them.

    Insertion order by default. ``deterministic`` uses the order of the official (upb)
    ``SerializeToString(deterministic=True)``: by UTF-8 key bytes, except that when one
    key is a prefix of another the *longer* one comes first (upb's comparator; C++ protobuf
    would put the shorter first). Appending 256, above every byte value, gives exactly that.
    """
    items = mapping.items()
    if deterministic:
        return sorted(items, key=lambda kv: (*kv[0].encode("utf-8"), 256))
    return items


def _contiguous(values: Any, dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """``values`` as a C-contiguous little-endian array of ``dtype`` (no copy if it is one)."""
    return np.ascontiguousarray(values, dtype=dtype)


def _int32_bytes(
    values: Sequence[int] | npt.NDArray[Any], datum: int, chunk: int
) -> bytes | memoryview:
    """Token ids as little-endian int32 (what ``np.asarray(tokens, dtype=np.int32)`` gives).

    A list of Python ints packs twice as fast with ``struct`` as through numpy, and an
    int32 array is used as it is; both are the hot path and check nothing more (``struct``
    refuses out-of-range ids itself). Anything else, or anything ``struct`` refused, goes
    through :func:`_checked_int32`, which refuses ids int32 cannot hold with a
    ``ValueError`` naming ``data[datum]...chunks[chunk]`` instead of wrapping them.
    """
    if type(values) is list:
        try:
            return _int32_packer(len(values)).pack(*values)
        except struct.error:
            pass  # not all int32: the checked path says which and why
    elif type(values) is np.ndarray and values.dtype == _I32 and values.flags.c_contiguous:
        return values.data.cast("B")
    return _checked_int32(values, datum, chunk).data.cast("B")


def _checked_int32(
    values: Sequence[int] | npt.NDArray[Any], datum: int, chunk: int
) -> npt.NDArray[Any]:
    """Token ids as an int32 array, refusing ids out of the int32 range.

    numpy would wrap them silently (an int64 array cast to int32) or raise
    ``OverflowError`` (a list holding 2**31); the official SDK does the latter. Floats are
    truncated as ``np.asarray(tokens, dtype=np.int32)`` truncates them.
    """
    arr = np.asarray(values)
    if arr.dtype.kind in "iufO" and arr.size:
        try:
            low, high = arr.min(), arr.max()
            in_range = -(1 << 31) <= low and high < (1 << 31)
        except TypeError:  # an object array of mixed things: numpy's cast says what
            in_range = True
        if not in_range:
            bad = low if not -(1 << 31) <= low else high
            raise TokenRangeError(
                f"data[{datum}].model_input.chunks[{chunk}].tokens: token id {bad} does not "
                "fit in int32 (token ids are int32 on the wire)"
            )
    return _contiguous(arr, _I32)


@functools.lru_cache(maxsize=256)
def _int32_packer(count: int) -> struct.Struct:
    return struct.Struct(f"<{count}i")


def _tensor_values(td: TensorData) -> npt.NDArray[Any]:
    """The array a TensorData holds: the dense data, or the CSR values when sparse."""
    return td._numpy


def _decode_payload(schema: Message, payload: Buffer) -> dict[str, Any]:
    """Decode ``payload`` so that every array of the result is a writable view.

    Arrays are ``np.frombuffer`` views of the payload, never copied one by one. A read-only
    payload (``bytes``) is first copied once into a private ``bytearray``: the arrays then
    are writable like the official SDK's per-array copies (``TensorData`` would otherwise
    copy each read-only array, and ``torch.from_numpy`` warns on them). A writable payload
    (``bytearray``, writable ``memoryview``) is used as is, with no copy at all: the arrays
    alias it, so the caller must not reuse that buffer.
    """
    if isinstance(payload, bytes) or (isinstance(payload, memoryview) and payload.readonly):
        payload = bytearray(payload)
    return decode(schema, payload)


def _frombuffer(data: Buffer, dtype: np.dtype[Any], what: str) -> npt.NDArray[Any]:
    """Zero-copy view of a bytes field as an array, with a clear error when it is ragged."""
    if len(data) % dtype.itemsize:
        raise ValueError(
            f"{what}: {len(data)} bytes is not a whole number of {dtype.name} elements"
        )
    return np.frombuffer(data, dtype=dtype)


def _widen(values: npt.NDArray[Any], proto_dtype: int) -> npt.NDArray[Any]:
    """Widen what the public types cannot hold: bf16 -> f32 (exact), int32 -> int64."""
    if proto_dtype == _DTYPE_BFLOAT16:
        # A bfloat16 is the upper half of a float32.
        return (values.astype(np.uint32) << 16).view(np.float32)
    if proto_dtype == _DTYPE_INT32:
        return values.astype(np.int64)
    return values


def _read_dtype(proto_dtype: int, what: str) -> tuple[np.dtype[Any], TensorDtype]:
    spec = _READ_DTYPES.get(proto_dtype)
    if spec is None:
        raise ValueError(f"{what}: unsupported proto DType value {proto_dtype}")
    return spec


# ---------------------------------------------------------------------------------------
# Tensor (shared by requests and sample responses)
# ---------------------------------------------------------------------------------------


def _write_tensor(w: Writer, key: bytes, td: TensorData, what: str) -> None:
    """Write a ``Tensor`` message field, as ``request_conv._tensor_data_to_proto`` fills it."""
    spec = _WRITE_DTYPES.get(td.dtype)
    if spec is None:
        raise ValueError(f"Unsupported TensorData dtype for proto write: {td.dtype}")
    proto_dtype, np_dtype = spec
    values = _contiguous(_tensor_values(td), np_dtype)
    mark = w.begin(key)
    if td.sparse_crow_indices is not None:
        if td.sparse_col_indices is None:
            raise ValueError("sparse_col_indices required with sparse_crow_indices")
        csr = w.begin(_TENSOR_SPARSE)
        if values.size:
            w.blob(_CSR_VALUES, values)
        crow = _contiguous(td.sparse_crow_indices, _I64)
        if crow.size:
            w.blob(_CSR_CROW, crow)
        col = _contiguous(td.sparse_col_indices, _I64)
        if col.size:
            w.blob(_CSR_COL, col)
        w.end(csr)
    else:
        w.blob(_TENSOR_DENSE, values)  # a oneof member: written even when empty
    _write_tensor_tail(w, proto_dtype, td.shape, what)
    w.end(mark)


def _write_tensor_tail(
    w: Writer, proto_dtype: int, shape: Sequence[int] | None, what: str
) -> None:
    """A ``Tensor``'s fields after its data: the dtype, then the shape (if any)."""
    w.varint(_TENSOR_DTYPE, proto_dtype)
    if shape is not None:
        w.packed_varints(_TENSOR_SHAPE, _check_shape(shape, f"{what}.shape"))


def _tensor_from_message(msg: Mapping[str, Any], what: str) -> TensorData:
    """Build a TensorData from a decoded ``Tensor``; a CSR layout stays sparse.

    Differences from the official ``response_conv._tensor_data_from_proto``, all on input it
    cannot handle: a bf16 tensor is widened bit-exactly (the official one converts the raw
    uint16 numbers), and a dense tensor with no ``shape`` stays 1-D with ``shape=None`` (the
    official one tries ``reshape([])`` and fails unless it has one element).
    """
    proto_dtype = msg.get("dtype", 0)
    np_dtype, dtype = _read_dtype(proto_dtype, what)
    shape = _decoded_shape(msg["shape"], what) if msg.get("shape") else None
    csr = msg.get("sparse_csr")
    if csr is not None:
        values = _widen(_frombuffer(csr.get("values", b""), np_dtype, what), proto_dtype)
        return TensorData(
            data=values,
            dtype=dtype,
            shape=shape,
            sparse_crow_indices=_frombuffer(csr.get("crow_indices", b""), _I64, what).tolist(),
            sparse_col_indices=_frombuffer(csr.get("col_indices", b""), _I64, what).tolist(),
        )
    values = _widen(_frombuffer(msg.get("dense", b""), np_dtype, what), proto_dtype)
    if shape is not None:
        values = _reshape(values, shape, what)
    return TensorData(data=values, dtype=dtype, shape=shape)


# More dimensions than numpy can hold is malformed; checking this first also keeps the
# products of shapes small (an unchecked shape of a million 2s took seconds in math.prod).
_MAX_NDIM: Final = 64


def _decoded_shape(shape: Sequence[int], what: str, extra_dims: int = 0) -> list[int]:
    """A shape read from the wire, refused if it has negative sizes or too many dimensions."""
    if len(shape) + extra_dims > _MAX_NDIM:
        raise ValueError(
            f"{what}: a shape of {len(shape) + extra_dims} dimensions (at most {_MAX_NDIM})"
        )
    if min(shape, default=0) < 0:
        raise ValueError(f"{what}: negative size in shape {list(shape)}")
    return list(shape)


def _reshape(values: npt.NDArray[Any], shape: Sequence[int], what: str) -> npt.NDArray[Any]:
    """``values`` in ``shape`` (already checked by :func:`_decoded_shape`)."""
    if math.prod(shape) != values.size:
        raise ValueError(f"{what}: {values.size} elements do not fit shape {list(shape)}")
    return values.reshape(shape)


# ---------------------------------------------------------------------------------------
# ForwardBackwardRequest
# ---------------------------------------------------------------------------------------


def encode_forward_backward_request(
    model_id: str,
    seq_id: int | None,
    data: Sequence[Datum],
    loss_fn: str,
    loss_fn_config: Mapping[str, float | str] | None = None,
    forward_only: bool = False,
    *,
    deterministic: bool = False,
) -> bytes:
    """Encode a ``ForwardBackwardRequest`` the way the official SDK does.

    Same rules as ``request_conv.forward_backward_request_to_proto``: ``seq_id`` None is
    sent as 0; a float ``loss_fn_config`` value goes both to the legacy map (field 5) and to
    ``loss_fn_config_v2`` as ``number``, a string only to v2 as ``text``; text tokens are
    int32; tensors are float32 or int64, dense or CSR; ``ImageAssetPointerChunk`` is rejected
    with ``ValueError``. Map entries are written in insertion order, or sorted by key with
    ``deterministic=True`` (see the module docstring). An integer its field cannot hold is
    refused, never wrapped: :class:`TokenRangeError` for a token id, else
    :class:`~tinker_async.errors.InvalidRequestError` (both ``ValueError``), naming the field.
    """
    w = Writer()
    _write_request_header(w, model_id, seq_id)
    _write_request_body(w, data, loss_fn, loss_fn_config, forward_only, deterministic)
    return w.getvalue()


class ForwardBackwardBody:
    """A ``ForwardBackwardRequest`` encoded before its ``seq_id`` is known.

    The client fixes a request's content when it is called but takes its sequence id only
    when its turn to submit comes. The body is encoded once into a buffer that keeps room
    in front for ``model_id`` and ``seq_id``; :meth:`payload` writes them there and returns
    a view from their first byte, so the megabytes of tensors are never copied again. The
    bytes are those of :func:`encode_forward_backward_request` with the same arguments.
    """

    __slots__ = ("_buffer", "_header", "_model_id")

    def __init__(
        self,
        model_id: str,
        data: Sequence[Datum],
        loss_fn: str,
        loss_fn_config: Mapping[str, float | str] | None = None,
        forward_only: bool = False,
    ) -> None:
        self._model_id = model_id
        w = Writer()
        _write_request_header(w, model_id, None)
        # Room for seq_id: its key and a varint of up to ten bytes (a negative int32).
        self._header = len(w.getvalue()) + 11
        w.parts = [bytes(self._header)]
        _write_request_body(w, data, loss_fn, loss_fn_config, forward_only, False)
        self._buffer = bytearray().join(w.parts)

    def payload(self, seq_id: int | None) -> memoryview:
        """The whole request with ``seq_id``: a read-only view into the buffer, whose
        first bytes the next call rewrites (one payload per body in flight)."""
        w = Writer()
        _write_request_header(w, self._model_id, seq_id)
        header = w.getvalue()
        start = self._header - len(header)
        self._buffer[start:self._header] = header
        return memoryview(self._buffer)[start:].toreadonly()

    def __len__(self) -> int:
        """The size of the fields after ``seq_id``, in bytes."""
        return len(self._buffer) - self._header


def _write_request_header(w: Writer, model_id: str, seq_id: int | None) -> None:
    if model_id:
        w.string(_REQ_MODEL_ID, model_id)
    seq = _check_int32(seq_id if seq_id is not None else 0, "seq_id")
    if seq:
        w.varint(_REQ_SEQ_ID, seq)


def _write_request_body(
    w: Writer,
    data: Sequence[Datum],
    loss_fn: str,
    loss_fn_config: Mapping[str, float | str] | None,
    forward_only: bool,
    deterministic: bool,
) -> None:
    """Every field after ``model_id`` and ``seq_id``, in field-number order."""
    for i, datum in enumerate(data):
        if not _write_plain_datum(w, datum, deterministic, i):
            _write_datum(w, datum, deterministic, i)
    if loss_fn:
        w.string(_REQ_LOSS_FN, loss_fn)
    config = list(_sorted_items(loss_fn_config, deterministic)) if loss_fn_config else []
    v2_values: list[tuple[str, bytes]] = []
    for name, value in config:
        if isinstance(value, str):
            v2_values.append((name, _string_field(_CONFIG_TEXT, value)))
        else:
            try:
                number = float(value)
            except (OverflowError, TypeError, ValueError) as exc:
                raise InvalidRequestError(
                    f"loss_fn_config[{name!r}]={value!r} is neither a string nor a number "
                    f"a double can hold: {exc}"
                ) from None
            w.blob(
                _REQ_CONFIG,
                _string_field(_ENTRY_KEY, name) + _double_field(_ENTRY_VALUE_DOUBLE, number),
            )
            v2_values.append((name, _double_field(_CONFIG_NUMBER, number)))
    if forward_only:
        w.varint(_REQ_FORWARD_ONLY, 1)
    for name, value_msg in v2_values:
        w.blob(
            _REQ_CONFIG_V2, _string_field(_ENTRY_KEY, name) + _bytes_field(_ENTRY_VALUE, value_msg)
        )


def _bytes_field(key: bytes, payload: bytes) -> bytes:
    """A small length-delimited field as one bytes object (for map entries)."""
    return key + encode_varint(len(payload)) + payload


def _string_field(key: bytes, value: str) -> bytes:
    return _bytes_field(key, value.encode("utf-8"))


def _double_field(key: bytes, value: float) -> bytes:
    return key + encode_double(value)


def _write_plain_datum(w: Writer, datum: Datum, deterministic: bool, index: int) -> bool:
    """Write the common datum (text chunks, dense tensors, no spans) in one pass.

    Nearly every datum looks like this, and the general writer's nested begin/end calls
    cost more than packing the tokens themselves. The bytes around each payload depend
    only on sizes, names, dtypes and shapes, which repeat from datum to datum, so they come
    from small caches; each datum adds its header and its payloads to the output, and
    nothing is copied until the final join. Returns False, having written nothing, for
    anything else (the general writer then handles it, and raises what it raises).
    """
    if datum.model_input_spans or datum.loss_fn_input_spans:
        return False
    parts: list[bytes | memoryview] = [b""]  # [0]: the datum's own header, once known
    size = 0
    for j, chunk in enumerate(datum.model_input.chunks):
        if type(chunk) is not EncodedTextChunk:
            return False
        tokens = _int32_bytes(chunk.tokens, index, j)
        n = len(tokens)
        head = _TEXT_HEADS.get(n) or _text_head(n)
        parts += (head, tokens)
        size += len(head) + n
    for name, td in _sorted_items(datum.loss_fn_inputs, deterministic):
        if td.sparse_crow_indices is not None:
            return False
        spec = _WRITE_DTYPES.get(td.dtype)
        if spec is None:
            return False
        values = td._numpy
        if values.dtype != spec[1] or not values.flags.c_contiguous:
            values = _contiguous(values, spec[1])
        key = (name, td.dtype, values.nbytes, None if td.shape is None else tuple(td.shape))
        head, tail = _TENSOR_ENTRIES.get(key) or _tensor_entry(*key)
        parts += (head, values.data, tail)
        size += len(head) + values.nbytes + len(tail)
    parts[0] = head = _REQ_DATA + encode_varint(size)
    w.parts += parts
    w.size += len(head) + size
    return True


_CACHE_LIMIT: Final = 4096
_TEXT_HEADS: dict[int, bytes] = {}
_TENSOR_ENTRIES: dict[tuple[str, str, int, tuple[int, ...] | None], tuple[bytes, bytes]] = {}


def _text_head(nbytes: int) -> bytes:
    """Everything before a text chunk's ``nbytes`` of tokens: ``model_input{encoded_text{
    tokens}}`` keys and lengths (no tokens field at all when there are none)."""
    tokens = _TEXT_TOKENS + encode_varint(nbytes) if nbytes else b""
    text_size = len(tokens) + nbytes
    chunk_size = len(_CHUNK_TEXT) + len(encode_varint(text_size)) + text_size
    head = (_DATUM_MODEL_INPUT + encode_varint(chunk_size) + _CHUNK_TEXT
            + encode_varint(text_size) + tokens)
    if len(_TEXT_HEADS) >= _CACHE_LIMIT:
        _TEXT_HEADS.clear()
    _TEXT_HEADS[nbytes] = head
    return head


def _tensor_entry(
    name: str, dtype: str, nbytes: int, shape: tuple[int, ...] | None
) -> tuple[bytes, bytes]:
    """(bytes before the data, bytes after it) of a ``loss_fn_inputs`` entry holding a
    dense tensor of ``nbytes`` bytes."""
    w = Writer()
    # Checked here, once per distinct shape: a cached entry has been checked already.
    _write_tensor_tail(w, _WRITE_DTYPES[dtype][0], shape, f"loss_fn_inputs[{name!r}]")
    tail = w.getvalue()
    dense = _TENSOR_DENSE + encode_varint(nbytes)
    tensor_size = len(dense) + nbytes + len(tail)
    key = _string_field(_ENTRY_KEY, name)
    entry_size = len(key) + len(_ENTRY_VALUE) + len(encode_varint(tensor_size)) + tensor_size
    head = (_DATUM_LOSS_FN_INPUTS + encode_varint(entry_size) + key + _ENTRY_VALUE
            + encode_varint(tensor_size) + dense)
    if len(_TENSOR_ENTRIES) >= _CACHE_LIMIT:
        _TENSOR_ENTRIES.clear()
    entry = _TENSOR_ENTRIES[(name, dtype, nbytes, shape)] = (head, tail)
    return entry


def _write_datum(w: Writer, datum: Datum, deterministic: bool, index: int) -> None:
    what = f"data[{index}]"
    mark = w.begin(_REQ_DATA)
    for j, chunk in enumerate(datum.model_input.chunks):
        _write_chunk(w, chunk, index, j)
    for name, td in _sorted_items(datum.loss_fn_inputs, deterministic):
        entry = w.begin(_DATUM_LOSS_FN_INPUTS)
        w.string(_ENTRY_KEY, name)
        _write_tensor(w, _ENTRY_VALUE, td, f"{what}.loss_fn_inputs[{name!r}]")
        w.end(entry)
    for field, key, spans in (
        ("model_input_spans", _DATUM_MODEL_INPUT_SPANS, datum.model_input_spans),
        ("loss_fn_input_spans", _DATUM_LOSS_FN_INPUT_SPANS, datum.loss_fn_input_spans),
    ):
        for k, span in enumerate(spans or ()):
            _write_span(w, key, span, f"{what}.{field}[{k}]")
    w.end(mark)


def _write_chunk(w: Writer, chunk: Any, datum: int, index: int) -> None:
    """Write one ``Datum.model_input`` entry: a ``Chunk`` holding the chunk's oneof arm."""
    if isinstance(chunk, ImageAssetPointerChunk):
        raise ValueError(
            "ImageAssetPointerChunk cannot be sent in a forward_backward request: the protobuf "
            "wire format has no field for it (the official SDK rejects it too); send the "
            "image bytes as an ImageChunk instead"
        )
    outer = w.begin(_DATUM_MODEL_INPUT)
    if isinstance(chunk, EncodedTextChunk):
        inner = w.begin(_CHUNK_TEXT)
        tokens = _int32_bytes(chunk.tokens, datum, index)
        if tokens:
            w.blob(_TEXT_TOKENS, tokens)
    elif isinstance(chunk, ImageChunk):
        inner = w.begin(_CHUNK_IMAGE)
        if chunk.data:
            w.blob(_IMAGE_DATA, chunk.data)
        if chunk.format:
            w.string(_IMAGE_FORMAT, chunk.format)
        if chunk.expected_tokens is not None:  # proto3 optional: written even when 0
            expected = _check_int32(
                chunk.expected_tokens, f"data[{datum}].model_input.chunks[{index}].expected_tokens"
            )
            w.varint(_IMAGE_EXPECTED_TOKENS, expected)
    elif isinstance(chunk, DmelChunk):
        inner = w.begin(_CHUNK_DMEL)
        if chunk.dmel:
            w.blob(_DMEL_DMEL, chunk.dmel)
    else:
        raise ValueError(f"Unsupported model input chunk type: {type(chunk).__name__}")
    w.end(inner)
    w.end(outer)


def _write_span(
    w: Writer, key: bytes, span: PromptProvenanceSpan | SampledProvenanceSpan, what: str
) -> None:
    mark = w.begin(key)
    # The arm is chosen by Python type, as in the official SDK.
    arm = w.begin(_SPAN_SAMPLED if isinstance(span, SampledProvenanceSpan) else _SPAN_PROMPT)
    if span.sequence_id:
        w.string(_SPAN_SEQUENCE_ID, span.sequence_id)
    if span.offset:
        w.varint(_SPAN_OFFSET, _check_int(span.offset, "int64", f"{what}.offset"))
    if span.length:
        w.varint(_SPAN_LENGTH, _check_int(span.length, "int64", f"{what}.length"))
    w.end(arm)
    w.end(mark)


class ForwardBackwardRequestParts(NamedTuple):
    """What :func:`decode_forward_backward_request` returns."""

    model_id: str
    seq_id: int
    data: list[Datum]
    loss_fn: str
    loss_fn_config: dict[str, float | str] | None
    forward_only: bool


def decode_forward_backward_request(payload: Buffer) -> ForwardBackwardRequestParts:
    """Decode a ``ForwardBackwardRequest`` (the server side of the request).

    ``loss_fn_config`` prefers ``loss_fn_config_v2`` (as servers do) and adds keys found only
    in the legacy float map; it is None when both are empty. Tokens come back as lists
    (``EncodedTextChunk`` holds a sequence of ints), tensors as views of the payload. A
    dense tensor sent without a shape gets ``shape=None``. Spans: both lists when either
    is non-empty, else None (the wire cannot tell an empty list from None). Raises
    ``ValueError`` on malformed input.
    """
    msg = _decode_payload(_FORWARD_BACKWARD_REQUEST_MSG, payload)
    config: dict[str, float | str] = {}
    for name, value in msg.get("loss_fn_config_v2", {}).items():
        if "number" in value:
            config[name] = value["number"]
        elif "text" in value:
            config[name] = value["text"]
        else:
            raise ValueError(f"loss_fn_config_v2[{name!r}] holds neither a number nor a text")
    for name, number in msg.get("loss_fn_config", {}).items():
        config.setdefault(name, number)
    return ForwardBackwardRequestParts(
        model_id=msg.get("model_id", ""),
        seq_id=msg.get("seq_id", 0),
        data=[_datum_from_message(d, i) for i, d in enumerate(msg.get("data", []))],
        loss_fn=msg.get("loss_fn", ""),
        loss_fn_config=config or None,
        forward_only=msg.get("forward_only", False),
    )


def _datum_from_message(msg: Mapping[str, Any], index: int) -> Datum:
    what = f"data[{index}]"
    chunks = [_chunk_from_message(c, what) for c in msg.get("model_input", [])]
    inputs = {
        name: _tensor_from_message(t, f"{what}.loss_fn_inputs[{name!r}]")
        for name, t in msg.get("loss_fn_inputs", {}).items()
    }
    model_input_spans = [_span_from_message(s, what) for s in msg.get("model_input_spans", [])]
    loss_fn_input_spans = [_span_from_message(s, what) for s in msg.get("loss_fn_input_spans", [])]
    has_spans = bool(model_input_spans or loss_fn_input_spans)
    return Datum(
        model_input=ModelInput(chunks=chunks),
        loss_fn_inputs=inputs,
        model_input_spans=model_input_spans if has_spans else None,
        loss_fn_input_spans=loss_fn_input_spans if has_spans else None,
    )


def _chunk_from_message(msg: Mapping[str, Any], what: str) -> Any:
    if "encoded_text" in msg:
        tokens = _frombuffer(msg["encoded_text"].get("tokens", b""), _I32, f"{what} tokens")
        return EncodedTextChunk(tokens=tokens.tolist())
    if "image" in msg:
        image = msg["image"]
        return ImageChunk(
            data=bytes(image.get("data", b"")),
            format=image.get("format", ""),
            expected_tokens=image.get("expected_tokens"),
        )
    if "dmel" in msg:
        return DmelChunk(dmel=bytes(msg["dmel"].get("dmel", b"")))
    raise ValueError(f"{what}: a model_input chunk has no known kind set")


def _span_from_message(
    msg: Mapping[str, Any], what: str
) -> PromptProvenanceSpan | SampledProvenanceSpan:
    cls: type[PromptProvenanceSpan | SampledProvenanceSpan]
    if "sampled_tokens" in msg:
        arm, cls = msg["sampled_tokens"], SampledProvenanceSpan
    elif "prompt_tokens" in msg:
        arm, cls = msg["prompt_tokens"], PromptProvenanceSpan
    else:
        raise ValueError(f"{what}: a provenance span has no arm set")
    return cls(
        sequence_id=arm.get("sequence_id", ""),
        offset=arm.get("offset", 0),
        length=arm.get("length", 0),
    )


# ---------------------------------------------------------------------------------------
# ForwardBackwardOutput
# ---------------------------------------------------------------------------------------


def decode_forward_backward_output(payload: Buffer) -> ForwardBackwardOutput:
    """Decode a ``ForwardBackwardOutput`` as ``response_conv.deserialize_forward_backward_output``.

    - With no records, ``loss_fn_output_type`` is kept as sent (or "ArrayRecord" if empty);
      otherwise it is cut to the part after the last ``:``.
    - Every ArrayRecord's per-datum arrays are concatenated in order (ragged outputs come
      as several records); the datum count is the sum of ``num_datums``, or the first
      field's count when that is 0.
    - Each datum's shape is ``[elements / prod(trailing_shape), *trailing_shape]``; bf16 is
      widened to float32 and int32 to int64.

    Arrays are views of the payload where no widening was needed (:func:`_decode_payload`).
    Raises :class:`ResponseDecodeError` (a ``ValueError``) on malformed input, including
    offsets that are not non-decreasing within the data (the official decoder would slice
    garbage out of those), fields with fewer datums than the count (where it raises
    ``IndexError``), a negative count, and more than ``_MAX_BARE_DATUMS`` datums in
    records without fields (which the official decoder would build however many it is
    told: 2**62 empty dicts for a 12-byte message).
    """
    try:
        return _forward_backward_output(payload)
    except ValueError as exc:
        raise _response_error("ForwardBackwardOutput", exc) from exc


def _response_error(what: str, exc: ValueError) -> ResponseDecodeError:
    return ResponseDecodeError(
        f"The server's protobuf {what} cannot be decoded: {exc}. The server is broken or "
        "speaks another version of the protocol, or the answer was corrupted on the way; "
        "nothing was returned from it"
    )


# Datums of records that carry no fields (a server may strip them all, and then only
# ``num_datums`` tells how many datums there were) cost no bytes on the wire, so their
# count cannot be checked against the input; it is capped instead. One request never holds
# more than the server's ``fwdbwd_max_chunk_len`` datums (1024 by default).
_MAX_BARE_DATUMS: Final = 1 << 16


def _forward_backward_output(payload: Buffer) -> ForwardBackwardOutput:
    msg = _decode_payload(_FORWARD_BACKWARD_OUTPUT_MSG, payload)
    metrics = {name: float(v) for name, v in msg.get("metrics", {}).items()}
    records: list[dict[str, Any]] = msg.get("loss_fn_outputs", [])
    output_type: str = msg.get("loss_fn_output_type", "")
    if not records:
        return ForwardBackwardOutput(
            loss_fn_output_type=output_type or "ArrayRecord", loss_fn_outputs=[], metrics=metrics
        )
    per_field: dict[str, list[tuple[npt.NDArray[Any], TensorDtype]]] = {}
    for r, record in enumerate(records):
        for name, bt in record.get("fields", {}).items():
            per_field.setdefault(name, []).extend(
                _batched_tensor_datums(bt, f"loss_fn_outputs[{r}].fields[{name!r}]")
            )
    counts = [record.get("num_datums", 0) for record in records]
    if min(counts) < 0:
        raise ValueError(f"a negative num_datums {min(counts)}")
    num_datums = sum(counts)
    if num_datums == 0 and per_field:
        num_datums = len(next(iter(per_field.values())))
    if not per_field and num_datums > _MAX_BARE_DATUMS:
        raise ValueError(
            f"num_datums {num_datums} with no fields to back it (at most {_MAX_BARE_DATUMS})"
        )
    # With fields, each field must hold num_datums datums (8 offset bytes each), so the
    # loop below is bounded by the input.
    for name, datums in per_field.items():
        if len(datums) < num_datums:
            raise ValueError(
                f"ForwardBackwardOutput field {name!r} has {len(datums)} datums, "
                f"expected {num_datums}"
            )
    outputs = [
        {
            name: TensorData(data=datums[i][0], dtype=datums[i][1], shape=list(datums[i][0].shape))
            for name, datums in per_field.items()
        }
        for i in range(num_datums)
    ]
    return ForwardBackwardOutput(
        loss_fn_output_type=output_type.rsplit(":", 1)[-1],
        loss_fn_outputs=outputs,
        metrics=metrics,
    )


def _batched_tensor_datums(
    bt: Mapping[str, Any], what: str
) -> list[tuple[npt.NDArray[Any], TensorDtype]]:
    """Slice a decoded ``BatchedTensor`` into per-datum arrays shaped by ``trailing_shape``."""
    proto_dtype = bt.get("dtype", 0)
    np_dtype, dtype = _read_dtype(proto_dtype, what)
    raw = _frombuffer(bt.get("data", b""), np_dtype, what)
    offsets = _frombuffer(bt.get("offsets", b""), _I64, f"{what} offsets")
    if offsets.size == 0:
        return []
    if offsets[0] < 0 or np.any(offsets[1:] < offsets[:-1]) or offsets[-1] > raw.nbytes:
        raise ValueError(f"{what}: offsets are not non-decreasing within {raw.nbytes} data bytes")
    values = _widen(raw, proto_dtype)
    trailing = _decoded_shape(bt.get("trailing_shape", []), f"{what} trailing_shape", 1)
    trailing_size = math.prod(trailing)
    # Offsets count bytes of the wire dtype; widening keeps the element count, so element
    # indices are the same before and after it.
    bounds = (offsets // np_dtype.itemsize).tolist()
    out: list[tuple[npt.NDArray[Any], TensorDtype]] = []
    for start, stop in itertools.pairwise(bounds):
        arr = values[start:stop]
        leading = arr.size // trailing_size if trailing_size else 0
        out.append((_reshape(arr, [leading, *trailing], what), dtype))
    return out


def encode_forward_backward_output(
    out: ForwardBackwardOutput, *, deterministic: bool = False
) -> bytes:
    """Encode a ``ForwardBackwardOutput`` the way a Tinker server sends it.

    Consecutive datums whose fields agree in dtype and trailing shape share one ArrayRecord
    (ragged outputs take several). Each field becomes a BatchedTensor of float32 or int64
    data with int64 byte offsets; a sparse tensor is densified. ``type_tag`` and
    ``loss_fn_output_type`` are both ``out.loss_fn_output_type``. Every datum must have the
    same field names (the decoders pair datums across fields by position). A 0-d tensor
    comes back as shape ``[1]``: the wire keeps only trailing shapes.
    """
    w = Writer()
    if out.loss_fn_output_type:
        w.string(_FBO_TYPE, out.loss_fn_output_type)
    for record in _group_records(out.loss_fn_outputs):
        _write_record(w, out.loss_fn_output_type, record, deterministic)
    for name, value in _sorted_items(out.metrics, deterministic):
        w.blob(
            _FBO_METRICS,
            _string_field(_ENTRY_KEY, name) + _double_field(_ENTRY_VALUE_DOUBLE, float(value)),
        )
    return w.getvalue()


class _FieldLayout(NamedTuple):
    proto_dtype: int
    trailing_shape: tuple[int, ...]


class _Record(NamedTuple):
    """Datums that share one ArrayRecord: the same layout for every field."""

    layout: dict[str, _FieldLayout]  # in the first datum's field order
    datums: list[dict[str, npt.NDArray[Any]]]


def _group_records(outputs: Sequence[Mapping[str, TensorData]]) -> list[_Record]:
    records: list[_Record] = []
    for i, datum in enumerate(outputs):
        arrays: dict[str, npt.NDArray[Any]] = {}
        layout: dict[str, _FieldLayout] = {}
        for name, td in datum.items():
            spec = _WRITE_DTYPES.get(td.dtype)
            if spec is None:
                raise ValueError(f"loss_fn_outputs[{i}][{name!r}]: unsupported dtype {td.dtype}")
            arrays[name] = _contiguous(td.to_numpy(), spec[1])
            layout[name] = _FieldLayout(spec[0], tuple(arrays[name].shape[1:]))
        if records and layout.keys() != records[0].layout.keys():
            raise ValueError(
                f"loss_fn_outputs[{i}] has fields {sorted(layout)}, datum 0 has "
                f"{sorted(records[0].layout)}: every datum needs the same fields on the wire"
            )
        if not records or layout != records[-1].layout:
            records.append(_Record(layout, []))
        records[-1].datums.append(arrays)
    return records


def _write_record(w: Writer, type_tag: str, record: _Record, deterministic: bool) -> None:
    mark = w.begin(_FBO_OUTPUTS)
    if type_tag:
        w.string(_RECORD_TYPE_TAG, type_tag)
    for name, layout in _sorted_items(record.layout, deterministic):
        arrays = [datum[name] for datum in record.datums]
        offsets = np.zeros(len(arrays) + 1, dtype=_I64)
        np.cumsum([a.nbytes for a in arrays], out=offsets[1:])
        entry = w.begin(_RECORD_FIELDS)
        w.string(_ENTRY_KEY, name)
        bt = w.begin(_ENTRY_VALUE)
        if offsets[-1]:
            data = w.begin(_BT_DATA)  # every datum's array, concatenated by the final join
            for a in arrays:
                if a.nbytes:
                    w.raw(a)
            w.end(data)
        w.blob(_BT_OFFSETS, offsets)
        w.varint(_BT_DTYPE, layout.proto_dtype)
        w.packed_varints(_BT_TRAILING_SHAPE, layout.trailing_shape)
        w.end(bt)
        w.end(entry)
    w.varint(_RECORD_NUM_DATUMS, len(record.datums))  # a record always has a datum
    w.end(mark)


# ---------------------------------------------------------------------------------------
# SampleResponse
# ---------------------------------------------------------------------------------------


def decode_sample_response(payload: Buffer) -> SampleResponse:
    """Decode a ``SampleResponse`` as ``response_conv.deserialize_sample_response``.

    ``stop_reason`` 0/1 become "stop"/"length" (anything else is a ``ValueError``); empty
    ``logprobs``/``prompt_logprobs`` mean None; a TopkLogprobs with N or K equal to 0 means
    None (empty cells are (0, -99999.0) as sent); ``sequence_id`` is "" (the sampling client
    stamps it from the submit response; the official decoder leaves None). Arrays are views
    of the payload (:func:`_decode_payload`). Raises :class:`ResponseDecodeError` (a
    ``ValueError``) on malformed input.
    """
    try:
        return _sample_response(payload)
    except ValueError as exc:
        raise _response_error("SampleResponse", exc) from exc


def _sample_response(payload: Buffer) -> SampleResponse:
    msg = _decode_payload(_SAMPLE_RESPONSE_MSG, payload)
    sequences = [_sequence_from_message(s, i) for i, s in enumerate(msg.get("sequences", []))]
    prompt_logprobs = msg.get("prompt_logprobs")
    alt = msg.get("prompt_alt_tokens")
    return SampleResponse(
        sequences=sequences,
        prompt_logprobs_np=(
            _frombuffer(prompt_logprobs, _F32, "prompt_logprobs") if prompt_logprobs else None
        ),
        topk_prompt_logprobs_np=(
            _topk_from_message(msg["topk_prompt_logprobs"], "topk_prompt_logprobs")
            if "topk_prompt_logprobs" in msg
            else None
        ),
        target_prompt_logprobs=(
            _tensor_from_message(msg["target_prompt_logprobs"], "target_prompt_logprobs")
            if "target_prompt_logprobs" in msg
            else None
        ),
        prompt_alt_tokens=(
            PromptAltTokens(
                tokens=_tensor_from_message(alt.get("tokens", {}), "prompt_alt_tokens.tokens"),
                logprobs=_tensor_from_message(
                    alt.get("logprobs", {}), "prompt_alt_tokens.logprobs"
                ),
            )
            if alt is not None
            else None
        ),
        prompt_cache_hit_tokens=msg.get("prompt_cache_hit_tokens", 0),
    )


def _sequence_from_message(msg: Mapping[str, Any], index: int) -> SampledSequence:
    what = f"sequences[{index}]"
    code = msg.get("stop_reason", 0)
    stop_reason = _STOP_REASON_FROM_PROTO.get(code)
    if stop_reason is None:
        raise ValueError(f"Unknown stop_reason enum value {code} in proto SampleResponse")
    logprobs = msg.get("logprobs")
    return SampledSequence(  # sequence_id: "" until the sampling client stamps it
        stop_reason=stop_reason,
        tokens_np=_frombuffer(msg.get("tokens", b""), _I32, f"{what}.tokens"),
        logprobs_np=_frombuffer(logprobs, _F32, f"{what}.logprobs") if logprobs else None,
        topk_logprobs_np=(
            _topk_from_message(msg["topk_sampled_logprobs"], f"{what}.topk_sampled_logprobs")
            if "topk_sampled_logprobs" in msg
            else None
        ),
    )


def _topk_from_message(msg: Mapping[str, Any], what: str) -> TopkLogprobs | None:
    n: int = msg.get("length", 0)
    k: int = msg.get("k", 0)
    if n == 0 or k == 0:
        return None
    count = n * k
    ids, logprobs = msg.get("token_ids", b""), msg.get("logprobs", b"")
    # Like the official np.ndarray(buffer=...): the first N*K elements, extra bytes ignored.
    if len(ids) < count * 4 or len(logprobs) < count * 4:
        raise ValueError(f"{what}: fewer than length*k = {count} token ids or logprobs")
    return TopkLogprobs(
        token_ids=np.frombuffer(ids, dtype=_I32, count=count).reshape(n, k),
        logprobs=np.frombuffer(logprobs, dtype=_F32, count=count).reshape(n, k),
    )


def encode_sample_response(resp: SampleResponse) -> bytes:
    """Encode a ``SampleResponse`` the way a Tinker server sends it.

    Optional fields are written when not None (``logprobs_np``, ``prompt_logprobs_np``, the
    top-k matrices, ``target_prompt_logprobs``, ``prompt_alt_tokens``); ``sequence_id`` is
    not on the wire.
    """
    w = Writer()
    for seq in resp.sequences:
        mark = w.begin(_SR_SEQUENCES)
        code = _STOP_REASON_TO_PROTO.get(seq.stop_reason)
        if code is None:
            raise ValueError(f"Unknown stop_reason {seq.stop_reason!r}")
        if code:
            w.varint(_SEQ_STOP_REASON, code)
        tokens = _contiguous(seq.tokens_np if seq.tokens_np is not None else seq.tokens, _I32)
        if tokens.size:
            w.blob(_SEQ_TOKENS, tokens)
        logprobs = seq.logprobs_np if seq.logprobs_np is not None else seq.logprobs
        if logprobs is not None:
            w.blob(_SEQ_LOGPROBS, _contiguous(logprobs, _F32))
        if seq.topk_logprobs_np is not None:
            _write_topk(w, _SEQ_TOPK, seq.topk_logprobs_np)
        w.end(mark)
    if resp.prompt_logprobs_np is not None:
        w.blob(_SR_PROMPT_LOGPROBS, _contiguous(resp.prompt_logprobs_np, _F32))
    if resp.topk_prompt_logprobs_np is not None:
        _write_topk(w, _SR_TOPK_PROMPT, resp.topk_prompt_logprobs_np)
    if resp.prompt_cache_hit_tokens:
        w.varint(
            _SR_CACHE_HIT, _check_int32(resp.prompt_cache_hit_tokens, "prompt_cache_hit_tokens")
        )
    if resp.target_prompt_logprobs is not None:
        _write_tensor(w, _SR_TARGET_PROMPT, resp.target_prompt_logprobs, "target_prompt_logprobs")
    if resp.prompt_alt_tokens is not None:
        mark = w.begin(_SR_ALT_TOKENS)
        _write_tensor(w, _ALT_TOKENS, resp.prompt_alt_tokens.tokens, "prompt_alt_tokens.tokens")
        _write_tensor(
            w, _ALT_LOGPROBS, resp.prompt_alt_tokens.logprobs, "prompt_alt_tokens.logprobs"
        )
        w.end(mark)
    return w.getvalue()


def _write_topk(w: Writer, key: bytes, topk: TopkLogprobs) -> None:
    ids = _contiguous(topk.token_ids, _I32)
    logprobs = _contiguous(topk.logprobs, _F32)
    if ids.ndim != 2 or logprobs.shape != ids.shape:
        raise ValueError(
            f"TopkLogprobs needs two (length, k) matrices, got {ids.shape} and {logprobs.shape}"
        )
    n, k = ids.shape
    mark = w.begin(key)
    if ids.size:
        w.blob(_TOPK_IDS, ids)
        w.blob(_TOPK_LOGPROBS, logprobs)
    if k:
        w.varint(_TOPK_K, k)
    if n:
        w.varint(_TOPK_LENGTH, n)
    w.end(mark)


# ---------------------------------------------------------------------------------------
# zstd
# ---------------------------------------------------------------------------------------


def _zstd() -> Any:
    try:
        import zstandard
    except ImportError as exc:  # optional dependency
        raise ImportError(
            "zstd compression needs the 'zstandard' package: pip install 'tinker-async[zstd]'"
        ) from exc
    return zstandard


def compress(data: Buffer) -> bytes:
    """zstd-compress a request body exactly as the official SDK does (level 3, one frame)."""
    result: bytes = _zstd().ZstdCompressor().compress(data)
    return result


def decompress(data: Buffer, max_output_size: int = 1 << 31) -> bytes:
    """Decompress a zstd body (frames with or without a content size).

    Raises ``ValueError`` when the data is not valid zstd, is not a whole number of
    complete frames (a truncated body), or would exceed ``max_output_size`` bytes.
    """
    zstandard = _zstd()
    _check_zstd_frames(data)
    parts: list[bytes] = []
    size = 0
    try:
        # Streamed, so a small hostile body cannot make us allocate gigabytes first.
        with zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True) as reader:
            while chunk := reader.read(1 << 20):
                size += len(chunk)
                if size > max_output_size:
                    raise ValueError(f"zstd data decompresses to more than {max_output_size} bytes")
                parts.append(chunk)
    except zstandard.ZstdError as exc:
        raise ValueError(f"invalid zstd data: {exc}") from exc
    return b"".join(parts)


_ZSTD_FRAME_MAGIC: Final = 0xFD2FB528
_ZSTD_SKIPPABLE_MAGIC: Final = 0x184D2A50  # the low four bits are free
_ZSTD_DICT_ID_SIZES: Final = (0, 1, 2, 4)
_ZSTD_CONTENT_SIZE_SIZES: Final = (0, 2, 4, 8)  # flag 0 means 1 byte for a single segment


def _check_zstd_frames(data: Buffer) -> None:
    """Refuse zstd data that is not a whole number of complete frames.

    The stream reader stops without a word when its input ends inside a frame, and gives
    the output so far: a truncated body would pass for a shorter one. This walks the frame
    and block headers (RFC 8878, section 3.1) without decompressing anything: a few bytes
    per block of up to 128 KiB, linear in the input. Corrupt block contents are left to
    the decompressor, which refuses them.
    """
    view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    end = len(view)
    if not end:
        raise ValueError("empty zstd data: not even one frame")
    pos = 0
    while pos < end:
        if end - pos < 4:
            raise ValueError("truncated zstd data: a frame's magic number is cut short")
        magic = int.from_bytes(view[pos:pos + 4], "little")
        pos += 4
        if magic & ~0xF == _ZSTD_SKIPPABLE_MAGIC:
            if end - pos < 4:
                raise ValueError("truncated zstd data: a skippable frame's size is cut short")
            pos += 4 + int.from_bytes(view[pos:pos + 4], "little")
            if pos > end:
                raise ValueError("truncated zstd data: a skippable frame is cut short")
            continue
        if magic != _ZSTD_FRAME_MAGIC:
            raise ValueError(f"not zstd data: bad frame magic number {magic:#010x}")
        if pos >= end:
            raise ValueError("truncated zstd data: a frame header is cut short")
        descriptor = view[pos]
        single_segment = descriptor >> 5 & 1
        pos += (
            1
            + (1 - single_segment)  # window descriptor
            + _ZSTD_DICT_ID_SIZES[descriptor & 3]
            + (_ZSTD_CONTENT_SIZE_SIZES[descriptor >> 6] or single_segment)
        )
        while True:
            if end - pos < 3:
                raise ValueError("truncated zstd data: a frame ends before its last block")
            header = view[pos] | view[pos + 1] << 8 | view[pos + 2] << 16
            pos += 3
            block_type = header >> 1 & 3
            if block_type == 3:
                raise ValueError("invalid zstd data: reserved block type")
            pos += 1 if block_type == 1 else header >> 3  # RLE blocks hold one byte
            if pos > end:
                raise ValueError("truncated zstd data: a block is cut short")
            if header & 1:  # the frame's last block
                break
        if descriptor >> 2 & 1:  # content checksum
            pos += 4
            if pos > end:
                raise ValueError("truncated zstd data: a frame's checksum is cut short")
