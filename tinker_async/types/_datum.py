"""``Datum`` (one training example), provenance spans, and their JSON wire forms."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from ._base import WireModel
from ._model_input import ModelInput
from ._tensor import TensorData, TensorDataWire, is_torch_tensor
from ._validation import ErrorDetails, ValidationError

__all__ = [
    "Datum",
    "DatumWire",
    "LossFnInputs",
    "PromptProvenanceSpan",
    "ProvenanceSpanWire",
    "ProvenanceSpans",
    "SampledProvenanceSpan",
]

LossFnInputs = dict[str, TensorData]
"""Loss inputs of one datum, by name (``target_tokens``, ``weights``, ...)."""

# Dtype for plain Python lists under the keys the losses define (as in the SDK).
_KEY_TO_DTYPE: dict[str, str] = {
    "target_tokens": "int64",
    "weights": "float32",
    "advantages": "float32",
    "logprobs": "float32",
    "clip_low_threshold": "float32",
    "clip_high_threshold": "float32",
    "sequence_ratio_mask": "float32",
}
# 2-D torch tensors under these keys are sent as CSR when that is smaller (as in the SDK).
_SPARSE_ELIGIBLE_KEYS = frozenset({"target_tokens", "weights"})


def _check_span(kind: str, sequence_id: str, offset: int, length: int) -> None:
    if length < 0:
        raise ValueError(f"{kind}.length must be >= 0, got {length}")
    if not sequence_id:
        raise ValueError(f"{kind}.sequence_id must be non-empty")
    if offset < 0:
        raise ValueError(f"{kind}.offset must be >= 0, got {offset}")


@dataclass(frozen=True, kw_only=True, slots=True)
class PromptProvenanceSpan:
    """A run of datum positions copied from a sampling request's prompt.

    Covers positions ``[offset, offset + length)`` of the prompt of the request that
    produced ``sequence_id``. Runs tile the field they annotate, in order.
    """

    sequence_id: str
    offset: int = 0
    length: int

    def __post_init__(self) -> None:
        _check_span("PromptProvenanceSpan", self.sequence_id, self.offset, self.length)


@dataclass(frozen=True, kw_only=True, slots=True)
class SampledProvenanceSpan:
    """A run of datum positions copied from one sampled sequence's tokens.

    Covers positions ``[offset, offset + length)`` of sequence ``sequence_id``.
    """

    sequence_id: str
    offset: int = 0
    length: int

    def __post_init__(self) -> None:
        _check_span("SampledProvenanceSpan", self.sequence_id, self.offset, self.length)


ProvenanceSpans = list[PromptProvenanceSpan | SampledProvenanceSpan]
"""Consecutive runs tiling one Datum field; see ``Datum.with_provenance``."""


def _ragged(key: str) -> ValueError:
    return ValueError(
        f"loss_fn_inputs[{key!r}] must be a rectangular numeric array; "
        "ragged nested lists are not supported"
    )


def _list_to_tensor(key: str, value: list[Any] | tuple[Any, ...]) -> TensorData:
    try:
        array = np.asarray(value)
    except ValueError as exc:  # numpy >= 1.24 refuses ragged lists
        raise _ragged(key) from exc
    if array.dtype == object:
        if any(isinstance(item, (list, tuple)) for item in value):
            raise _ragged(key)
        raise ValueError(
            f"loss_fn_inputs[{key!r}] must hold numbers, got {type(value[0]).__name__} values"
        )
    if array.dtype.kind not in ("i", "u", "f", "b"):
        raise ValueError(
            f"loss_fn_inputs[{key!r}] must hold numbers, got numpy dtype {array.dtype}"
        )
    dtype = _KEY_TO_DTYPE.get(key)
    if dtype is None:
        # The SDK raises KeyError here; we infer instead: all integers -> int64.
        dtype = "int64" if array.dtype.kind in ("i", "u") else "float32"
    return TensorData(data=array, dtype=dtype, shape=list(array.shape))  # type: ignore[arg-type]


def to_tensor_data(key: str, value: Any) -> TensorData:
    """Convert one ``loss_fn_inputs`` value (TensorData, numpy, torch, list) to TensorData."""
    if isinstance(value, TensorData):
        return value
    if isinstance(value, np.ndarray):
        return TensorData.from_numpy(value)
    if isinstance(value, (list, tuple)):
        return _list_to_tensor(key, value)
    if is_torch_tensor(value):
        if key in _SPARSE_ELIGIBLE_KEYS and value.ndim == 2:
            return TensorData.from_torch_sparse(value)
        return TensorData.from_torch(value)
    raise TypeError(f"Unsupported loss_fn_inputs value for {key!r}: {type(value).__name__}")


def _check_model_input(value: object) -> None:
    # Deliberately stricter than the SDK's Datum (which keeps anything and fails when the
    # request is encoded): a wrong model_input is named here, at the call that made it.
    if not isinstance(value, ModelInput):
        raise ValidationError("Datum", [ErrorDetails(
            loc=("model_input",), input=value,
            msg=f"expected a ModelInput, got {type(value).__name__} {value!r:.80}")])


def _check_span_list(name: str, spans: ProvenanceSpans | None) -> None:
    for span in spans or ():
        if not isinstance(span, (PromptProvenanceSpan, SampledProvenanceSpan)):
            raise TypeError(
                f"{name} entries must be PromptProvenanceSpan or SampledProvenanceSpan, "
                f"got {type(span).__name__}"
            )


def _check_tiling(name: str, spans: ProvenanceSpans, expected: int) -> None:
    total = sum(span.length for span in spans)
    if total != expected:
        raise ValueError(
            f"with_provenance {name} spans cover {total} positions but the field has "
            f"{expected}; the runs must tile it exactly"
        )


@dataclass(frozen=True, slots=True)
class Datum:
    """One training example: a model input and the loss inputs for it.

    ``loss_fn_inputs`` values may be given as TensorData, numpy arrays, torch tensors
    or (nested) lists; they are converted on construction. Lists take their dtype from
    the key (``target_tokens`` int64; ``weights``, ``advantages``, ``logprobs``... float32)
    or, for other keys, from the values (all integers -> int64, else float32).
    """

    model_input: ModelInput
    loss_fn_inputs: LossFnInputs = field(default_factory=dict)
    model_input_spans: ProvenanceSpans | None = None
    """Provenance of the input tokens: runs tiling ``model_input`` (see ``with_provenance``)."""
    loss_fn_input_spans: ProvenanceSpans | None = None
    """Provenance of the loss rows: runs tiling ``loss_fn_inputs["target_tokens"]``."""

    if TYPE_CHECKING:
        # For type checkers only (the dataclass writes the real __init__): the loss inputs
        # may be given as anything ``to_tensor_data`` converts, lists and arrays included.
        def __init__(
            self,
            model_input: ModelInput,
            loss_fn_inputs: Mapping[str, object] = ...,
            model_input_spans: ProvenanceSpans | None = None,
            loss_fn_input_spans: ProvenanceSpans | None = None,
        ) -> None: ...

    def __post_init__(self) -> None:
        if type(self.model_input) is not ModelInput:
            _check_model_input(self.model_input)
        # Always a new dict (as in the SDK), so later changes to the caller's dict don't
        # leak in; the span lists are kept as given (as in the SDK).
        inputs: Mapping[str, Any] = self.loss_fn_inputs
        converted: dict[str, TensorData] = {}
        for key, value in inputs.items():
            converted[key] = value if type(value) is TensorData else to_tensor_data(key, value)
        object.__setattr__(self, "loss_fn_inputs", converted)
        spans, loss_spans = self.model_input_spans, self.loss_fn_input_spans
        if spans is not None or loss_spans is not None:
            _check_span_list("model_input_spans", spans)
            _check_span_list("loss_fn_input_spans", loss_spans)
            if spans is None or loss_spans is None:
                raise ValueError(
                    "provenance comes as a pair: set both model_input_spans and "
                    "loss_fn_input_spans, or neither"
                )

    def with_provenance(
        self, model_input: ProvenanceSpans, loss_fn_inputs: ProvenanceSpans
    ) -> Datum:
        """A copy carrying provenance for the input tokens and the loss rows.

        Each list must tile its field exactly (checked here, so a miscount fails at the
        call site rather than as a request error).
        """
        _check_tiling("model_input", model_input, self.model_input.length)
        target = self.loss_fn_inputs.get("target_tokens")
        if target is not None and target.shape is not None and len(target.shape) == 1:
            _check_tiling("loss_fn_inputs", loss_fn_inputs, target.shape[0])
        return dataclasses.replace(
            self, model_input_spans=model_input, loss_fn_input_spans=loss_fn_inputs
        )


# --- JSON wire forms -------------------------------------------------------------------


class _SpanBody(WireModel, kw_only=True, frozen=True):
    sequence_id: str
    offset: int = 0
    length: int


class ProvenanceSpanWire(WireModel, kw_only=True, frozen=True):
    """JSON form of a provenance span, mirroring the protobuf oneof:
    ``{"prompt_tokens": {...}}`` or ``{"sampled_tokens": {...}}``."""

    prompt_tokens: _SpanBody | None = None
    sampled_tokens: _SpanBody | None = None

    @classmethod
    def from_span(cls, span: PromptProvenanceSpan | SampledProvenanceSpan) -> ProvenanceSpanWire:
        """The wire form of a span."""
        body = _SpanBody(sequence_id=span.sequence_id, offset=span.offset, length=span.length)
        if isinstance(span, PromptProvenanceSpan):
            return cls(prompt_tokens=body)
        return cls(sampled_tokens=body)

    def to_span(self) -> PromptProvenanceSpan | SampledProvenanceSpan:
        """The span this wire form describes."""
        if self.prompt_tokens is not None:
            b = self.prompt_tokens
            return PromptProvenanceSpan(sequence_id=b.sequence_id, offset=b.offset, length=b.length)
        if self.sampled_tokens is not None:
            b = self.sampled_tokens
            return SampledProvenanceSpan(
                sequence_id=b.sequence_id, offset=b.offset, length=b.length
            )
        raise ValueError("a provenance span needs prompt_tokens or sampled_tokens")


def _spans_to_wire(spans: ProvenanceSpans | None) -> list[ProvenanceSpanWire] | None:
    return None if spans is None else [ProvenanceSpanWire.from_span(s) for s in spans]


def _spans_from_wire(spans: list[ProvenanceSpanWire] | None) -> ProvenanceSpans | None:
    return None if spans is None else [s.to_span() for s in spans]


class DatumWire(WireModel, kw_only=True, frozen=True):
    """JSON form of a :class:`Datum` (JSON forward/forward_backward bodies)."""

    model_input: ModelInput
    loss_fn_inputs: dict[str, TensorDataWire] = msgspec.field(default_factory=dict)
    model_input_spans: list[ProvenanceSpanWire] | None = None
    loss_fn_input_spans: list[ProvenanceSpanWire] | None = None

    @classmethod
    def from_datum(cls, datum: Datum) -> DatumWire:
        """The wire form of a datum (span lists left out when None)."""
        return cls(
            model_input=datum.model_input,
            loss_fn_inputs={
                k: TensorDataWire.from_tensor_data(v) for k, v in datum.loss_fn_inputs.items()
            },
            model_input_spans=_spans_to_wire(datum.model_input_spans),
            loss_fn_input_spans=_spans_to_wire(datum.loss_fn_input_spans),
        )

    def to_datum(self) -> Datum:
        """The :class:`Datum` this wire form describes."""
        return Datum(
            model_input=self.model_input,
            loss_fn_inputs={k: v.to_tensor_data() for k, v in self.loss_fn_inputs.items()},
            model_input_spans=_spans_from_wire(self.model_input_spans),
            loss_fn_input_spans=_spans_from_wire(self.loss_fn_input_spans),
        )
