"""JSON on the wire: one encoder, cached decoders, and the dataclass <-> wire mapping.

The Struct types encode and decode natively. The dataclass types (``Datum``,
``TensorData``, ``SampleResponse``, ``ForwardBackwardOutput``...) are user-facing
objects, not wire schemas, so they go through their ``*Wire`` Structs here: that keeps
``None`` fields off the wire and gives each its official JSON shape.

Decoding is strict first; on a validation error it retries once after repairing the
known server deviations (see ``_codec.repaired``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, overload

import msgspec

from ._codec import convert, decode_json_lenient, enc_hook
from ._datum import (
    Datum,
    DatumWire,
    PromptProvenanceSpan,
    ProvenanceSpanWire,
    SampledProvenanceSpan,
)
from ._sample_response import (
    PromptAltTokens,
    PromptAltTokensWire,
    SampledSequence,
    SampledSequenceWire,
    SampleResponse,
    SampleResponseWire,
    TopkLogprobs,
    topk_to_lists,
)
from ._tensor import TensorData, TensorDataWire
from ._training import (
    ForwardBackwardInput,
    ForwardBackwardInputWire,
    ForwardBackwardOutput,
    ForwardBackwardOutputWire,
    ForwardBackwardRequest,
    ForwardBackwardRequestWire,
    ForwardRequest,
)

__all__ = [
    "decode_forward_backward_output_json",
    "decode_json",
    "decode_sample_response_json",
    "encode_json",
    "from_builtins",
    "to_builtins",
    "to_wire",
]

T = TypeVar("T")

_ENCODER = msgspec.json.Encoder(enc_hook=enc_hook)


def _alt_tokens_to_wire(alt: PromptAltTokens) -> PromptAltTokensWire:
    return PromptAltTokensWire(
        tokens=TensorDataWire.from_tensor_data(alt.tokens),
        logprobs=TensorDataWire.from_tensor_data(alt.logprobs),
    )


# Public dataclass type -> its wire form.
_TO_WIRE: dict[type, Callable[[Any], Any]] = {
    TensorData: TensorDataWire.from_tensor_data,
    Datum: DatumWire.from_datum,
    PromptProvenanceSpan: ProvenanceSpanWire.from_span,
    SampledProvenanceSpan: ProvenanceSpanWire.from_span,
    ForwardBackwardInput: ForwardBackwardInputWire.from_input,
    ForwardBackwardRequest: ForwardBackwardRequestWire.from_request,
    ForwardRequest: ForwardBackwardRequestWire.from_request,
    ForwardBackwardOutput: ForwardBackwardOutputWire.from_output,
    SampledSequence: SampledSequenceWire.from_sequence,
    SampleResponse: SampleResponseWire.from_response,
    PromptAltTokens: _alt_tokens_to_wire,
    TopkLogprobs: topk_to_lists,
}

# Public dataclass type -> (wire Struct to decode, conversion to the public type).
_FROM_WIRE: dict[type, tuple[type, Callable[[Any], Any]]] = {
    TensorData: (TensorDataWire, TensorDataWire.to_tensor_data),
    Datum: (DatumWire, DatumWire.to_datum),
    ForwardBackwardInput: (ForwardBackwardInputWire, ForwardBackwardInputWire.to_input),
    ForwardBackwardRequest: (ForwardBackwardRequestWire, ForwardBackwardRequestWire.to_request),
    ForwardRequest: (ForwardBackwardRequestWire, ForwardBackwardRequestWire.to_forward_request),
    ForwardBackwardOutput: (ForwardBackwardOutputWire, ForwardBackwardOutputWire.to_output),
    SampledSequence: (SampledSequenceWire, SampledSequenceWire.to_sequence),
    SampleResponse: (SampleResponseWire, SampleResponseWire.to_response),
}


def _needs_wire(value: Any) -> bool:
    return type(value) in _TO_WIRE or isinstance(value, (dict, list, tuple))


def to_wire(obj: Any) -> Any:
    """``obj`` with every dataclass type replaced by its wire Struct.

    Walks dicts and lists, but a list whose first item is a scalar is taken as a list of
    scalars and not walked (token lists stay O(1) here).
    """
    convert_one = _TO_WIRE.get(type(obj))
    if convert_one is not None:
        return convert_one(obj)
    if isinstance(obj, dict):
        if any(_needs_wire(v) for v in obj.values()):
            return {k: to_wire(v) for k, v in obj.items()}
        return obj
    if isinstance(obj, (list, tuple)):
        if obj and _needs_wire(obj[0]):
            return [to_wire(v) for v in obj]
        return obj
    return obj


def encode_json(obj: Any) -> bytes:
    """JSON bytes of any type here (Structs natively, dataclasses via their wire form),
    builtins, numpy arrays and scalars, datetimes."""
    return _ENCODER.encode(to_wire(obj))


def to_builtins(obj: Any) -> Any:
    """``obj`` as JSON-ready builtins (dicts, lists, str, numbers, None)."""
    return msgspec.to_builtins(to_wire(obj), enc_hook=enc_hook)


@functools.cache
def _decoder(type_: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(type_)


@overload
def decode_json(data: bytes | bytearray | memoryview | str, type_: type[T]) -> T: ...
@overload
def decode_json(data: bytes | bytearray | memoryview | str, type_: Any) -> Any: ...
def decode_json(data: bytes | bytearray | memoryview | str, type_: Any) -> Any:
    """Decode JSON into ``type_``: a Struct, a builtin/typing type, or a dataclass type
    of this package (decoded through its wire form)."""
    entry = _FROM_WIRE.get(type_)
    if entry is not None:
        wire_type, to_public = entry
        return to_public(decode_json_lenient(data, wire_type, _decoder(wire_type)))  # type: ignore[arg-type]
    return decode_json_lenient(data, type_, _decoder(type_))  # type: ignore[arg-type]


@overload
def from_builtins(obj: Any, type_: type[T]) -> T: ...
@overload
def from_builtins(obj: Any, type_: Any) -> Any: ...
def from_builtins(obj: Any, type_: Any) -> Any:
    """Like :func:`decode_json` for already-parsed JSON (e.g. the ``result`` of an envelope)."""
    entry = _FROM_WIRE.get(type_)
    if entry is not None:
        wire_type, to_public = entry
        return to_public(convert(obj, wire_type))
    return convert(obj, type_)


def decode_sample_response_json(data: bytes | str) -> SampleResponse:
    """A sample result from a JSON server (``sequences`` with ``stop_reason`` or
    ``finish_reason``, optional ``sequence_id``; ``prompt_logprobs`` with nulls)."""
    return decode_json(data, SampleResponse)


def decode_forward_backward_output_json(data: bytes | str) -> ForwardBackwardOutput:
    """A forward/forward_backward result from a JSON server
    (``{"loss_fn_outputs": [{"logprobs": {"data", "dtype"}}], "metrics": {...}}``)."""
    return decode_json(data, ForwardBackwardOutput)
