"""Server-side custom losses: a traced loss graph and its upload request."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import msgspec

from ._base import Model
from ._codec import keep

__all__ = [
    "CreateCustomLossRequest",
    "CreateCustomLossResponse",
    "CustomLossGraph",
    "CustomLossInput",
    "CustomLossInputRank",
    "CustomLossNode",
    "CustomLossNodeOp",
]

CustomLossNodeOp = Literal[
    "placeholder", "get_attr", "call_function", "call_method", "call_module", "output"
]
"""A torch.fx node kind."""

CustomLossInputRank = Literal[0, 1, 2]
"""Rank of a custom loss input: 0 scalar, 1 ``[T]``, 2 ``[T, K]``."""


class CustomLossNode(Model, kw_only=True, frozen=True):
    """One node of a traced loss, as torch.fx records it (arguments encoded as data)."""

    op: CustomLossNodeOp
    name: str
    target: str
    # Fresh containers per instance, always sent (a plain ``[]`` default would be omitted).
    args: list[Any] = msgspec.field(default_factory=lambda: [])
    kwargs: dict[str, Any] = msgspec.field(default_factory=lambda: {})


class CustomLossGraph(Model, kw_only=True, frozen=True):
    """A traced custom loss as plain data: its nodes in execution order."""

    nodes: list[CustomLossNode]
    format: Literal[1] = keep(1)


class CustomLossInput(Model, kw_only=True, frozen=True):
    """One input of a custom loss (``logprobs`` or a ``loss_fn_inputs`` key) and its rank."""

    name: str
    rank: CustomLossInputRank


class CreateCustomLossRequest(
    Model, kw_only=True, frozen=True, tag="create_custom_loss", tag_field="type"
):
    """Upload a custom loss (wire ``type: "create_custom_loss"``)."""

    session_id: str
    custom_loss_seq_id: int
    name: str
    inputs: list[CustomLossInput]
    graph: CustomLossGraph
    type: ClassVar[Literal["create_custom_loss"]] = "create_custom_loss"


class CreateCustomLossResponse(Model, kw_only=True, frozen=True):
    """The id naming the stored loss in later forward_backward requests."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    loss_id: str
    type: str = "create_custom_loss"
