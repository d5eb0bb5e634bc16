"""The official Tinker loss functions, as functions of the target log-probabilities.

Every built-in Tinker loss depends on the model only through ``lp[t] = log p_theta(
target_tokens[t] | tokens[:t+1])``, so each loss here returns its value and ``dL/dlp``; the
model turns that into gradients (``dL/dlogits = dL/dlp * (onehot(target) - softmax)``).
Losses are **sums** over positions (and datums), as in Tinker; metric ``loss:sum``.

Notation: ``q`` = ``logprobs`` input (the sampler's log-probabilities), ``A`` =
``advantages``, ``w`` = ``weights``, ``r = exp(lp - q)``, ``clip(x) = min(max(x, lo), hi)``,
``sg`` = stop-gradient.

==========================  ==================================================  ===========
loss                        value                                               dL/dlp
==========================  ==================================================  ===========
``cross_entropy``           ``-sum(w * lp)``                                    ``-w``
``importance_sampling``     ``-sum(r * A)``                                     ``-r A``
``ppo``                     ``-sum(min(r A, clip(r) A))``                       ``-r A`` where
                                                                                ``r A <= clip(r) A``,
                                                                                else 0
``cispo``                   ``-sum(sg(clip(r)) * lp * A)``                      ``-clip(r) A``
``dro``                     ``-sum(lp A - beta/2 (lp - q)^2)``                  ``-(A - beta (lp - q))``
``gspo`` (GSPO-token)       ppo with ``r`` replaced by ``s_t = sg(s) * exp(lp -  as ppo with ``s``
                            sg(lp))``, ``s = exp(mean_{t in M}(lp - q))``
``stable_reinforce``        ``-sum(sg(min(r, hi)) * lp * A)`` (a stand-in,     ``-min(r, hi) A``
                            see below)
==========================  ==================================================  ===========

Inputs (``loss_fn_inputs``), all of the datum's length ``T``:

- ``cross_entropy``: ``target_tokens`` int ``(T,)`` or ``(T, K)`` (top-K distillation),
  ``weights`` float of the same shape.
- ``importance_sampling``, ``ppo``, ``cispo``, ``dro``: ``target_tokens`` ``(T,)``,
  ``logprobs`` ``(T,)``, ``advantages`` ``(T,)``. ``ppo`` and ``cispo`` also accept
  per-position ``clip_low_threshold`` / ``clip_high_threshold`` inputs (scalar or ``(T,)``),
  which override the config.
- ``gspo``: as ``ppo``, plus optional ``sequence_ratio_mask`` ``(T,)`` choosing the set
  ``M`` of positions averaged into the sequence ratio. **Our default when it is absent**
  (unsure what Tinker does): the positions with a non-zero advantage. An empty ``M`` gives
  ``s = 1``.

``loss_fn_config`` keys and defaults: ``ppo`` and ``gspo`` ``clip_low_threshold=0.8``,
``clip_high_threshold=1.2`` (ratio bounds, not epsilons); ``cispo`` ``0.0`` / ``4.0``
(one-sided, as the Tinker cookbook documents); ``dro`` ``beta=0.1`` (the Tinker docs show a
``beta`` key but we could not confirm its default). Unknown keys raise ``ValueError``.

``stable_reinforce`` is a **stand-in**: the service's version uses per-sequence stability
records that its samplers keep (``record_stability_info``), which are not public. Here it
is REINFORCE with a truncated importance weight (``hi = clip_high_threshold``, default
2.0; an optional ``mask`` input zeroes positions), which is stable on stale samples as the
cookbook's async RL (whose default loss it is) expects; its exact values differ from the
service's. ``custom`` (an uploaded loss graph) never reaches this module:
``_custom_losses`` runs it, when the server has ``custom_loss_server_side`` and torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "LOSS_SPECS",
    "SUPPORTED_LOSSES",
    "LossSpec",
    "LossValue",
    "UnsupportedLossError",
    "check_datum_inputs",
    "check_target_tokens",
    "compute_loss",
    "get_loss_spec",
    "resolve_loss_config",
]

FloatArray = NDArray[np.floating[Any]]
IntArray = NDArray[np.integer[Any]]


class UnsupportedLossError(ValueError):
    """The loss name is not one this model implements; the message lists the ones it does."""


@dataclass(frozen=True)
class LossSpec:
    """What a loss needs: required and optional inputs, and its config keys with defaults."""

    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    config_defaults: Mapping[str, float] = field(default_factory=dict)
    allows_topk_targets: bool = False


_RL = ("target_tokens", "logprobs", "advantages")
_CLIP_INPUTS = ("clip_low_threshold", "clip_high_threshold")

LOSS_SPECS: dict[str, LossSpec] = {
    "cross_entropy": LossSpec(
        "cross_entropy", ("target_tokens", "weights"), allows_topk_targets=True
    ),
    "importance_sampling": LossSpec("importance_sampling", _RL),
    "ppo": LossSpec(
        "ppo", _RL, _CLIP_INPUTS, {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
    ),
    "cispo": LossSpec(
        "cispo", _RL, _CLIP_INPUTS, {"clip_low_threshold": 0.0, "clip_high_threshold": 4.0}
    ),
    "dro": LossSpec("dro", _RL, (), {"beta": 0.1}),
    "gspo": LossSpec(
        "gspo",
        _RL,
        ("sequence_ratio_mask", *_CLIP_INPUTS),
        {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
    ),
    "stable_reinforce": LossSpec(
        "stable_reinforce", _RL, ("mask", "clip_high_threshold"), {"clip_high_threshold": 2.0}
    ),
}
SUPPORTED_LOSSES: tuple[str, ...] = tuple(LOSS_SPECS)

_UNSUPPORTED_WHY = {
    "custom": "it needs a custom loss graph uploaded with create_custom_loss",
}


def get_loss_spec(loss_fn: str) -> LossSpec:
    """The spec of ``loss_fn``, or ``UnsupportedLossError`` naming the supported losses."""
    spec = LOSS_SPECS.get(loss_fn)
    if spec is not None:
        return spec
    why = _UNSUPPORTED_WHY.get(loss_fn, "it is not a known loss")
    raise UnsupportedLossError(
        f"loss_fn {loss_fn!r} is not supported by the local model ({why}); "
        f"supported: {', '.join(SUPPORTED_LOSSES)}"
    )


def resolve_loss_config(loss_fn: str, config: Mapping[str, float | str] | None) -> dict[str, float]:
    """The loss's config with defaults filled in; unknown or non-numeric keys raise."""
    spec = get_loss_spec(loss_fn)
    resolved = dict(spec.config_defaults)
    for key, value in (config or {}).items():
        if key not in spec.config_defaults:
            accepted = ", ".join(spec.config_defaults) or "none"
            raise ValueError(
                f"loss_fn_config key {key!r} is not accepted by {loss_fn!r} (accepted: {accepted})"
            )
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"loss_fn_config[{key!r}] for {loss_fn!r} must be a number, got {value!r}"
            ) from None
        if not np.isfinite(number):
            raise ValueError(f"loss_fn_config[{key!r}] for {loss_fn!r} must be finite")
        resolved[key] = number
    if "beta" in resolved and resolved["beta"] < 0:
        raise ValueError(f"{loss_fn!r}: beta must be >= 0, got {resolved['beta']}")
    if "clip_low_threshold" in resolved:
        _check_clip(loss_fn, resolved["clip_low_threshold"], resolved["clip_high_threshold"])
    return resolved


