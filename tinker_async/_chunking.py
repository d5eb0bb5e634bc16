"""Split ``forward_backward`` data into request chunks and merge the chunks' results.

Both halves follow the official SDK 0.38 exactly (``TrainingClient._chunked_requests_generator``
and ``lib/chunked_fwdbwd_helpers.combine_fwd_bwd_output_results``), so a server sees the
same chunks and a caller gets the same merged numbers.

Splitting: a chunk ends before the next datum when it already holds ``max_chunk_len``
datums, or when adding that datum would push its estimated size past ``max_chunk_bytes``
(a single datum larger than the limit still gets a chunk of its own). The size estimate
is the one the SDK uses for its protobuf encoding: 4 bytes per text token, the byte length
of image / image-pointer location / DMel data, each tensor's size in its declared dtype,
and 8 bytes per sparse index. Both limits come from the server's ``client/config``
(``fwdbwd_max_chunk_len``, ``fwdbwd_max_chunk_bytes_count``), hence parameters.

Merging: outputs are concatenated in chunk order; ``loss_fn_output_type`` comes from the
first chunk; each metric of the first chunk is reduced by the suffix after ``:``:
``mean`` (weighted by each chunk's datum count), ``sum``, ``min``, ``max``, ``slack`` (max
minus the weighted mean), ``hash2`` (sum of the int64 values modulo 2**64) and ``unique``
(the first chunk's value under ``key``, the next ones as ``key_1``, ``key_2``, ...). A metric with an
unknown suffix, or missing from some chunk, is dropped.

Two deliberate differences, both where the official code raises instead of answering:

- a metric key without exactly one ``:`` (``"loss"``, ``"a:b:mean"``) makes the SDK's
  ``name, reduction = key.split(":")`` raise ``ValueError``; we keep the first chunk's
  value for it;
- ``mean``/``slack`` over chunks whose outputs are all empty (total weight 0) make
  ``np.average`` raise ``ZeroDivisionError``; we take the unweighted mean.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final, NamedTuple

import numpy as np

from .types import (
    Datum,
    DmelChunk,
    ForwardBackwardOutput,
    ImageAssetPointerChunk,
    ImageChunk,
    TensorData,
)

__all__ = [
    "DEFAULT_MAX_CHUNK_BYTES",
    "DEFAULT_MAX_CHUNK_LEN",
    "DatumChunk",
    "combine_forward_backward_outputs",
    "estimate_datum_bytes",
    "split_datums",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_CHUNK_LEN: Final = 1024
"""``ClientConfigResponse.fwdbwd_max_chunk_len`` when the server does not say."""
DEFAULT_MAX_CHUNK_BYTES: Final = 5_000_000
"""``ClientConfigResponse.fwdbwd_max_chunk_bytes_count`` when the server does not say."""

_BYTES_PER_TOKEN: Final = 4  # text tokens travel as int32
_BYTES_PER_SPARSE_INDEX: Final = 8  # CSR indices travel as int64
_DTYPE_ITEMSIZE: Final = {"float32": 4, "int64": 8}
_MASK64: Final = (1 << 64) - 1
_REDUCTIONS: Final = frozenset({"mean", "sum", "min", "max", "slack", "hash2", "unique"})


class DatumChunk(NamedTuple):
    """One request's worth of datums and its estimated encoded size."""

    data: list[Datum]
    estimated_bytes: int


def _estimate_chunk_bytes(chunk: Any) -> int:
    if isinstance(chunk, DmelChunk):
        return len(chunk.dmel)
    if isinstance(chunk, ImageChunk):
        return len(chunk.data)
    if isinstance(chunk, ImageAssetPointerChunk):
        return len(chunk.location)
    return int(chunk.length) * _BYTES_PER_TOKEN


