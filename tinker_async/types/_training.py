"""Training: losses, forward/backward inputs and outputs, LoRA, model creation and info."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import msgspec

from ._base import Model, WireModel
from ._codec import keep
from ._datum import Datum, DatumWire
from ._optim import ADAMW_DEFAULT, OptimizerConfig, normalized_optimizer_config
from ._tensor import TensorData, TensorDataWire

__all__ = [
    "CreateModelRequest",
    "CreateModelResponse",
    "DeleteModelRequest",
    "ForwardBackwardInput",
    "ForwardBackwardInputWire",
    "ForwardBackwardOutput",
    "ForwardBackwardOutputWire",
    "ForwardBackwardRequest",
    "ForwardBackwardRequestWire",
    "ForwardRequest",
    "GetInfoRequest",
    "GetInfoResponse",
    "LoraConfig",
    "LossFnOutput",
    "LossFnType",
    "ModelData",
    "ModelID",
    "UnloadModelRequest",
    "UnloadModelResponse",
]

ModelID = str
"""A training model id (also its training run id), e.g. ``"<session uuid>:train:0"``."""

LossFnType = Literal[
    "cross_entropy",
    "importance_sampling",
    "ppo",
    "cispo",
    "dro",
    "gspo",
    "stable_reinforce",
    "custom",
]
"""The built-in loss functions (and ``custom``)."""

LossFnOutput = dict[str, TensorData]
"""Loss outputs of one datum, by name (e.g. ``logprobs``)."""


@dataclass(frozen=True, slots=True)
class ForwardBackwardInput:
    """The data and loss of a forward or forward_backward call."""

    data: list[Datum]
    loss_fn: LossFnType
    loss_fn_config: Mapping[str, float | str] | None = None


@dataclass(frozen=True, slots=True)
class ForwardBackwardRequest:
    """A forward_backward request (protobuf on the official server, JSON on others)."""

    forward_backward_input: ForwardBackwardInput
    model_id: ModelID
    seq_id: int | None = None


@dataclass(frozen=True, slots=True)
class ForwardRequest:
    """A forward-only request (JSON servers have a separate ``/forward``)."""

    forward_input: ForwardBackwardInput
    model_id: ModelID
    seq_id: int | None = None


@dataclass(frozen=True, slots=True)
class ForwardBackwardOutput:
    """Result of forward / forward_backward: per-datum loss outputs and metrics.

    ``loss_fn_outputs[i]["logprobs"]`` is datum ``i``'s logprobs; metric keys are
    ``name:reduction`` (e.g. ``loss:sum``).
    """

    loss_fn_output_type: str
    loss_fn_outputs: list[LossFnOutput]
    metrics: dict[str, float] = field(default_factory=dict)


# --- JSON wire forms of the dataclasses above ----------------------------------------


class ForwardBackwardInputWire(WireModel, kw_only=True, frozen=True):
    """JSON form of :class:`ForwardBackwardInput`."""

    data: list[DatumWire]
    loss_fn: str
    loss_fn_config: dict[str, float | str] | None = None

    @classmethod
    def from_input(cls, value: ForwardBackwardInput) -> ForwardBackwardInputWire:
        """The wire form of a ForwardBackwardInput."""
        config = None if value.loss_fn_config is None else dict(value.loss_fn_config)
        return cls(
            data=[DatumWire.from_datum(d) for d in value.data],
            loss_fn=value.loss_fn,
            loss_fn_config=config,
        )

    def to_input(self) -> ForwardBackwardInput:
        """The ForwardBackwardInput this wire form describes."""
        return ForwardBackwardInput(
            data=[d.to_datum() for d in self.data],
            loss_fn=self.loss_fn,  # type: ignore[arg-type]
            loss_fn_config=self.loss_fn_config,
        )


class ForwardBackwardRequestWire(WireModel, kw_only=True, frozen=True):
    """JSON body of forward_backward / forward on JSON servers.

    Encodes the official nested form (``forward_backward_input`` or ``forward_input``).
    Decoding also accepts the flat tinkercloud form (``data``, ``loss_fn`` and
    ``loss_fn_config`` next to ``model_id``). ``forward_only`` marks a forward pass sent to
    ``forward_backward`` (servers without ``/forward``); ``type`` is the endpoint's name
    (``"forward_backward"`` or ``"forward"``), which JSON servers accept and ignore.
    """

    model_id: str
    seq_id: int | None = None
    forward_backward_input: ForwardBackwardInputWire | None = None
    forward_input: ForwardBackwardInputWire | None = None
    data: list[DatumWire] | None = None
    loss_fn: str | None = None
    loss_fn_config: dict[str, float | str] | None = None
    forward_only: bool = False
    type: str | None = None

    @classmethod
    def from_request(
        cls, request: ForwardBackwardRequest | ForwardRequest
    ) -> ForwardBackwardRequestWire:
        """The wire form of a ForwardBackwardRequest or ForwardRequest."""
        if isinstance(request, ForwardRequest):
            inp = ForwardBackwardInputWire.from_input(request.forward_input)
            return cls(model_id=request.model_id, seq_id=request.seq_id, forward_input=inp)
        inp = ForwardBackwardInputWire.from_input(request.forward_backward_input)
        return cls(model_id=request.model_id, seq_id=request.seq_id, forward_backward_input=inp)

    def input(self) -> ForwardBackwardInput:
        """The input carried, whichever of the three forms the body used."""
        wire = self.forward_backward_input or self.forward_input
        if wire is not None:
            return wire.to_input()
        if self.data is None or self.loss_fn is None:
            raise ValueError(
                "forward_backward body needs forward_backward_input, forward_input, "
                "or data + loss_fn"
            )
        return ForwardBackwardInputWire(
            data=self.data, loss_fn=self.loss_fn, loss_fn_config=self.loss_fn_config
        ).to_input()

    def to_request(self) -> ForwardBackwardRequest:
        """The request as a ForwardBackwardRequest (also for forward-only bodies)."""
        return ForwardBackwardRequest(
            forward_backward_input=self.input(), model_id=self.model_id, seq_id=self.seq_id
        )

    def to_forward_request(self) -> ForwardRequest:
        """The request as a ForwardRequest."""
        return ForwardRequest(
            forward_input=self.input(), model_id=self.model_id, seq_id=self.seq_id
        )


class ForwardBackwardOutputWire(WireModel, kw_only=True, frozen=True):
    """JSON form of :class:`ForwardBackwardOutput` (``loss_fn_output_type`` optional).

    Metric values may be ``null`` (JSON has no NaN); they decode as NaN.
    """

    loss_fn_outputs: list[dict[str, TensorDataWire]] = msgspec.field(default_factory=list)
    metrics: dict[str, float | None] = msgspec.field(default_factory=dict)
    loss_fn_output_type: str = ""

    @classmethod
    def from_output(cls, out: ForwardBackwardOutput) -> ForwardBackwardOutputWire:
        """The wire form of a ForwardBackwardOutput."""
        return cls(
            loss_fn_output_type=out.loss_fn_output_type,
            loss_fn_outputs=[
                {k: TensorDataWire.from_tensor_data(v) for k, v in rec.items()}
                for rec in out.loss_fn_outputs
            ],
            metrics=dict(out.metrics),  # NaN is written as null
        )

    def to_output(self) -> ForwardBackwardOutput:
        """The ForwardBackwardOutput this wire form describes."""
        return ForwardBackwardOutput(
            loss_fn_output_type=self.loss_fn_output_type,
            loss_fn_outputs=[
                {k: v.to_tensor_data() for k, v in rec.items()} for rec in self.loss_fn_outputs
            ],
            metrics={k: (math.nan if v is None else v) for k, v in self.metrics.items()},
        )


# --- LoRA and model lifecycle ----------------------------------------------------------


class LoraConfig(Model, kw_only=True, frozen=True, gc=False):
    """LoRA settings of a training model. The ``train_*`` switches are always sent."""

    rank: int
    seed: int | None = None
    train_unembed: bool = keep(True)
    train_mlp: bool = keep(True)
    train_attn: bool = keep(True)


class CreateModelRequest(Model, kw_only=True, frozen=True, tag="create_model", tag_field="type"):
    """Create a training model in a session (wire ``type: "create_model"``).

    An AdamW ``optimizer_config`` (the default) is left off the wire: strict servers
    that predate the field reject it.
    """

    session_id: str
    model_seq_id: int
    base_model: str
    user_metadata: dict[str, Any] | None = None
    lora_config: LoraConfig | None = None
    optimizer_config: OptimizerConfig = ADAMW_DEFAULT
    type: ClassVar[Literal["create_model"]] = "create_model"

    def __post_init__(self) -> None:
        super().__post_init__()
        msgspec.structs.force_setattr(
            self, "optimizer_config", normalized_optimizer_config(self.optimizer_config)
        )


class CreateModelResponse(Model, kw_only=True, frozen=True):
    """Result of ``create_model``."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    model_id: ModelID
    type: str = "create_model"


