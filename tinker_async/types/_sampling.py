"""Sampling requests: ``SamplingParams`` and ``SampleRequest``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import msgspec

from ._base import Model
from ._checks import Check, from_mapping
from ._codec import keep
from ._model_input import ModelInput
from ._tensor import TensorData, TensorDataWire
from ._validation import Invalid, fail, lax_int, lax_str

__all__ = ["SampleRequest", "SamplingParams", "StopReason", "TinkercloudSampleRequest"]

StopReason = Literal["length", "stop"]
"""Why sampling stopped: the token limit, or a stop sequence / EOS."""


_NoneType = type(None)
_STOP_EXPECTED = "a string, a list of strings, a list of token ids, or None"


def _check_stop(stop: Any) -> Any:
    """``stop`` as the official type reads it: text, a list of strings, or a list of token
    ids (not a mix); a new list. A tuple becomes a list (the official type keeps it)."""
    if stop is None or type(stop) is str:
        return stop
    if isinstance(stop, (str, bytes, bytearray)):
        return lax_str(stop)
    if isinstance(stop, Mapping) or not isinstance(stop, (Sequence, set, frozenset)):
        fail(_STOP_EXPECTED, stop)
    items = list(stop)
    if all(isinstance(item, (str, bytes, bytearray)) for item in items):
        try:
            return [lax_str(item) for item in items]
        except Invalid:
            fail(_STOP_EXPECTED, stop)
    try:
        return [lax_int(item) for item in items]
    except Invalid:
        fail(_STOP_EXPECTED, stop)


class SamplingParams(Model, kw_only=True, frozen=True, gc=False):
    """How to sample. ``stop=None`` keeps the implicit EOS stop; ``stop=[]`` disables
    every stop, EOS included. Temperature, top_k and top_p are always sent."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    _field_checks: ClassVar[dict[str, Check]] = {"stop": Check(frozenset({_NoneType, str}), _check_stop,
                                             _STOP_EXPECTED)}

    max_tokens: int | None = None
    seed: int | None = None
    stop: str | Sequence[str | int] | None = None
    temperature: float = keep(1.0)
    top_k: int = keep(-1)
    top_p: float = keep(1.0)


def _check_target(target: Any) -> TensorDataWire:
    # Stored in its wire form (a Struct field); given as the public TensorData.
    if isinstance(target, TensorData):
        return TensorDataWire.from_tensor_data(target)
    if isinstance(target, TensorDataWire):
        return target
    if isinstance(target, Mapping):
        result: TensorDataWire = from_mapping(TensorDataWire, target)
        return result
    fail("a TensorData or None", target)


class SampleRequest(
    Model, kw_only=True, frozen=True, gc=False, tag="sample", tag_field="type"
):
    """A sampling request (wire ``type: "sample"``).

    Optional features at their defaults (``topk_sample_logprobs=0``,
    ``prompt_alt_tokens_k=0``, ``record_stability_info=None``...) are left off the wire,
    so servers that predate them accept the request. ``target_prompt_logprobs`` may be
    given as a :class:`TensorData`; it is stored in its wire form.
    """

    prompt: ModelInput
    sampling_params: SamplingParams
    num_samples: int = keep(1)
    base_model: str | None = None
    model_path: str | None = None
    sampling_session_id: str | None = None
    seq_id: int | None = None
    prompt_logprobs: bool | None = None
    topk_prompt_logprobs: int = 0
    topk_sample_logprobs: int = 0
    target_prompt_logprobs: TensorDataWire | None = None
    prompt_alt_tokens_k: int = 0
    prompt_logprobs_last_n: int | None = None
    record_stability_info: bool | None = None
    type: ClassVar[Literal["sample"]] = "sample"
    _field_checks: ClassVar[dict[str, Check]] = {
        "target_prompt_logprobs": Check(
            frozenset({_NoneType, TensorDataWire}), _check_target, "a TensorData or None"
        )
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.record_stability_info is False:
            # False is the server default; sending it breaks servers that predate the field.
            msgspec.structs.force_setattr(self, "record_stability_info", None)


class TinkercloudSampleRequest(SampleRequest, kw_only=True, frozen=True, gc=False, tag="sample",
                               tag_field="type"):
    """tinkercloud's documented sample body: a :class:`SampleRequest` that also names the
    sampler ``model_id`` and prompt logprobs ``include_prompt_logprobs``. Not an official
    type; official servers never get it."""

    model_id: str | None = None
    include_prompt_logprobs: bool | None = None
