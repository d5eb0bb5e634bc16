"""The embedded server's half of the protobuf codec: requests in, results out.

A Tinker server reads ``ForwardBackwardRequest`` bodies (zstd-compressed or not) and sends
``ForwardBackwardOutput`` and ``SampleResponse`` results; the client does the opposite, in
:mod:`tinker_async._proto`, whose tensor conversions this module shares. The messages are
the tables of :mod:`tinker_async._proto_schema`. Only the server needs this module, so the
library never imports it.

The request decoder and :func:`decompress` face whatever a client sends: they raise
``ValueError`` on malformed input, bound every count by the bytes behind it, and refuse a
truncated zstd body (see :mod:`tinker_async._proto_wire` on hostile input).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, NamedTuple

import numpy as np
import numpy.typing as npt

from .. import _proto_schema as S
from .._proto import (
    F32,
    I32,
    I64,
    STOP_REASONS,
    WRITE_DTYPES,
    as_array,
    check_int,
    decode_payload,
    frombuffer,
    sorted_items,
    tensor_from_message,
    write_tensor,
    zstandard_module,
)
from .._proto_wire import Buffer, Field, Writer
from ..types import (
    Datum,
    DmelChunk,
    EncodedTextChunk,
    ForwardBackwardOutput,
    ImageChunk,
    ModelInput,
    PromptProvenanceSpan,
    SampledProvenanceSpan,
    SampleResponse,
    TensorData,
    TopkLogprobs,
)

__all__ = [
    "ForwardBackwardRequestParts",
    "decode_forward_backward_request",
    "decompress",
    "encode_forward_backward_output",
    "encode_sample_response",
]

# ---------------------------------------------------------------------------------------
# ForwardBackwardRequest
# ---------------------------------------------------------------------------------------


class ForwardBackwardRequestParts(NamedTuple):
    """What :func:`decode_forward_backward_request` returns."""

    model_id: str
    seq_id: int
    data: list[Datum]
    loss_fn: str
    loss_fn_config: dict[str, float | str] | None
    forward_only: bool


def decode_forward_backward_request(payload: Buffer) -> ForwardBackwardRequestParts:
    """Decode a ``ForwardBackwardRequest``.

    ``loss_fn_config`` prefers ``loss_fn_config_v2`` (as servers do) and adds keys found only
    in the legacy float map; it is None when both are empty. Tokens come back as lists
    (``EncodedTextChunk`` holds a sequence of ints), tensors as views of the payload. A
    dense tensor sent without a shape gets ``shape=None``. Spans: both lists when either
    is non-empty, else None (the wire cannot tell an empty list from None). Raises
    ``ValueError`` on malformed input.
    """
    msg = decode_payload(S.FORWARD_BACKWARD_REQUEST, payload)
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
        name: tensor_from_message(t, f"{what}.loss_fn_inputs[{name!r}]")
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
        tokens = frombuffer(msg["encoded_text"].get("tokens", b""), I32, f"{what} tokens")
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
    w.string(S.FORWARD_BACKWARD_OUTPUT["loss_fn_output_type"], out.loss_fn_output_type)
    for record in _group_records(out.loss_fn_outputs):
        _write_record(w, out.loss_fn_output_type, record, deterministic)
    for name, value in sorted_items(out.metrics, deterministic):
        w.double_entry(S.FORWARD_BACKWARD_OUTPUT["metrics"], name, float(value))
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
            spec = WRITE_DTYPES.get(td.dtype)
            if spec is None:
                raise ValueError(f"loss_fn_outputs[{i}][{name!r}]: unsupported dtype {td.dtype}")
            arrays[name] = as_array(td.to_numpy(), spec[1])
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
    fields = S.ARRAY_RECORD["fields"]
    bt_fields = fields.inner("value").inner
    mark = w.begin(S.FORWARD_BACKWARD_OUTPUT["loss_fn_outputs"])
    w.string(S.ARRAY_RECORD["type_tag"], type_tag)
    for name, layout in sorted_items(record.layout, deterministic):
        arrays = [datum[name] for datum in record.datums]
        offsets = np.zeros(len(arrays) + 1, dtype=I64)
        np.cumsum([a.nbytes for a in arrays], out=offsets[1:])
        entry = w.entry(fields, name)
        bt = w.begin(fields.inner("value"))
        if offsets[-1]:
            data = w.begin(bt_fields("data"))  # every datum's array, concatenated by the join
            for a in arrays:
                if a.nbytes:
                    w.raw(a)
            w.end(data)
        w.blob(bt_fields("offsets"), offsets)
        w.varint(bt_fields("dtype"), layout.proto_dtype)
        w.packed_varints(bt_fields("trailing_shape"), layout.trailing_shape)
        w.end(bt)
        w.end(entry)
    w.varint(S.ARRAY_RECORD["num_datums"], len(record.datums))  # a record always has a datum
    w.end(mark)


# ---------------------------------------------------------------------------------------
# SampleResponse
# ---------------------------------------------------------------------------------------

_STOP_REASON_CODES: Final[dict[str, int]] = {v: k for k, v in STOP_REASONS.items()}


def encode_sample_response(resp: SampleResponse) -> bytes:
    """Encode a ``SampleResponse`` the way a Tinker server sends it.

    Optional fields are written when not None (``logprobs_np``, ``prompt_logprobs_np``, the
    top-k matrices, ``target_prompt_logprobs``, ``prompt_alt_tokens``); ``sequence_id`` is
    not on the wire.
    """
    w = Writer()
    seq_fields = S.SAMPLED_SEQUENCE
    for seq in resp.sequences:
        mark = w.begin(S.SAMPLE_RESPONSE["sequences"])
        code = _STOP_REASON_CODES.get(seq.stop_reason)
        if code is None:
            raise ValueError(f"Unknown stop_reason {seq.stop_reason!r}")
        w.varint(seq_fields["stop_reason"], code)
        tokens = seq.tokens_np if seq.tokens_np is not None else seq.tokens
        w.blob(seq_fields["tokens"], as_array(tokens, I32))
        logprobs = seq.logprobs_np if seq.logprobs_np is not None else seq.logprobs
        if logprobs is not None:
            w.blob(seq_fields["logprobs"], as_array(logprobs, F32))
        if seq.topk_logprobs_np is not None:
            _write_topk(w, seq_fields["topk_sampled_logprobs"], seq.topk_logprobs_np)
        w.end(mark)
    if resp.prompt_logprobs_np is not None:
        w.blob(S.SAMPLE_RESPONSE["prompt_logprobs"], as_array(resp.prompt_logprobs_np, F32))
    if resp.topk_prompt_logprobs_np is not None:
        _write_topk(w, S.SAMPLE_RESPONSE["topk_prompt_logprobs"], resp.topk_prompt_logprobs_np)
    w.varint(
        S.SAMPLE_RESPONSE["prompt_cache_hit_tokens"],
        check_int(resp.prompt_cache_hit_tokens, "int32", "prompt_cache_hit_tokens"),
    )
    if resp.target_prompt_logprobs is not None:
        write_tensor(w, S.SAMPLE_RESPONSE["target_prompt_logprobs"],
                     resp.target_prompt_logprobs, "target_prompt_logprobs")
    if resp.prompt_alt_tokens is not None:
        alt = S.SAMPLE_RESPONSE["prompt_alt_tokens"]
        mark = w.begin(alt)
        write_tensor(w, alt.inner("tokens"), resp.prompt_alt_tokens.tokens,
                     "prompt_alt_tokens.tokens")
        write_tensor(w, alt.inner("logprobs"), resp.prompt_alt_tokens.logprobs,
                     "prompt_alt_tokens.logprobs")
        w.end(mark)
    return w.getvalue()


def _write_topk(w: Writer, f: Field, topk: TopkLogprobs) -> None:
    ids = as_array(topk.token_ids, I32)
    logprobs = as_array(topk.logprobs, F32)
    if ids.ndim != 2 or logprobs.shape != ids.shape:
        raise ValueError(
            f"TopkLogprobs needs two (length, k) matrices, got {ids.shape} and {logprobs.shape}"
        )
    n, k = ids.shape
    mark = w.begin(f)
    w.blob(S.TOPK_LOGPROBS["token_ids"], ids)
    w.blob(S.TOPK_LOGPROBS["logprobs"], logprobs)
    w.varint(S.TOPK_LOGPROBS["k"], k)
    w.varint(S.TOPK_LOGPROBS["length"], n)
    w.end(mark)


# ---------------------------------------------------------------------------------------
# zstd
# ---------------------------------------------------------------------------------------


def decompress(data: Buffer, max_output_size: int = 1 << 31) -> bytes:
    """Decompress a zstd body (frames with or without a content size).

    Raises ``ValueError`` when the data is not valid zstd, is not a whole number of
    complete frames (a truncated body), or would exceed ``max_output_size`` bytes.
    """
    zstandard = zstandard_module()
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
