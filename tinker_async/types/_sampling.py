"""Sampling requests: ``SamplingParams`` and ``SampleRequest``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import msgspec

from ._base import Model
from ._codec import keep
from ._model_input import ModelInput
from ._tensor import TensorData, TensorDataWire

__all__ = ["SampleRequest", "SamplingParams", "StopReason"]

StopReason = Literal["length", "stop"]
"""Why sampling stopped: the token limit, or a stop sequence / EOS."""


class SamplingParams(Model, kw_only=True, frozen=True):
    """How to sample. ``stop=None`` keeps the implicit EOS stop; ``stop=[]`` disables
    every stop, EOS included. Temperature, top_k and top_p are always sent."""

    max_tokens: int | None = None
    seed: int | None = None
    stop: str | Sequence[str | int] | None = None
    temperature: float = keep(1.0)
    top_k: int = keep(-1)
    top_p: float = keep(1.0)


class SampleRequest(Model, kw_only=True, frozen=True, tag="sample", tag_field="type"):
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

    def __post_init__(self) -> None:
        if self.record_stability_info is False:
            # False is the server default; sending it breaks servers that predate the field.
            msgspec.structs.force_setattr(self, "record_stability_info", None)
        target: object = self.target_prompt_logprobs
        if isinstance(target, TensorData):
            msgspec.structs.force_setattr(
                self, "target_prompt_logprobs", TensorDataWire.from_tensor_data(target)
            )
