"""The client's protobuf codec: ``forward_backward`` requests out, results in, no ``protobuf``.

The official SDK 0.38 sends ``forward_backward`` requests as protobuf and receives
``forward_backward`` and ``sample`` results as protobuf. The messages are described once, in
:mod:`tinker_async._proto_schema`; this module converts our types to and from them,
byte-compatible with the official generated module ``tinker.proto.tinker_public_pb2``:

- :func:`encode_forward_backward_request` and :class:`ForwardBackwardBody` give the bytes of
  the SDK's ``request_conv.forward_backward_request_to_proto(...).SerializeToString()``.
  They are identical whenever every map holds at most one entry. The official serializer
  (upb) writes map entries in hash-table order, which is randomised per process, so the
  SDK's own bytes for a multi-entry map differ from run to run; we write map entries in
  insertion order, and with ``deterministic=True`` in sorted order, which is
  byte-identical to ``SerializeToString(deterministic=True)``.
- :func:`decode_forward_backward_output` and :func:`decode_sample_response` give what
  ``response_conv`` gives (see their docstrings for the few deliberate differences).

The server's half (decoding requests, encoding results, zstd decompression) is
:mod:`tinker_async.local._proto_server`; it shares the tensor conversions below.

Packed arrays go through numpy: they are written straight from the arrays' buffers (one
copy, into the joined output) and read back as ``np.frombuffer`` views of the payload, never
copied array by array (see :func:`decode_payload` for the one bulk copy of a ``bytes``
payload, which keeps the arrays writable).

Optional zstd (:func:`compress`) uses ``zstandard``, imported on first use.

Hostile or broken input. The decoders never trust a count from the wire: every count or
length that becomes an allocation or a loop (datum counts, offsets, ``length * k``, shapes)
is checked against the bytes that back it first, shapes have at most 64 dimensions, and
the work is linear in the input (see :mod:`tinker_async._proto_wire`). A result that cannot
be decoded raises :class:`ResponseDecodeError` (an ``APIResponseValidationError`` that is
also a ``ValueError``). The encoders refuse integers their field cannot hold, as the
official (upb) encoder does, with a ``ValueError``
(:class:`~tinker_async.errors.InvalidRequestError`) naming the field.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from . import _proto_schema as S
from ._proto_schema import DType, StopReasonCode
from ._proto_wire import Buffer, Field, Message, Part, Writer, decode, frame
from .errors import APIResponseValidationError, InvalidRequestError
from .types import (
    Datum,
    DmelChunk,
    EncodedTextChunk,
    ForwardBackwardOutput,
    ImageAssetPointerChunk,
    ImageChunk,
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
    "F32",
    "I32",
    "I64",
    "STOP_REASONS",
    "WRITE_DTYPES",
    "ForwardBackwardBody",
    "ResponseDecodeError",
    "TokenRangeError",
    "as_array",
    "check_int",
    "compress",
    "decode_forward_backward_output",
    "decode_payload",
    "decode_sample_response",
    "encode_forward_backward_request",
    "frombuffer",
    "sorted_items",
    "tensor_from_message",
    "write_tensor",
    "zstandard_module",
]

# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------


class ResponseDecodeError(APIResponseValidationError, ValueError):
    """A protobuf result from the server that cannot be decoded: truncated, malformed, or
    holding counts or shapes that its own bytes cannot back.

    An :class:`~tinker_async.errors.APIResponseValidationError` (what the client raises for
    every answer it cannot read) and a ``ValueError`` (what this codec documents).
    """


class TokenRangeError(InvalidRequestError, OverflowError):
    """A token id that int32 cannot hold. Also an ``OverflowError``, which is what the
    official SDK raises there (numpy's), so code written for it still catches it."""


# ---------------------------------------------------------------------------------------
# Shared with the server's codec: dtypes, integer checks, arrays, tensors
# ---------------------------------------------------------------------------------------

I32: Final = np.dtype("<i4")
I64: Final = np.dtype("<i8")
F32: Final = np.dtype("<f4")

# Public TensorDtype -> (proto DType, little-endian numpy dtype) for writing. The public
# types only know float32 and int64, as in the official request_conv.
WRITE_DTYPES: Final[dict[str, tuple[DType, np.dtype[Any]]]] = {
    "float32": (DType.FLOAT32, F32),
    "int64": (DType.INT64, I64),
}
# proto DType -> (numpy dtype of the bytes, public TensorDtype after widening).
_READ_DTYPES: Final[dict[int, tuple[np.dtype[Any], TensorDtype]]] = {
    DType.FLOAT32: (F32, "float32"),
    DType.INT64: (I64, "int64"),
    DType.INT32: (np.dtype("<i4"), "int64"),
    DType.BFLOAT16: (np.dtype("<u2"), "float32"),
}
# proto StopReason <-> public StopReason.
STOP_REASONS: Final[dict[int, StopReason]] = {
    StopReasonCode.STOP: "stop",
    StopReasonCode.LENGTH: "length",
}

_INT_RANGES: Final[dict[str, tuple[int, int]]] = {
    "int32": (-(1 << 31), (1 << 31) - 1),
    "int64": (-(1 << 63), (1 << 63) - 1),
    "uint32": (0, (1 << 32) - 1),
}


def check_int(value: int, kind: str, what: str) -> int:
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


def sorted_items(mapping: Mapping[str, Any], deterministic: bool) -> Iterable[tuple[str, Any]]:
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


def as_array(values: Any, dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """``values`` as a C-contiguous little-endian array of ``dtype`` (no copy if it is one)."""
    return np.ascontiguousarray(values, dtype=dtype)


def _tensor_values(td: TensorData) -> npt.NDArray[Any]:
    """The array a TensorData holds: the dense data, or the CSR values when sparse (the
    public ``data`` is a list; the codec writes the array's buffer as it is)."""
    return td._numpy


def write_tensor(w: Writer, f: Field, td: TensorData, what: str) -> None:
    """Write the ``Tensor`` message field ``f``, as ``request_conv._tensor_data_to_proto``
    fills it: dense, or CSR when ``td`` is sparse."""
    spec = WRITE_DTYPES.get(td.dtype)
    if spec is None:
        raise ValueError(f"Unsupported TensorData dtype for proto write: {td.dtype}")
    proto_dtype, np_dtype = spec
    values = as_array(_tensor_values(td), np_dtype)
    if td.sparse_crow_indices is None:
        _write_dense_tensor(w, f, proto_dtype, values, td.shape, what)
        return
    if td.sparse_col_indices is None:
        raise ValueError("sparse_col_indices required with sparse_crow_indices")
    mark = w.begin(f)
    csr = w.begin(S.TENSOR["sparse_csr"])
    w.blob(S.SPARSE_CSR["values"], values)
    w.blob(S.SPARSE_CSR["crow_indices"], as_array(td.sparse_crow_indices, I64))
    w.blob(S.SPARSE_CSR["col_indices"], as_array(td.sparse_col_indices, I64))
    w.end(csr)
    _write_tensor_tail(w, proto_dtype, td.shape, what)
    w.end(mark)


def _write_dense_tensor(
    w: Writer, f: Field, proto_dtype: int, values: Part, shape: Sequence[int] | None, what: str
) -> None:
    """The one writer of a dense ``Tensor``: ``values`` are its bytes."""
    mark = w.begin(f)
    w.blob(S.TENSOR["dense"], values)  # a oneof member: written even when empty
    _write_tensor_tail(w, proto_dtype, shape, what)
    w.end(mark)


def _write_tensor_tail(
    w: Writer, proto_dtype: int, shape: Sequence[int] | None, what: str
) -> None:
    """A ``Tensor``'s fields after its data: the dtype, then the shape (if any)."""
    w.varint(S.TENSOR["dtype"], proto_dtype)
    if shape is not None:
        checked = [check_int(v, "int64", f"{what}.shape[{i}]") for i, v in enumerate(shape)]
        w.packed_varints(S.TENSOR["shape"], checked)


def decode_payload(schema: Message, payload: Buffer) -> dict[str, Any]:
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


def frombuffer(data: Buffer, dtype: np.dtype[Any], what: str) -> npt.NDArray[Any]:
    """Zero-copy view of a bytes field as an array, with a clear error when it is ragged."""
    if len(data) % dtype.itemsize:
        raise ValueError(
            f"{what}: {len(data)} bytes is not a whole number of {dtype.name} elements"
        )
    return np.frombuffer(data, dtype=dtype)


def _widen(values: npt.NDArray[Any], proto_dtype: int) -> npt.NDArray[Any]:
    """Widen what the public types cannot hold: bf16 -> f32 (exact), int32 -> int64."""
    if proto_dtype == DType.BFLOAT16:
        # A bfloat16 is the upper half of a float32.
        return (values.astype(np.uint32) << 16).view(np.float32)
    if proto_dtype == DType.INT32:
        return values.astype(np.int64)
    return values


def _read_dtype(proto_dtype: int, what: str) -> tuple[np.dtype[Any], TensorDtype]:
    spec = _READ_DTYPES.get(proto_dtype)
    if spec is None:
        raise ValueError(f"{what}: unsupported proto DType value {proto_dtype}")
    return spec


def tensor_from_message(msg: Mapping[str, Any], what: str) -> TensorData:
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
        values = _widen(frombuffer(csr.get("values", b""), np_dtype, what), proto_dtype)
        return TensorData(
            data=values,
            dtype=dtype,
            shape=shape,
            sparse_crow_indices=frombuffer(csr.get("crow_indices", b""), I64, what).tolist(),
            sparse_col_indices=frombuffer(csr.get("col_indices", b""), I64, what).tolist(),
        )
    values = _widen(frombuffer(msg.get("dense", b""), np_dtype, what), proto_dtype)
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

# The fields every request or datum writes, looked up once (the rest are looked up where
# they are written).
_REQUEST: Final = S.FORWARD_BACKWARD_REQUEST
_MODEL_ID: Final = _REQUEST["model_id"]
_SEQ_ID: Final = _REQUEST["seq_id"]
_DATA: Final = _REQUEST["data"]
_LOSS_FN: Final = _REQUEST["loss_fn"]
_FORWARD_ONLY: Final = _REQUEST["forward_only"]
_INPUTS: Final = S.DATUM["loss_fn_inputs"]


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
    sent as 0; a float ``loss_fn_config`` value goes both to the legacy ``loss_fn_config``
    map and to ``loss_fn_config_v2`` as ``number``, a string only to v2 as ``text``; text tokens are
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
        self._header = len(w.getvalue()) + len(_SEQ_ID.key) + 10
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
    """``model_id`` and ``seq_id`` (None is sent as 0, that is not at all)."""
    w.string(_MODEL_ID, model_id)
    w.varint(_SEQ_ID, check_int(seq_id if seq_id is not None else 0, "int32", "seq_id"))


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
        _write_datum(w, datum, deterministic, i)
    w.string(_LOSS_FN, loss_fn)
    config = _config_items(loss_fn_config, deterministic) if loss_fn_config else ()
    for name, value in config:
        if not isinstance(value, str):  # the legacy map holds the numbers only
            w.double_entry(_REQUEST["loss_fn_config"], name, value)
    w.varint(_FORWARD_ONLY, 1 if forward_only else 0)
    v2 = _REQUEST["loss_fn_config_v2"]
    for name, value in config:
        entry = w.entry(v2, name)
        mark = w.begin(v2.inner("value"))
        if isinstance(value, str):
            w.string(S.LOSS_CONFIG_VALUE["text"], value)
        else:
            w.double(S.LOSS_CONFIG_VALUE["number"], value)
        w.end(mark)
        w.end(entry)


def _config_items(
    config: Mapping[str, float | str], deterministic: bool
) -> list[tuple[str, float | str]]:
    """``loss_fn_config``'s entries in writing order, every number as a float."""
    items: list[tuple[str, float | str]] = []
    for name, value in sorted_items(config, deterministic):
        if not isinstance(value, str):
            try:
                value = float(value)
            except (OverflowError, TypeError, ValueError) as exc:
                raise InvalidRequestError(
                    f"loss_fn_config[{name!r}]={value!r} is neither a string nor a number "
                    f"a double can hold: {exc}"
                ) from None
        items.append((name, value))
    return items


def _write_datum(w: Writer, datum: Datum, deterministic: bool, index: int) -> None:
    """Write one ``Datum``: its chunks, its ``loss_fn_inputs``, then its spans.

    Nearly every datum holds only text chunks and dense tensors. Around each of their
    payloads, the bytes depend only on sizes, names, dtypes and shapes, which repeat from
    datum to datum: they are cached frames, made once by the writers of those parts
    (:func:`_write_text_chunk`, :func:`_write_dense_tensor`, see
    :func:`~tinker_async._proto_wire.frame`), so such a datum costs one cache look-up per
    payload and nothing is copied until the final join. This loop runs for every payload
    of every request, so it appends to the Writer's parts itself (a method call per
    payload costs a few percent of the encode).
    """
    mark = w.begin(_DATA)
    for j, chunk in enumerate(datum.model_input.chunks):
        if type(chunk) is EncodedTextChunk:
            tokens = _int32_bytes(chunk.tokens, index, j)
            n = len(tokens)
            head, tail = _TEXT_FRAMES.get(n) or _text_chunk_frame(n)
            w.parts += (head, tokens, tail)
            w.size += len(head) + n + len(tail)
        else:
            _write_chunk(w, chunk, index, j)
    for name, td in sorted_items(datum.loss_fn_inputs, deterministic):
        spec = WRITE_DTYPES.get(td.dtype)
        if td.sparse_crow_indices is None and spec is not None:
            values = td._numpy  # _tensor_values, inlined: this runs for every tensor
            if values.dtype != spec[1] or not values.flags.c_contiguous:
                values = as_array(values, spec[1])
            n = values.nbytes
            key = (name, spec[0], n, None if td.shape is None else tuple(td.shape))
            head, tail = _INPUT_FRAMES.get(key) or _dense_input_frame(*key)
            w.parts += (head, values.data, tail)
            w.size += len(head) + n + len(tail)
        else:
            entry = w.entry(_INPUTS, name)
            write_tensor(w, _INPUTS.inner("value"), td, f"data[{index}].loss_fn_inputs[{name!r}]")
            w.end(entry)
    if datum.model_input_spans or datum.loss_fn_input_spans:
        _write_spans(w, datum, index)
    w.end(mark)


def _write_spans(w: Writer, datum: Datum, index: int) -> None:
    """A datum's ``model_input_spans``, then its ``loss_fn_input_spans``."""
    for f, spans in (
        (S.DATUM["model_input_spans"], datum.model_input_spans),
        (S.DATUM["loss_fn_input_spans"], datum.loss_fn_input_spans),
    ):
        for k, span in enumerate(spans or ()):
            _write_span(w, f, span, f"data[{index}].{f.name}[{k}]")


def _write_text_chunk(w: Writer, tokens: Part) -> None:
    """The one writer of a text chunk: ``model_input{encoded_text{tokens}}``."""
    outer = w.begin(S.DATUM["model_input"])
    inner = w.begin(S.CHUNK["encoded_text"])
    w.blob(S.ENCODED_TEXT_CHUNK["tokens"], tokens)
    w.end(inner)
    w.end(outer)


# Frames by payload size (and entry name, dtype, shape): a few distinct keys per training
# run. The caches are plain dicts (a look-up is cheaper than an lru_cache call), emptied
# when full.
_FRAME_CACHE_SIZE: Final = 4096
_TEXT_FRAMES: dict[int, tuple[bytes, bytes]] = {}
_INPUT_FRAMES: dict[tuple[str, int, int, tuple[int, ...] | None], tuple[bytes, bytes]] = {}


def _text_chunk_frame(nbytes: int) -> tuple[bytes, bytes]:
    """The bytes around a text chunk's ``nbytes`` of tokens (made and cached)."""
    if len(_TEXT_FRAMES) >= _FRAME_CACHE_SIZE:
        _TEXT_FRAMES.clear()
    made = _TEXT_FRAMES[nbytes] = frame(_write_text_chunk, nbytes)
    return made


def _dense_input_frame(
    name: str, proto_dtype: int, nbytes: int, shape: tuple[int, ...] | None
) -> tuple[bytes, bytes]:
    """The bytes around the data of a ``loss_fn_inputs`` entry holding a dense tensor
    (made and cached)."""

    def write(w: Writer, values: Part) -> None:
        entry = w.entry(_INPUTS, name)
        # Checked here, once per distinct shape: a cached frame has been checked already.
        _write_dense_tensor(w, _INPUTS.inner("value"), proto_dtype, values, shape,
                            f"loss_fn_inputs[{name!r}]")
        w.end(entry)

    if len(_INPUT_FRAMES) >= _FRAME_CACHE_SIZE:
        _INPUT_FRAMES.clear()
    made = _INPUT_FRAMES[name, proto_dtype, nbytes, shape] = frame(write, nbytes)
    return made


def _write_chunk(w: Writer, chunk: Any, datum: int, index: int) -> None:
    """Write one ``Datum.model_input`` entry: a ``Chunk`` holding the chunk's oneof arm."""
    if isinstance(chunk, EncodedTextChunk):
        _write_text_chunk(w, _int32_bytes(chunk.tokens, datum, index))
        return
    if isinstance(chunk, ImageAssetPointerChunk):
        raise ValueError(
            "ImageAssetPointerChunk cannot be sent in a forward_backward request: the protobuf "
            "wire format has no field for it (the official SDK rejects it too); send the "
            "image bytes as an ImageChunk instead"
        )
    outer = w.begin(S.DATUM["model_input"])
    if isinstance(chunk, ImageChunk):
        inner = w.begin(S.CHUNK["image"])
        w.blob(S.IMAGE_CHUNK["data"], chunk.data)
        w.string(S.IMAGE_CHUNK["format"], chunk.format)
        if chunk.expected_tokens is not None:
            expected = check_int(chunk.expected_tokens, "int32",
                                 f"data[{datum}].model_input.chunks[{index}].expected_tokens")
            w.varint(S.IMAGE_CHUNK["expected_tokens"], expected)  # optional: 0 is written
    elif isinstance(chunk, DmelChunk):
        inner = w.begin(S.CHUNK["dmel"])
        w.blob(S.DMEL_CHUNK["dmel"], chunk.dmel)
    else:
        raise ValueError(f"Unsupported model input chunk type: {type(chunk).__name__}")
    w.end(inner)
    w.end(outer)


def _write_span(
    w: Writer, f: Field, span: PromptProvenanceSpan | SampledProvenanceSpan, what: str
) -> None:
    """Write one ``ProvenanceSpan``; the arm is chosen by Python type, as in the SDK."""
    mark = w.begin(f)
    arm = S.PROVENANCE_SPAN[
        "sampled_tokens" if isinstance(span, SampledProvenanceSpan) else "prompt_tokens"
    ]
    inner = w.begin(arm)
    fields = arm.inner
    w.string(fields("sequence_id"), span.sequence_id)
    w.varint(fields("offset"), check_int(span.offset, "int64", f"{what}.offset"))
    w.varint(fields("length"), check_int(span.length, "int64", f"{what}.length"))
    w.end(inner)
    w.end(mark)


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
    elif type(values) is np.ndarray and values.dtype == I32 and values.flags.c_contiguous:
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
    return as_array(arr, I32)


@functools.lru_cache(maxsize=256)
def _int32_packer(count: int) -> struct.Struct:
    return struct.Struct(f"<{count}i")


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

    Arrays are views of the payload where no widening was needed (:func:`decode_payload`).
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
    msg = decode_payload(S.FORWARD_BACKWARD_OUTPUT, payload)
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
    raw = frombuffer(bt.get("data", b""), np_dtype, what)
    offsets = frombuffer(bt.get("offsets", b""), I64, f"{what} offsets")
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


# ---------------------------------------------------------------------------------------
# SampleResponse
# ---------------------------------------------------------------------------------------


def decode_sample_response(payload: Buffer) -> SampleResponse:
    """Decode a ``SampleResponse`` as ``response_conv.deserialize_sample_response``.

    ``stop_reason`` 0/1 become "stop"/"length" (anything else is a ``ValueError``); empty
    ``logprobs``/``prompt_logprobs`` mean None; a TopkLogprobs with N or K equal to 0 means
    None (empty cells are (0, -99999.0) as sent); ``sequence_id`` is "" (the sampling client
    stamps it from the submit response; the official decoder leaves None). Arrays are views
    of the payload (:func:`decode_payload`). Raises :class:`ResponseDecodeError` (a
    ``ValueError``) on malformed input.
    """
    try:
        return _sample_response(payload)
    except ValueError as exc:
        raise _response_error("SampleResponse", exc) from exc


def _sample_response(payload: Buffer) -> SampleResponse:
    msg = decode_payload(S.SAMPLE_RESPONSE, payload)
    sequences = [_sequence_from_message(s, i) for i, s in enumerate(msg.get("sequences", []))]
    prompt_logprobs = msg.get("prompt_logprobs")
    alt = msg.get("prompt_alt_tokens")
    return SampleResponse(
        sequences=sequences,
        prompt_logprobs_np=(
            frombuffer(prompt_logprobs, F32, "prompt_logprobs") if prompt_logprobs else None
        ),
        topk_prompt_logprobs_np=(
            _topk_from_message(msg["topk_prompt_logprobs"], "topk_prompt_logprobs")
            if "topk_prompt_logprobs" in msg
            else None
        ),
        target_prompt_logprobs=(
            tensor_from_message(msg["target_prompt_logprobs"], "target_prompt_logprobs")
            if "target_prompt_logprobs" in msg
            else None
        ),
        prompt_alt_tokens=(
            PromptAltTokens(
                tokens=tensor_from_message(alt.get("tokens", {}), "prompt_alt_tokens.tokens"),
                logprobs=tensor_from_message(
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
    stop_reason = STOP_REASONS.get(code)
    if stop_reason is None:
        raise ValueError(f"Unknown stop_reason enum value {code} in proto SampleResponse")
    logprobs = msg.get("logprobs")
    return SampledSequence(  # sequence_id: "" until the sampling client stamps it
        stop_reason=stop_reason,
        tokens_np=frombuffer(msg.get("tokens", b""), I32, f"{what}.tokens"),
        logprobs_np=frombuffer(logprobs, F32, f"{what}.logprobs") if logprobs else None,
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
        token_ids=np.frombuffer(ids, dtype=I32, count=count).reshape(n, k),
        logprobs=np.frombuffer(logprobs, dtype=F32, count=count).reshape(n, k),
    )


# ---------------------------------------------------------------------------------------
# zstd
# ---------------------------------------------------------------------------------------


def zstandard_module() -> Any:
    """The ``zstandard`` module, imported on first use (an optional dependency)."""
    try:
        import zstandard
    except ImportError as exc:
        raise ImportError(
            "zstd compression needs the 'zstandard' package: pip install 'tinker-async[zstd]'"
        ) from exc
    return zstandard


def compress(data: Buffer) -> bytes:
    """zstd-compress a request body exactly as the official SDK does (level 3, one frame)."""
    result: bytes = zstandard_module().ZstdCompressor().compress(data)
    return result
