"""The numpy model's results -> response bodies, protobuf and JSON.

Protobuf (what SDK 0.38 asks for with ``Accept: application/x-protobuf``) goes through
``._proto_server`` and the ``tinker_async.types`` dataclasses. JSON follows the shapes
the older SDKs and the JSON-only servers use:

- ``ForwardBackwardOutput``: ``{"loss_fn_output_type", "loss_fn_outputs": [{"logprobs":
  {"data", "dtype", "shape"}, ...}], "metrics": {...}}``;
- ``SampleResponse``: ``{"type": "sample", "sequences": [{"tokens", "logprobs",
  "stop_reason", "sequence_id"?, "topk_logprobs"?}], "prompt_logprobs"?: [null | float],
  "topk_prompt_logprobs"?: [null | [[id, logprob], ...]], "target_prompt_logprobs"?,
  "prompt_alt_tokens"?: {"tokens", "logprobs"}, "prompt_cache_hit_tokens"}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import types as t
from . import _proto_server
from ._model import MASK_LOGPROB, ForwardBackwardResult, SampleResult

__all__ = [
    "OUTPUT_TYPE",
    "forward_backward_json",
    "forward_backward_proto",
    "sample_json",
    "sample_proto",
    "sample_response",
]

OUTPUT_TYPE = "ArrayRecord"
"""``loss_fn_output_type`` of every result (the record class name, as the service sends)."""


def _tensor_json(array: npt.NDArray[Any]) -> dict[str, Any]:
    dtype = "int64" if array.dtype.kind in "iu" else "float32"
    return {"data": array.ravel().tolist(), "dtype": dtype, "shape": list(array.shape)}


# ------------------------------------------------------------------------- forward_backward


def forward_backward_json(result: ForwardBackwardResult) -> dict[str, Any]:
    """The JSON ``ForwardBackwardOutput``."""
    return {
        "loss_fn_output_type": OUTPUT_TYPE,
        "loss_fn_outputs": [
            {name: _tensor_json(array) for name, array in outputs.items()}
            for outputs in result.loss_fn_outputs
        ],
        "metrics": result.metrics,
    }


def forward_backward_proto(result: ForwardBackwardResult) -> bytes:
    """The protobuf ``ForwardBackwardOutput``."""
    output = t.ForwardBackwardOutput(
        loss_fn_output_type=OUTPUT_TYPE,
        loss_fn_outputs=[
            {name: t.TensorData.from_numpy(array) for name, array in outputs.items()}
            for outputs in result.loss_fn_outputs
        ],
        metrics=dict(result.metrics),
    )
    return _proto_server.encode_forward_backward_output(output)


# ------------------------------------------------------------------------------- sampling


def _topk(ids: npt.NDArray[Any] | None, logprobs: npt.NDArray[Any] | None) -> t.TopkLogprobs | None:
    if ids is None or logprobs is None:
        return None
    return t.TopkLogprobs(token_ids=ids.astype(np.int32), logprobs=logprobs.astype(np.float32))


def sample_response(result: SampleResult, sequence_ids: Sequence[str] | None) -> t.SampleResponse:
    """The ``SampleResponse`` of a result (sequence ids stamped when given)."""
    sequences = [
        t.SampledSequence(
            stop_reason=seq.stop_reason,
            sequence_id=sequence_ids[i] if sequence_ids is not None else "",
            tokens_np=seq.tokens,
            logprobs_np=seq.logprobs,
            topk_logprobs_np=_topk(seq.topk_token_ids, seq.topk_logprobs),
        )
        for i, seq in enumerate(result.sequences)
    ]
    alt = None
    if result.prompt_alt_tokens is not None and result.prompt_alt_logprobs is not None:
        alt = t.PromptAltTokens(
            tokens=t.TensorData.from_numpy(result.prompt_alt_tokens.astype(np.int64)),
            logprobs=t.TensorData.from_numpy(result.prompt_alt_logprobs),
        )
    target = result.target_prompt_logprobs
    return t.SampleResponse(
        sequences=sequences,
        prompt_logprobs_np=result.prompt_logprobs,
        topk_prompt_logprobs_np=_topk(result.topk_prompt_token_ids, result.topk_prompt_logprobs),
        target_prompt_logprobs=t.TensorData.from_numpy(target) if target is not None else None,
        prompt_alt_tokens=alt,
    )


def sample_proto(result: SampleResult) -> bytes:
    """The protobuf ``SampleResponse`` (sequence ids are not on the wire)."""
    return _proto_server.encode_sample_response(sample_response(result, None))


def _topk_lists(
    ids: npt.NDArray[Any], logprobs: npt.NDArray[Any]
) -> list[list[list[float | int]] | None]:
    """Per position, the ``[token, logprob]`` pairs that are not the empty sentinel."""
    rows: list[list[list[float | int]] | None] = []
    for row_ids, row_lps in zip(ids.tolist(), logprobs.tolist(), strict=True):
        pairs: list[list[float | int]] = [
            [i, lp] for i, lp in zip(row_ids, row_lps, strict=True) if lp != MASK_LOGPROB
        ]
        rows.append(pairs or None)
    return rows


def sample_json(result: SampleResult, sequence_ids: Sequence[str] | None) -> dict[str, Any]:
    """The JSON ``SampleResponse`` (``sequence_id`` on each sequence when ids are given)."""
    sequences: list[dict[str, Any]] = []
    for i, seq in enumerate(result.sequences):
        item: dict[str, Any] = {
            "tokens": seq.tokens.tolist(),
            "logprobs": seq.logprobs.tolist(),
            "stop_reason": seq.stop_reason,
        }
        if sequence_ids is not None:
            item["sequence_id"] = sequence_ids[i]
        if seq.topk_token_ids is not None and seq.topk_logprobs is not None:
            item["topk_logprobs"] = _topk_lists(seq.topk_token_ids, seq.topk_logprobs)
        sequences.append(item)
    body: dict[str, Any] = {"type": "sample", "sequences": sequences, "prompt_cache_hit_tokens": 0}
    if result.prompt_logprobs is not None:
        # NaN (position 0, and before prompt_logprobs_last_n) is JSON null.
        body["prompt_logprobs"] = [
            None if lp != lp else lp for lp in result.prompt_logprobs.tolist()
        ]
    if result.topk_prompt_token_ids is not None and result.topk_prompt_logprobs is not None:
        body["topk_prompt_logprobs"] = _topk_lists(
            result.topk_prompt_token_ids, result.topk_prompt_logprobs
        )
    if result.target_prompt_logprobs is not None:
        body["target_prompt_logprobs"] = _tensor_json(result.target_prompt_logprobs)
    if result.prompt_alt_tokens is not None and result.prompt_alt_logprobs is not None:
        body["prompt_alt_tokens"] = {
            "tokens": _tensor_json(result.prompt_alt_tokens),
            "logprobs": _tensor_json(result.prompt_alt_logprobs),
        }
    return body