class GetInfoRequest(Model, kw_only=True, frozen=True, tag="get_info", tag_field="type"):
    """Ask for a training model's info (wire ``type: "get_info"``)."""

    model_id: ModelID
    type: ClassVar[Literal["get_info"]] = "get_info"


class ModelData(Model, kw_only=True, frozen=True):
    """Architecture facts about a model."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    arch: str | None = None
    model_name: str | None = None
    tokenizer_id: str | None = None


class GetInfoResponse(Model, kw_only=True, frozen=True):
    """Info about a training model (``model_id`` defaults to "" because tinkercloud
    leaves it out)."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    model_data: ModelData = ModelData()
    model_id: ModelID = ""
    optimizer_config: OptimizerConfig = ADAMW_DEFAULT
    is_lora: bool | None = None
    lora_rank: int | None = None
    model_name: str | None = None
    type: str | None = None


class DeleteModelRequest(Model, kw_only=True, frozen=True):
    """Free a training model (tinkercloud's ``delete_model``; not in the official API)."""

    model_id: ModelID


class UnloadModelRequest(Model, kw_only=True, frozen=True, tag="unload_model", tag_field="type"):
    """Unload a model (defined by the SDK; no endpoint uses it)."""

    model_id: ModelID
    type: ClassVar[Literal["unload_model"]] = "unload_model"


class UnloadModelResponse(Model, kw_only=True, frozen=True):
    """Result of ``unload_model``."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    model_id: ModelID
    type: str | None = None