def check_datum_inputs(
    loss_fn: str,
    inputs: Mapping[str, Any],
    length: int,
    vocab_size: int,
    index: int,
) -> dict[str, NDArray[Any]]:
    """Validate one datum's ``loss_fn_inputs`` and return them as numpy arrays.

    ``target_tokens`` comes back as int64, the others as float64 (the loss maths runs in
    float64; it is a few vectors per datum). Raises ``ValueError`` naming the datum, the loss
    and the offending key.
    """
    spec = get_loss_spec(loss_fn)
    where = f"datum {index}: loss {loss_fn!r}"
    missing = [k for k in spec.required if k not in inputs]
    if missing:
        raise ValueError(
            f"{where} is missing loss_fn_inputs {missing}; it needs {list(spec.required)}"
            + (f" (optional: {list(spec.optional)})" if spec.optional else "")
        )
    unknown = sorted(set(inputs) - set(spec.required) - set(spec.optional))
    if unknown:
        raise ValueError(
            f"{where} does not accept loss_fn_inputs {unknown}; "
            f"it takes {list(spec.required) + list(spec.optional)}"
        )
    targets = check_target_tokens(where, inputs["target_tokens"], length, vocab_size, spec)
    out: dict[str, NDArray[Any]] = {"target_tokens": targets}
    for key, value in inputs.items():
        if key == "target_tokens":
            continue
        arr = np.asarray(value, dtype=np.float64)
        if key in _CLIP_INPUTS and arr.size == 1:
            arr = np.full(length, arr.reshape(()), dtype=np.float64)
        expected = targets.shape if key == "weights" else (length,)
        if arr.shape != expected:
            raise ValueError(
                f"{where}: {key} has shape {list(arr.shape)}, expected {list(expected)} "
                "(one value per target)"
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{where}: {key} contains NaN or infinite values")
        out[key] = arr
    if "clip_low_threshold" in out or "clip_high_threshold" in out:
        lo = out.get("clip_low_threshold")
        hi = out.get("clip_high_threshold")
        if lo is not None and np.any(lo < 0):
            raise ValueError(f"{where}: clip_low_threshold must be >= 0")
        if lo is not None and hi is not None and np.any(hi < lo):
            raise ValueError(f"{where}: clip_high_threshold must be >= clip_low_threshold")
    return out


@dataclass(frozen=True)
class LossValue:
    """One datum's loss: the summed value, ``dL/dlp`` and the per-position loss."""

    total: float
    grad: FloatArray
    elementwise: FloatArray


def compute_loss(
    loss_fn: str,
    lp: FloatArray,
    inputs: Mapping[str, NDArray[Any]],
    config: Mapping[str, float],
) -> LossValue:
    """Loss of one datum given its target log-probabilities ``lp`` (see module table)."""
    lp = lp.astype(np.float64, copy=False)
    if loss_fn == "cross_entropy":
        w = inputs["weights"]
        return _value(-w * lp, -w)
    q = inputs["logprobs"]
    adv = inputs["advantages"]
    if loss_fn == "importance_sampling":
        ratio = np.exp(lp - q)
        return _value(-ratio * adv, -ratio * adv)
    if loss_fn == "dro":
        beta = config["beta"]
        diff = lp - q
        return _value(-(lp * adv - 0.5 * beta * diff * diff), -(adv - beta * diff))
    if loss_fn == "stable_reinforce":
        hi_in = inputs.get("clip_high_threshold")
        coef = np.minimum(np.exp(lp - q), hi_in if hi_in is not None
                          else config["clip_high_threshold"])
        mask = inputs.get("mask")
        if mask is not None:
            coef = coef * (mask != 0)
        return _value(-coef * lp * adv, -coef * adv)
    lo, hi = _clip_bounds(inputs, config)
    if loss_fn == "cispo":
        coef = np.clip(np.exp(lp - q), lo, hi)
        return _value(-coef * lp * adv, -coef * adv)
    if loss_fn == "ppo":
        return _clipped_surrogate(np.exp(lp - q), adv, lo, hi)
    if loss_fn == "gspo":
        return _clipped_surrogate(_gspo_ratio(lp, q, adv, inputs), adv, lo, hi)

    raise AssertionError(f"unreachable: {loss_fn}")  # get_loss_spec() rejected it earlier


def _clipped_surrogate(
    ratio: FloatArray, adv: FloatArray, lo: FloatArray | float, hi: FloatArray | float
) -> LossValue:
    """PPO's ``-min(r A, clip(r) A)``; ``d r / d lp = r`` for both ppo and GSPO-token.

    The gradient flows only where the unclipped term is the minimum (ties happen only
    inside the clip range, where both terms have the same gradient).
    """
    unclipped = ratio * adv
    clipped = np.clip(ratio, lo, hi) * adv
    objective = np.minimum(unclipped, clipped)
    grad = np.where(unclipped <= clipped, -unclipped, 0.0)
    return _value(-objective, grad)


def _gspo_ratio(
    lp: FloatArray, q: FloatArray, adv: FloatArray, inputs: Mapping[str, NDArray[Any]]
) -> FloatArray:
    """Value of the GSPO-token ratio ``s_t = exp(mean_M(lp - q))`` at every position."""
    mask_in = inputs.get("sequence_ratio_mask")
    mask = (mask_in != 0) if mask_in is not None else (adv != 0)
    count = int(mask.sum())
    log_ratio = float((lp - q)[mask].sum() / count) if count else 0.0
    return np.full(lp.shape, np.exp(log_ratio))


def _clip_bounds(
    inputs: Mapping[str, NDArray[Any]], config: Mapping[str, float]
) -> tuple[FloatArray | float, FloatArray | float]:
    lo = inputs.get("clip_low_threshold")
    hi = inputs.get("clip_high_threshold")
    return (
        lo if lo is not None else config["clip_low_threshold"],
        hi if hi is not None else config["clip_high_threshold"],
    )


def _value(elementwise: FloatArray, grad: FloatArray) -> LossValue:
    return LossValue(float(elementwise.sum()), grad, elementwise)


def check_target_tokens(
    where: str, value: Any, length: int, vocab_size: int, spec: LossSpec
) -> NDArray[np.int64]:
    arr = np.asarray(value)
    if arr.dtype.kind == "f" and arr.size and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)  # JSON clients sometimes send integral floats
    if arr.dtype.kind not in "iu" and arr.size:
        raise ValueError(f"{where}: target_tokens must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    ndims = (1, 2) if spec.allows_topk_targets else (1,)
    if arr.ndim not in ndims or arr.shape[0] != length:
        expected = "(T,) or (T, K)" if spec.allows_topk_targets else "(T,)"
        raise ValueError(
            f"{where}: target_tokens has shape {list(arr.shape)}, expected {expected} "
            f"with T = {length} (the model_input length)"
        )
    if arr.ndim == 2 and arr.shape[1] == 0:
        raise ValueError(f"{where}: target_tokens (T, K) needs K >= 1")
    if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
        raise ValueError(f"{where}: target_tokens must lie in [0, {vocab_size})")
    return arr


def _check_clip(loss_fn: str, lo: float, hi: float) -> None:
    if lo < 0 or hi < lo:
        raise ValueError(
            f"{loss_fn!r}: clip thresholds must satisfy 0 <= clip_low_threshold <= "
            f"clip_high_threshold, got {lo} and {hi}"
        )
