"""Optimizers: per-step parameters, the optimizer chosen at creation, ``optim_step``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from ._base import Model
from ._checks import Check, from_mapping
from ._codec import keep
from ._validation import fail

__all__ = [
    "AdamOptimizerConfig",
    "AdamParams",
    "DimuonOptimizerConfig",
    "DimuonParams",
    "OptimParams",
    "OptimStepRequest",
    "OptimStepResponse",
    "OptimizerConfig",
]


class AdamParams(Model, kw_only=True, frozen=True, gc=False):
    """AdamW step parameters (wire ``adam_params``). Every value is always sent except
    ``grad_clip_norm`` at 0 (no clipping, every server's default): the AdamParams of
    several Tinker-compatible servers predate the field, and some refuse unknown fields.

    Weight decay is decoupled; ``grad_clip_norm=0`` means no clipping.
    """

    learning_rate: float = keep(0.0001)
    beta1: float = keep(0.9)
    beta2: float = keep(0.95)
    eps: float = keep(1e-12)
    weight_decay: float = keep(0.0)
    grad_clip_norm: float = 0.0


class DimuonParams(
    Model, kw_only=True, frozen=True, gc=False, tag="dimuon", tag_field="type"
):
    """Dimuon step parameters (wire ``optimizer_params`` with ``type: "dimuon"``)."""

    learning_rate: Annotated[float, msgspec.Meta(ge=0)]
    grad_clip_norm: float = keep(0.0)
    beta1: Annotated[float, msgspec.Meta(ge=0, lt=1)] = keep(0.9)
    type: ClassVar[Literal["dimuon"]] = "dimuon"


OptimParams = AdamParams | DimuonParams
"""Parameters of one optimizer step."""


class AdamOptimizerConfig(Model, kw_only=True, frozen=True, tag="adamw", tag_field="type"):
    """Selects AdamW at model creation (wire ``{"type": "adamw"}``; the default)."""

    type: ClassVar[Literal["adamw"]] = "adamw"


class DimuonOptimizerConfig(Model, kw_only=True, frozen=True, tag="dimuon", tag_field="type"):
    """Selects Dimuon at model creation (wire ``{"type": "dimuon", "version": 1}``)."""

    version: Literal[1] = keep(1)
    type: ClassVar[Literal["dimuon"]] = "dimuon"


OptimizerConfig = AdamOptimizerConfig | DimuonOptimizerConfig
"""The optimizer family of a training model, fixed at creation."""

ADAMW_DEFAULT = AdamOptimizerConfig()
"""The shared default instance: msgspec omits a default only when it *is* this object."""


def normalized_optimizer_config(config: OptimizerConfig | None) -> OptimizerConfig | None:
    """``ADAMW_DEFAULT`` for any AdamW config (so it is left off the wire), else ``config``."""
    return ADAMW_DEFAULT if isinstance(config, AdamOptimizerConfig) else config


def unless_adamw(config: OptimizerConfig | None) -> OptimizerConfig | None:
    """``None`` for an AdamW config (or none), else ``config``: the value of an optional
    ``optimizer_config`` that strict servers must not see unless it is another family."""
    return None if config is None or isinstance(config, AdamOptimizerConfig) else config


_NoneType = type(None)


def _check_optim_params(params: Any) -> OptimParams:
    # Either family is accepted here (as in the SDK); __post_init__ files it by kind.
    if isinstance(params, (AdamParams, DimuonParams)):
        return params
    if isinstance(params, Mapping):
        kind = DimuonParams if params.get("type") == DimuonParams.type else AdamParams
        result: OptimParams = from_mapping(kind, params)
        return result
    fail("an AdamParams, a DimuonParams or None", params)


class OptimStepRequest(Model, kw_only=True, frozen=True, tag="optim_step", tag_field="type"):
    """One optimizer step (wire ``type: "optim_step"``).

    The official field ``optim_params`` is sent as ``adam_params`` for AdamW and as
    ``optimizer_params`` for other families. Passing a non-Adam value as
    ``optim_params=`` works: it is moved to ``optimizer_params`` on construction.
    """

    optim_params: AdamParams | None = msgspec.field(default=None, name="adam_params")
    optimizer_params: DimuonParams | None = None
    model_id: str
    seq_id: int | None = None
    type: ClassVar[Literal["optim_step"]] = "optim_step"
    _field_checks: ClassVar[dict[str, Check]] = {
        "optim_params": Check(frozenset({_NoneType, AdamParams, DimuonParams}),
                              _check_optim_params, "an AdamParams, a DimuonParams or None")
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        params: object = self.optim_params
        if params is not None and not isinstance(params, AdamParams):
            msgspec.structs.force_setattr(self, "optimizer_params", params)
            msgspec.structs.force_setattr(self, "optim_params", None)
        if self.optim_params is None and self.optimizer_params is None:
            raise ValueError("OptimStepRequest needs optim_params (AdamParams or DimuonParams)")

    @property
    def params(self) -> OptimParams:
        """The step parameters, whichever family they belong to."""
        if self.optim_params is not None:
            return self.optim_params
        assert self.optimizer_params is not None  # guaranteed by __post_init__
        return self.optimizer_params


class OptimStepResponse(Model, kw_only=True, frozen=True):
    """Result of ``optim_step``: optional metrics by name."""

    _ignore_extra: ClassVar[bool] = True  # a response type, as in the SDK

    metrics: dict[str, float] | None = None