def _estimate_tensor_bytes(td: TensorData) -> int:
    # The SDK uses ``_numpy.nbytes``; its array is stored in the declared dtype, so that is
    # the element count times the declared dtype's size.
    values = td._numpy
    size = values.size * _DTYPE_ITEMSIZE.get(td.dtype, values.itemsize)
    if td.sparse_crow_indices is not None:
        size += _BYTES_PER_SPARSE_INDEX * len(td.sparse_crow_indices)
    if td.sparse_col_indices is not None:
        size += _BYTES_PER_SPARSE_INDEX * len(td.sparse_col_indices)
    return int(size)


def estimate_datum_bytes(datum: Datum) -> int:
    """The SDK's estimate of a datum's encoded size, used to cut chunks."""
    return sum(_estimate_chunk_bytes(c) for c in datum.model_input.chunks) + sum(
        _estimate_tensor_bytes(td) for td in datum.loss_fn_inputs.values()
    )


def split_datums(
    data: Sequence[Datum],
    max_chunk_len: int = DEFAULT_MAX_CHUNK_LEN,
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
) -> list[DatumChunk]:
    """Split ``data`` into consecutive request chunks exactly as the official SDK does."""
    if max_chunk_len < 1:
        raise ValueError(f"max_chunk_len must be at least 1, got {max_chunk_len}")
    chunks: list[DatumChunk] = []
    current: list[Datum] = []
    current_bytes = 0
    for datum in data:
        size = estimate_datum_bytes(datum)
        if (current and current_bytes + size > max_chunk_bytes) or len(current) == max_chunk_len:
            chunks.append(DatumChunk(current, current_bytes))
            current, current_bytes = [], 0
        current.append(datum)
        current_bytes += size
    if current:
        chunks.append(DatumChunk(current, current_bytes))
    return chunks


# ---------------------------------------------------------------------------------------
# Merging
# ---------------------------------------------------------------------------------------


def _weighted_mean(values: list[float], weights: list[int]) -> float:
    if sum(weights) == 0:
        return float(np.mean(values).item())
    return float(np.average(values, weights=weights).item())


def _reduce(reduction: str, values: list[float], weights: list[int]) -> float:
    """One metric across chunks, with the same numpy calls as the SDK (same rounding)."""
    if reduction == "mean":
        return _weighted_mean(values, weights)
    if reduction == "slack":
        return float(np.max(values).item()) - _weighted_mean(values, weights)
    if reduction == "sum":
        return np.sum(values).item()  # type: ignore[no-any-return]
    if reduction == "min":
        return np.min(values).item()  # type: ignore[no-any-return]
    if reduction == "max":
        return np.max(values).item()  # type: ignore[no-any-return]
    if reduction == "hash2":
        return sum(int(v) & _MASK64 for v in values) & _MASK64
    raise ValueError(f"unknown reduction {reduction!r}")


def combine_forward_backward_outputs(
    results: Sequence[ForwardBackwardOutput],
) -> ForwardBackwardOutput:
    """Merge the results of one call's chunks, as ``combine_fwd_bwd_output_results`` does.

    See the module docstring for the reductions and the two cases where we differ.
    """
    if not results:
        return ForwardBackwardOutput(loss_fn_output_type="", loss_fn_outputs=[], metrics={})
    weights = [len(r.loss_fn_outputs) for r in results]
    metrics: dict[str, float] = {}
    for key, first in results[0].metrics.items():
        parts = key.split(":")
        if len(parts) != 2:
            # Not "name:reduction": nothing says how to fold it, so keep the first chunk's.
            metrics[key] = first
            continue
        name, reduction = parts
        if reduction not in _REDUCTIONS:
            logger.debug("unknown reduction %r for metric %r: dropped", reduction, name)
            continue
        if not all(key in r.metrics for r in results):
            continue
        values = [r.metrics[key] for r in results]
        if reduction == "unique":
            metrics[key] = values[0]
            metrics.update({f"{key}_{i + 1}": v for i, v in enumerate(values[1:])})
            continue
        metrics[key] = _reduce(reduction, values, weights)
    return ForwardBackwardOutput(
        loss_fn_output_type=results[0].loss_fn_output_type,
        loss_fn_outputs=[output for r in results for output in r.loss_fn_outputs],
        metrics=metrics,
    )
