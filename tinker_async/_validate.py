"""Checks on training and sampling arguments, run before a request takes a seq id.

Everything here raises :class:`InvalidRequestError` (a ``ValueError``) with a message
that names the argument, the datum and what to do, so a bad batch never reaches the
server, never consumes a sequence number, and never leaves a gap that strict servers
punish with ``409 Sequence conflict`` on every later call.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from . import types as t
from .errors import InvalidRequestError

__all__ = [
    "LOSS_INPUTS",
    "check_checkpoint_name",
    "check_forward_backward",
    "check_optim_params",
    "check_sampling",
]

#: Required ``loss_fn_inputs`` keys of each built-in loss (optional ones are not listed).
LOSS_INPUTS: Mapping[str, tuple[str, ...]] = {
    "cross_entropy": ("target_tokens",),
    "importance_sampling": ("target_tokens", "logprobs", "advantages"),
    "ppo": ("target_tokens", "logprobs", "advantages"),
    "cispo": ("target_tokens", "logprobs", "advantages"),
    "dro": ("target_tokens", "logprobs", "advantages"),
    "gspo": ("target_tokens", "logprobs", "advantages"),
    "stable_reinforce": ("target_tokens", "logprobs", "advantages"),
    "custom": (),
}


def _known_length(model_input: t.ModelInput) -> int | None:
    try:
        return int(model_input.length)
    except (ValueError, TypeError):  # images without expected_tokens
        return None


def check_forward_backward(
    data: Sequence[t.Datum], loss_fn: str, loss_fn_config: Mapping[str, float | str] | None
) -> list[t.Datum]:
    """Validate a forward/forward_backward batch; returns it as a list."""
    if isinstance(data, (t.Datum, dict)) or not isinstance(data, Sequence):
        raise InvalidRequestError(
            f"data must be a list of Datum, got {type(data).__name__}; wrap a single datum in [ ]"
        )
    if not data:
        raise InvalidRequestError("data is empty: pass at least one Datum")
    if not isinstance(loss_fn, str) or loss_fn not in LOSS_INPUTS:
        raise InvalidRequestError(
            f"unknown loss_fn {loss_fn!r}; expected one of {', '.join(LOSS_INPUTS)}"
        )
    if loss_fn_config is not None:
        if not isinstance(loss_fn_config, Mapping):
            raise InvalidRequestError("loss_fn_config must be a mapping of name -> number or string")
        for key, value in loss_fn_config.items():
            if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise InvalidRequestError(
                    f"loss_fn_config[{key!r}] = {value!r}: values must be numbers or strings"
                )
    needed = LOSS_INPUTS[loss_fn]
    for i, datum in enumerate(data):
        if not isinstance(datum, t.Datum):
            raise InvalidRequestError(f"data[{i}] is a {type(datum).__name__}, not a Datum")
        for chunk in datum.model_input.chunks:
            if isinstance(chunk, t.ImageAssetPointerChunk):
                raise InvalidRequestError(
                    f"data[{i}]: ImageAssetPointerChunk cannot be trained on; send the image "
                    "bytes as an ImageChunk"
                )
        missing = [k for k in needed if k not in datum.loss_fn_inputs]
        if missing:
            raise InvalidRequestError(
                f"data[{i}]: loss {loss_fn!r} needs loss_fn_inputs {list(needed)}; "
                f"missing {missing} (has {sorted(datum.loss_fn_inputs)})"
            )
        length = _known_length(datum.model_input)
        if length is None:
            continue
        if length == 0:
            raise InvalidRequestError(f"data[{i}]: model_input is empty")
        for key, tensor in datum.loss_fn_inputs.items():
            shape = tensor.shape
            if shape is not None and len(shape) == 0:
                continue  # a scalar input belongs to the datum, not to its positions
            first = shape[0] if shape else len(tensor.data)
            if first != length:
                raise InvalidRequestError(
                    f"data[{i}]: loss_fn_inputs[{key!r}] has {first} positions but model_input "
                    f"has {length} tokens; they must match (one target per input position)"
                )
    return list(data)


def check_optim_params(params: Any) -> t.AdamParams | t.DimuonParams:
    """The step parameters to send, checked (``None`` means AdamW's defaults)."""
    if params is None:
        return t.AdamParams()
    if isinstance(params, t.DimuonParams):
        if not params.learning_rate >= 0 or not 0 <= params.beta1 < 1:
            raise InvalidRequestError("DimuonParams need learning_rate >= 0 and 0 <= beta1 < 1")
        if not params.grad_clip_norm >= 0:
            raise InvalidRequestError("grad_clip_norm must be >= 0")
        return params
    if not isinstance(params, t.AdamParams):
        raise InvalidRequestError(
            f"optim_step takes AdamParams or DimuonParams, got {type(params).__name__}; "
            "e.g. AdamParams(learning_rate=1e-4)"
        )
    if not params.learning_rate >= 0:
        raise InvalidRequestError(f"learning_rate must be >= 0, got {params.learning_rate}")
    for name in ("beta1", "beta2"):
        value = getattr(params, name)
        if not 0 <= value < 1:
            raise InvalidRequestError(f"{name} must be in [0, 1), got {value}")
    if not params.eps > 0:
        raise InvalidRequestError(f"eps must be > 0, got {params.eps}")
    if params.weight_decay < 0 or params.grad_clip_norm < 0:
        raise InvalidRequestError("weight_decay and grad_clip_norm must be >= 0")
    return params


def check_checkpoint_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequestError(f"checkpoint name must be a non-empty string, got {name!r}")
    if "/" in name:
        raise InvalidRequestError(f"checkpoint name {name!r} must not contain '/'")
    return name


def check_sampling(
    prompt: t.ModelInput,
    num_samples: int,
    params: t.SamplingParams,
    topk_prompt_logprobs: int,
    topk_sample_logprobs: int,
    prompt_alt_tokens_k: int,
    prompt_logprobs_last_n: int | None,
    include_prompt_logprobs: bool,
) -> None:
    """Validate a sample request."""
    if not isinstance(prompt, t.ModelInput):
        raise InvalidRequestError(
            f"prompt must be a ModelInput (e.g. ModelInput.from_ints(tokens)), got {type(prompt).__name__}"
        )
    if not prompt.chunks:
        raise InvalidRequestError("prompt is empty")
    if isinstance(num_samples, bool) or not isinstance(num_samples, numbers.Integral) or num_samples < 1:
        raise InvalidRequestError(f"num_samples must be an int >= 1, got {num_samples!r}")
    if not isinstance(params, t.SamplingParams):
        raise InvalidRequestError(
            f"sampling_params must be SamplingParams, got {type(params).__name__}"
        )
    if params.max_tokens is not None and params.max_tokens < 0:
        raise InvalidRequestError(f"max_tokens must be >= 0, got {params.max_tokens}")
    if params.temperature < 0:
        raise InvalidRequestError(f"temperature must be >= 0, got {params.temperature}")
    if not 0 < params.top_p <= 1:
        raise InvalidRequestError(f"top_p must be in (0, 1], got {params.top_p}")
    if params.top_k != -1 and params.top_k < 1:
        raise InvalidRequestError(f"top_k must be -1 (off) or >= 1, got {params.top_k}")
    for name, value in (("topk_prompt_logprobs", topk_prompt_logprobs),
                        ("topk_sample_logprobs", topk_sample_logprobs),
                        ("prompt_alt_tokens_k", prompt_alt_tokens_k)):
        if not isinstance(value, numbers.Integral) or value < 0:
            raise InvalidRequestError(f"{name} must be an int >= 0, got {value!r}")
    if prompt_logprobs_last_n is not None:
        if prompt_logprobs_last_n < 1:
            raise InvalidRequestError("prompt_logprobs_last_n must be >= 1")
        if not include_prompt_logprobs:
            raise InvalidRequestError("prompt_logprobs_last_n needs include_prompt_logprobs=True")
